"""Training data from the stream: `latentwatch train --from-topic TOPIC --since T0 --until T1`.

Reads a time range of the input topic, found by timestamp (`offsets_for_times` on every
partition: from the first message at or after `--since` to the last before `--until`, or to the
end), with the same Kafka settings as `run` (config file, LATENTWATCH_* environment: TLS and
SASL included) and the run loop's isolation level (read_committed). What goes into training:

- messages decoded with the run loop's contract; those it would dead-letter are left out
  (counted by reason), and so are readings not newer than their sensor's previous one (the run
  loop's default late policy dead-letters them);
- readings any model alerted on are left out: the alerts topic is read from `--since` on and
  every alert's `source` (topic, partition, offset, index) naming this topic is excluded;
- the rest, per sensor in stream order, sensors one after another (sorted by id), as one
  [n, channels] array: what several CSV files give `train` today (the last `--val-fraction`,
  i.e. the last sensors' readings, is held out for early stopping and the threshold).

Nothing is committed and no consumer group is joined (partitions are assigned directly). The
command's flags are read in cli/detect.py (`stream_training` takes them as plain values); the
threshold's recalibration is detectors/calibrate.py's `recalibrate` (no Kafka).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from latentwatch.detectors.calibrate import model_alert_rate, recalibrate
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.decode import Decoder, RegistryUnavailable
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.kafka.clients import consumer_config
from latentwatch.pipeline.kafka.registry import schema_input
from latentwatch.pipeline.times import iso

log = logging.getLogger("latentwatch.retrain")


@dataclass
class StreamData:
    values: np.ndarray  # [n, channels] float32: what trains, per sensor in stream order, sensors by id
    full: np.ndarray | None = None  # the same with the alerted readings still in
    kept: np.ndarray | None = None  # [len(full)] bool: not alerted
    full_ids: np.ndarray | None = None  # [len(full)] str: the sensor of each row of `full`
    sensors: int = 0
    messages: int = 0
    readings: int = 0
    alerted: int = 0  # readings left out because an alert names them
    late: int = 0
    dead_letters: Counter = field(default_factory=Counter)  # reason -> messages

    def summary(self, topic: str, since: float, until: float | None) -> dict:
        return {"topic": topic, "since": iso(since), "until": iso(until) if until else None,
                "messages": self.messages, "readings": self.readings, "kept": len(self.values),
                "sensors": self.sensors, "left_out": {"alerted": self.alerted, "late": self.late,
                                                      "dead_letters": dict(self.dead_letters)},
                "readmitted_as_false_alerts": 0}


class TopicRange:
    """Reads [since, until) of one topic by message timestamp, on assigned partitions."""

    def __init__(self, settings: Settings, timeout_s: float = 60.0):
        conf = consumer_config(settings)
        conf.update({"group.id": f"{settings.group_id}-retrain-{uuid.uuid4().hex[:6]}",
                     "statistics.interval.ms": 0, "client.id": f"latentwatch-retrain-{uuid.uuid4().hex[:6]}"})
        self.consumer = Consumer(conf)
        self.timeout_s = timeout_s

    def close(self) -> None:
        self.consumer.close()

    def read(self, topic: str, since: float, until: float | None, on_messages, missing_ok: bool = False) -> int:
        """Call `on_messages(list)` with the range's messages in chunks; returns the count."""
        ranges = self._ranges(topic, since, until, missing_ok)
        pending = {p: end for p, (start, end) in ranges.items() if start < end}
        if not pending:
            return 0
        self.consumer.assign([TopicPartition(topic, p, ranges[p][0]) for p in pending])
        n, deadline = 0, time.monotonic() + self.timeout_s
        try:
            while pending:
                if time.monotonic() > deadline:
                    raise UserError(f"reading {topic} timed out after {self.timeout_s:.0f} s with partitions "
                                    f"{sorted(pending)} unfinished; is the cluster reachable?")
                chunk = []
                for m in self.consumer.consume(10_000, 0.5):
                    if m.error():
                        if m.error().fatal():
                            raise UserError(f"reading {topic}: {m.error().str()}")
                        continue
                    end = pending.get(m.partition())
                    if end is None or m.offset() >= end:
                        continue
                    chunk.append(m)
                    deadline = time.monotonic() + self.timeout_s
                if chunk:
                    on_messages(chunk)
                    n += len(chunk)
                for tp in self.consumer.position([TopicPartition(topic, p) for p in pending]):
                    if tp.offset >= pending[tp.partition]:  # (transaction markers have offsets too)
                        del pending[tp.partition]
        finally:
            self.consumer.unassign()
        return n

    def _ranges(self, topic: str, since: float, until: float | None, missing_ok: bool) -> dict[int, tuple[int, int]]:
        try:
            md = self.consumer.list_topics(topic, timeout=self.timeout_s)
        except KafkaException as exc:
            raise UserError(f"cannot reach Kafka to read {topic}: {exc.args[0].str()}") from None
        t = md.topics.get(topic)
        if t is None or t.error is not None:
            if missing_ok:
                return {}
            raise UserError(f"topic {topic} does not exist (check --from-topic and the cluster)")
        parts = sorted(t.partitions)
        starts = self._offsets(topic, parts, since)
        ends = self._offsets(topic, parts, until) if until else {}
        out = {}
        for p in parts:
            _, high = self.consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self.timeout_s)
            start = high if starts[p] < 0 else starts[p]
            end = high if until is None or ends[p] < 0 else ends[p]
            out[p] = (start, end)
        return out

    def _offsets(self, topic: str, parts: list[int], when: float) -> dict[int, int]:
        asked = [TopicPartition(topic, p, int(when * 1000)) for p in parts]
        try:
            found = self.consumer.offsets_for_times(asked, timeout=self.timeout_s)
        except KafkaException as exc:
            raise UserError(f"cannot look up offsets of {topic} by time: {exc.args[0].str()}") from None
        return {tp.partition: (tp.offset if tp.offset != OFFSET_END else -1) for tp in found}


