"""The source: micro-batches from the consumer group.

1. `open` subscribes; the rebalance callbacks (which librdkafka runs inside `consume()`) are
   handed to the pipeline's hooks: `on_assign(partitions)`, `on_revoke(partitions)`,
   `on_lost(partitions)`. Messages already in hand from a partition revoked or lost meanwhile
   are dropped: its next owner (or this consumer, from the committed offset) reads them again.
2. `next_batch(want, stop)` gathers up to `want` messages (pacing.BatchSizing decides how
   many: the one place batches are sized), `batch.max_bytes` bytes, and returns at most
   `batch.max_wait_ms` after the first message arrived; `put_back` returns what a batch could
   not take, to start the next one, without decoding anything twice in the common case.
3. `rewind` seeks every assigned partition back to its committed offset.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from latentwatch.pipeline.kafka import clients
from latentwatch.pipeline.stop import StopBudget

log = logging.getLogger("latentwatch.run")


class Source:
    def __init__(self, settings, *, on_assign, on_revoke, on_lost, on_error, on_stats, on_commit,
                 on_wait=lambda: None):
        self._on_wait = on_wait  # called while waiting on Kafka (health: waiting, not stalled)
        self.settings = settings
        self.batch = settings.batch
        self._hooks = (on_assign, on_revoke, on_lost)
        self._conf = clients.consumer_config(settings, on_stats=on_stats, on_error=on_error, on_commit=on_commit)
        self.consumer: Consumer | None = None
        self._revoked: set = set()
        self._held: list = []  # put back by the last batch, in consume order
        self._paused = False  # pause_all() until resume_all()

    def open(self) -> None:
        self.consumer = Consumer(self._conf)
        self.consumer.subscribe([self.settings.topics.input], on_assign=self._assigned,
                                on_revoke=self._revoked_cb, on_lost=self._lost)

    def next_batch(self, want: int, stop: StopBudget) -> list:
        b = self.batch
        want = max(1, want)
        if len(self._held) >= want:
            held, self._held = self._held[:want], self._held[want:]
            return held
        # The held messages stay in self._held while fetching: a revoke or loss inside consume()
        # (eager or cooperative-sticky) drops theirs there (`_forget`). Taken out first, they
        # escaped it: accumulate() clears the revoked set as it goes.
        got = accumulate(self.consumer, want - len(self._held), b.max_bytes, b.max_wait_ms / 1000,
                         stop, self._revoked)
        held, self._held = self._held, []
        return held + got

    def put_back(self, messages: list) -> None:
        self._held = list(messages) + self._held

    # -- waiting without consuming (a schema registry outage: runner._registry_down) -------------
    def pause_all(self) -> None:
        """Pause the assigned partitions (once): `idle` then polls without fetching more."""
        if not self._paused:
            parts = self.consumer.assignment()
            if parts:
                self.consumer.pause(parts)
            self._paused = True

    def idle(self, timeout: float) -> None:
        """poll() while paused: librdkafka counts max.poll.interval.ms from the last poll, so a
        wait longer than it would have cost the group membership. Rebalance callbacks run here;
        a partition assigned meanwhile is not paused, and what it returns is held, after the rest."""
        msg = self.consumer.poll(timeout)
        if msg is not None and msg.error() is None:
            self._held.append(msg)

    def resume_all(self) -> None:
        if self._paused:
            parts = self.consumer.assignment()
            if parts:
                self.consumer.resume(parts)
            self._paused = False

    def committed(self, partitions, stop: StopBudget) -> list | None:
        """Committed offsets of `partitions`, asked until answered; None on a stop."""
        while True:
            try:
                return self.consumer.committed(partitions, timeout=2 if stop.stopping else 10)
            except KafkaException as exc:
                self._on_wait()
                if stop.stopping:
                    return None
                log.warning("could not read committed offsets (%s); retrying", exc.args[0].str())

    def rewind(self, stop: StopBudget) -> list | None:
        """Back to the committed offsets. Never seek without knowing them: the assignment's
        offsets are INVALID, which would seek to the beginning (redo everything) or, with
        'latest', skip readings. Returns the committed offsets it went back to, as read (None:
        none read), so that the state restored with them is as of the same offsets: a commit
        left behind (committer.py) may land between two reads."""
        self._held = []
        assignment = self.consumer.assignment()
        if not assignment:
            return None
        committed = self.committed(assignment, stop)
        if committed is None:
            return None  # nothing was committed past the batch: the next owner redoes it
        read = [TopicPartition(tp.topic, tp.partition, tp.offset) for tp in committed]
        for tp in committed:
            if tp.offset < 0:
                tp.offset = -2 if self.settings.auto_offset_reset == "earliest" else -1  # BEGINNING / END
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                log.warning("seek %s[%d] failed: %s", tp.topic, tp.partition, exc.args[0].str())
        return read

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


def accumulate(consumer: Consumer, max_messages: int, max_bytes: int, max_wait_s: float, stop: StopBudget,
               revoked: set | None = None) -> list[Message]:
    """Collect up to `max_messages` messages or `max_bytes` of values, returning at most
    `max_wait_s` after the first one arrived.

    After the first message, `consume(n, timeout)` may return early with whatever has arrived,
    so we keep asking until the batch is full or the deadline passes. The byte cap bounds batches of
    many-reading messages. Errors pass through (as messages whose `.error()` is set).

    `revoked` (filled by the rebalance callbacks) names partitions revoked or lost during a
    `consume()`: messages already in hand from them are dropped, since the partition's next owner
    (or this consumer, re-assigned from the committed offset) reads them again.
    """
    if revoked:
        revoked.clear()  # revoked between batches: nothing of theirs in hand
    batch: list[Message] = []
    size = 0
    deadline = None
    while len(batch) < max_messages and size < max_bytes and not stop.stopping:
        if deadline is None:
            # The first message through poll(), which returns as soon as one is there:
            # consume(n, t) with t <= 200 ms waits all of t unless n messages arrive, which
            # held every batch's first readings back by up to 100 ms (p50 ~50 ms at 5k msg/s).
            first = consumer.poll(0.1)
            got = [] if first is None else [first]
            if got and max_messages > 1:  # and what is already here, within the byte budget
                room = max(1, int(max_bytes / max(len(first), 1)) - 1)
                got += consumer.consume(min(max_messages - 1, room), timeout=0)
        else:
            # Ask for no more messages than the byte budget has room for, at the average size
            # seen so far: one consume() of many-reading messages could otherwise overshoot it.
            room = max(1, int((max_bytes - size) * len(batch) / max(size, 1)))
            # librdkafka waits in whole milliseconds and truncates: a timeout under 1 ms does
            # not wait at all, and calling again until the deadline spins the core (measured:
            # 45 % of this thread's time at max_wait_ms=1). Round to the nearest millisecond.
            wait_ms = round((deadline - time.monotonic()) * 1000)
            if wait_ms <= 0:
                break
            got = consumer.consume(min(max_messages - len(batch), room), timeout=wait_ms / 1000)
        if revoked:  # a rebalance ran inside consume(): what we hold of those partitions is not ours
            batch = [m for m in batch if (m.topic(), m.partition()) not in revoked]
            revoked.clear()
        if got:
            batch.extend(got)
            size += sum(len(m) for m in got)
            if deadline is None:
                deadline = time.monotonic() + max_wait_s
        if deadline is not None and time.monotonic() >= deadline:
            break
        if deadline is None and not got:
            break  # nothing arrived in 100 ms: let the loop breathe (signals, metrics)
    return batch


def _fmt(partitions) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
