"""Committers: how a batch becomes durable. Chosen once at start by `delivery`.

Both follow the same steps, called by the pipeline for every batch:
1. `begin()`   before the batch produces anything;
2. (the sink produces the batch's outputs)
3. `commit(offsets)`  makes outputs and offsets durable together, or raises (BatchFailed,
   ProducerBroken, Stopping), in which case nothing of the batch counts;
4. `abort()`   after a failure, before the rewind;
and `settle()` on a revoke and at close, `forget()` when partitions are lost, `on_commit()` for
librdkafka's commit confirmations. Both declare the `Committer` protocol below; the pipeline
holds one and knows nothing of which.

At-least-once: the outputs are acknowledged first, then the offsets are committed
asynchronously, so the next batch is read, scored and produced while the commit travels. Its
confirmation (on_commit) is served inside the consume() that reads the batch after next, so one
commit may still be travelling when a batch begins, never two: then, and after a commit that
failed, the offsets in flight are settled (committed again synchronously, each partition at its
newest offset) before the batch produces anything; also on a revoke and at close. Waiting for
every commit before the next batch cost a round trip per batch (14 % of the loop's time on the
batch workload, py-spy). A crash redoes at most two batches. Not so while the pipeline writes a
state changelog (`travel_ok()` false): its restore relies on at most one batch having written
state without its offsets committed (state.py), so each commit is settled before the next batch.

Exactly-once: one Kafka transaction per batch (outputs, changelog and offsets). Each
transactional call gets its own time bound (`shutdown_timeout_s`, or what is left of the stop
budget): librdkafka was seen blocking far past a call's timeout when the broker died
mid-transaction; a call that does not return in time leaves its producer behind
(ProducerBroken: a new one with the same transactional.id fences it) and the batch is redone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import KafkaError, KafkaException, TopicPartition

from latentwatch.pipeline.errors import BatchFailed, Fatal, ProducerBroken, Stopping, UserError
from latentwatch.pipeline.stop import StopBudget

log = logging.getLogger("latentwatch.run")


def _tps(offsets: dict[tuple[str, int], int]) -> list[TopicPartition]:
    return [TopicPartition(t, p, o) for (t, p), o in offsets.items()]


def in_thread(call: Callable[[], None], limit_s: float | None, stop: StopBudget):
    """Run a blocking client call on a helper thread and wait for it, but never past `limit_s`
    nor past the stop deadline (a synchronous commit to a dead coordinator blocks ~60 s, and a
    signal cannot interrupt a C call). Returns the call's exception, or None; raises Stopping or
    TimeoutError when the call is left behind."""
    outcome: list = []

    def target():
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    worker = threading.Thread(target=target, name="kafka-call", daemon=True)
    worker.start()
    started = time.monotonic()
    while worker.is_alive():
        worker.join(0.1)
        if worker.is_alive() and stop.passed():
            raise Stopping("the shutdown timeout ran out while waiting for Kafka")
        if worker.is_alive() and limit_s is not None and time.monotonic() - started > limit_s:
            raise TimeoutError(f"no answer from Kafka in {limit_s:.0f} s")
    return outcome[0] if outcome else None


def _call_here(call: Callable[[], None]):
    try:
        call()
    except KafkaException as exc:
        return exc
    return None


class Committer(Protocol):
    """How a batch's outputs and offsets become durable together (the steps above)."""

    def start(self, producer) -> None: ...
    def init_producer(self, producer) -> None: ...
    def begin(self) -> None: ...
    def commit(self, offsets: dict[tuple[str, int], int]) -> None: ...
    def abort(self) -> None: ...
    def settle(self, in_callback: bool = False) -> None: ...
    def forget(self) -> None: ...
    def on_commit(self, err, partitions) -> None: ...


class AtLeastOnce(Committer):
    def __init__(self, source, sink, on_committed: Callable[[], None], stop: StopBudget,
                 travel_ok: bool = True, timeout_s: float = 30.0):
        self.source, self.sink, self._on_committed = source, sink, on_committed
        self._stop, self._travel_ok, self.timeout_s = stop, travel_ok, timeout_s
        self._travelling: list[dict[tuple[str, int], int]] = []  # asynchronous commits, oldest first
        self._failed = False  # an on_commit reported an error: settle before the next batch

    def init_producer(self, producer) -> None:
        pass

    def start(self, producer) -> None:
        pass

    def begin(self) -> None:
        if self._failed or len(self._travelling) > (1 if self._travel_ok else 0):
            self.settle()  # before this batch produces anything

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.sink.wait()
        try:
            # Asynchronous: it travels while the next batch is read. (A sync commit from a helper
            # thread instead held this thread's consume() back: 30x slower.)
            self.source.consumer.commit(offsets=_tps(offsets), asynchronous=True)
        except KafkaException as exc:
            raise BatchFailed(f"commit refused: {exc.args[0].str()}") from None
        self._travelling.append(dict(offsets))

    def on_commit(self, err, partitions) -> None:
        """librdkafka's on_commit (inside consume()): confirms an asynchronous commit."""
        if err is not None:
            self._failed = self._failed or bool(self._travelling)  # settle() commits it again, or raises
            return
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if tp.error is not None:
                self._failed = True
                continue
            for pending in self._travelling:  # and older commits of the partition: superseded
                if key in pending and pending[key] <= tp.offset:
                    del pending[key]
        while self._travelling and not self._travelling[0]:
            self._travelling.pop(0)
            self._on_committed()

    def settle(self, in_callback: bool = False) -> None:
        """Commit what travels, synchronously. `in_callback`: called from a rebalance callback
        (inside consume()), where the commit must run on this thread: one from a helper thread
        waits for the callback to end. Elsewhere it is left behind after `timeout_s`: a commit in
        flight when the broker died waits for a coordinator to come back, and the run loop, stuck
        in it, polled nothing and never said Kafka was unreachable (the disk-full system test);
        the batch fails instead (rewound and redone: duplicates, no loss)."""
        if not self._travelling:
            self._failed = False
            return
        merged: dict[tuple[str, int], int] = {}
        for pending in self._travelling:
            merged.update(pending)
        offsets, consumer = _tps(merged), self.source.consumer
        try:
            commit = lambda: consumer.commit(offsets=offsets, asynchronous=False)  # noqa: E731
            exc = _call_here(commit) if in_callback else in_thread(commit, self.timeout_s, self._stop)
        except Stopping:
            self.forget()  # the next owner redoes the last batches: duplicates, no loss
            raise
        except TimeoutError as timeout:
            self.forget()
            raise BatchFailed(f"commit not confirmed: {timeout}") from None
        self.forget()  # confirmed, or we go back to whatever the broker has
        if isinstance(exc, KafkaException):
            if exc.args[0].fatal():
                raise Fatal(exc.args[0].str()) from None
            raise BatchFailed(f"commit not confirmed: {exc.args[0].str()}") from None
        if exc is not None:
            raise exc
        self._on_committed()

    def abort(self) -> None:
        self.forget()
        self.sink.drain()

    def forget(self) -> None:
        """Partitions lost (not revoked): what travels is not ours to settle."""
        self._travelling, self._failed = [], False


