"""Subscribers of the alerts topic: a human-readable tail, and a forwarder that turns anomaly
alerts into Alertmanager alerts.

The alert message (JSON, key = sensor id) is what `pipeline.alerts` produces, of two kinds:
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
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TextIO

from latentwatch.pipeline.contract import parse_time

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


def alert_time(value) -> datetime:
    """An alert's `ts` (contract.parse_time: ISO 8601, naive = UTC, or epoch seconds) -> aware UTC
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
    if alert.get("kind") == "episode":
        line = (f"{alert['ts']} {alert['severity'].upper():8} {alert['sensor_id']} episode {alert['event']} "
                f"({alert.get('rule', '?')}) peak {float(alert.get('peak_score', 0)):.4g} "
                f"(x{float(alert.get('peak_margin', 0)):.1f}), {alert.get('readings', 0)} readings")
        if alert["event"] == "close":
            line += f" since {alert['started_at']}"
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


# ----------------------------------------------------------------------------- Alertmanager
def episode_to_alertmanager(ep: dict, resolve_timeout: float = 300.0, generator_url: str | None = None) -> list[dict]:
    """An episode event -> Alertmanager API v2 alerts: one alert per episode (its labels do not
    change while it lasts), firing from `started_at`; a close resolves it (`endsAt` = `ended_at`)
    under both severities, since an update may have raised it from warning to critical."""
    starts = alert_time(ep["started_at"])
    last = alert_time(ep.get("ended_at") or ep["ts"])
    closed = ep["event"] == "close"
    out = []
    for severity in (SEVERITIES if closed else (ep["severity"],)):
        am = {
            "labels": {"alertname": ALERTNAME, "sensor": ep["sensor_id"], "episode": str(ep["episode_id"]),
                       "severity": severity},
            "annotations": {
                "rule": str(ep.get("rule", "")), "peak_score": f"{float(ep.get('peak_score', 0)):.6g}",
                "readings": str(ep.get("readings", "")),
                "summary": (f"Sensor {ep['sensor_id']} anomalous since {ep['started_at']} ({ep.get('rule')} rule): "
                            f"peak score {float(ep.get('peak_score', 0)):.4g}, x{float(ep.get('peak_margin', 0)):.1f} "
                            "its limit" + (", now back to normal" if closed else "")),
            },
            "startsAt": rfc3339(starts),
            "endsAt": rfc3339(last if closed else last + timedelta(seconds=resolve_timeout)),
        }
        if generator_url:
            am["generatorURL"] = generator_url
        out.append(am)
    return out


def to_alertmanager(alert: dict, resolve_timeout: float = 300.0, generator_url: str | None = None) -> dict:
    """An anomaly alert record -> one Alertmanager API v2 alert (postableAlert)."""
    starts = alert_time(alert["ts"])
    score, threshold = float(alert["score"]), float(alert["threshold"])
    channel = top_channel(alert)
    am = {
        "labels": {
            "alertname": ALERTNAME,
            "sensor": alert["sensor_id"],
            "severity": alert["severity"],
            "top_channel": channel,
        },
        "annotations": {
            "score": f"{score:.6g}",
            "threshold": f"{threshold:.6g}",
            "alert_id": str(alert.get("alert_id", "")),
            "summary": (f"Sensor {alert['sensor_id']} anomalous: score {score:.4g} above threshold "
                        f"{threshold:.4g}, mostly channel {channel}"),
        },
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(starts + timedelta(seconds=resolve_timeout)),
    }
    if generator_url:
        am["generatorURL"] = generator_url
    return am


