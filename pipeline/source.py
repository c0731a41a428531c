"""The source: micro-batches from the consumer group.

1. `open` subscribes; the rebalance callbacks (which librdkafka runs inside `consume()`) are
   handed to the pipeline's hooks: `on_assign(partitions)`, `on_revoke(partitions)`,
   `on_lost(partitions)`. Messages already in hand from a partition revoked or lost meanwhile
   are dropped: its next owner (or this consumer, from the committed offset) reads them again.
2. `next_batch` gathers up to `batch.max_readings` readings, `batch.max_bytes` bytes, and
   returns at most `batch.max_wait_ms` after the first message arrived. Messages are counted
   by the readings they carried on average so far (a message may hold many), and `put_back`
   returns what a batch could not take, to start the next one: the cap is on readings, as
   documented, without decoding anything twice in the common case.
3. `rewind` seeks every assigned partition back to its committed offset.
"""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaException

from latentwatch.pipeline.kafka import clients as kafka_io

log = logging.getLogger("latentwatch.run")


class Source:
    def __init__(self, settings, *, on_assign, on_revoke, on_lost, on_error, on_stats, on_commit,
                 on_wait=lambda: None):
        self._on_wait = on_wait  # called while waiting on Kafka (health: waiting, not stalled)
        self.settings = settings
        self.batch = settings.batch
        self._hooks = (on_assign, on_revoke, on_lost)
        self._conf = kafka_io.consumer_config(settings, on_stats=on_stats, on_error=on_error, on_commit=on_commit)
        self.consumer: Consumer | None = None
        self._revoked: set = set()
        self._held: list = []  # put back by the last batch, in consume order
        self.readings_per_message = 1.0  # running estimate, from the batches decoded so far
        self.max_readings = settings.batch.max_readings  # the next batch's cap (pacing.py lowers it)

    def open(self) -> None:
        self.consumer = Consumer(self._conf)
        self.consumer.subscribe([self.settings.topics.input], on_assign=self._assigned,
                                on_revoke=self._revoked_cb, on_lost=self._lost)

    def next_batch(self, stopping) -> list:
        b = self.batch
        want = max(1, int(self.max_readings / max(self.readings_per_message, 1.0)))
        if len(self._held) >= want:
            held, self._held = self._held[:want], self._held[want:]
            return held
        # The held messages stay in self._held while fetching: a revoke or loss inside consume()
        # (eager or cooperative-sticky) drops theirs there (`_forget`). Taken out first, they
        # escaped it: accumulate() clears the revoked set as it goes.
        got = kafka_io.accumulate(self.consumer, want - len(self._held), b.max_bytes, b.max_wait_ms / 1000,
                                  stopping, self._revoked)
        held, self._held = self._held, []
        return held + got

    def put_back(self, messages: list) -> None:
        self._held = list(messages) + self._held

    def learn(self, n_messages: int, n_readings: int) -> None:
        if n_messages:
            self.readings_per_message = 0.8 * self.readings_per_message + 0.2 * (n_readings / n_messages)

    def committed(self, partitions, stopping) -> list | None:
        """Committed offsets of `partitions`, asked until answered; None on a stop."""
        while True:
            try:
                return self.consumer.committed(partitions, timeout=2 if stopping() else 10)
            except KafkaException as exc:
                self._on_wait()
                if stopping():
                    return None
                log.warning("could not read committed offsets (%s); retrying", exc.args[0].str())

    def rewind(self, stopping) -> None:
        """Back to the committed offsets. Never seek without knowing them: the assignment's
        offsets are INVALID, which would seek to the beginning (redo everything) or, with
        'latest', skip readings."""
        self._held = []
        assignment = self.consumer.assignment()
        if not assignment:
            return
        committed = self.committed(assignment, stopping)
        if committed is None:
            return  # nothing was committed past the batch: the next owner redoes it
        for tp in committed:
            if tp.offset < 0:
                tp.offset = -2 if self.settings.auto_offset_reset == "earliest" else -1  # BEGINNING / END
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                log.warning("seek %s[%d] failed: %s", tp.topic, tp.partition, exc.args[0].str())

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()  # leaves the group now, so partitions move without waiting
            self.consumer = None

    # -- rebalance callbacks (inside consume()) -----------------------------------------------
    def _assigned(self, consumer, partitions) -> None:
        log.info("assigned %s", _fmt(partitions))
        self._hooks[0](partitions)

    def _revoked_cb(self, consumer, partitions) -> None:
        log.info("revoked %s", _fmt(partitions))
        self._forget(partitions)
        self._hooks[1](partitions)

    def _lost(self, consumer, partitions) -> None:
        log.warning("lost %s (not committing)", _fmt(partitions))
        self._forget(partitions)
        self._hooks[2](partitions)

    def _forget(self, partitions) -> None:
        gone = {(tp.topic, tp.partition) for tp in partitions}
        self._revoked.update(gone)
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in gone]


def _fmt(partitions) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
