"""`latentwatch demo --scenario drift`: the model lifecycle live, in a few minutes.

1. `latentwatch train` a window model on simulated normal data, into a versioned model directory;
2. the pipeline (watching that directory) scores a normal stream for one phase: the latent drift
   metric stays low, few alerts;
3. the simulated plant moves to another operating point (not an anomaly: every channel shifts
   consistently): alerts jump and `latentwatch_latent_drift_psi` rises past the "model stale"
   rule's threshold (0.25) and stays there (the demo's stand-in for the Prometheus rule's `for`);
4. after a phase of traffic at the new point, `latentwatch train --from-topic` retrains on that
   range of the input topic (readings the old model alerted on and dead letters left out),
   `latentwatch models promote` makes it current and the pipeline swaps it in between batches;
5. one more phase on the retrained model: the drift metric falls back under the threshold and
   the alert rate comes down, part of the way (measured at --phase 30: 14.8 alerts per 1000
   readings normal, 35.4 after the change, 26.9 retrained; drift PSI 0.18, 0.74-3.4, 0.04). It
   stays above the normal rate because the readings the old model alerted on at the new point,
   mostly false alerts there, are left out of the retraining (by design of `--from-topic`, and
   only the design rate of them, 1 %, is readmitted), which makes the new threshold tighter.

Every step does what the command an operator would run does, in-process and without its flags:
pipeline/lifecycle/'s `train_version`, `stream_training` and `promote`, which `latentwatch train`
and `models promote` run once cli/ has read theirs. `--phase` sets the length of each phase and
the drift metric's window (default 40 s: ~4 minutes in all with training).
"""

from __future__ import annotations

import csv
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from latentwatch.pipeline.config import KafkaSettings, load_settings
from latentwatch.pipeline.devtools.local_kafka import port_in_use
from latentwatch.pipeline.devtools.live_demo import AlertWatcher, DemoOptions, metric, out, start_live
from latentwatch.pipeline.devtools.simulate import SensorSimulator
from latentwatch.pipeline.lifecycle.retrain import current_metadata, stream_training
from latentwatch.pipeline.lifecycle.train import promote, train_version
from latentwatch.pipeline.times import iso, parse_time

STALE_PSI = 0.25  # LatentwatchModelStale's threshold (config/prometheus/rules/latentwatch.rules.yml)
SHIFT = 2.5  # the operating-point change, in standard deviations of the latent factors


@dataclass
class Phase:
    name: str
    scored: float = 0.0
    alerts: float = 0.0
    psi: float = math.nan

    @property
    def per_1000(self) -> float:
        return 1000 * self.alerts / self.scored if self.scored else math.nan


