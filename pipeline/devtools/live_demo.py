"""`latentwatch demo`: the whole system live on one machine.

Local broker (unless a Kafka address is configured: --bootstrap, --config, LATENTWATCH_*) -> topics -> a model trained on simulated normal data ->
simulator + pipeline + metrics (with `--format avro|protobuf`, a local schema registry too, and the
simulator writes schema'd records through it) -> live progress in the terminal -> a summary scored against the
simulator's ground truth -> everything started is stopped again.

Sensor health (issue 30): the demo injects a stuck, a flatlined and a silent sensor (one each, on
the last sensors, from step 60: `simulate.schedule_health_faults`), trains the health rules with
its model, and its summary lists the health episodes by rule and sensor beside the process
anomalies, and whether each injected fault opened an episode of its own rule.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from confluent_kafka import Consumer, Producer

from latentwatch.pipeline.config import KafkaSettings, load_settings
from latentwatch.pipeline.devtools.local_kafka import LocalBroker, port_in_use
from latentwatch.pipeline.devtools.local_registry import LocalRegistry
from latentwatch.pipeline.kafka import clients
from latentwatch.pipeline.devtools.simulate import (
    FLEET_KINDS,
    HEALTH_FAULT_LENGTH,
    HEALTH_KINDS,
    KINDS,
    BackgroundStream,
    FleetSimulator,
    SensorSimulator,
    schedule_health_faults,
    schema_encoder,
)
from latentwatch.pipeline.devtools.truth import evaluate, evaluate_health

log = logging.getLogger("latentwatch.demo")
_QUIET = logging.getLogger("latentwatch.demo.clients")  # the demo's own clients: no librdkafka chatter
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())

# The classic simulator's random kinds (`demo --classic`, and the drift scenario) leave its own
# `stuck` out: its events are 5-30 readings long, shorter than the stuck rule's N = 30
# (detectors/health.py), and reconstruction error cannot see a frozen value. The stuck, flatlined
# and silent sensors come from the health faults instead (DemoOptions.health_faults, both
# simulators: 200, 200 and 360 readings); `--kinds all` adds the short random ones.
DEFAULT_KINDS = tuple(k for k in KINDS if k != "stuck")
# The default demo simulates a fleet (issue 28): assets at their own operating points, with every
# fleet trouble kind (FLEET_KINDS: stuck, flatline and silent included, which the health rules see).
DEFAULT_FLEET_KINDS = FLEET_KINDS
# The demo's event time is the wall clock, at rate / sensors readings/s per sensor (20/s at the
# defaults), so the health rules' default silent_s (300 s) would not fit a demo: its model is
# trained with silent_s = this fraction of a silent fault's length (360 readings: 9 s at the defaults).
SILENT_FRACTION = 0.5
# The simulated sensors start once the pipeline holds partitions (or after this long): readings
# produced before the group's first join are a start-up backlog, which made the demo's end-to-end
# p99 (416 ms at 400 readings/s, p50 19 ms) a measure of its own start, not of the steady state.
ASSIGNMENT_WAIT_S = 30.0
BAD_MESSAGES = [b"{not json", b'{"sensor_id": "sensor-x", "ts": "soon", "values": [1]}',
                b'{"sensor_id": "sensor-x", "ts": 1, "values": {}}', b"\xff\xfe"]


@dataclass
class DemoOptions:
    kafka: KafkaSettings | None = None  # an existing cluster (TLS, SASL...); None: a local broker
    duration: float | None = None
    rate: float = 400.0
    sensors: int = 20
    channels: int = 8
    anomaly_rate: float = 0.02  # the CLI passes 0.1 for the fleet (its events are longer: fewer of them)
    kinds: tuple[str, ...] = DEFAULT_KINDS  # the classic simulator's (--classic, drift scenario)
    fleet: bool = True  # the anomalies scenario simulates a fleet (FleetSimulator) unless --classic
    fleet_kinds: tuple[str, ...] = DEFAULT_FLEET_KINDS
    health_faults: tuple[str, ...] = HEALTH_KINDS  # one sensor each, both simulators (schedule_health_faults)
    window: int = 8
    epochs: int = 15
    metrics_port: int = 9464
    seed: int = 7
    quiet: bool = False
    scenario: str = "anomalies"  # or "drift": drift_demo.py
    phase: float = 40.0  # seconds per phase of the drift scenario
    format: str = "json"  # or avro / protobuf: records through a schema registry (run_demo starts one)
    registry_url: str | None = None  # set by run_demo for a schema'd format


def out(text: str = "") -> None:
    print(text, flush=True)


# What runs once Kafka is up: (options, Kafka, a work directory) -> exit code. The plain demo by
# default; `demo --scenario drift` passes drift_demo.run_drift, which builds on this module and is
# therefore chosen by the CLI, not imported here (that was an import circle).
Scenario = Callable[[DemoOptions, KafkaSettings, str], int]


def run_demo(opts: DemoOptions, scenario: Scenario | None = None) -> int:
    workdir = tempfile.mkdtemp(prefix="latentwatch-demo-")
    broker = registry = None
    try:
        kafka = opts.kafka
        if kafka is None:
            out("starting a local Kafka broker ...")
            broker = LocalBroker(f"{workdir}/broker")
            t0 = time.monotonic()
            kafka = KafkaSettings(bootstrap_servers=broker.start().bootstrap)
            out(f"broker ready at {kafka.bootstrap_servers} ({time.monotonic() - t0:.1f} s)")
        if opts.format != "json" and opts.registry_url is None:
            out("starting a local schema registry (Apicurio) ...")
            registry = LocalRegistry(f"{workdir}/registry")
            t0 = time.monotonic()
            opts = replace(opts, registry_url=registry.start().url)
            out(f"schema registry ready at {opts.registry_url} ({time.monotonic() - t0:.1f} s)")
        return (scenario or _run)(opts, kafka, workdir)
    finally:
        if registry is not None:
            registry.stop()
            out("schema registry stopped")
        if broker is not None:
            broker.stop()
            out("broker stopped")
        shutil.rmtree(workdir, ignore_errors=True)


def silent_after(opts: DemoOptions) -> float:
    """The demo model's silent_s: SILENT_FRACTION of a silent fault's length in event time at the
    demo's pace (rate / sensors readings/s per sensor, the wall clock)."""
    per_sensor_s = opts.sensors / opts.rate if opts.rate > 0 else 0.05
    return max(1.0, round(SILENT_FRACTION * HEALTH_FAULT_LENGTH["silent"] * per_sensor_s, 1))


