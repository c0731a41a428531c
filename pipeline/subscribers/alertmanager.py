"""The Alertmanager side of the alerts topic: `alerts forward` turns episodes (and, when asked,
per-reading records) into Alertmanager API v2 alerts, at-least-once (offsets committed only after
Alertmanager accepted a batch). Records are read and checked by `subscribers.alert_reader`."""

from __future__ import annotations

import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from latentwatch.pipeline.subscribers.alert_reader import (ALERTNAME, SEVERITIES, BadAlert, alert_time, parse_alert,
                                                     rfc3339, top_channel)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- Alertmanager
def sending_times(started: datetime, now: datetime, *, resolve_timeout: float, closed: bool) -> dict:
    """startsAt/endsAt on the clock Alertmanager judges them by: its own, i.e. the time of sending.
    The readings' event time may be minutes old (a backlog after an outage), ahead (a device clock,
    within batch.max_future_s) or step back (late_policy score), so endsAt from it either expired
    before it arrived (an open episode that never fires), kept a closed one active, or fell before
    startsAt (HTTP 400: the resolve lost). startsAt keeps the event time, never later than now;
    a firing alert ends `resolve_timeout` after sending (the next update or the close renews or
    ends it), a close ends it now; endsAt is never before startsAt."""
    starts = min(started, now)
    ends = now if closed else now + timedelta(seconds=resolve_timeout)
    return {"startsAt": rfc3339(starts), "endsAt": rfc3339(max(ends, starts))}


def episode_to_alertmanager(ep: dict, resolve_timeout: float = 300.0, generator_url: str | None = None,
                            now: datetime | None = None) -> list[dict]:
    """An episode event -> Alertmanager API v2 alerts: one alert per episode (its labels do not
    change while it lasts), firing from `started_at`; a close resolves it (at the time of sending,
    `sending_times`; `ended_at` in event time is an annotation) under both severities, since an
    update may have raised it from warning to critical."""
    now = now or datetime.now(UTC)
    starts = alert_time(ep["started_at"])
    closed = ep["event"] == "close"
    out = []
    for severity in (SEVERITIES if closed else (ep["severity"],)):
        am = {
            "labels": {"alertname": ALERTNAME, "sensor": ep["sensor_id"], "episode": str(ep["episode_id"]),
                       "severity": severity},
            "annotations": {
                "rule": str(ep.get("rule", "")), "peak_score": f"{float(ep.get('peak_score', 0)):.6g}",
                "readings": str(ep.get("readings", "")), "started_at": rfc3339(starts),
                "summary": (f"Sensor {ep['sensor_id']} anomalous since {ep['started_at']} ({ep.get('rule')} rule): "
                            f"peak score {float(ep.get('peak_score', 0)):.4g}, x{float(ep.get('peak_margin', 0)):.1f} "
                            "its limit" + (", now back to normal" if closed else "")),
            },
            **sending_times(starts, now, resolve_timeout=resolve_timeout, closed=closed),
        }
        _group_label(am, ep)
        if closed and ep.get("reason"):
            am["annotations"]["close_reason"] = str(ep["reason"])
        if closed:
            am["annotations"]["ended_at"] = rfc3339(alert_time(ep.get("ended_at") or ep["ts"]))
        if generator_url:
            am["generatorURL"] = generator_url
        out.append(am)
    return out


HEALTH_ALERTNAME = "LatentwatchSensorHealth"


def health_to_alertmanager(h: dict, resolve_timeout: float = 300.0, generator_url: str | None = None,
                           now: datetime | None = None) -> list[dict]:
    """A sensor health event (issue 30) -> one Alertmanager alert, its own alertname and labels
    (sensor, rule: stuck | flatline | silent, episode), firing from its start, resolved at its close:
    an instrument fault routes to whoever fixes instruments, not to the process owner."""
    now = now or datetime.now(UTC)
    starts = alert_time(h["started_at"])
    closed = h["event"] == "close"
    am = {
        "labels": {"alertname": HEALTH_ALERTNAME, "sensor": h["sensor_id"], "rule": str(h["rule"]),
                   "episode": str(h["episode_id"]), "severity": str(h.get("severity", "warning"))},
        "annotations": {"started_at": rfc3339(starts),
                        "summary": f"Sensor {h['sensor_id']} {h['rule']} since {h['started_at']}"
                                   + (", now reporting normally" if closed else ""),
                        "evidence": json.dumps(h.get("evidence") or {}, sort_keys=True)[:1000]},
        **sending_times(starts, now, resolve_timeout=resolve_timeout, closed=closed),
    }
    if generator_url:
        am["generatorURL"] = generator_url
    return [am]


def to_alertmanager(alert: dict, resolve_timeout: float = 300.0, generator_url: str | None = None,
                    now: datetime | None = None) -> dict:
    """An anomaly alert record -> one Alertmanager API v2 alert (postableAlert); times as
    `sending_times` (firing for `resolve_timeout` from the time of sending)."""
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
        **sending_times(starts, now or datetime.now(UTC), resolve_timeout=resolve_timeout, closed=False),
    }
    _group_label(am, alert)
    if generator_url:
        am["generatorURL"] = generator_url
    return am


def _group_label(am: dict, record: dict) -> None:
    """With model groups (docs/groups.md), the group that scored the sensor is a label too (a
    sensor's group does not change while an episode lasts): Alertmanager routes by it."""
    group = (record.get("model") or {}).get("group") if isinstance(record.get("model"), dict) else None
    if isinstance(group, str) and group:
        am["labels"]["group"] = group


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
        now = datetime.now(UTC)  # one sending time for the batch (sending_times)
        for m in messages:
            try:
                alert = parse_alert(m.value())
                if alert.get("kind") == "episode":
                    alerts += episode_to_alertmanager(alert, self.resolve_timeout, now=now)
                elif alert.get("kind") == "health":
                    alerts += health_to_alertmanager(alert, self.resolve_timeout, now=now)
                elif alert.get("kind") != "reading" or self.readings:
                    alerts.append(to_alertmanager(alert, self.resolve_timeout, now=now))
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
