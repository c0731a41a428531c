"""Subscribers of the alerts topic: reading and checking its records, and a human-readable tail;
the forwarder that turns them into Alertmanager alerts is `subscribers.alertmanager`.

The alert message (JSON, key = sensor id) is what `pipeline.records` produces, of two kinds:
`kind: "reading"` (`alert_records`: `{"alert_id", "sensor_id", "ts", "detected_at", "score",
"threshold", "rule", "statistic", "limit", "severity", "top_channels": [{"channel", "share"}, ...],
"latent", "model": {"name", "version"}, "source": {...}}`; records without `kind`, written before
episodes, are readings too) and `kind: "episode"` (`episode_records`: `{"event": open|update|close,
"episode_id", "sensor_id", "started_at", "ts", "rule", "readings", "peak_score", "peak_margin",
"severity", ...}`, plus `ended_at` on close).

The forwarder sends episodes to Alertmanager as one alert each (labels alertname, sensor,
episode; `startsAt` the episode's start; firing until `resolve_timeout` after its last event,
resolved at its close), and per-reading records only when asked (`--readings`) or when they
come without a `kind` (a producer from before episodes).

Both read with `isolation.level=read_committed`, so alerts of an aborted transaction (exactly-once
mode of the pipeline) are never shown nor forwarded. The forwarder is at-least-once: it commits a
batch's offsets only after Alertmanager accepted the whole batch; a crash in between re-sends
alerts, which Alertmanager merges (same labels = same alert).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TextIO

from latentwatch.pipeline.times import parse_time

log = logging.getLogger(__name__)

SEVERITIES = ("warning", "critical")  # in increasing order
ALERTNAME = "LatentwatchAnomaly"


class BadAlert(ValueError):
    """A message on the alerts topic that is not an alert record."""


# ----------------------------------------------------------------------------- decoding
def parse_alert(value: bytes | None) -> dict:
    """The alert record in a message value; `BadAlert` when it is not one."""
    if value is None:
        raise BadAlert("empty message (tombstone)")
    try:
        alert = json.loads(value)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadAlert(f"not JSON: {exc}") from None
    if not isinstance(alert, dict):
        raise BadAlert("not a JSON object")
    if alert.get("kind") == "episode":
        return _parse_episode(alert)
    if alert.get("kind") == "health":
        return _parse_health(alert)
    for key in ("sensor_id", "ts", "score", "threshold", "severity"):
        if key not in alert:
            raise BadAlert(f"missing {key!r}")
    if alert["severity"] not in SEVERITIES:
        raise BadAlert(f"unknown severity {alert['severity']!r}")
    if not isinstance(alert["sensor_id"], str) or not alert["sensor_id"]:
        raise BadAlert("sensor_id is not a non-empty string")
    for key in ("score", "threshold"):
        if not isinstance(alert[key], (int, float)) or isinstance(alert[key], bool):
            raise BadAlert(f"{key} is not a number")
    alert_time(alert["ts"])
    return alert


EVENTS = ("open", "update", "close")


def _parse_episode(ep: dict) -> dict:
    for key in ("event", "episode_id", "sensor_id", "ts", "started_at", "severity"):
        if key not in ep:
            raise BadAlert(f"episode without {key!r}")
    if ep["event"] not in EVENTS:
        raise BadAlert(f"unknown episode event {ep['event']!r}")
    if ep["severity"] not in SEVERITIES:
        raise BadAlert(f"unknown severity {ep['severity']!r}")
    if not isinstance(ep["sensor_id"], str) or not ep["sensor_id"]:
        raise BadAlert("sensor_id is not a non-empty string")
    alert_time(ep["ts"])
    alert_time(ep["started_at"])
    return ep


HEALTH_RULES = ("stuck", "flatline", "silent")


def _parse_health(h: dict) -> dict:
    """A sensor health record (issue 30, records.health_records)."""
    for key in ("event", "rule", "episode_id", "sensor_id", "ts", "started_at"):
        if key not in h:
            raise BadAlert(f"health record without {key!r}")
    if h["event"] not in ("open", "close") or h["rule"] not in HEALTH_RULES:
        raise BadAlert(f"unknown health event {h['event']!r} of rule {h['rule']!r}")
    if not isinstance(h["sensor_id"], str) or not h["sensor_id"]:
        raise BadAlert("sensor_id is not a non-empty string")
    h.setdefault("severity", "warning")
    if h["severity"] not in SEVERITIES:
        raise BadAlert(f"unknown severity {h['severity']!r}")
    alert_time(h["ts"])
    alert_time(h["started_at"])
    return h


def alert_time(value) -> datetime:
    """An alert's `ts` (times.parse_time: ISO 8601, naive = UTC, or epoch seconds) -> aware UTC
    datetime; BadAlert when it is none."""
    try:
        return datetime.fromtimestamp(parse_time(value), UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise BadAlert(f"bad timestamp {value!r}") from None


def rfc3339(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def severity_at_least(alert: dict, min_severity: str | None) -> bool:
    if not min_severity:
        return True
    return SEVERITIES.index(alert["severity"]) >= SEVERITIES.index(min_severity)


def matches(alert: dict, min_severity: str | None = None, sensors: Iterable[str] | None = None) -> bool:
    sensors = set(sensors or ())
    return severity_at_least(alert, min_severity) and (not sensors or alert["sensor_id"] in sensors)


def top_channel(alert: dict) -> str:
    channels = alert.get("top_channels") or []
    if channels and isinstance(channels[0], dict) and channels[0].get("channel"):
        return str(channels[0]["channel"])
    return "unknown"


def format_line(alert: dict) -> str:
    """One line for a terminal:
    `2026-11-21T10:00:00.250Z CRITICAL pump-7 score 12.3 > 4.5 (x2.7) top: temp 71%, flow 20% [id]`,
    an episode event as `... CRITICAL pump-7 episode open (ewma) peak 12.3 (x2.7), 4 readings ... [id]`."""
    if alert.get("kind") == "health":  # `... WARNING pump-7 health open stuck: temp = 71.5 for 30 readings [id]`
        line = f"{alert['ts']} {alert['severity'].upper():8} {alert['sensor_id']} health {alert['event']} {alert['rule']}"
        ev = alert.get("evidence") or {}
        if alert["event"] == "open" and alert["rule"] == "stuck":
            line += ": " + ", ".join(f"{c.get('channel')} = {c.get('value')} for {c.get('readings')} readings"
                                     for c in ev.get("channels", []) if isinstance(c, dict))
        elif alert["event"] == "open" and alert["rule"] == "flatline":
            line += f": every channel unchanged for {ev.get('readings')} readings"
        elif alert["event"] == "open" and alert["rule"] == "silent":
            line += f": no reading since {ev.get('last_reading_at')}, partition at {ev.get('partition_event_time')}"
        else:
            line += f" since {alert['started_at']}"
        return line + f" [{alert['episode_id']}]"
    if alert.get("kind") == "episode":
        line = (f"{alert['ts']} {alert['severity'].upper():8} {alert['sensor_id']} episode {alert['event']} "
                f"({alert.get('rule', '?')}) peak {float(alert.get('peak_score', 0)):.4g} "
                f"(x{float(alert.get('peak_margin', 0)):.1f}), {alert.get('readings', 0)} readings")
        if alert["event"] == "close":
            line += f" since {alert['started_at']}"
            if alert.get("reason"):  # "evicted": the sensor's state was evicted, not back to normal
                line += f", {alert['reason']}"
        return line + f" [{alert['episode_id']}]"
    score, threshold = float(alert["score"]), float(alert["threshold"])
    ratio = f" (x{score / threshold:.1f})" if threshold > 0 else ""
    tops = ", ".join(
        f"{c.get('channel')} {float(c.get('share', 0)) * 100:.0f}%"
        for c in (alert.get("top_channels") or []) if isinstance(c, dict)
    )
    line = (f"{alert['ts']} {alert['severity'].upper():8} {alert['sensor_id']} "
            f"score {score:.4g} > {threshold:.4g}{ratio}")
    if tops:
        line += f" top: {tops}"
    if alert.get("alert_id"):
        line += f" [{alert['alert_id']}]"
    return line


# ----------------------------------------------------------------------------- tail
def tail_consumer_config(settings) -> dict:
    """A reader of every partition that joins no group and commits nothing."""
    from latentwatch.pipeline.kafka.clients import tool_consumer_config

    return tool_consumer_config(settings, {
        "group.id": f"latentwatch-tail-{uuid.uuid4().hex[:8]}",  # never committed
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
    })


def tail(settings, topic: str, out: TextIO, *, as_json: bool = False, from_beginning: bool = False,
         min_severity: str | None = None, sensors: Iterable[str] | None = None,
         max_messages: int | None = None, timeout: float | None = None,
         stop: threading.Event | None = None, err: TextIO | None = None) -> int:
    """Print alerts of `topic` as they arrive; returns how many were printed. Reads every
    partition (no consumer group membership, nothing committed): from the beginning, or only
    what arrives from now on. Stops after `max_messages` printed alerts, `timeout` seconds or
    when `stop` is set. `settings`: the pipeline's Settings, of which the `kafka` tree is used."""
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, TopicPartition

    stop = stop or threading.Event()
    deadline = None if timeout is None else time.monotonic() + timeout
    consumer = Consumer(tail_consumer_config(settings))
    printed = 0
    try:
        from latentwatch.pipeline.errors import UserError

        try:
            md = consumer.list_topics(topic, timeout=15)
        except KafkaException as exc:
            raise UserError(f"cannot reach Kafka at {settings.kafka.bootstrap_servers} ({exc.args[0].str()}): check "
                            "--bootstrap and the kafka.security_protocol, kafka.sasl_* and kafka.ssl_* "
                            "settings") from None
        tmd = md.topics.get(topic)
        if tmd is None or tmd.error is not None or not tmd.partitions:
            raise UserError(f"topic {topic!r} does not exist on {settings.kafka.bootstrap_servers}")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in sorted(tmd.partitions)])
        while not stop.is_set():
            if max_messages is not None and printed >= max_messages:
                break
            wait = 0.5
            if deadline is not None:
                wait = min(wait, deadline - time.monotonic())
                if wait <= 0:
                    break
            msg = consumer.poll(wait)
            if msg is None:
                continue
            if msg.error():
                if msg.error().fatal():
                    raise RuntimeError(f"Kafka: {msg.error()}")
                log.warning("Kafka: %s", msg.error())
                continue
            try:
                alert = parse_alert(msg.value())
            except BadAlert as exc:
                if err is not None:
                    print(f"latentwatch: skipped {msg.topic()}/{msg.partition()}@{msg.offset()}: {exc}",
                          file=err, flush=True)
                continue
            if not matches(alert, min_severity, sensors):
                continue
            out.write((json.dumps(alert, separators=(",", ":")) if as_json else format_line(alert)) + "\n")
            out.flush()
            printed += 1
    finally:
        consumer.close()
    return printed
