"""The run loop: consume a micro-batch, decode, score in one model call, produce alerts and dead
letters, wait for the broker to acknowledge them, then commit the batch's offsets.

Nothing is committed before everything it produced is acknowledged (at-least-once), or the
outputs and offsets go in one Kafka transaction (exactly-once). After a failed delivery or
commit the consumer rewinds to its committed offsets and the batch is processed again.

At-least-once commits are asynchronous, so the next batch is gathered while the commit travels;
it is settled (confirmed by on_commit, or redone synchronously) before the next batch produces
anything, on a revoke and at close. A crash therefore redoes at most one batch's outputs.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from latentwatch.pipeline import alerts
from latentwatch.pipeline.kafka import clients as kafka_io
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.contract import ContractError, Decoder, iso
from latentwatch.pipeline.health import Health
from latentwatch.pipeline.history import SensorHistory
from latentwatch.pipeline.metrics import PipelineMetrics, observe_many

log = logging.getLogger("latentwatch.run")


@dataclass
class Batch:
    """One micro-batch: its messages, the valid readings as arrays, and the dead letters."""

    messages: list[Message]
    dead: list[tuple[Message, ContractError]] = field(default_factory=list)
    valid: list[tuple[Message, str]] = field(default_factory=list)  # (message, sensor id)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # readings per valid message
    values: np.ndarray | None = None  # [readings, channels] of the valid messages, in order
    ts: np.ndarray | None = None  # [readings] event times
    scores: np.ndarray | None = None  # of the readings scored (the rest are warming up)
    alert_severities: list[str] = field(default_factory=list)

    @property
    def n_readings(self) -> int:
        return 0 if self.ts is None else len(self.ts)


class Pipeline:
    """One pipeline process: `run()` until `stop()` (or a signal handled by the caller)."""

    def __init__(self, settings: Settings, model, metrics: PipelineMetrics | None = None):
        self.settings = settings
        self.model = model
        self.detector = model.detector
        self.channels = list(self.detector.channels)
        self.metrics = metrics or PipelineMetrics()
        self.health = Health(settings.health.stall_after_s)
        self.decoder = Decoder(self.channels, settings.batch.max_message_bytes, settings.batch.max_future_s)
        self.history = SensorHistory(self.detector.window, len(self.channels))
        self.exactly_once = settings.delivery == "exactly-once"
        self._stop = threading.Event()
        self._fatal: str | None = None
        self._user_error: str | None = None  # e.g. a topic deleted while running: one line, exit 2
        self._topic_suspect: str | None = None  # an error that may mean a deleted topic, to check
        self._last_topic_check = -1e9
        self._producer_fatal: str | None = None  # set by the producer's error_cb; the producer is replaced
        self._delivery = kafka_io.DeliveryTracker()
        self._transactional_id: kafka_io.TransactionalId | None = None  # exactly-once only
        self._revoked: set = set()  # (topic, partition) revoked or lost inside consume()
        self._unconfirmed: dict[tuple[str, int], int] = {}  # the last async commit, until confirmed
        self._last_error_log = 0.0
        self._last_down_log = -1e9
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.metrics_server = None

    # -- lifecycle -----------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self.health.stopping()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set() or self._fatal is not None or self._user_error is not None

    def start(self) -> None:
        """Check the cluster, open the clients, subscribe, serve metrics."""
        s = self.settings
        kafka_io.check_cluster(s)
        m = self.metrics
        m.model_info.info({"name": self.model.name, "version": str(self.model.version),
                           "kind": self.detector.kind, "window": str(self.detector.window),
                           "channels": str(len(self.channels))})
        m.device_info.info({"device": str(getattr(self.detector, "device", "cpu"))})
        m.threshold.set(float(self.model.threshold.value))
        self.producer = self._new_producer()
        self.consumer = Consumer(kafka_io.consumer_config(s, on_stats=m.on_stats, on_error=self._on_kafka_error,
                                                          on_commit=self._on_commit))
        self.consumer.subscribe([s.topics.input], on_assign=self._on_assign, on_revoke=self._on_revoke,
                                on_lost=self._on_lost)
        self._warm_up()
        self.health.model_loaded(self.model.name)
        if s.metrics.port is not None:
            self.metrics_server, _ = m.serve(s.metrics.port, s.metrics.host, health=self.health)
            log.info("metrics on http://%s:%d/metrics", s.metrics.host, self.metrics_server.server_port)
        log.info("consuming %s as group %s (%s, model %s on %s)", s.topics.input, s.group_id, s.delivery,
                 self.model.name, getattr(self.detector, "device", "cpu"))
        # torch, numpy and the clients leave ~200k long-lived objects, and a full collection walks
        # them all (~70 ms on 2 cores): a pause every few seconds under load, straight into the
        # latency tail. Frozen, they are skipped; the collector still sees what the loop makes.
        gc.collect()
        gc.freeze()

    def _warm_up(self) -> None:
        """The model's first call sets up its kernels (5.6 ms here, 0.1 ms for the next ones):
        paid at start, not by the first batch."""
        self.detector.score(np.zeros((2, self.detector.window, len(self.channels)), dtype=np.float32))

    def run(self) -> int:
        """The loop. Returns 0 after a clean stop, 1 after a fatal Kafka error, 2 after an error
        the user must fix (a topic deleted while running)."""
        if self.consumer is None:
            self.start()
        b = self.settings.batch
        threads = torch.get_num_threads()
        if str(getattr(self.detector, "device", "cpu")) == "cpu" and "OMP_NUM_THREADS" not in os.environ:
            # One intra-op thread: a batch is one small model call, and extra torch threads spin
            # against librdkafka's threads and the broker for the same cores (on 2 shared cores:
            # 1.8x the end-to-end throughput; see bench/). OMP_NUM_THREADS overrides.
            torch.set_num_threads(1)
        # A message may carry many readings: batches are capped in messages and in bytes.
        try:
            while not self.stopping:
                self.health.beat()
                messages = kafka_io.accumulate(self.consumer, b.max_readings, b.max_bytes,
                                               b.max_wait_ms / 1000, lambda: self.stopping,
                                               self._revoked)
                messages = self._drop_consumer_errors(messages)
                if messages:
                    self.process(messages)
                else:
                    self.producer.poll(0)
        finally:
            torch.set_num_threads(threads)
            self.close()
        if self._user_error:
            log.error("%s", self._user_error)
            return 2
        if self._fatal:
            log.error("stopped on a fatal Kafka error: %s", self._fatal)
            return 1
        return 0

    def _new_producer(self) -> Producer:
        if self.exactly_once and self._transactional_id is None:
            self._transactional_id = kafka_io.TransactionalId(self.settings.group_id)
        txn_id = self._transactional_id.value if self._transactional_id else None
        producer = Producer(kafka_io.producer_config(self.settings, on_error=self._on_producer_error,
                                                     transactional_id=txn_id))
        if self.exactly_once:
            producer.init_transactions(self.settings.startup_timeout_s)
        return producer

    def close(self) -> None:
        if self.producer is not None:
            try:
                self.producer.flush(self.settings.shutdown_timeout_s)
            except KafkaException as exc:  # a producer in a fatal state refuses to flush
                log.warning("producer not flushed at exit: %s", exc.args[0].str())
            self.producer = None  # destroys the client: no reconnect attempts after we are done
        if self.consumer is not None:
            try:
                self._settle_commit()
            except KafkaException as exc:  # the next owner redoes the last batch
                log.warning("last commit not confirmed at exit: %s", exc.args[0].str())
            self.consumer.close()  # leaves the group now, so partitions move without waiting
            self.consumer = None
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server = None

    # -- one micro-batch -----------------------------------------------------------------------
    def process(self, messages: list[Message]) -> None:
        started = time.monotonic()
        batch = self.decode(messages)
        try:
            if self.exactly_once:
                self.producer.begin_transaction()
            else:
                self._settle_commit()  # the previous batch's, before this one produces anything
            self.produce_dead_letters(batch)
            self.score_and_alert(batch)
        except KafkaException as exc:  # e.g. a producer that hit a fatal error between batches
            self._recover(exc)
            return
        if self.finish(batch):
            self.account(batch, started)

    def decode(self, messages: list[Message]) -> Batch:
        """Decode the batch in one go (pipeline.contract), then hold each message against its
        sensor's last reading (late policy) in offset order."""
        d = self.decoder.decode_many([(msg.value(), msg.key()) for msg in messages], time.time())
        dead = list(d.errors)
        ends = np.cumsum(d.counts)
        firsts, lasts = d.ts[ends - d.counts].tolist(), d.ts[ends - 1].tolist()
        late_policy_dlq = self.settings.late_policy == "dead-letter"
        keep = np.ones(len(d.index), dtype=bool)
        valid = []
        for j, (i, sensor_id) in enumerate(zip(d.index, d.sensor_ids)):
            msg = messages[i]
            key = (msg.partition(), sensor_id)
            if late_policy_dlq and self.history.is_late(key, firsts[j]):
                dead.append((i, ContractError("late", f"event time {iso(firsts[j])} is not after the "
                                                      "sensor's last reading")))
                keep[j] = False
                continue
            self.history.advance(key, lasts[j])
            valid.append((msg, sensor_id))
        values, ts, counts = d.values, d.ts, d.counts
        if not keep.all():
            rows = np.repeat(keep, counts)
            values, ts, counts = values[rows], ts[rows], counts[keep]
        dead.sort(key=lambda e: e[0])  # dead letters in offset order
        return Batch(messages, [(messages[i], err) for i, err in dead], valid, counts,
                     values if len(ts) else None, ts if len(ts) else None)

    def produce_dead_letters(self, batch: Batch) -> None:
        topic = self.settings.topics.dead_letter
        for msg, err in batch.dead:
            kafka_io.produce(self.producer, topic, msg.value(), msg.key(), self._delivery,
                             kafka_io.dead_letter_headers(msg, err.reason, err.detail))

    def score_and_alert(self, batch: Batch) -> None:
        """Score every reading of the batch in one model call; produce alerts."""
        if not batch.valid:
            return
        counts, values, ts = batch.counts, batch.values, batch.ts
        starts = np.cumsum(counts) - counts  # first reading of each message
        msg_of = np.repeat(np.arange(len(batch.valid)), counts)
        pos_in_msg = np.arange(len(values)) - np.repeat(starts, counts)

        keys, groups = self._group_by_sensor(batch, starts, counts)
        windows, scored_idx = self.history.windows(keys, groups, values)
        if len(scored_idx) == 0:
            return
        t0 = time.perf_counter()
        scores = self.detector.score(windows)
        self.metrics.inference_seconds.observe(time.perf_counter() - t0)
        sensor_of = np.array([sid for _, sid in batch.valid], dtype=object)[msg_of[scored_idx]]
        thresholds = np.asarray(self.model.threshold.thresholds(scores.score, sensor_of), dtype=np.float64)
        batch.scores = scores.score

        raised = np.flatnonzero(scores.score > thresholds)
        tops = alerts.top_channels(scores.channel_error[raised], self.channels)
        latents = scores.latent[raised].astype(np.float64).tolist()
        detected_at = time.time()
        for j, top, latent in zip(raised.tolist(), tops, latents):
            i = scored_idx[j]
            msg, sensor_id = batch.valid[msg_of[i]]
            record = alerts.alert_record(
                topic=msg.topic(), partition=msg.partition(), offset=msg.offset(), index=int(pos_in_msg[i]),
                sensor_id=sensor_id, ts=float(ts[i]), score=float(scores.score[j]),
                threshold=float(thresholds[j]), top=top, latent=latent, model_name=self.model.name,
                model_version=str(self.model.version), critical_ratio=self.settings.alerts.critical_ratio,
                detected_at=detected_at)
            kafka_io.produce(self.producer, self.settings.topics.alerts, alerts.encode(record),
                             sensor_id.encode(), self._delivery)
            batch.alert_severities.append(record["severity"])
        if self.settings.topics.latent:
            self._produce_latent(batch, scores, scored_idx, msg_of, pos_in_msg, ts)

    def _group_by_sensor(self, batch: Batch, starts: np.ndarray, counts: np.ndarray):
        """Reading indices per (partition, sensor), in offset order (for windowed models)."""
        if self.detector.window == 1:
            return [], []
        by_key: dict = {}
        for m, (msg, sensor_id) in enumerate(batch.valid):
            by_key.setdefault((msg.partition(), sensor_id), []).append(np.arange(starts[m], starts[m] + counts[m]))
        return list(by_key), [np.concatenate(v) for v in by_key.values()]

    def _produce_latent(self, batch, scores, scored_idx, msg_of, pos_in_msg, ts) -> None:
        topic = self.settings.topics.latent
        for j, i in enumerate(scored_idx):
            msg, sensor_id = batch.valid[msg_of[i]]
            record = {"sensor_id": sensor_id, "ts": iso(float(ts[i])), "score": float(scores.score[j]),
                      "latent": [round(float(x), 5) for x in scores.latent[j]],
                      "source": {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
                                 "index": int(pos_in_msg[i])}}
            kafka_io.produce(self.producer, topic, json.dumps(record).encode(), sensor_id.encode(), self._delivery)

    def finish(self, batch: Batch) -> bool:
        """Make the batch durable: outputs acknowledged, then offsets committed. False = rewound."""
        next_offsets = kafka_io.next_offsets(batch.messages)
        offsets = [TopicPartition(t, p, o) for (t, p), o in next_offsets.items()]
        try:
            if self.exactly_once:
                self._bounded(self._commit_transaction, self.producer, offsets,
                              self.consumer.consumer_group_metadata())
            else:
                self._wait_for_acks()
                if self._producer_fatal is not None:
                    raise _Rewind(f"the producer hit a fatal error ({self._producer_fatal})")
                if self._delivery.failed:
                    self.metrics.delivery_failures.inc(self._delivery.failed)
                    raise _Rewind(f"{self._delivery.failed} deliveries failed ({self._delivery.first_error})")
                # Asynchronous: it travels while the next batch is read. (A sync commit from a
                # helper thread instead held this thread's consume() back: 30x slower.)
                self.consumer.commit(offsets=offsets, asynchronous=True)
                self._unconfirmed = next_offsets
        except (KafkaException, _Rewind) as exc:
            self._recover(exc)
            return False
        if self.exactly_once:
            self.metrics.commits.inc()  # at-least-once: counted when settled
        return True

    def _settle_commit(self) -> None:
        """Make sure the last batch's commit took: confirmed by on_commit (served inside the
        consume() calls since), or else committed again, synchronously (same offsets)."""
        if not self._unconfirmed:
            return
        offsets = [TopicPartition(t, p, o) for (t, p), o in self._unconfirmed.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:
            if exc.args[0].fatal():  # the consumer cannot go on (the producer could be replaced)
                self._fatal = exc.args[0].str()
            raise
        self._unconfirmed = {}
        self.metrics.commits.inc()

    def _on_commit(self, err, partitions) -> None:
        if err is not None:
            return  # stays unconfirmed: _settle_commit commits it again, or raises
        confirmed = [(tp.topic, tp.partition) for tp in partitions
                     if tp.error is None and self._unconfirmed.get((tp.topic, tp.partition)) == tp.offset]
        for key in confirmed:
            del self._unconfirmed[key]
        if confirmed and not self._unconfirmed:
            self.metrics.commits.inc()

    def _commit_transaction(self, producer: Producer, offsets, group_metadata) -> None:
        timeout = self.settings.shutdown_timeout_s
        producer.send_offsets_to_transaction(offsets, group_metadata, timeout)
        producer.commit_transaction(timeout)

    def _bounded(self, call, *args) -> None:
        """Run a transactional call with a hard time limit.

        librdkafka's send_offsets_to_transaction was seen blocking far past its timeout when the
        broker died mid-transaction. A call that does not return in time leaves its producer
        behind (a new one with the same transactional.id fences it) and the batch is redone.
        """
        outcome: list = []

        def target():
            try:
                call(*args)
                outcome.append(None)
            except BaseException as exc:  # handed to the caller's thread below
                outcome.append(exc)

        worker = threading.Thread(target=target, name="transaction", daemon=True)
        worker.start()
        worker.join(self.settings.shutdown_timeout_s + 5)
        if worker.is_alive():
            self._producer_fatal = "a transactional call did not return in time"
            self.producer = None  # abandoned to its stuck call; replaced in _recover
            raise _Rewind(self._producer_fatal)
        if outcome and outcome[0] is not None:
            raise outcome[0]

    def _wait_for_acks(self) -> None:
        deadline = time.monotonic() + 10
        while self._producer_fatal is None and self.producer.flush(1.0) > 0:
            self.health.beat()  # waiting for Kafka, not stalled
            if time.monotonic() > deadline:
                log.warning("waiting for Kafka to acknowledge %d produced messages", len(self.producer))
                deadline = time.monotonic() + 10

    def _recover(self, exc: Exception) -> None:
        """Undo what is not durable and go back to the committed offsets."""
        err = exc.args[0] if isinstance(exc, KafkaException) else None
        # A deleted topic shows as many errors (unknown topic, or a transaction's messages timing
        # out): after any failed batch, ask the cluster. Gone: stopping, one line at exit.
        if not self._topic_gone(after_failure=True):
            log.warning("batch not committed, rewinding to the committed offsets: %s",
                        err.str() if err is not None else exc)
            self._say_if_unreachable()
        if err is not None and err.fatal():
            self._producer_fatal = self._producer_fatal or err.str()
        elif self._producer_fatal is None:
            try:
                if self.exactly_once:
                    self.producer.abort_transaction(self.settings.shutdown_timeout_s)
                else:
                    self._wait_for_acks()
            except KafkaException as undo_exc:
                # Fatal, or a transaction that would not abort in time: either way this producer
                # cannot be trusted with the next batch; a new one with the same id fences it.
                self._producer_fatal = undo_exc.args[0].str()
        if self._producer_fatal is not None:
            self._replace_producer()
        self._delivery.reset()
        self._unconfirmed = {}  # we go back to whatever the broker has committed
        if not self.stopping:
            self.rewind()

    def _replace_producer(self) -> None:
        """A producer in a fatal state (e.g. its transaction was aborted by the coordinator while
        the broker was down, which fences its epoch) can do nothing more: drop it, make a new one
        (same transactional.id, which fences the old one), and redo the batch."""
        log.warning("the producer hit a fatal error (%s)%s", self._producer_fatal,
                    "" if self.stopping else ": replacing it")
        self._producer_fatal = None
        if self.producer is not None:
            try:
                self.producer.purge()
            except KafkaException:
                pass
        self.producer = None
        while not self.stopping:
            self.health.beat()  # waiting for Kafka, not stalled
            try:
                self.producer = self._new_producer()
                return
            except KafkaException as exc:
                if exc.args[0].fatal():
                    self._fatal = exc.args[0].str()
                    return
                log.warning("could not start a new producer yet (%s); retrying", exc.args[0].str())
                self._say_if_unreachable()

    def rewind(self) -> None:
        assignment = self.consumer.assignment()
        self.history.drop_partitions({tp.partition for tp in assignment})
        if not assignment:
            return
        # Never seek without knowing the committed offsets: the assignment's offsets are INVALID,
        # which would seek to the beginning (redo everything) or, with 'latest', skip readings.
        committed = None
        while committed is None:
            self.health.beat()
            try:
                committed = self.consumer.committed(assignment, timeout=10)
            except KafkaException as exc:
                if self.stopping:
                    return  # nothing was committed past the batch: the next owner redoes it
                log.warning("could not read committed offsets (%s); retrying", exc.args[0].str())
        for tp in committed:
            if tp.offset < 0:
                tp.offset = -2 if self.settings.auto_offset_reset == "earliest" else -1  # BEGINNING / END
            try:
                self.consumer.seek(tp)
            except KafkaException as exc:
                log.warning("seek %s[%d] failed: %s", tp.topic, tp.partition, exc.args[0].str())

    def account(self, batch: Batch, started: float) -> None:
        """Count what this committed batch did (a rewound batch is counted when redone)."""
        m = self.metrics
        now = time.time()
        n_readings = batch.n_readings
        scored = 0 if batch.scores is None else len(batch.scores)
        for _, err in batch.dead:
            m.dead_letters.labels(reason=err.reason).inc()
        for sev in batch.alert_severities:
            m.alerts.labels(severity=sev).inc()
        if scored:
            observe_many(m.score, batch.scores)
        m.messages_consumed.inc(len(batch.messages))
        m.readings_consumed.inc(n_readings)
        m.readings_scored.inc(scored)
        m.readings_warming_up.inc(n_readings - scored)
        m.batches.inc()
        m.batch_size.observe(n_readings)
        kafka_ts = np.fromiter((msg.timestamp()[1] for msg in batch.messages), np.float64, len(batch.messages))
        observe_many(m.e2e_latency, now - kafka_ts[kafka_ts > 0] / 1000.0)
        if batch.n_readings:
            m.processing_delay.set(max(0.0, now - float(batch.ts.max())))
        m.last_batch.set(now)
        m.batch_seconds.observe(time.monotonic() - started)

    # -- callbacks -----------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        log.info("assigned %s", _fmt(partitions))
        self.health.assignment(len(partitions))
        self.metrics.assigned_partitions.set(len(partitions))

    def _on_revoke(self, consumer, partitions) -> None:
        # Every processed batch is acknowledged and its commit sent when this runs (callbacks only
        # fire inside consume()): settle that commit, then drop the state and move on. Messages
        # of these partitions already in hand are dropped by accumulate (`_revoked`).
        log.info("revoked %s", _fmt(partitions))
        try:
            self._settle_commit()  # the next owner starts after our last batch
        except KafkaException as exc:  # the next owner redoes the last batch: a duplicate, no loss
            log.warning("last commit not confirmed before the revoke: %s", exc.args[0].str())
            self._unconfirmed = {}
        self._forget(partitions)

    def _on_lost(self, consumer, partitions) -> None:
        log.warning("lost %s (not committing)", _fmt(partitions))
        self._unconfirmed = {}
        self._forget(partitions)

    def _forget(self, partitions) -> None:
        self._revoked.update((tp.topic, tp.partition) for tp in partitions)
        self.history.drop_partitions({tp.partition for tp in partitions})
        for tp in partitions:
            self.metrics.forget_partition(tp.topic, tp.partition)
        self.metrics.assigned_partitions.set(0)
        self.health.waiting_for_assignment()

    def _on_producer_error(self, err: KafkaError) -> None:
        self._on_kafka_error(err, replaceable=True)

    def _on_kafka_error(self, err: KafkaError, replaceable: bool = False) -> None:
        kind = "fatal" if err.fatal() else ("transport" if err.code() in _TRANSPORT else "broker")
        self.metrics.errors.labels(kind=kind).inc()
        if err.fatal():
            if replaceable:
                self._producer_fatal = err.str()
            else:
                self._fatal = err.str()
        elif self._suspect(err.code(), err.str()):
            return  # checked from the loop (this may run inside poll()); logged if not confirmed
        now = time.monotonic()
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._last_error_log = now
            self._say_unreachable()
            return
        if now - self._last_error_log > 5 or err.fatal():
            self._last_error_log = now
            log.warning("Kafka: %s (librdkafka keeps retrying)", err.str())

    def _drop_consumer_errors(self, messages: list[Message]) -> list[Message]:
        good = []
        for msg in messages:
            err = msg.error()
            if err is None:
                good.append(msg)
            elif err.code() != KafkaError._PARTITION_EOF:
                self._on_kafka_error(err)
        self._topic_gone()
        return good

    def _say_unreachable(self) -> None:
        """One line a minute while Kafka is down, instead of librdkafka's 20 a second."""
        now = time.monotonic()
        if now - self._last_down_log > 60:
            self._last_down_log = now
            log.warning("Kafka at %s is unreachable (all brokers down): waiting for it. Nothing is "
                        "committed before the broker acknowledges a batch's outputs, so processing "
                        "resumes where it stopped; if it lasts, the broker's log says why (e.g. 'all "
                        "log dirs ... have failed': its disk is full)", self.settings.kafka.bootstrap_servers)

    def _say_if_unreachable(self) -> None:
        """After a failure: a TCP probe of the bootstrap servers tells "Kafka is down" apart."""
        if not kafka_io.bootstrap_reachable(self.settings.kafka.bootstrap_servers):
            self._say_unreachable()

    def _suspect(self, code: int | None, text: str | None) -> bool:
        """Note an error that may mean a deleted topic (librdkafka reports a subscribed topic
        gone through error_cb, a produced-to one through deliveries and produce())."""
        if code not in kafka_io.TOPIC_GONE:
            return False
        self._topic_suspect = self._topic_suspect or text
        return True

    def _topic_gone(self, after_failure: bool = False) -> bool:
        """Whether one of our topics was deleted, asking the cluster (at most every 5 s) after a
        failed batch or an error that may mean it. Retrying cannot bring a topic back (the
        producer does not auto-create topics), so it stops the run: nothing past the
        acknowledged batches is committed, one line says what to do, exit 2; a restart's
        start-up check says the same until it is back."""
        if self._user_error is not None:
            return True
        if (self._topic_suspect is None and not after_failure) or self.consumer is None:
            return False
        now = time.monotonic()
        if now - self._last_topic_check < 5:
            return False
        self._last_topic_check = now
        suspect, self._topic_suspect = self._topic_suspect, None
        missing = kafka_io.missing_topics(self.consumer, self.settings.topics.names(), timeout=5)
        if not missing:  # all there (or no answer): a passing error
            if suspect is not None:
                log.warning("Kafka: %s (librdkafka keeps retrying)", suspect)
            return False
        self._user_error = kafka_io.topics_gone_message(self.settings, missing)
        return True


class _Rewind(Exception):
    pass


_TRANSPORT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._RESOLVE,
              KafkaError._TIMED_OUT, KafkaError.NETWORK_EXCEPTION}


def _fmt(partitions) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