def make_simulator(opts: DemoOptions):
    """(simulator, its random kinds, the health faults scheduled on it)."""
    kinds = opts.fleet_kinds if opts.fleet else opts.kinds
    if opts.fleet:
        sim = FleetSimulator(opts.sensors, opts.channels, seed=opts.seed, anomaly_rate=opts.anomaly_rate,
                             kinds=list(kinds), sensor_prefix="sensor-")
    else:
        sim = SensorSimulator(sensors=opts.sensors, channels=opts.channels, seed=opts.seed,
                              anomaly_rate=opts.anomaly_rate, kinds=list(kinds))
    return sim, kinds, schedule_health_faults(sim, opts.health_faults)


def _train(opts: DemoOptions, sim: SensorSimulator | FleetSimulator, workdir: str):
    """What `latentwatch train` does with a CSV of the simulator's normal readings and their
    `sensor_id` column: each sensor's baseline (and own model where it holds), the shared window
    autoencoder on the readings standardised by their sensor's baseline, the alarm rules, the
    sensor-health rules (with the demo's silent_s: `silent_after`)."""
    from latentwatch.detectors import recipe
    from latentwatch.detectors.checkpoint import load, save, summarise_training_data
    from latentwatch.detectors.health import HealthRule

    n = 25_000
    data = sim.normal_training_data(n)
    per = -(-n // len(sim.sensor_ids))  # sensors (assets) one after another, in time order
    ids = np.repeat(np.asarray(sim.sensor_ids), per)[:len(data)]
    out(f"training a window autoencoder (window {opts.window}) on {len(data):,} simulated normal readings of "
        f"{len(sim.sensor_ids)} sensors, each with its own baseline ...")
    t0 = time.monotonic()
    t = recipe.train(data, sim.channel_names, recipe.Recipe(model="window", window=opts.window, epochs=opts.epochs,
                                                            seed=opts.seed, latent=8), sensor_ids=ids)
    health = HealthRule.fit(data, sim.channel_names, ids, silent_s=silent_after(opts))
    path = f"{workdir}/model"
    save(path, t.detector, t.threshold, summarise_training_data(data, sim.channel_names), name="demo-window-ae",
         alarm=t.rule, baselines=t.baselines, own_alarm=t.own_rule, health=health)
    out(f"trained in {time.monotonic() - t0:.1f} s; {t.baselines.owned} of {t.baselines.sensors} sensors with an "
        f"own model; {t.rule.describe()}; sensor health: {health.describe()}")
    return load(path, device="auto")


def _run(opts: DemoOptions, kafka: KafkaSettings, workdir: str) -> int:
    run_id = uuid.uuid4().hex[:6]
    topics = {"topics.input": f"demo-readings-{run_id}", "topics.alerts": f"demo-alerts-{run_id}",
              "topics.dead_letter": f"demo-readings-{run_id}.dlq"}
    port = opts.metrics_port if opts.metrics_port and not port_in_use(opts.metrics_port) else 0
    registry = {"schema_registry.url": opts.registry_url} if opts.registry_url else {}
    settings = load_settings(None, {"kafka": kafka.model_dump(), **topics, **registry,
                                    "group_id": f"demo-{run_id}", "metrics.port": port,
                                    "create_topics": True, "batch.max_wait_ms": 10})
    sim, kinds, faults = make_simulator(opts)
    truth: list = []
    unsent: list = []  # silent readings: not sent, with the event time they would have had
    model = _train(opts, sim, workdir)
    fmt = schema_encoder(opts.format, opts.registry_url, settings.topics.input) if opts.format != "json" else "json"
    pipeline, runner, producer, stream, metrics_url = start_live(settings, model, sim, opts.rate,
                                                                 on_truth=truth.extend, on_unsent=unsent.extend,
                                                                 fmt=fmt)
    alerts: list[dict] = []
    watcher = AlertWatcher(settings, alerts, quiet=opts.quiet)
    watcher.start()
    what = "a fleet of " if opts.fleet else ""
    out(f"simulating {what}{opts.sensors} sensors x {opts.channels} channels at {opts.rate:.0f} readings/s "
        f"({opts.format}), "
        f"anomalies: {', '.join(kinds)} — Ctrl+C to stop" +
        (f" (or {opts.duration:.0f} s)" if opts.duration else ""))
    if faults:
        out("sensor faults: " + ", ".join(f"{sim.sensor_ids[e.asset]} {e.kind} for {e.length} readings"
                                          for e in faults) + f" from reading {min(e.start for e in faults)}")

    started = time.monotonic()
    try:
        next_status, bad_i = started + 2, 0
        while opts.duration is None or time.monotonic() - started < opts.duration:
            time.sleep(0.2)
            if stream.error:
                raise stream.error
            if time.monotonic() >= next_status:
                next_status += 2
                producer.produce(settings.topics.input, BAD_MESSAGES[bad_i % len(BAD_MESSAGES)], key=b"sensor-x")
                producer.poll(0)
                bad_i += 1
                _status(pipeline, stream, alerts, time.monotonic() - started)
    except KeyboardInterrupt:
        out("\nstopping ...")
    stats = stream.stop()
    producer.flush(30)
    _drain(pipeline, stats.delivered_readings + bad_i, timeout=30)
    pipeline.stop()
    runner.join(settings.shutdown_timeout_s + 5)
    watcher.stop(expect=pipeline.metrics)
    _summary(pipeline, stats, truth, alerts, bad_i, opts, metrics_url, time.monotonic() - started,
             health=(unsent, watcher.health, model.health))
    return 0  # Ctrl+C is how the demo is meant to end


def start_live(settings, model, sim: SensorSimulator | FleetSimulator, rate: float, on_truth=None, on_unsent=None,
               fmt="json"):
    """What both scenarios start: the input topic, the pipeline in its own thread, a producer
    and the simulated stream. Returns (pipeline, its thread, producer, stream, metrics URL)."""
    from latentwatch.pipeline.runner import Pipeline  # torch: only once the demo really runs

    _create_input_topic(settings, partitions=4)
    pipeline = Pipeline(settings, model)
    pipeline.start()
    metrics_url = f"http://{settings.metrics.host}:{pipeline.metrics_server.server_port}/metrics"
    out(f"pipeline running (model version {model.version}): metrics at {metrics_url}")
    runner = threading.Thread(target=pipeline.run, name="pipeline", daemon=True)
    runner.start()
    _wait_assigned(pipeline.health, ASSIGNMENT_WAIT_S)
    producer = Producer(clients.tool_producer_config(settings, {"logger": _QUIET}))
    stream = BackgroundStream(producer, settings.topics.input, sim, rate=rate, on_truth=on_truth,
                              on_unsent=on_unsent, fmt=fmt).start()
    return pipeline, runner, producer, stream, metrics_url


def _wait_assigned(health, timeout_s: float) -> None:
    """Until the pipeline holds partitions, at most `timeout_s` (then the stream starts anyway:
    the pipeline catches up once the group answers)."""
    deadline = time.monotonic() + timeout_s
    while not health.partitions() and time.monotonic() < deadline:
        time.sleep(0.05)


def _create_input_topic(settings, partitions: int) -> None:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient(clients.admin_config(settings))
    clients.create_topics(admin, {settings.topics.input: partitions}, exist_ok=False)


def metric(metrics, name: str, **labels) -> float:
    """Sum of every sample of `name` (all label values, or those given) in the pipeline's registry."""
    return sum(s.value for m in metrics.registry.collect() for s in m.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _status(pipeline, stream, alerts, elapsed) -> None:
    scored = metric(pipeline.metrics, "latentwatch_readings_scored_total")
    dead = metric(pipeline.metrics, "latentwatch_dead_letters_total")
    out(f"[{elapsed:5.0f}s] produced {stream.stats.readings:,}  scored {scored:,.0f} ({scored / elapsed:,.0f}/s)"
        f"  alerts {len(alerts):,}  dead letters {dead:.0f}")


def _drain(pipeline, expected_readings: int, timeout: float) -> None:
    """Wait until the pipeline has handled everything produced (scored, warming up or dead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = (metric(pipeline.metrics, "latentwatch_readings_consumed_total")
                + metric(pipeline.metrics, "latentwatch_dead_letters_total"))
        if done >= expected_readings:
            return
        time.sleep(0.2)


class AlertWatcher(threading.Thread):
    """Prints alerts as they arrive (a few per second at most) and keeps them for the summary."""

    def __init__(self, settings, sink: list, quiet: bool):
        super().__init__(name="alerts", daemon=True)
        self.consumer = Consumer(clients.tool_consumer_config(settings, {
            "group.id": f"demo-tail-{uuid.uuid4().hex[:6]}", "auto.offset.reset": "earliest",
            "isolation.level": "read_committed", "logger": _QUIET}))
        self.consumer.subscribe([settings.topics.alerts])
        self.sink, self.quiet = sink, quiet
        self.episodes: list[dict] = []  # episode events (open, update, close), beside the per-reading alerts
        self.health: list[dict] = []  # health episode events (stuck, flatline, silent; docs/sensor-health.md)
        self._halt = threading.Event()
        self._printed_at: list[float] = []

    def run(self) -> None:
        while not self._halt.is_set():
            for msg in self.consumer.consume(500, timeout=0.2):
                if msg.error() is None:
                    self._show(json.loads(msg.value()))

    def _show(self, alert: dict) -> None:
        if alert.get("kind") == "episode":
            self.episodes.append(alert)
            return
        if alert.get("kind") == "health":  # issue 30: a sensor's own fault, not a process anomaly
            self.health.append(alert)
            return
        self.sink.append(alert)
        now = time.monotonic()
        self._printed_at = [t for t in self._printed_at if now - t < 1.0]
        if self.quiet or len(self._printed_at) >= 3:
            return
        self._printed_at.append(now)
        top = ", ".join(f"{c['channel']} {c['share']:.0%}" for c in alert["top_channels"])
        out(f"  ALERT {alert['severity']:8s} {alert['sensor_id']}  score {alert['score']:.3f} "
            f"(threshold {alert['threshold']:.3f})  top: {top}")

    def stop(self, expect) -> None:
        want = metric(expect, "latentwatch_alerts_total")
        want_health = metric(expect, "latentwatch_health_episode_events_total")
        deadline = time.monotonic() + 10
        while (len(self.sink) < want or len(self.health) < want_health) and time.monotonic() < deadline:
            time.sleep(0.1)
        self._halt.set()
        self.join(5)
        self.consumer.close()


def _summary(pipeline, stats, truth, alerts, bad, opts, metrics_url, elapsed, health=None) -> None:
    m = pipeline.metrics
    ev = evaluate(truth, alerts, tolerance=opts.window - 1, health_kinds=HEALTH_KINDS)
    p50, p99 = (_histogram_quantile(m.registry, "latentwatch_end_to_end_latency_seconds", q) for q in (0.5, 0.99))
    out("\n=== latentwatch demo summary ===")
    out(f"ran {elapsed:.0f} s; readings produced {stats.delivered_readings:,}, "
        f"scored {metric(m, 'latentwatch_readings_scored_total'):,.0f}, "
        f"warming up {metric(m, 'latentwatch_readings_warming_up_total'):,.0f}")
    out(f"dead letters {metric(m, 'latentwatch_dead_letters_total'):.0f} (malformed messages sent: {bad})")
    out(f"anomalies injected {ev.events} (events), alerted {ev.detected}: recall {ev.recall:.3f} (process "
        f"anomalies; the sensor faults {', '.join(HEALTH_KINDS)} are judged by the health rules, below)")
    out(f"alerts {ev.alerts}: precision {ev.precision:.3f} (an alert is right when it falls on an injected "
        f"anomaly or sensor fault, or within {opts.window - 1} readings after it)")
    for kind, (n, hit) in sorted(ev.by_kind.items()):
        out(f"  {kind:18s} {hit}/{n}")
    out(f"episodes opened {metric(m, 'latentwatch_episode_events_total', event='open'):.0f}, closed "
        f"{metric(m, 'latentwatch_episode_events_total', event='close'):.0f} (one incident per sensor alarm)")
    if health is not None:
        _health_summary(truth, *health)
    if ev.delays_s:
        out(f"detection delay (event time): median {np.median(ev.delays_s):.1f} s, max {max(ev.delays_s):.1f} s")
    out(f"end-to-end latency (Kafka timestamp -> outputs acknowledged and committed): "
        f"p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    out(f"metrics were served at {metrics_url}")


def _health_summary(truth, unsent, records, rule, show: int = 12) -> None:
    """Injected sensor faults against the health episodes (truth.evaluate_health), and the episodes
    opened by rule with their sensors."""
    if rule is None:
        out("health episodes opened: none (the model has no health rules)")
        return
    limits = {"stuck": int(rule.limit[rule.judged].max()) if rule.judged.any() else None,
              "flatline": rule.flat_n if rule.judged.any() else None, "silent": rule.silent_s}
    h = evaluate_health(truth, unsent, records, limits)
    judged = [f for f in h.faults if f.status != "too short"]
    out(f"sensor faults injected {len(h.faults)}, caught {sum(f.status == 'caught' for f in h.faults)} of the "
        f"{len(judged)} that outlasted their rule's limit (a health episode of the fault's rule on its sensor; "
        f"stuck after {limits['stuck']} and flatline after {limits['flatline']} still readings, silent after "
        f"{rule.silent_s:g} s of event time):")
    for f in h.faults[:show]:
        when = f" after {f.delay_s:.1f} s" if f.delay_s is not None else ""
        out(f"  fault {f.kind:9s} {f.sensor_id}  {f.status}{when} ({f.readings} readings"
            + (f", {f.span_s:.1f} s" if f.kind == "silent" else "") + ")")
    if len(h.faults) > show:
        out(f"  ... and {len(h.faults) - show} more")
    by_rule = ", ".join(f"{r} {len(s)}" + (f" ({', '.join(sorted(set(s)))})" if s else "")
                        for r, s in h.opened.items())
    out(f"health episodes opened: {by_rule}; {len(h.false)} on a sensor without an injected fault"
        + (f" ({', '.join(f'{r} {s}' for r, s in h.false[:show])})" if h.false else ""))


def _histogram_quantile(registry, name: str, q: float) -> float:
    """Prometheus-style quantile (linear within a bucket) from a histogram's cumulative buckets."""
    buckets = sorted(((float(s.labels["le"]), s.value) for metric in registry.collect() for s in metric.samples
                      if s.name == name + "_bucket"), key=lambda b: b[0])
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    rank = q * buckets[-1][1]
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * (rank - prev_count) / max(count - prev_count, 1e-12)
        prev_le, prev_count = le, count
    return prev_le


def main_demo(opts: DemoOptions, scenario: Scenario | None = None) -> int:
    logging.getLogger("latentwatch").setLevel(logging.WARNING)
    logging.getLogger("latentwatch.librdkafka").setLevel(logging.ERROR)  # start-up retries are normal
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # the registry client's every request (--format avro)
    try:
        return run_demo(opts, scenario)
    except KeyboardInterrupt:
        out("interrupted")
        return 130
    finally:
        sys.stdout.flush()
