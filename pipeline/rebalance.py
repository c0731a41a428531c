"""What the pipeline does when partitions move. librdkafka runs these hooks inside consume(),
between two batches, when everything processed is acknowledged and its commit sent.

- assigned: restore the partitions' per-sensor state as of their committed offsets (from the
  changelog, when the model needs state to score);
- revoked: settle the last commit (the next owner starts after our last batch), drop the state;
- lost: drop the state without committing (the partitions are someone else's already);
- reload: after a rewind, the assigned partitions' state again as of the committed offsets (an
  asynchronous commit that never took leaves the in-memory state one batch ahead).
"""

from __future__ import annotations

import logging

from latentwatch.pipeline.errors import BatchFailed
from latentwatch.pipeline.kafka import changelog

log = logging.getLogger("latentwatch.run")


class Rebalance:
    def __init__(self, pipeline):
        self.p = pipeline  # its state, settings, source, committer, metrics and health, as they are now
        self.incomplete = False  # a stop came during a restore: assigned partitions without their state

    def assigned(self, partitions) -> None:
        self.p.metrics.assigned(partitions)
        self.p.health.assignment(len(partitions))
        self.restore(partitions)

    def restore(self, partitions) -> None:
        p = self.p
        if p.state_topic is not None and partitions:
            done = changelog.restore_into(p.state, p.settings, p.state_topic, partitions, p.source.committed,
                                          lambda: p.stopping, on_wait=p.health.beat)
            if done is None:  # stopping: nothing of these partitions may be scored now
                self.incomplete = True
                return
            loaded, seconds = done
            p.metrics.state_restored(loaded, seconds)
            p.evicted_on_load(loaded.evicted)  # tombstones, so the next restore does not bring them back

    def reload(self, partitions) -> None:
        self.p.state.drop_partitions({tp.partition for tp in partitions})
        self.p.lifecycle.forget({tp.partition for tp in partitions})  # the shadow's state: warms up again
        self.restore(partitions)

    def revoked(self, partitions) -> None:
        try:
            self.p.committer.settle(in_callback=True)
        except BatchFailed as exc:  # the next owner redoes the last batch: a duplicate, no loss
            log.warning("last commit not confirmed before the revoke: %s", exc)
        self._forget(partitions)

    def lost(self, partitions) -> None:
        self.p.committer.forget()
        self._forget(partitions)

    def _forget(self, partitions) -> None:
        self.p.state.drop_partitions({tp.partition for tp in partitions})
        self.p.lifecycle.forget({tp.partition for tp in partitions})
        self.p.metrics.revoked(partitions)
        self.p.health.waiting_for_assignment()
