"""Prometheus metrics of the pipeline: one prefix, base units, counters end in `_total`,
no per-sensor labels. Every series exists from start-up (labelled ones are pre-initialised)."""

from __future__ import annotations

import json
from collections import Counter as Tally
import socket
import threading
import time
from datetime import datetime
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

from latentwatch.pipeline.decode.batch import DEAD_LETTER_REASONS  # the `reason` label's values
from latentwatch.pipeline.events import Committed, Listener

PREFIX = "latentwatch"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INFERENCE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)
RESTORE_BUCKETS = (0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SCORE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)


class PipelineMetrics(Listener):
    """All metrics of one pipeline process, in their own registry (tests make one each)."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        p = PREFIX
        self.messages_consumed = Counter(f"{p}_messages_consumed", "Kafka messages consumed from the input topic", registry=r)
        self.readings_consumed = Counter(f"{p}_readings_consumed", "Sensor readings decoded from consumed messages", registry=r)
        self.readings_scored = Counter(f"{p}_readings_scored", "Readings scored by the model", registry=r)
        self.readings_warming_up = Counter(f"{p}_readings_warming_up", "Readings kept as window history before a sensor has enough to be scored", registry=r)
        self.dead_letters = Counter(f"{p}_dead_letters", "Messages sent to the dead-letter topic, by reason", ["reason"], registry=r)
        self.alerts = Counter(f"{p}_alerts", "Anomaly alerts produced, by severity", ["severity"], registry=r)
        self.episodes = Counter(f"{p}_episode_events", "Alarm episode events produced (open, update, close)", ["event"], registry=r)
        self.delivery_failures = Counter(f"{p}_producer_delivery_failures", "Produced messages the broker did not acknowledge", registry=r)
        self.health_episodes = Counter(f"{p}_health_episode_events", "Sensor health episode events (issue 30), by rule (stuck, flatline, silent) and event (open, close)", ["rule", "event"], registry=r)
        self.control_commands = Counter(f"{p}_control_commands", "Records read from the control topic, by command (accept, mute, unmute; invalid: dead-lettered)", ["command"], registry=r)
        self.alarms_suppressed = Counter(f"{p}_alarms_suppressed", "Alarms and health events held back because their sensor was muted", registry=r)
        self.baselines_adapted = Counter(f"{p}_baselines_adapted", "Episodes that became their sensor's new normal (baseline.adapt_after; the sensor re-learns its baseline)", registry=r)
        self.sensors_muted = Gauge(f"{p}_sensors_muted", "Sensors held by this process that are muted (maintenance) at their partition's newest event time", registry=r)
        self.batches = Counter(f"{p}_batches", "Micro-batches processed", registry=r)
        self.batch_size = Histogram(f"{p}_batch_size_readings", "Readings per micro-batch", buckets=BATCH_BUCKETS, registry=r)
        self.inference_seconds = Histogram(f"{p}_inference_duration_seconds", "Model time per micro-batch", buckets=INFERENCE_BUCKETS, registry=r)
        self.batch_seconds = Histogram(f"{p}_batch_duration_seconds", "Wall time per micro-batch, decode to commit", buckets=LATENCY_BUCKETS, registry=r)
        self.e2e_latency = Histogram(f"{p}_end_to_end_latency_seconds", "From a reading's Kafka timestamp to its batch's outputs acknowledged and offsets committed", buckets=LATENCY_BUCKETS, registry=r)
        self.processing_delay = Gauge(f"{p}_processing_delay_seconds", "Now minus the newest event time processed", registry=r)
        self.score = Histogram(f"{p}_reconstruction_score", "Anomaly score (reconstruction error) of scored readings", buckets=SCORE_BUCKETS, registry=r)
        self.threshold = Gauge(f"{p}_threshold", "Current anomaly threshold on the score", registry=r)
        self.consumer_lag = Gauge(f"{p}_consumer_lag_messages", "Consumer lag per assigned partition (librdkafka statistics)", ["topic", "partition"], registry=r)
        self.assigned_partitions = Gauge(f"{p}_assigned_partitions", "Input partitions assigned to this process", registry=r)
        self.last_batch = Gauge(f"{p}_last_batch_timestamp_seconds", "Unix time of the last processed batch", registry=r)
        self.commits = Counter(f"{p}_offset_commits", "Offset commits (or committed transactions)", registry=r)
        self.errors = Counter(f"{p}_kafka_errors", "Kafka client errors reported, by kind", ["kind"], registry=r)
        self.model_info = Info(f"{p}_model", "The loaded model", registry=r)
        self.model_reloads = Counter(f"{p}_model_reloads", "New model versions noticed, by outcome (success = swapped in)", ["outcome"], registry=r)
        self._trained_at: float | None = None
        self.model_age = Gauge(f"{p}_model_age_seconds", "Seconds since the loaded model was trained", registry=r)
        self.model_age.set_function(lambda: float("nan") if self._trained_at is None else time.time() - self._trained_at)
        self.latent_drift_psi = Gauge(f"{p}_latent_drift_psi", "Largest per-dimension population stability index of the live latent vectors (last model.drift_window_s, default 2 min) against the model's held-out ones; NaN until enough readings", registry=r)
        self.live_exceedance = Gauge(f"{p}_live_exceedance_ratio", "Share of the readings scored in the last 2 min that were above the threshold", registry=r)
        self.reference_exceedance = Gauge(f"{p}_reference_exceedance_ratio", "Share of the model's held-out readings above its threshold", registry=r)
        self.drift_window_readings = Gauge(f"{p}_drift_window_readings", "Readings in the drift window", registry=r)
        for gauge in (self.latent_drift_psi, self.live_exceedance, self.reference_exceedance):
            gauge.set(float("nan"))
        # Shadow scoring (lifecycle/shadow.py, run --shadow DIR): a candidate model beside the loaded one.
        self.shadow_model = Info(f"{p}_shadow_model", "The shadow (candidate) model, when run --shadow gives one", registry=r)
        self.shadow_readings = Counter(f"{p}_shadow_readings", "Readings scored by both the loaded and the shadow model, by whether each would alert (both, current_only, candidate_only, neither)", ["agreement"], registry=r)
        self.shadow_unpaired = Counter(f"{p}_shadow_unpaired_readings", "Readings scored by only one of the loaded and the shadow model (the shadow's warm-up, another window or channels)", registry=r)
        self.shadow_failures = Counter(f"{p}_shadow_failures", "Batches the shadow model failed to score (the pipeline goes on)", registry=r)
        self.shadow_correlation = Gauge(f"{p}_shadow_score_correlation", "Spearman rank correlation of the loaded and the shadow model's scores over the last 10,000 readings both scored; NaN without a shadow or with fewer than 100", registry=r)
        self.shadow_correlation.set(float("nan"))
        for agreement in ("both", "current_only", "candidate_only", "neither"):  # shadow.AGREEMENTS
            self.shadow_readings.labels(agreement=agreement)
        self.device_info = Info(f"{p}_device", "Where the model runs", registry=r)
        self.changelog_missing = Gauge(f"{p}_changelog_missing_partitions", "Assigned input partitions the state changelog has no partition for (the input topic grew while running; the process is not ready and exits 2)", registry=r)
        self.state_sensors = Gauge(f"{p}_state_sensors", "Sensors with state held by this process (windows, thresholds, last event time)", registry=r)
        self.sensors_by_baseline = Gauge(f"{p}_sensors", "Sensors held by this process by the baseline that judges them: own (from training), learned (a cold start that finished), fleet (a cold start still learning; judged by the fleet baseline)", ["baseline"], registry=r)
        self.state_evictions = Counter(f"{p}_state_evictions", "Per-sensor state entries evicted, by reason (capacity, idle)", ["reason"], registry=r)
        self.state_dropped = Counter(f"{p}_state_dropped", "Restored per-sensor state entries that did not fit the loaded model and were dropped (the sensor warms up again), by reason (window, channels, dtype, non_finite, threshold, alarm)", ["reason"], registry=r)
        self.state_restore_seconds = Histogram(f"{p}_state_restore_duration_seconds", "Wall time of a per-sensor state restore from the changelog (on assignment or after a rewind)", buckets=RESTORE_BUCKETS, registry=r)
        self.batch_rewinds = Counter(f"{p}_batch_rewinds", "Batches not committed (a delivery or commit failed): rewound and redone", registry=r)
        self.dead_letters_truncated = Counter(f"{p}_dead_letters_truncated", "Dead letters produced truncated (the original was too large to produce whole)", registry=r)
        self.registry_up = Gauge(f"{p}_schema_registry_up", "1 while the schema registry answers (or is not needed yet), 0 while schema'd input waits for it (nothing dead-lettered or committed meanwhile)", registry=r)
        self.registry_up.set(1)
        self.registry_failures = Counter(f"{p}_schema_registry_failures", "Batches held back and retried because the schema registry could not be reached", registry=r)
        self.started = Gauge(f"{p}_start_time_seconds", "Unix time the pipeline started", registry=r)
        self.started.set(time.time())
        for reason in DEAD_LETTER_REASONS:
            self.dead_letters.labels(reason=reason)
        for severity in ("warning", "critical"):
            self.alerts.labels(severity=severity)
        for event in ("open", "update", "close"):
            self.episodes.labels(event=event)
        for command in ("accept", "mute", "unmute", "invalid"):
            self.control_commands.labels(command=command)
        for rule in ("stuck", "flatline", "silent"):
            for event in ("open", "close"):
                self.health_episodes.labels(rule=rule, event=event)
        for kind in ("transport", "broker", "fatal"):
            self.errors.labels(kind=kind)
        for reason in ("capacity", "idle"):
            self.state_evictions.labels(reason=reason)
        for reason in ("window", "channels", "dtype", "non_finite", "threshold", "alarm", "last_ts", "baseline",
                       "health", "control"):  # state.DROP_REASONS
            self.state_dropped.labels(reason=reason)
        self._truncated_seen = 0
        for outcome in ("success", "corrupt", "incompatible", "non_finite"):  # lifecycle/watch.py RELOAD_OUTCOMES
            self.model_reloads.labels(outcome=outcome)

    def control_command(self, command: str) -> None:
        self.control_commands.labels(command=command).inc()

    # -- fed by the pipeline's events (events.py): one committed batch, and the other parts' --------
    def on_batch_committed(self, done: Committed) -> None:
        """Count what a committed batch did (a rewound batch is counted when redone)."""
        import numpy as np

        batch, started, evicted, n_sensors, truncated = done.batch, done.started, done.evicted, done.sensors, done.truncated

        now = time.time()
        # One inc per label value, not per record: labels() and inc() take locks (3 % of the
        # frames loop at ~1,500 alerts a batch, py-spy).
        for reason, n in Tally(reason for _, reason, _detail in batch.dead).items():
            self.dead_letters.labels(reason=reason).inc(n)
        for sev, n in Tally(batch.severities).items():
            self.alerts.labels(severity=sev).inc(n)
        for event, n in Tally(batch.episodes).items():
            self.episodes.labels(event=event).inc(n)
        for (rule, event), n in Tally(batch.health).items():
            self.health_episodes.labels(rule=rule, event=event).inc(n)
        if batch.suppressed:
            self.alarms_suppressed.inc(batch.suppressed)
        if batch.adapted:
            self.baselines_adapted.inc(batch.adapted)
        if done.muted is not None:
            self.sensors_muted.set(done.muted)
        observe_many(self.score, batch.scores)
        if batch.inference_s is not None:
            self.inference_seconds.observe(batch.inference_s)
        self.messages_consumed.inc(len(batch.messages))
        self.readings_consumed.inc(batch.n_readings)
        self.readings_scored.inc(batch.n_scored)
        self.readings_warming_up.inc(batch.n_readings - batch.n_scored)
        self.batches.inc()
        self.batch_size.observe(batch.n_readings)
        kafka_ts = np.fromiter((m.timestamp()[1] for m in batch.messages), np.float64, len(batch.messages))
        observe_many(self.e2e_latency, now - kafka_ts[kafka_ts > 0] / 1000.0)
        if batch.max_event_ts is not None:
            self.processing_delay.set(max(0.0, now - batch.max_event_ts))
        self.last_batch.set(now)
        self.batch_seconds.observe(time.monotonic() - started)
        for reason, keys in evicted.items():
            if keys:
                self.state_evictions.labels(reason=reason).inc(len(keys))
        self.state_sensors.set(n_sensors)
        if done.baselines is not None:
            for state, n in done.baselines.items():
                self.sensors_by_baseline.labels(baseline=state).set(n)
        if truncated > self._truncated_seen:
            self.dead_letters_truncated.inc(truncated - self._truncated_seen)
            self._truncated_seen = truncated

    def on_offsets_committed(self) -> None:
        self.commits.inc()

    def on_restored(self, loaded, seconds: float) -> None:
        """A restore's outcome (state.Loaded) and duration; evicted over the bound on load too."""
        for reason, n in loaded.dropped.items():
            self.state_dropped.labels(reason=reason).inc(n)
        for reason, keys in loaded.evicted.items():
            if keys:
                self.state_evictions.labels(reason=reason).inc(len(keys))
        self.state_restore_seconds.observe(seconds)

    def kafka_error(self, kind: str) -> None:
        self.errors.labels(kind=kind).inc()

    def shadow_loaded(self, model, correlation) -> None:
        """The shadow model's info; `correlation()` is called on each scrape."""
        d = model.detector
        self.shadow_model.info({"name": model.name, "version": str(model.version), "kind": d.kind,
                                "window": str(d.window), "channels": str(len(d.channels))})
        self.shadow_correlation.set_function(correlation)

    def on_assigned(self, partitions) -> None:
        self.assigned_partitions.set(len(partitions))

    def on_changelog_short(self, topic: str, missing: list[int]) -> None:
        self.changelog_missing.set(len(missing))

    def on_revoked(self, partitions) -> None:
        for tp in partitions:
            self.forget_partition(tp.topic, tp.partition)
        self.assigned_partitions.set(0)

    def set_model(self, model) -> None:
        """The loaded model's info, device, threshold and training time (at start and after a swap)."""
        d = model.detector
        self.device_info.info({"device": str(d.device)})
        self.model_info.info({"name": model.name, "version": str(model.version), "kind": d.kind,
                              "window": str(d.window), "channels": str(len(d.channels))})
        self.threshold.set(float(model.threshold.value))
        trained = (model.metadata or {}).get("training", {}).get("trained_at")
        try:
            self._trained_at = datetime.fromisoformat(trained).timestamp() if trained else None
        except (TypeError, ValueError):
            self._trained_at = None

    def on_stats(self, stats_json: str) -> None:
        """librdkafka `stats_cb`: per-partition consumer lag."""
        try:
            stats = json.loads(stats_json)
        except ValueError:
            return
        for topic, t in stats.get("topics", {}).items():
            for part, pstats in t.get("partitions", {}).items():
                if part == "-1" or not pstats.get("fetch_state") or pstats.get("fetch_state") == "none":
                    continue
                lag = pstats.get("consumer_lag", -1)
                if lag is not None and lag >= 0:
                    self.consumer_lag.labels(topic=topic, partition=part).set(lag)

    def forget_partition(self, topic: str, partition: int) -> None:
        try:
            self.consumer_lag.remove(topic, str(partition))
        except KeyError:
            pass

    def serve(self, port: int, addr: str = "127.0.0.1", health=None):
        """Serve /metrics, and /healthz and /readyz when `health` (pipeline.health.Health) is
        given; returns (server, thread). Port 0 picks a free port (`server.server_port`)."""
        app = _with_health(make_wsgi_app(self.registry), health)
        server_class = _Server6 if ":" in addr else _Server
        server = make_server(addr, port, app, server_class, handler_class=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
        thread.start()
        return server, thread


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper never holds the process at exit


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """No line per scrape or probe."""


def _with_health(metrics_app, health):
    """/healthz and /readyz: 200 with the reason when ok, 503 with the reason when not (plain
    text, one line: what `kubectl describe pod` shows for a failing probe); /metrics; any other
    path 404 (serving the metrics everywhere hid a scrape config's typo)."""

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        check = {"/healthz": "liveness", "/readyz": "readiness"}.get(path) if health is not None else None
        if path == "/metrics":
            return metrics_app(environ, start_response)
        if check is None:
            body = b"not found: /metrics, /healthz and /readyz are served here\n"
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8"),
                                             ("Content-Length", str(len(body)))])
            return [body]
        ok, reason = getattr(health, check)()
        body = f"{'ok' if ok else 'not ok'}: {reason}\n".encode()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
                        ("Cache-Control", "no-store")])
        return [body]

    return app


def observe_many(histogram: Histogram, values) -> None:
    """Observe an array of values at once: one numpy pass instead of a Python call per value.

    Uses prometheus-client's histogram internals (`_upper_bounds`, `_buckets`, `_sum`), which
    have been stable for years; falls back to per-value `observe` if they change.
    """
    import numpy as np

    values = np.asarray(values, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]  # NaN has no bucket (searchsorted puts it past +Inf)
    if values.size == 0:
        return
    try:
        bounds = np.asarray(histogram._upper_bounds, dtype=np.float64)
        buckets, total = histogram._buckets, histogram._sum
    except AttributeError:
        for v in values:
            histogram.observe(float(v))
        return
    # Prometheus buckets are `le` (<=); the client stores per-bucket (not cumulative) counts.
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for i in np.flatnonzero(counts):
        buckets[i].inc(float(counts[i]))
    total.inc(float(values.sum()))
