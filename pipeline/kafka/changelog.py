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
from latentwatch.pipeline.stop import StopBudget

log = logging.getLogger("latentwatch.run")

# Compaction keeps one record per sensor; the active segment is never compacted, so it is kept
# small and rolled often (at most 16 MB or 60 s of records), and max.compaction.lag.ms makes the
# cleaner take a rolled segment within 5 min whatever the dirty ratio: a restore reads about one
# record per sensor plus at most a few minutes of traffic, not everything since the topic was made.
TOPIC_CONFIG = {"cleanup.policy": "compact", "segment.ms": "60000", "min.cleanable.dirty.ratio": "0.1",
                "segment.bytes": str(16 * 1024 * 1024), "max.compaction.lag.ms": "300000"}


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


class ChangelogShort(UserError):
    """Input partitions assigned that the changelog has no partition for: the input topic grew
    while running. Checked at every assignment, not only at start (`ensure`): a restore of a
    partition that does not exist waited for it inside the rebalance callback for good, every
    partition stalled while the probes answered 200."""

    def __init__(self, topic: str, have: int, missing: list[int], input_topic: str):
        self.topic, self.have, self.missing = topic, have, missing
        super().__init__(f"state topic {topic} has {have} partitions but input partitions {missing} of {input_topic} "
                         f"were assigned (the input topic grew while running): give it as many "
                         f"(kafka-topics --alter --topic {topic} --partitions {max(missing) + 1}, or the input's "
                         f"count) and restart; stopping rather than scoring them without their state")


def partition_count(settings, topic: str) -> int | None:
    """The changelog's partition count from the cluster's metadata (None: not known now; the
    restore then goes on as before and retries)."""
    try:
        metadata = AdminClient(settings.kafka.client_config()).list_topics(topic, timeout=10)
    except KafkaException:
        return None
    found = metadata.topics.get(topic)
    return len(found.partitions) if found is not None and found.error is None else None


def check_partitions(settings, topic: str, partitions) -> None:
    """ChangelogShort when some of `partitions` (assigned input partitions) have no changelog
    partition."""
    have = partition_count(settings, topic)
    missing = sorted(tp.partition for tp in partitions if have is not None and tp.partition >= have)
    if missing:
        raise ChangelogShort(topic, have, missing, settings.topics.input)


class Progress:
    """How far a restore has read: kept across its retries, so a retry goes on from where the
    last try stopped (a changelog too large to read in one try is never read again from 0)."""

    def __init__(self, committed: dict[int, int]):
        self.committed = committed
        self.position = {p: -2 for p in committed}  # next offset to read per partition (-2: the beginning)
        self.left = set(committed)
        self.found: dict[state.Key, tuple] = {}
        self.seen: dict[state.Key, float] = {}  # wall time each sensor's last record was written
        self.records = 0


def restore(settings, topic: str, committed: dict[int, int], stall_s: float = 120.0, on_wait=lambda: None,
            stop: StopBudget | None = None, progress: Progress | None = None) -> dict[state.Key, state.Entry] | None:
    """Each sensor's entry as of the committed input offset of its partition; None when a stop is
    asked for first. A KafkaException (timed out) when nothing arrived for `stall_s`: the caller
    retries with the same `progress`. The stop flag is looked at every 0.5 s."""
    if not committed:
        return {}
    stop = stop or StopBudget.never()
    progress = progress if progress is not None else Progress(committed)
    conf = settings.kafka.client_config()
    conf.update({"group.id": f"latentwatch-restore-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                 "enable.partition.eof": True, "isolation.level": "read_committed",
                 # Read to the end: an empty fetch is not worth waiting for (the 500 ms default
                 # made each partition's end-of-partition event arrive 2.0 s after assignment here).
                 "fetch.wait.max.ms": 10,
                 "logger": logging.getLogger("latentwatch.librdkafka")})
    consumer = Consumer(conf)
    found = progress.found
    try:
        _skip_empty(consumer, topic, progress, stop)
        if progress.left:
            consumer.assign([TopicPartition(topic, p, progress.position[p]) for p in sorted(progress.left)])
        last_progress = time.monotonic()
        while progress.left:
            if stop.stopping:
                return None
            if time.monotonic() - last_progress > stall_s:
                raise KafkaException(KafkaError(KafkaError._TIMED_OUT,
                                                f"nothing read from {topic} for {stall_s:.0f} s"))
            on_wait()  # a long restore is progress, not a stalled loop (/healthz)
            msgs = consumer.consume(1000, timeout=0.5)
            if msgs:
                last_progress = time.monotonic()
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        progress.left.discard(msg.partition())
                    continue
                progress.position[msg.partition()] = msg.offset() + 1
                progress.records += 1
                key = (msg.partition(), (msg.key() or b"").decode("utf-8", "replace"))
                if msg.value() is None:
                    found.pop(key, None)  # a tombstone: evicted
                    progress.seen.pop(key, None)
                    continue
                try:
                    entry, before, written = state.unpack_record(msg.value())
                    found[key] = (entry, before)
                    if written is not None:
                        progress.seen[key] = written
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


def _skip_empty(consumer, topic: str, progress: Progress, stop: StopBudget) -> None:
    """Partitions not yet read whose watermarks say they hold nothing are done: a new group's
    changelog, or one compacted down to nothing. Waiting for their end-of-partition event cost
    2.0 s on every start (1.0 s with the short fetch wait); the watermarks answer in ~10 ms a
    partition. When they cannot be had (a topic made a moment ago has no leader yet, a broker
    that does not answer), the rest are read the usual way: not asked one by one for 2 s each
    while a stop waits."""
    for p in [p for p in progress.left if progress.position[p] == -2]:
        if stop.stopping:
            return
        try:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=2.0)
        except KafkaException:
            return
        if high <= low:
            progress.left.discard(p)


def restore_into(store: state.StateStore, settings, topic: str, partitions, committed_of, stop: StopBudget,
                 on_wait=lambda: None) -> tuple[state.Loaded, float] | None:
    """Restore `partitions`' entries into `store`, retried until it works or a stop is asked for
    (a reading is never scored without its state; a restore that fails is never skipped). A retry
    goes on from where the last try stopped. Returns what the store did with the entries and the
    restore's duration (seconds), or None when a stop came first (nothing loaded: the caller
    must not score those partitions)."""
    t0 = time.monotonic()
    progress = None
    while not stop.stopping:
        committed = committed_of(partitions, stop)
        if committed is None:
            return None
        offsets = {tp.partition: tp.offset for tp in committed}
        progress = progress or Progress(offsets)  # the records read stay read; as_of takes `offsets`
        try:
            entries = restore(settings, topic, offsets, on_wait=on_wait, stop=stop, progress=progress)
        except KafkaException as exc:
            log.warning("could not restore state from %s yet (%s; %d records read so far); going on",
                        topic, exc.args[0].str(), progress.records)
            on_wait()
            for _ in range(10):  # 1 s, looking at the stop flag
                if stop.stopping:
                    return None
                time.sleep(0.1)
            continue
        if entries is None:
            return None
        loaded = store.load(entries, seen=progress.seen)  # the idle clock goes on from the records' times
        seconds = time.monotonic() - t0
        log.info("restored the state of %d sensors (%d records) from %s in %.2f s%s", len(entries),
                 progress.records, topic, seconds,
                 f"; dropped as not fitting the model: {loaded.dropped}" if loaded.dropped else "")
        return loaded, seconds
    return None