def alerted_readings(reader: TopicRange, alerts_topic: str, input_topic: str, since: float) -> set[tuple]:
    """(partition, offset, index) of every reading of `input_topic` an alert names, from alerts
    produced at or after `since` (an alert is produced after the reading it is about)."""
    found: set[tuple] = set()

    def collect(messages):
        for m in messages:
            try:
                src = orjson.loads(m.value())["source"]
                if src["topic"] == input_topic:
                    found.add((int(src["partition"]), int(src["offset"]), int(src["index"])))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue

    if reader.read(alerts_topic, since, None, collect, missing_ok=True) == 0:
        log.warning("no alerts found in %s since %s: nothing to leave out", alerts_topic, iso(since))
    return found


def read_training_data(settings: Settings, topic: str, channels: list[str], since: float, until: float | None, *,
                       exclude_alerted: bool = True, max_readings: int = 5_000_000,
                       timeout_s: float = 60.0) -> StreamData:
    if until is not None and until <= since:
        raise UserError(f"--until ({iso(until)}) must be after --since ({iso(since)})")
    # schema'd records (Avro, JSON Schema) through schema_registry.url, as the pipeline reads them
    decoder = Decoder(channels, settings.batch.max_message_bytes, settings.batch.max_future_s, schema_input(settings))
    reader = TopicRange(settings, timeout_s)
    data = StreamData(np.empty((0, len(channels)), np.float32))
    excluded: set[tuple] = set()
    per_sensor: dict[str, list] = {}  # sensor -> [(partition, offset, index, ts, row index)]
    values: list[np.ndarray] = []
    seen = [0]
    try:
        excluded = alerted_readings(reader, settings.topics.alerts, topic, since) if exclude_alerted else set()

        def take(messages):
            try:
                batch = decoder.decode_many(((m.value(), m.key()) for m in messages), time.time())
            except RegistryUnavailable as exc:  # a pipeline waits it out; a one-off read says so
                raise UserError(f"{exc}: {topic} holds schema'd records; try again once it answers") from None
            for _, err in batch.errors:
                data.dead_letters[err.reason] += 1
            data.messages += len(messages)
            base = seen[0]
            start = 0
            for pos, sensor, k in zip(batch.index, batch.sensor_ids, batch.counts.tolist()):
                m = messages[pos]
                rows = per_sensor.setdefault(sensor, [])
                for j in range(k):
                    rows.append((m.partition(), m.offset(), j, float(batch.ts[start + j]), base + start + j))
                start += k
            values.append(batch.values)
            seen[0] += len(batch.values)
            if seen[0] > max_readings:
                raise UserError(f"{topic} holds more than {max_readings} readings in this range; narrow "
                                "--since/--until or raise --max-readings")

        reader.read(topic, since, until, take)
    finally:
        reader.close()
    all_values = np.concatenate(values) if values else data.values
    data.readings = len(all_values)
    order: list[int] = []
    alerted: list[bool] = []
    ids: list[str] = []
    for sensor in sorted(per_sensor):
        last = -np.inf
        for partition, offset, index, ts, row in sorted(per_sensor[sensor], key=lambda r: r[:3]):
            if ts <= last:
                data.late += 1
                continue
            last = ts
            order.append(row)
            ids.append(sensor)
            alerted.append((partition, offset, index) in excluded)
    data.sensors = len(per_sensor)
    data.full = all_values[np.asarray(order, dtype=np.int64)] if order else data.values
    data.kept = ~np.asarray(alerted, dtype=bool)
    data.full_ids = np.asarray(ids, dtype=str) if ids else np.zeros(0, dtype="U1")
    data.alerted = int((~data.kept).sum())
    data.values = data.full[data.kept]
    return data


