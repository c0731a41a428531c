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

Nothing is committed and no consumer group is joined (partitions are assigned directly).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
from confluent_kafka import OFFSET_END, Consumer, KafkaException, TopicPartition
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.decode import Decoder
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.kafka.clients import consumer_config
from latentwatch.pipeline.times import iso, parse_time

log = logging.getLogger("latentwatch.retrain")
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time_arg(text: str, now: float | None = None) -> float:
    """A `--since`/`--until` argument -> epoch seconds: what `times.parse_time` reads (ISO-8601,
    naive = UTC, or epoch seconds), or a time ago as docker logs --since takes it: 30m, 6h, 7d (or
    -6h). Only these two flags take a time ago (a relative event time in a message or a CSV would
    depend on when it is read), hence its own name; a UserError in the CLI's words otherwise."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return parse_time(text.strip())
    except (TypeError, ValueError):
        raise UserError(f"time {text!r}: give ISO-8601 (2026-11-20T00:00Z), epoch seconds or a time ago (6h, 7d)") from None


@dataclass
class StreamData:
    values: np.ndarray  # [n, channels] float32: what trains, per sensor in stream order, sensors by id
    full: np.ndarray | None = None  # the same with the alerted readings still in
    kept: np.ndarray | None = None  # [len(full)] bool: not alerted
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
    decoder = Decoder(channels, settings.batch.max_message_bytes, settings.batch.max_future_s)
    reader = TopicRange(settings, timeout_s)
    data = StreamData(np.empty((0, len(channels)), np.float32))
    excluded: set[tuple] = set()
    per_sensor: dict[str, list] = {}  # sensor -> [(partition, offset, index, ts, row index)]
    values: list[np.ndarray] = []
    seen = [0]
    try:
        excluded = alerted_readings(reader, settings.topics.alerts, topic, since) if exclude_alerted else set()

        def take(messages):
            batch = decoder.decode_many(((m.value(), m.key()) for m in messages), time.time())
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
    for sensor in sorted(per_sensor):
        last = -np.inf
        for partition, offset, index, ts, row in sorted(per_sensor[sensor], key=lambda r: r[:3]):
            if ts <= last:
                data.late += 1
                continue
            last = ts
            order.append(row)
            alerted.append((partition, offset, index) in excluded)
    data.sensors = len(per_sensor)
    data.full = all_values[np.asarray(order, dtype=np.int64)] if order else data.values
    data.kept = ~np.asarray(alerted, dtype=bool)
    data.alerted = int((~data.kept).sum())
    data.values = data.full[data.kept]
    return data


def add_train_arguments(t) -> None:
    """`train`'s options for training from the stream instead of --data."""
    g = t.add_argument_group("training from the stream (instead of --data); Kafka settings as for `run`")
    g.add_argument("--from-topic", metavar="TOPIC", help="input topic to read the training readings from")
    g.add_argument("--since", help="start of the range: ISO-8601 (2026-11-20T00:00Z), epoch seconds or a time ago: 6h, 7d")
    g.add_argument("--until", default=None, help="end of the range, exclusive (default: the end of the topic)")
    g.add_argument("--config", default=None, help="YAML config of `run` (Kafka connection, TLS, SASL) "
                                                  "[env LATENTWATCH_CONFIG]")
    g.add_argument("--bootstrap", default=None, help="Kafka bootstrap servers [env LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS]")
    g.add_argument("--alerts-topic", default=None, help="alerts whose readings are left out (default: the "
                                                        "settings' topics.alerts)")
    g.add_argument("--include-alerted", action="store_true", help="keep the readings alerts name")
    g.add_argument("--max-readings", type=int, default=5_000_000, help="refuse a larger range (default: %(default)s)")


def model_alert_rate(metadata: dict | None) -> float:
    """The share of normal readings a model alerts on by design: its alarm rule's false-alarm
    budget (instant and EWMA alarms together, what the alerts topic carries), else what its
    threshold flags (a model from before the alarm rule)."""
    alarm = (metadata or {}).get("alarm")
    if isinstance(alarm, dict) and isinstance(alarm.get("budget"), (int, float)) and alarm.get("ewma_limit") != float("inf"):
        return float(alarm["budget"])
    return expected_alert_rate((metadata or {}).get("threshold"))


def expected_alert_rate(threshold: dict | None) -> float:
    """The share of normal readings a model's threshold flags by design (quantile: 1 - q; POT:
    its risk; adaptive: its base's), 0 when unknown."""
    if not isinstance(threshold, dict):
        return 0.0
    kind = threshold.get("kind")
    if kind == "quantile":
        return max(0.0, 1.0 - float(threshold.get("q", 1.0)))
    if kind == "pot":
        return float(threshold.get("risk", 0.0))
    if kind == "adaptive":
        return expected_alert_rate(threshold.get("base"))
    return 0.0