class DeliveryError(Exception):
    """Alertmanager did not accept a batch (network error or an HTTP error status)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class AlertmanagerClient:
    """POSTs alerts to Alertmanager's API v2 (standard library only)."""

    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def post_alerts(self, alerts: list[dict]) -> None:
        body = json.dumps(alerts).encode()
        req = urllib.request.Request(self.url + "/api/v2/alerts", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode(errors="replace")
            raise DeliveryError(f"HTTP {exc.code} from {self.url}: {detail}", exc.code) from None
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DeliveryError(f"cannot reach {self.url}: {reason}") from None


@dataclass
class ForwarderStats:
    consumed: int = 0
    forwarded: int = 0
    skipped: int = 0  # not alert records, or rejected by Alertmanager as invalid (HTTP 400)
    batches: int = 0
    failed_attempts: int = 0
    commits: int = 0
    last_error: str | None = None
    committed: dict = field(default_factory=dict)  # (topic, partition) -> next offset


def forwarder_consumer_config(settings, group_id: str) -> dict:
    """A member of the forwarder's group that commits by hand, after Alertmanager accepted."""
    from latentwatch.pipeline.kafka.clients import tool_consumer_config

    return tool_consumer_config(settings, {
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "enable.partition.eof": False,
    })


class Forwarder:
    """Consume anomaly alerts, POST them to Alertmanager in batches, commit after acceptance.

    A batch closes at `batch_size` messages or `batch_wait` seconds after its first message.
    Delivery is retried with exponential backoff (from `backoff_initial` up to `backoff_max`
    seconds, with jitter) for as long as it fails, until `stop` is set; the batch's offsets are
    committed only once Alertmanager answered 2xx. HTTP 400 (Alertmanager rejected the payload)
    is not retried as is: the batch is split to isolate and skip the invalid alerts.
    """

    def __init__(self, consumer, client: AlertmanagerClient, topic: str, *, batch_size: int = 100,
                 batch_wait: float = 1.0, resolve_timeout: float = 300.0, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, stop: threading.Event | None = None, readings: bool = False):
        self.readings = readings  # also forward per-reading records (kind "reading"), not only episodes
        self.consumer = consumer
        self.client = client
        self.topic = topic
        self.batch_size = batch_size
        self.batch_wait = batch_wait
        self.resolve_timeout = resolve_timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.stop = stop or threading.Event()
        self.stats = ForwarderStats()
        self._pending: list = []  # messages of the open batch

    # -- consumer group callbacks: a revoked partition's uncommitted messages belong to its
    #    next owner (which starts from the committed offset), so drop them from the batch.
    def _on_revoke(self, consumer, partitions) -> None:
        gone = {(p.topic, p.partition) for p in partitions}
        before = len(self._pending)
        self._pending = [m for m in self._pending if (m.topic(), m.partition()) not in gone]
        if before != len(self._pending):
            log.info("partitions revoked: %d uncommitted alerts left to their next owner",
                     before - len(self._pending))

    def run(self, max_batches: int | None = None) -> ForwarderStats:
        self.consumer.subscribe([self.topic], on_revoke=self._on_revoke, on_lost=self._on_revoke)
        while not self.stop.is_set():
            if max_batches is not None and self.stats.batches >= max_batches:
                break
            batch = self._collect()
            if not batch:
                continue
            if not self._deliver(batch):
                break  # stopped while Alertmanager was failing: nothing committed
            self._commit(batch)
        return self.stats

    def _collect(self) -> list:
        self._pending = []
        deadline = None
        while not self.stop.is_set() and len(self._pending) < self.batch_size:
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            msg = self.consumer.poll(wait)
            if msg is not None:
                if msg.error():
                    if msg.error().fatal():
                        raise RuntimeError(f"Kafka: {msg.error()}")
                    log.warning("Kafka: %s", msg.error())
                else:
                    self._pending.append(msg)
                    self.stats.consumed += 1
                    if deadline is None:
                        deadline = time.monotonic() + self.batch_wait
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._pending

    def _deliver(self, messages: list) -> bool:
        alerts = []
        for m in messages:
            try:
                alert = parse_alert(m.value())
                if alert.get("kind") == "episode":
                    alerts += episode_to_alertmanager(alert, self.resolve_timeout)
                elif alert.get("kind") != "reading" or self.readings:
                    alerts.append(to_alertmanager(alert, self.resolve_timeout))
            except BadAlert as exc:
                self.stats.skipped += 1
                log.warning("skipping %s/%d@%d: %s", m.topic(), m.partition(), m.offset(), exc)
        if not alerts:
            return True
        if not self._post_with_retry(alerts):
            return False
        self.stats.batches += 1
        return True

    def _post_with_retry(self, alerts: list[dict]) -> bool:
        delay = self.backoff_initial
        while True:
            try:
                self.client.post_alerts(alerts)
                self.stats.forwarded += len(alerts)
                self.stats.last_error = None
                return True
            except DeliveryError as exc:
                self.stats.failed_attempts += 1
                self.stats.last_error = str(exc)
                if exc.status == 400:
                    return self._post_split(alerts, exc)
                log.warning("Alertmanager did not accept %d alerts (%s); retrying in %.1fs",
                            len(alerts), exc, delay)
            if self.stop.wait(delay * random.uniform(0.8, 1.2)):
                return False
            delay = min(self.backoff_max, delay * 2)

    def _post_split(self, alerts: list[dict], exc: DeliveryError) -> bool:
        if len(alerts) == 1:
            self.stats.skipped += 1
            log.error("Alertmanager rejected alert %s: %s", alerts[0]["labels"], exc)
            return True
        half = len(alerts) // 2
        return self._post_with_retry(alerts[:half]) and self._post_with_retry(alerts[half:])

    def _commit(self, messages: list) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        if not messages:
            return
        nxt: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            nxt[key] = max(nxt.get(key, -1), m.offset() + 1)
        offsets = [TopicPartition(t, p, o) for (t, p), o in nxt.items()]
        try:
            self.consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # e.g. rebalanced meanwhile: they will be re-sent
            log.warning("offset commit failed (alerts may be forwarded again): %s", exc)
            return
        self.stats.commits += 1
        self.stats.committed.update(nxt)