@dataclass
class StreamTraining:
    """`train --from-topic`'s data, and what to do once the model is fitted."""

    values: np.ndarray
    channels: list[str]
    data: StreamData
    source: dict
    alert_rate: float  # of the model whose alerts were left out

    @property
    def sensor_ids(self) -> np.ndarray | None:
        """The sensor of each row of `values`."""
        d = self.data
        return None if d.full_ids is None or d.kept is None else d.full_ids[d.kept]

    def finish(self, detector, threshold, held_out: np.ndarray, baselines=None) -> dict:
        """Put the likely false alerts back into the threshold's data; the source summary.
        `baselines`: the model's per-sensor baselines (its shared model sees standardised rows)."""
        full = self.data.full
        if baselines is not None and full is not None and self.data.full_ids is not None and len(full):
            r = baselines.rows(self.data.full_ids)
            full = ((full - baselines.center[r]) / baselines.scale[r]).astype(np.float32)
        k = recalibrate(detector, threshold, full, self.data.kept, held_out, self.alert_rate)
        self.source["readmitted_as_false_alerts"] = k
        return self.source




def stream_training(settings: Settings, topic: str, channels: list[str], since: float, until: float | None, *,
                    current: dict | None, exclude_alerted: bool = True,
                    max_readings: int = 5_000_000) -> StreamTraining:
    """`train --from-topic`'s data: [since, until) of `topic` with `settings`' connection, minus
    what `read_training_data` leaves out. `current`: the metadata of the model being retrained
    (`current_metadata`), whose alarm rule or threshold says how many of its alerts were false."""
    data = read_training_data(settings, topic, channels, since, until,
                              exclude_alerted=exclude_alerted, max_readings=max_readings)
    source = data.summary(topic, since, until)
    source["alerts_topic"] = settings.topics.alerts if exclude_alerted else None
    log.info("read %d messages (%d readings) of %s: kept %d from %d sensors; left out %d alerted, %d late, "
             "%d dead letters", data.messages, data.readings, topic, len(data.values), data.sensors,
             data.alerted, data.late, sum(data.dead_letters.values()))
    if len(data.values) == 0:
        raise UserError(f"no usable readings in {topic} between {source['since']} and "
                        f"{source['until'] or 'the end'}; check the range and --columns")
    rate = model_alert_rate(current)
    if not current and data.alerted:
        rate = 0.01  # no model here to ask: assume the default budget (1 %)
    return StreamTraining(data.values, channels, data, source, rate)


def current_metadata(out: str) -> dict | None:
    """model.json of the current version at `out`, when there is one with channels."""
    import json

    from latentwatch.detectors import versions

    try:
        meta = json.loads((versions.resolve(out) / versions.METADATA).read_text())
        return meta if isinstance(meta, dict) and isinstance(meta.get("channels"), list) else None
    except (OSError, ValueError, versions.VersionError):
        return None
