"""The state changelog topic (see pipeline/state.py for why and what a record holds).

Compacted, one partition per input partition (a sensor's record goes to its input partition),
replication like the cluster's default. The pipeline creates it at start when its model needs
state and it is missing (like Kafka Streams' internal topics), so it needs the right to create
topics once, or an admin creates it with the settings below.
"""

from __future__ import annotations

import logging
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from latentwatch.pipeline import state
from latentwatch.pipeline.errors import UserError

log = logging.getLogger("latentwatch.run")

# Compaction keeps one record per sensor; short segments let it run soon, so a restore reads
# about one record per sensor, not one per batch since the topic was made.
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "600000", "min.cleanable.dirty.ratio": "0.1",
                "segment.bytes": str(64 * 1024 * 1024)}


def state_topic(settings) -> str:
    return settings.topics.state or f"{settings.group_id}-state"


def ensure(settings, input_partitions: int) -> str:
    """The changelog topic, created when missing. Returns its name."""
    name = state_topic(settings)
    admin = AdminClient(settings.kafka.client_config())
    metadata = admin.list_topics(timeout=settings.startup_timeout_s)
    if name in metadata.topics:
        have = len(metadata.topics[name].partitions)
        if have < input_partitions:
            raise UserError(f"state topic {name} has {have} partitions but {settings.topics.input} has "
                            f"{input_partitions}: give it as many (kafka-topics --alter --partitions)")
        return name
    replication = min(3, len(metadata.brokers))
    fut = admin.create_topics([NewTopic(name, input_partitions, replication, config=TOPIC_CONFIG)])[name]
    try:
        fut.result(timeout=30)
        log.info("created state topic %s (%d partitions, compacted)", name, input_partitions)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise UserError(f"could not create the state topic {name} ({exc.args[0].str()}): create it "
                            f"compacted with {input_partitions} partitions, or allow this client to") from None
    return name


def restore(settings, topic: str, committed: dict[int, int], timeout_s: float = 120.0,
            on_wait=lambda: None) -> dict[state.Key, state.Entry]:
    """Each sensor's entry as of the committed input offset of its partition."""
    if not committed:
        return {}
    conf = settings.kafka.client_config()
    conf.update({"group.id": f"latentwatch-restore-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                 "enable.partition.eof": True, "isolation.level": "read_committed",
                 "logger": logging.getLogger("latentwatch.librdkafka")})
    consumer = Consumer(conf)
    found: dict[state.Key, tuple] = {}
    try:
        consumer.assign([TopicPartition(topic, p, -2) for p in committed])  # from the beginning
        left = set(committed)
        deadline = time.monotonic() + timeout_s
        while left:
            if time.monotonic() > deadline:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT, f"restoring {topic} took over {timeout_s:.0f} s"))
            on_wait()  # a long restore is progress, not a stalled loop (/healthz)
            for msg in consumer.consume(1000, timeout=0.5):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        left.discard(msg.partition())
                    continue
                key = (msg.partition(), (msg.key() or b"").decode("utf-8", "replace"))
                if msg.value() is None:
                    found.pop(key, None)  # a tombstone: evicted
                    continue
                try:
                    found[key] = state.unpack(msg.value())
                except ValueError as exc:
                    log.warning("state record %s[%d]@%d skipped: %s", topic, msg.partition(), msg.offset(), exc)
    finally:
        consumer.close()
    out = {}
    for key, (entry, before) in found.items():
        chosen = state.as_of(entry, before, committed[key[0]])
        if chosen is not None:
            out[key] = chosen
    return out


def restore_into(store: state.StateStore, settings, topic: str, partitions, committed_of, stopping,
                 on_wait=lambda: None) -> None:
    """Restore `partitions`' entries into `store`, retried until it works or a stop is asked for
    (a reading is never scored without its state; a restore that fails is never skipped)."""
    while not stopping():
        committed = committed_of(partitions, stopping)
        if committed is None:
            return
        try:
            t0 = time.monotonic()
            entries = restore(settings, topic, {tp.partition: tp.offset for tp in committed}, on_wait=on_wait)
        except KafkaException as exc:
            log.warning("could not restore state from %s (%s); retrying", topic, exc.args[0].str())
            on_wait()
            time.sleep(1)
            continue
        store.load(entries)
        log.info("restored the state of %d sensors from %s in %.2f s", len(entries), topic, time.monotonic() - t0)
        return
