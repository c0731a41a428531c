"""End to end through Prometheus: a model trained by `latentwatch train`, `latentwatch run` as a
process on the real broker, real traffic (normal readings, anomalies, bad messages), a real
Prometheus scraping the pipeline every second. Every PromQL expression of the Grafana dashboard
returns data, and the counters agree with the traffic sent."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tests.support.dashboard import GRAFANA_VARS, dashboard_exprs
from tests.support.prom import free_port, make_prometheus, needs_prometheus  # noqa: F401  (fixture)

pytestmark = [pytest.mark.broker, needs_prometheus]

ROOT = Path(__file__).resolve().parents[2]
CH = ["c0", "c1", "c2", "c3"]


def normal_values(rng, n):
    f = rng.normal(size=(n, 2))
    return np.stack([f[:, 0], f[:, 0] + 0.1 * rng.normal(size=n), f[:, 1], f[:, 0] - f[:, 1]], 1)


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory) -> str:
    """A small point-wise autoencoder trained on normal data by `latentwatch train`."""
    d = tmp_path_factory.mktemp("e2e-model")
    rng = np.random.default_rng(0)
    X = normal_values(rng, 3000)
    lines = ["ts," + ",".join(CH)] + [f"{1.7e9 + i:.0f}," + ",".join(f"{v:.5f}" for v in row)
                                      for i, row in enumerate(X)]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    cli("train", "--data", str(d / "train.csv"), "--out", str(d / "model"), "--model", "mlp",
        "--epochs", "8", "--seed", "0", "--device", "cpu", "--threshold", "quantile", "--quantile", "0.999")
    return str(d / "model")


@pytest.fixture
def pipeline_process(tmp_path):
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        log = open(tmp_path / f"run-{len(started)}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "latentwatch.pipeline.cli", "run", *args], cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc.log_path = tmp_path / f"run-{len(started)}.log"
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"pipeline exited {proc.returncode}:\n{proc.log_path.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"{url} never answered:\n{proc.log_path.read_text()[-3000:]}"
        time.sleep(0.3)


def count_messages(bootstrap: str, topic: str, timeout: float = 20.0) -> int:
    """Committed messages in `topic` (read_committed, from the beginning, until idle)."""
    import uuid

    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "isolation.level": "read_committed"})
    c.subscribe([topic])
    n, deadline, idle = 0, time.monotonic() + timeout, time.monotonic()
    try:
        while time.monotonic() < deadline:
            msgs = [m for m in c.consume(1000, timeout=0.5) if m.error() is None]
            n += len(msgs)
            if msgs:
                idle = time.monotonic()
            elif n and time.monotonic() - idle > 2:
                break
    finally:
        c.close()
    return n


def test_dashboard_queries_and_counters_on_a_running_pipeline(
        kafka_bootstrap, make_topic, producer, trained_model, pipeline_process, make_prometheus):
    inp = make_topic(partitions=2, prefix="e2e-in")
    alerts = make_topic(prefix="e2e-alerts")
    dlq = make_topic(prefix="e2e-dlq")
    port = free_port()
    proc = pipeline_process(
        "--model", trained_model, "--bootstrap", kafka_bootstrap, "--input-topic", inp,
        "--alerts-topic", alerts, "--dead-letter-topic", dlq, "--group-id", f"e2e-{inp}",
        "--metrics-port", str(port), "--device", "cpu", "--batch-size", "50")
    wait_http(f"http://127.0.0.1:{port}/metrics", proc)
    prom = make_prometheus([f"127.0.0.1:{port}"])
    prom.wait_for_targets_up()

    # traffic: N single-reading messages from 8 sensors, event times increasing per sensor;
    # 8 anomalies (one channel pushed far out), K bad messages of known reasons
    n_good, anomalies = 400, 8
    bad = {"not_json": [b"\x01garbage", b"{\"sensor_id\": "],  # a first byte 0 is the schema wire format now
           "missing_channels": [{"sensor_id": "s1", "ts": time.time(), "values": {"c0": 1.0, "c1": 1.0}}],
           "schema": [{"sensor_id": "s2", "ts": time.time(), "values": "high"},
                      {"sensor_id": "s3", "values": {c: 0.0 for c in CH}}]}
    k = sum(len(v) for v in bad.values())
    rng = np.random.default_rng(1)
    values = normal_values(rng, n_good)
    now = time.time() - n_good
    for i in range(n_good):
        v = values[i].copy()
        if i % (n_good // anomalies) == 7:
            v[i % 4] += 15.0
        sensor = f"s{i % 8}"
        producer.produce(inp, key=sensor.encode(), value=json.dumps(
            {"sensor_id": sensor, "ts": now + i, "values": dict(zip(CH, v.tolist()))}).encode())
    for reason, items in bad.items():
        for item in items:
            producer.produce(inp, key=b"bad", value=item if isinstance(item, bytes) else json.dumps(item).encode())
    assert producer.flush(30) == 0
    total = n_good + k

    # Prometheus sees everything processed (bounded wait), and consumer lag reported
    prom.wait_for(lambda: prom.value("sum(latentwatch_messages_consumed_total)") == total, 120,
                  f"{total} messages consumed")
    prom.wait_for(lambda: prom.value("sum(latentwatch_dead_letters_total)") == k, 60, f"{k} dead letters")
    prom.wait_for(lambda: prom.query("latentwatch_consumer_lag_messages"), 60, "consumer lag series")
    prom.wait_for_scrapes(2)

    # the counters agree with the traffic
    assert prom.value("sum(latentwatch_readings_scored_total)") == n_good
    assert prom.value("sum(latentwatch_readings_consumed_total)") == n_good
    assert prom.value("sum(latentwatch_dead_letters_total)") == k
    for reason, items in bad.items():
        assert prom.value(f'sum(latentwatch_dead_letters_total{{reason="{reason}"}})') == len(items), reason
    assert prom.value("sum(latentwatch_reconstruction_score_count)") == n_good
    alerts_counted = prom.value("sum(latentwatch_alerts_total)")
    assert alerts_counted >= anomalies // 2  # the injected anomalies alert (most of them at least)
    episodes_counted = prom.value("sum(latentwatch_episode_events_total)")
    assert episodes_counted >= prom.value('sum(latentwatch_episode_events_total{event="open"})') > 0
    # the alerts topic: a record per alarmed reading and one per episode event, all counted
    assert count_messages(kafka_bootstrap, alerts) == alerts_counted + episodes_counted
    assert count_messages(kafka_bootstrap, dlq) == k
    assert prom.value('latentwatch_model_info') == 1
    assert prom.value('latentwatch_device_info') == 1
    assert prom.value("latentwatch_threshold") > 0

    # every dashboard query returns data as Grafana would ask ($__rate_interval = 30s) ...
    exprs = dashboard_exprs()
    empty = [e for e in exprs if not prom.query(e)]
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)
    # ... and, over a window holding all the traffic, finite values (the rates are not 0/0)
    # The drift gauges are NaN by design until the 2-minute drift window holds 500 readings
    # (pipeline/lifecycle/drift.py); this test sends fewer. They must return data (above), not a number.
    # The shadow correlation is NaN by design while no candidate runs beside the model (--shadow).
    warming = ("latentwatch_latent_drift_psi", "latentwatch_live_exceedance_ratio",
               "latentwatch_shadow_score_correlation")
    wide = [e.replace(f"[{GRAFANA_VARS['$__rate_interval']}]", "[10m]") for e in exprs
            if not any(name in e for name in warming)]
    not_finite = [(e, r) for e in wide for r in prom.query(e) if not math.isfinite(float(r["value"][1]))]
    assert not_finite == []

    # the pipeline is still healthy and stops cleanly
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, proc.log_path.read_text()[-3000:]
