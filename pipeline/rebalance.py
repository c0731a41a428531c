"""What the pipeline does when partitions move. librdkafka runs these hooks inside consume(),
between two batches, when everything processed is acknowledged and its commit sent.

- assigned: restore the partitions' per-sensor state as of their committed offsets (from the
  changelog, when the model needs state to score); a partition the changelog lacks (the input
  grew while running) is a clear failure: not ready, one ERROR line, a metric, exit 2;
- revoked: settle the last commit (the next owner starts after our last batch), drop the state;
- lost: drop the state without committing (the partitions are someone else's already);
- reload: after a rewind, the assigned partitions' state again as of the committed offsets (an
  asynchronous commit that never took leaves the in-memory state one batch ahead).

Its collaborators are given, not reached through the pipeline: the state store, where the
committed offsets come from (the source), the stop budget, the events fan-out (metrics, health,
lifecycle), and, once the clients are open, the committer and the changelog topic (`attach`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from latentwatch.pipeline.errors import BatchFailed
from latentwatch.pipeline.events import Listener
from latentwatch.pipeline.kafka import changelog
from latentwatch.pipeline.state import StateStore
from latentwatch.pipeline.stop import StopBudget

log = logging.getLogger("latentwatch.run")


class Rebalance:
    def __init__(self, *, store: StateStore, settings, committed_of: Callable, stop: StopBudget,
                 events: Listener, on_wait: Callable[[], None] = lambda: None,
                 on_evicted: Callable[[dict], None] = lambda evicted: None):
        self.store, self.settings, self.committed_of, self.stop = store, settings, committed_of, stop
        self.events, self.on_wait, self.on_evicted = events, on_wait, on_evicted
        self.committer = None  # attach(): set once the clients are open
        self.state_topic: str | None = None  # None: nothing to restore
        self.incomplete = False  # a stop came during a restore: assigned partitions without their state

    def attach(self, committer, state_topic: str | None) -> None:
        self.committer, self.state_topic = committer, state_topic

    def assigned(self, partitions) -> None:
        self.events.on_assigned(partitions)
        self.restore(partitions)

    def restore(self, partitions, committed: list | None = None) -> None:
        """The partitions' state from the changelog as of their committed offsets (`committed`:
        those already read, e.g. by the rewind the consumer went back to)."""
        if self.state_topic is None or not partitions:
            return
        try:
            changelog.check_partitions(self.settings, self.state_topic, partitions)
        except changelog.ChangelogShort as exc:  # out of consume(): the run loop ends with exit 2
            log.error("%s", exc)
            self.events.on_changelog_short(exc.topic, exc.missing)
            raise
        committed_of = self.committed_of if committed is None else (lambda _partitions, _stop: committed)
        done = changelog.restore_into(self.store, self.settings, self.state_topic, partitions, committed_of,
                                      self.stop, on_wait=self.on_wait)
        if done is None:  # stopping: nothing of these partitions may be scored now
            self.incomplete = True
            return
        loaded, seconds = done
        self.events.on_restored(loaded, seconds)
        self.on_evicted(loaded.evicted)  # tombstones, so the next restore does not bring them back

    def reload(self, partitions, committed: list | None = None) -> None:
        self.store.drop_partitions({tp.partition for tp in partitions})
        self.events.on_reloaded(partitions)
        self.restore(partitions, committed)

    def revoked(self, partitions) -> None:
        try:
            self.committer.settle(in_callback=True)
        except BatchFailed as exc:  # the next owner redoes the last batch: a duplicate, no loss
            log.warning("last commit not confirmed before the revoke: %s", exc)
        self._forget(partitions)

    def lost(self, partitions) -> None:
        self.committer.forget()
        self._forget(partitions)

    def _forget(self, partitions) -> None:
        self.store.drop_partitions({tp.partition for tp in partitions})
        self.events.on_revoked(partitions)