def run_drift(opts: DemoOptions, kafka: KafkaSettings, workdir: str) -> int:
    phase_s = opts.phase
    run_id = uuid.uuid4().hex[:6]
    root = Path(workdir) / "models" / "demo-drift"
    topics = {"topics.input": f"demo-drift-{run_id}", "topics.alerts": f"demo-drift-alerts-{run_id}",
              "topics.dead_letter": f"demo-drift-{run_id}.dlq"}
    sim = SensorSimulator(sensors=opts.sensors, channels=opts.channels, seed=opts.seed,
                          anomaly_rate=opts.anomaly_rate, kinds=list(opts.kinds))
    options = _recipe(opts)
    data = Path(workdir) / "normal.csv"
    with open(data, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(sim.channel_names)
        w.writerows(sim.normal_training_data(20_000).tolist())
    out(f"1. latentwatch train --data normal.csv --out {root.name} (simulated normal readings) ...")
    _train_csv(data, root, options)

    port = opts.metrics_port if opts.metrics_port and not port_in_use(opts.metrics_port) else 0
    settings = load_settings(None, {"kafka": kafka.model_dump(), **topics, "group_id": f"demo-drift-{run_id}",
                                    "metrics.port": port, "create_topics": True, "batch.max_wait_ms": 10,
                                    "model.path": str(root), "model.drift_window_s": phase_s})
    from latentwatch.detectors.checkpoint import load

    pipeline, runner, producer, stream, metrics_url = start_live(settings, load(root, device="auto"), sim, opts.rate)
    alerts: list[dict] = []
    watcher = AlertWatcher(settings, alerts, quiet=True)
    watcher.start()
    m = pipeline.metrics
    phases: list[Phase] = []
    clock = {"started": time.monotonic()}

    def snapshot() -> tuple[float, float]:
        return metric(m, "latentwatch_readings_scored_total"), metric(m, "latentwatch_alerts_total")

    def run_phase(name: str, seconds: float, until=None) -> Phase:
        """Stream for `seconds` (or until `until()` is true, at most `seconds`), a status line
        every quarter phase; the phase's scored readings, alerts and last PSI."""
        scored0, alerts0 = snapshot()
        end, next_line = time.monotonic() + seconds, time.monotonic() + seconds / 4
        while time.monotonic() < end and not (until is not None and until()):
            time.sleep(0.2)
            if stream.error:
                raise stream.error
            if time.monotonic() >= next_line:
                next_line += seconds / 4
                _line(m, clock["started"])
        scored1, alerts1 = snapshot()
        phase = Phase(name, scored1 - scored0, alerts1 - alerts0, metric(m, "latentwatch_latent_drift_psi"))
        phases.append(phase)
        return phase

    try:
        out(f"2. normal operation for {phase_s:.0f} s ({opts.sensors} sensors x {opts.channels} channels, "
            f"{opts.rate:.0f} readings/s, anomalies injected at {opts.anomaly_rate:.0%})")
        run_phase("normal", phase_s)
        sim.change_operating_point(SHIFT)
        # The stream generates readings a chunk (2,000 readings) ahead: the new point reaches
        # the topic up to a chunk's time later. Retraining starts after that.
        changed_at, settled_at = time.time(), time.time() + 2000 / opts.rate + 1
        out(f"3. the plant moves to another operating point (shift {SHIFT} std): watch the drift metric")
        stale = _StaleRule(m, hold_s=phase_s / 4)
        run_phase("new operating point, old model", 3 * phase_s, until=stale.firing)
        if stale.fired_at is None:
            out(f"   the drift metric did not stay above {STALE_PSI} (PSI {phases[-1].psi:.3f}); retraining anyway")
        else:
            out(f"   DRIFT ALERT: latentwatch_latent_drift_psi {stale.value:.2f} > {STALE_PSI} for "
                f"{stale.hold_s:.0f} s, {stale.fired_at - changed_at:.0f} s after the change "
                "(LatentwatchModelStale would fire)")
        wait = max(0.0, settled_at + phase_s - time.time())
        if wait:
            out(f"   collecting {wait:.0f} s more of the new operating point to retrain on ...")
            run_phase("new operating point, old model (cont.)", wait)
        since, until = iso(settled_at), iso(time.time())
        out(f"4. latentwatch train --from-topic {settings.topics.input} --since {since} --until {until} "
            f"--out {root.name} --no-promote")
        _train_topic(settings.topics.input, since, until, root, options, kafka, settings.topics.alerts)
        from latentwatch.detectors import versions

        new = versions.list_versions(root)[-1]
        out(f"   latentwatch models promote {root.name} {new}")
        pointer = promote(root, new)
        print(f"{root}: current is now {pointer.version}" + (f" (was {pointer.previous[0]})" if pointer.previous else ""))
        pipeline.lifecycle.request_check()  # what SIGHUP does; without it the watcher looks within 5 s
        deadline = time.monotonic() + 60
        while pipeline.model.version != new and time.monotonic() < deadline:
            time.sleep(0.1)
        out(f"   the pipeline swapped version {new} in between two batches" if pipeline.model.version == new
            else "   the new version was not swapped in within 60 s")
        out(f"5. the retrained model at the new operating point for {phase_s:.0f} s")
        run_phase("new operating point, retrained model", phase_s)
    finally:
        stream.stop()
        producer.flush(30)
        pipeline.stop()
        runner.join(settings.shutdown_timeout_s + 5)
        watcher.stop(expect=m)
    _summary(phases, metrics_url, time.monotonic() - clock["started"])
    return 0


class _StaleRule:
    """The demo's stand-in for the Prometheus rule: PSI above the threshold for `hold_s`."""

    def __init__(self, metrics, hold_s: float):
        self.metrics, self.hold_s = metrics, hold_s
        self.since: float | None = None
        self.fired_at: float | None = None
        self.value = math.nan

    def firing(self) -> bool:
        self.value = metric(self.metrics, "latentwatch_latent_drift_psi")
        now = time.monotonic()
        if not self.value > STALE_PSI:  # NaN too
            self.since = None
            return False
        self.since = self.since or now
        if now - self.since >= self.hold_s and self.fired_at is None:
            self.fired_at = time.time()
        return self.fired_at is not None


def _line(m, started: float) -> None:
    psi = metric(m, "latentwatch_latent_drift_psi")
    out(f"[{time.monotonic() - started:5.0f}s] scored {metric(m, 'latentwatch_readings_scored_total'):,.0f}  "
        f"alerts {metric(m, 'latentwatch_alerts_total'):,.0f}  drift PSI "
        f"{'(filling)' if math.isnan(psi) else f'{psi:.3f}'}")


def _summary(phases: list[Phase], metrics_url: str, elapsed: float) -> None:
    out("\n=== latentwatch demo --scenario drift: summary ===")
    out(f"{'phase':42s} {'scored':>9s} {'alerts':>7s} {'per 1000':>9s} {'drift PSI':>10s}")
    for p in phases:
        out(f"{p.name:42s} {p.scored:9,.0f} {p.alerts:7,.0f} {p.per_1000:9.1f} {p.psi:10.3f}")
    out(f"(the model-stale rule fires above {STALE_PSI}; ran {elapsed:.0f} s; metrics were at {metrics_url})")


def _recipe(opts: DemoOptions):
    """`train --model window --window W --epochs E --seed S --score both`, train's other defaults."""
    from latentwatch.detectors import resolve_device
    from latentwatch.detectors.recipe import Recipe

    return Recipe(model="window", window=opts.window, epochs=opts.epochs, seed=opts.seed, score="both",
                  device=str(resolve_device("auto")))


def _train_csv(path: Path, root: Path, options) -> None:
    """`latentwatch train --data PATH --out ROOT` with `options`, as the command runs it."""
    from latentwatch.detectors.csvdata import read_csv

    part = read_csv(str(path))
    _trained(train_version(part.values, part.channels, options, str(root), parts=[part], name="demo-drift"),
             "1 file(s)")


def _train_topic(topic: str, since: str, until: str, root: Path, options, kafka: KafkaSettings, alerts_topic: str) -> None:
    """`latentwatch train --from-topic TOPIC --since --until --out ROOT --no-promote --bootstrap
    --alerts-topic` with `options`: the channels and the alert rate of the current model at ROOT."""
    settings = load_settings(None, {"kafka.bootstrap_servers": kafka.bootstrap_servers, "topics.alerts": alerts_topic})
    current = current_metadata(str(root))
    stream = stream_training(settings, topic, list(current["channels"]), parse_time(since), parse_time(until),
                             current=current)
    _trained(train_version(stream.values, stream.channels, options, str(root), stream=stream, name="demo-drift",
                           promote=False), topic)


def _trained(new, origin: str) -> None:
    print(new.describe(origin))
    if new.note():
        print(new.note())