# A transaction coordinator still loading or moving (right after a broker starts or fails over):
# init_transactions says so at once rather than waiting.
_COORDINATOR_NOT_READY = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
                          KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError._TIMED_OUT, KafkaError._TRANSPORT}


class ExactlyOnce(Committer):
    def __init__(self, source, sink, on_committed: Callable[[], None], timeout_s: float,
                 stop: StopBudget, startup_timeout_s: float = 30.0, retry_s: float = 0.5):
        self.source, self.sink, self._on_committed = source, sink, on_committed
        self.timeout_s, self._stop = timeout_s, stop
        self._startup_timeout_s, self._retry_s = startup_timeout_s, retry_s

    def start(self, producer) -> None:
        """`init_producer` at start: what still fails after the retries is one clear line."""
        try:
            self.init_producer(producer)
        except KafkaException as exc:
            raise UserError(f"could not start transactions (delivery: exactly-once): {exc.args[0].str()}; check "
                            "that the brokers' transaction coordinator is up and that this user may use "
                            "its transactional.id") from None

    def init_producer(self, producer) -> None:
        """init_transactions, retried for up to `startup_timeout_s` while the coordinator is not
        ready (seen as NOT_COORDINATOR right after a broker start); other errors raise at once."""
        give_up = time.monotonic() + self._startup_timeout_s
        while True:
            try:
                producer.init_transactions(self.timeout_s)
                return
            except KafkaException as exc:
                err = exc.args[0]
                if (err.fatal() or not (err.retriable() or err.code() in _COORDINATOR_NOT_READY)
                        or time.monotonic() > give_up or self._stop.passed()):
                    raise
                log.info("transaction coordinator not ready (%s); retrying", err.str())
                time.sleep(self._retry_s)

    def begin(self) -> None:
        try:
            self.sink.producer.begin_transaction()
        except KafkaException as exc:
            raise (ProducerBroken if exc.args[0].fatal() else BatchFailed)(exc.args[0].str()) from None

    def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        producer = self.sink.producer
        metadata = self.source.consumer.consumer_group_metadata()
        self._bounded(lambda t: producer.send_offsets_to_transaction(_tps(offsets), metadata, t))
        self._bounded(producer.commit_transaction)
        if self.sink.fatal is not None:
            raise ProducerBroken(self.sink.fatal)
        self._on_committed()

    def on_commit(self, err, partitions) -> None:
        pass  # offsets go with the transaction: no asynchronous commit to confirm

    def settle(self, in_callback: bool = False) -> None:
        pass  # a transaction is committed or not: nothing travels between batches

    def forget(self) -> None:
        pass

    def abort(self) -> None:
        if self.sink.fatal is not None or self.sink.producer is None:
            return  # replaced before the redo: the new producer's init aborts the transaction
        try:
            self._bounded(self.sink.producer.abort_transaction)
        except (BatchFailed, Stopping) as exc:
            # a transaction that would not abort: this producer cannot be trusted with the next
            # batch; a new one with the same id fences it
            self.sink.broken(str(exc))
        self.sink.reset()

    def _bounded(self, call: Callable[[float], None]) -> None:
        """Run one transactional call with a hard time limit of its own."""
        stopping = self._stop.deadline is not None
        timeout = max(0.1, self._stop.left(self.timeout_s)) if stopping else self.timeout_s
        try:
            exc = in_thread(lambda: call(timeout), timeout + (1 if stopping else 5), self._stop)
        except (TimeoutError, Stopping):
            self.sink.broken("a transactional call did not return in time")
            raise ProducerBroken(self.sink.fatal) from None
        if isinstance(exc, KafkaException):
            err = exc.args[0]
            if err.fatal():
                self.sink.broken(err.str())
                raise ProducerBroken(err.str()) from None
            raise BatchFailed(err.str()) from None
        if exc is not None:
            raise exc
