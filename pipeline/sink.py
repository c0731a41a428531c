"""The sink: produces a batch's outputs and knows when all of them are acknowledged.

1. `produce_batch` produces every record of a `ScoredBatch` (dead letters, alerts, latent
   records, state changelog). A full local queue is waited on (serving delivery callbacks), but
   never past the stop deadline.
2. A dead letter larger than the producer accepts is produced truncated, with headers saying so
   (`lw-dlq-truncated`, `lw-dlq-original-bytes`, `lw-dlq-original-sha256`); a broker that
   refuses it as too large (its own `message.max.bytes`, or the topic's `max.message.bytes`)
   halves the cap for the redo. A poison message therefore never blocks the partition.
3. `wait` returns once the broker acknowledged everything; the first delivery error is raised
   typed (`BatchFailed`), a fatal producer error as `ProducerBroken`.
4. `replace` drops a broken producer and makes a new one with the same transactional.id.

The sink alone owns the producer's health: `fatal` is set here (librdkafka's error_cb) or
through `broken(why)` (a committer whose transactional call never returned), and cleared only
by `replace`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from latentwatch.pipeline import cloudevents
from latentwatch.pipeline.errors import BatchFailed, Fatal, ProducerBroken, Stopping
from latentwatch.pipeline.kafka import clients
from latentwatch.pipeline.stop import StopBudget

log = logging.getLogger("latentwatch.run")

# Room for a record's framing, key and our headers on top of the value (bytes).
_RECORD_OVERHEAD = 4096
DLQ_KEY_CAP = 1024  # bytes of a dead letter's key kept (the rest: header lw-dlq-key-truncated)
_TOO_LARGE = {KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.RECORD_LIST_TOO_LARGE}


def dead_letter_headers(msg: Message, reason: str, detail: str) -> list[tuple[str, bytes]]:
    """The original headers plus why and where from."""
    headers = list(msg.headers() or [])
    headers += [
        ("lw-dlq-reason", reason.encode()),
        ("lw-dlq-detail", detail[:500].encode("utf-8", "replace")),
        ("lw-source-topic", msg.topic().encode()),
        ("lw-source-partition", str(msg.partition()).encode()),
        ("lw-source-offset", str(msg.offset()).encode()),
    ]
    return headers


class Sink:
    def __init__(self, settings, *, on_error: Callable, stop: StopBudget,
                 transactional_id: str | None = None, on_wait: Callable[[], None] = lambda: None,
                 avro=None):
        self._avro = avro  # alerts.format avro: avro_out.AvroOutput re-encodes the alerts and latent records
        self._on_wait = on_wait  # called while waiting on Kafka (health: waiting, not stalled)
        self.settings = settings
        self.topics = settings.topics
        self._on_error = on_error
        self._stop = stop
        self._transactional_id = transactional_id
        self.fatal: str | None = None  # set from error_cb (librdkafka's thread, inside poll/flush) or broken()
        self._failed = 0
        self._first_error: str | None = None
        self._dlq_too_large = False
        conf = clients.producer_config(settings)
        self.dlq_cap = int(conf.get("message.max.bytes", 1_000_000)) - _RECORD_OVERHEAD
        self.truncated = 0  # dead letters produced truncated since start (for the metric)
        alerts = getattr(settings, "alerts", None)  # CloudEvents binary-mode headers on alerts (cloudevents.py)
        self._ce_source = ((alerts.cloudevents_source or cloudevents.default_source(settings.group_id)).encode()
                           if alerts is not None and alerts.cloudevents else None)
        self.producer = self._new_producer()

    # -- producing ----------------------------------------------------------------------------
    def produce_batch(self, batch, state_topic: str | None, tombstones=()) -> None:
        for i, reason, detail in batch.dead:
            self._dead_letter(batch.messages[i], reason, detail)
        ce, avro = self._ce_source, self._avro
        if avro is None:
            for key, value in batch.alerts:
                self._produce(self.topics.alerts, value, key, cloudevents.headers(value, ce) if ce else None)
            for key, value in batch.latents:
                self._produce(self.topics.latent, value, key)
        else:  # the same records in Avro (avro_out.py); CloudEvents headers say application/avro
            for key, value in batch.alerts:
                r = orjson.loads(value)
                self._produce(self.topics.alerts, avro.alert(r), key,
                              cloudevents.headers_of(r, ce, cloudevents.CONTENT_TYPES["avro"]) if ce else None)
            for key, value in batch.latents:
                self._produce(self.topics.latent, avro.latent(orjson.loads(value)), key)
        # Evicted sensors are deleted from the changelog first (a restore keeps a key's last
        # record): one evicted and back in this batch has its new record after the tombstone, or
        # none (its record supersedes it).
        rewritten = {(partition, key) for partition, key, _ in batch.changelog}
        for partition, sensor_id in tombstones:
            key = sensor_id.encode()
            if (partition, key) not in rewritten:
                self._produce(state_topic, None, key, partition=partition)
        for partition, key, value in batch.changelog:
            self._produce(state_topic, value, key, partition=partition)

    def _dead_letter(self, msg, reason: str, detail: str) -> None:
        value, key = msg.value() or b"", msg.key()
        headers = dead_letter_headers(msg, reason, detail)
        if key is not None and len(key) > DLQ_KEY_CAP:  # a key is a sensor id: at most 256 bytes in contract
            headers += [("lw-dlq-key-truncated", b"true"), ("lw-dlq-original-key-bytes", str(len(key)).encode())]
            key = key[:DLQ_KEY_CAP]
        # key, value and headers together fit the producer's limit (the value gives way)
        room = self.dlq_cap - len(key or b"") - sum(len(k) + len(v or b"") for k, v in headers) - 256
        if len(value) > room:
            headers += [("lw-dlq-truncated", b"true"), ("lw-dlq-original-bytes", str(len(value)).encode()),
                        ("lw-dlq-original-sha256", hashlib.sha256(value).hexdigest().encode())]
            value = value[:max(0, room)]
            self.truncated += 1
        self._produce(self.topics.dead_letter, value, key, headers)

    def _produce(self, topic, value, key, headers=None, partition: int | None = None) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery,
                                      **extra)
                return
            except BufferError:
                self._on_wait()
                self._check_time()
                self.producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0]
                if err.fatal():
                    raise ProducerBroken(err.str()) from None
                raise BatchFailed(f"produce to {topic} refused: {err.str()}") from None

    def _on_delivery(self, err, msg) -> None:
        if err is None:
            return
        self._failed += 1
        if self._first_error is None:
            self._first_error = f"{msg.topic()}: {err.str()}"
        if err.code() in _TOO_LARGE and msg.topic() == self.topics.dead_letter:
            self._dlq_too_large = True

    # -- waiting ------------------------------------------------------------------------------
    def wait(self) -> None:
        """Until everything produced is acknowledged. Raises BatchFailed / ProducerBroken /
        Stopping (the stop deadline passed first)."""
        warn_at = time.monotonic() + 10
        while self.producer.flush(0.1) > 0:
            self._on_wait()
            if self.fatal is not None:
                raise ProducerBroken(self.fatal)
            self._check_time()
            if time.monotonic() > warn_at:
                log.warning("waiting for Kafka to acknowledge %d produced messages", len(self.producer))
                warn_at = time.monotonic() + 10
        if self.fatal is not None:
            raise ProducerBroken(self.fatal)
        if self._failed:
            failed, first = self._failed, self._first_error
            if self._dlq_too_large:  # the broker's limit is below ours: smaller dead letters next time
                self.dlq_cap = max(1024, self.dlq_cap // 2)
                log.warning("the broker refused a dead letter as too large: truncating them to %d bytes",
                            self.dlq_cap)
            self.reset()
            raise BatchFailed(f"{failed} deliveries failed ({first})")

    def _check_time(self) -> None:
        if self._stop.passed():
            raise Stopping("the shutdown timeout ran out while waiting for Kafka")

    def reset(self) -> None:
        self._failed, self._first_error, self._dlq_too_large = 0, None, False

    def drain(self) -> None:
        """After a failed batch: let what is in flight settle (its outcome no longer matters)."""
        try:
            self.wait()
        except BatchFailed:
            pass
        self.reset()

    # -- the producer's life ------------------------------------------------------------------
    def _new_producer(self) -> Producer:
        return Producer(clients.producer_config(self.settings, on_error=self._producer_error,
                                                 transactional_id=self._transactional_id))

    def broken(self, why: str) -> None:
        """This producer cannot be trusted with another batch (the first reason is kept):
        the pipeline replaces it before the redo."""
        self.fatal = self.fatal or why

    def _producer_error(self, err: KafkaError) -> None:
        if err.fatal():
            self.fatal = err.str()
        self._on_error(err)

    def replace(self, init: Callable[[Producer], None]) -> None:
        """A new producer (same transactional.id: it fences the old one); retried until it works
        or a stop is asked for. `init` readies it (init_transactions under exactly-once)."""
        log.warning("the producer hit a fatal error (%s)%s", self.fatal, "" if self._stop.stopping else ": replacing it")
        old, self.producer, self.fatal = self.producer, None, None
        if old is not None:
            try:
                old.purge()
            except KafkaException:
                pass
        while not self._stop.stopping:
            try:
                producer = self._new_producer()
                init(producer)
                self.producer = producer
                self.reset()
                return
            except KafkaException as exc:
                if exc.args[0].fatal():
                    raise Fatal(exc.args[0].str()) from None
                log.warning("could not start a new producer yet (%s); retrying", exc.args[0].str())
                self._on_wait()

    def close(self, timeout: float) -> None:
        if self.producer is None:
            return
        try:
            self.producer.flush(timeout)
        except KafkaException as exc:  # a producer in a fatal state refuses to flush
            log.warning("producer not flushed at exit: %s", exc.args[0].str())
        self.producer = None  # destroys the client: no reconnect attempts after we are done