def recalibrate(detector, threshold, data: StreamData, held_out: np.ndarray, rate: float) -> int:
    """Refit `threshold` on the held-out scores plus the model's false alerts among them.

    Leaving out every alerted reading also leaves out the current model's false alerts: by
    design (rate `rate`, e.g. 1 % for a 0.99 quantile) the top of the normal scores. A
    threshold fitted without them sits lower (the 0.99 quantile of what is left is about the
    0.98 one of normal data). So the alerted readings in the held-out part are scored by the new
    model and the lowest-scoring `rate x held-out` of them, the likely false alerts (anomalies
    score higher), go back into the threshold's data. The held-out windows are interleaved blocks
    spread over the whole range (detectors.training), so the alerted readings of the whole range
    stand for theirs, in proportion. Returns how many went back.

    Taking the lowest k of all the range's alerted readings (not a spread sample of its likely
    false ones) errs low; measured in tests/integration/test_retrain.py it offsets part of the
    push up that anomalies the current model missed give the held-out top (ratio to a clean-range
    threshold 1.106; with a spread sample 1.117)."""
    if rate <= 0 or data.full is None or data.kept.all() or len(held_out) == 0:
        return 0
    w = detector.window
    share = len(held_out) / max(1, int(data.kept.sum()))  # of the kept readings, held out
    candidates = np.flatnonzero(~data.kept)
    candidates = candidates[candidates >= w - 1]
    k = min(len(candidates), int(round(rate * (len(held_out) + share * len(candidates)))))
    if k == 0:
        return 0
    windows = np.stack([data.full[i - w + 1:i + 1] for i in candidates])
    scores = np.sort(detector.score(windows).score)[:k]
    threshold.fit(np.concatenate([held_out, scores]))
    return k


@dataclass
class StreamTraining:
    """`train --from-topic`'s data, and what to do once the model is fitted."""

    values: np.ndarray
    channels: list[str]
    data: StreamData
    source: dict
    alert_rate: float  # of the model whose alerts were left out

    def finish(self, detector, threshold, held_out: np.ndarray) -> dict:
        """Put the likely false alerts back into the threshold's data; the source summary."""
        k = recalibrate(detector, threshold, self.data, held_out, self.alert_rate)
        self.source["readmitted_as_false_alerts"] = k
        return self.source


def training_data_from_args(args) -> StreamTraining:
    """`train --from-topic`'s data. Channels: --columns, else those of the current model at
    --out (retraining it), whose threshold also says how many of its alerts were false ones."""
    from latentwatch.pipeline.config import load_settings

    if not args.since:
        raise UserError("--from-topic needs --since (e.g. --since 24h or --since 2026-11-20T00:00Z)")
    current = _metadata_of(args.out)
    if args.columns:
        channels = [c.strip() for c in args.columns.split(",")]
    elif current:
        channels = list(current["channels"])
    else:
        raise UserError(f"no model at {args.out} to take the channels from: pass --columns a,b,c")
    settings = load_settings(args.config, {"kafka.bootstrap_servers": args.bootstrap,
                                           "topics.alerts": args.alerts_topic})
    now = time.time()
    since, until = parse_time_arg(args.since, now), (parse_time_arg(args.until, now) if args.until else None)
    data = read_training_data(settings, args.from_topic, channels, since, until,
                              exclude_alerted=not args.include_alerted, max_readings=args.max_readings)
    source = data.summary(args.from_topic, since, until)
    source["alerts_topic"] = None if args.include_alerted else settings.topics.alerts
    log.info("read %d messages (%d readings) of %s: kept %d from %d sensors; left out %d alerted, %d late, "
             "%d dead letters", data.messages, data.readings, args.from_topic, len(data.values), data.sensors,
             data.alerted, data.late, sum(data.dead_letters.values()))
    if len(data.values) == 0:
        raise UserError(f"no usable readings in {args.from_topic} between {source['since']} and "
                        f"{source['until'] or 'the end'}; check the range and --columns")
    rate = model_alert_rate(current)
    if not current and data.alerted:
        rate = 0.01  # no model here to ask: assume the default budget (1 %)
    return StreamTraining(data.values, channels, data, source, rate)


def _metadata_of(out: str) -> dict | None:
    import json

    from latentwatch.detectors import versions

    try:
        meta = json.loads((versions.resolve(out) / versions.METADATA).read_text())
        return meta if isinstance(meta, dict) and isinstance(meta.get("channels"), list) else None
    except (OSError, ValueError, versions.VersionError):
        return None
