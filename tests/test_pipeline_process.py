"""`latentwatch run` as a real process: SIGTERM, SIGKILL and restart, two processes in a group."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest

from .ledger import build_ledger, committed_lag
from .pipeline_harness import read_topic

CH = ["c0", "c1", "c2", "c3"]


def normal_values(rng, n):
    f = rng.normal(size=(n, 2))
    return np.stack([f[:, 0], f[:, 0] + 0.1 * rng.normal(size=n), f[:, 1], f[:, 0] - f[:, 1]], 1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from detectors.checkpoint import save, summarise_training_data
    from detectors.models import MLPAutoencoder
    from detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(0)
    X = normal_values(rng, 4000).astype(np.float32)
    det = MLPAutoencoder(latent_dim=2, hidden=16, device="cpu").fit(X, CH, epochs=8, seed=0)
    held = normal_values(rng, 4000).astype(np.float32)
    thr = QuantileThreshold(0.999).fit(det.score(held[:, None, :]).score)
    path = tmp_path_factory.mktemp("model") / "mlp"
    save(path, det, thr, summarise_training_data(X, CH), name="test-mlp")
    return str(path)


class Stream:
    """Input topic plus the topics the pipeline writes, with the readings we sent."""

    def __init__(self, make_topic, partitions=4):
        self.partitions = partitions
        self.input = make_topic(partitions=partitions, prefix="in")
        self.alerts = make_topic(partitions=1, prefix="alerts")
        self.dead = make_topic(partitions=1, prefix="dlq")
        self.latent = make_topic(partitions=1, prefix="latent")
        self.group = f"g-{uuid.uuid4().hex[:6]}"
        self.refs: set = set()
        self.anomalies: set = set()
        self._lock = threading.Lock()

    def produce(self, producer, n, seed=0, anomaly_every=97, bad_every=0, rate=None, stop=None):
        """Produce up to `n` readings (at `rate` readings/s if given) until `stop` is set."""
        rng = np.random.default_rng(seed)
        values = normal_values(rng, n)
        now = time.time()
        started = time.monotonic()

        def on_delivery(err, msg, anomalous=False):
            assert err is None, err
            with self._lock:
                self.refs.add((msg.partition(), msg.offset(), 0))
                if anomalous:
                    self.anomalies.add((msg.partition(), msg.offset(), 0))

        for i in range(n):
            if stop is not None and stop.is_set():
                break
            if rate and i % 100 == 0:
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            sensor = f"s{i % 16}"
            v = values[i].copy()
            anomalous = anomaly_every and i % anomaly_every == 5
            if anomalous:
                v[i % 4] += 12.0
            body = json.dumps({"sensor_id": sensor, "ts": now - n + i, "values": v.tolist()}).encode()
            if bad_every and i % bad_every == 3:
                body = b"\x00garbage"  # a dead letter, not an anomaly to alert on
                anomalous = False
            producer.produce(self.input, body, key=sensor.encode(),
                             on_delivery=lambda e, m, a=anomalous: on_delivery(e, m, a))
            if i % 500 == 0:
                producer.poll(0)
        producer.flush(30)

    def ledger(self, bootstrap, read_committed=True):
        return build_ledger(bootstrap, self.input, self.refs, self.group, self.latent, self.dead, self.alerts,
                            self.partitions, read_committed)


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_process_left_behind():
    """Whatever a test started is killed when it ends, passed or failed."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def start_run(bootstrap, stream: Stream, model_dir, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--model", model_dir, "--bootstrap", bootstrap,
           "--input-topic", stream.input, "--alerts-topic", stream.alerts, "--dead-letter-topic", stream.dead,
           "--latent-topic", stream.latent, "--group-id", stream.group, "--metrics-port", "0",
           "--batch-size", "200", "--device", "cpu", *extra]
    # A killed member holds its partitions until its session times out: keep that short here.
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               LATENTWATCH_KAFKA__CONSUMER='{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}')
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _STARTED.append(proc)
    return proc


def metrics_url(proc: subprocess.Popen, timeout=60) -> str:
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"metrics: (http://\S+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # drain
            return m.group(1)
    raise AssertionError("pipeline did not start:\n" + "".join(lines))


def scrape(url: str, name: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def wait_metric(url, name, at_least, timeout=90) -> float:
    deadline = time.monotonic() + timeout
    value = 0.0
    while time.monotonic() < deadline:
        value = scrape(url, name)
        if value >= at_least:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{name} reached only {value}, wanted {at_least}")


def test_sigterm_finishes_commits_and_exits_zero(kafka_bootstrap, make_topic, producer, model_dir):
    s = Stream(make_topic)
    s.produce(producer, 3000)
    proc = start_run(kafka_bootstrap, s, model_dir)
    url = metrics_url(proc)
    wait_metric(url, "latentwatch_readings_scored_total", 3000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    led = s.ledger(kafka_bootstrap)
    assert not led.uncommitted and not led.lost and led.duplicates == 0
    assert not led.missing_alerts(s.anomalies)
    false_alarms = sum(led.alerts.values()) - len(s.anomalies)
    assert false_alarms <= 0.01 * 3000  # normal readings raise (almost) no alerts


def test_missing_model_is_one_clear_line(kafka_bootstrap, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--model", str(tmp_path / "nope"),
                        "--bootstrap", kafka_bootstrap], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_topic_without_auto_creation_is_one_clear_line(kafka_bootstrap, model_dir):
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--model", model_dir, "--bootstrap",
                        kafka_bootstrap, "--input-topic", f"missing-{uuid.uuid4().hex[:6]}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "do not exist" in r.stderr and "--create-topics" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_broker_at_start_gives_up_clearly(model_dir):
    from pipeline.broker import free_port

    env = dict(os.environ, LATENTWATCH_STARTUP_TIMEOUT_S="3")
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--model", model_dir, "--bootstrap",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "cannot reach Kafka" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_sigkill_mid_stream_loses_nothing(kafka_bootstrap, make_topic, producer, model_dir, delivery):
    """Kill -9 the pipeline at random points while traffic flows; restart; audit every reading."""
    s = Stream(make_topic)
    kills = int(os.environ.get("LATENTWATCH_SOAK_ROUNDS", "3"))
    n = 1_000_000
    feeding = threading.Event()
    feeder = threading.Thread(target=s.produce, args=(producer, n),
                              kwargs={"bad_every": 500, "rate": 1500, "stop": feeding})
    feeder.start()  # traffic flows through every round, so each kill lands mid-stream
    rng = np.random.default_rng(7)
    for _ in range(kills):
        proc = start_run(kafka_bootstrap, s, model_dir, "--delivery", delivery)
        url = metrics_url(proc)
        wait_metric(url, "latentwatch_assigned_partitions", 1)
        wait_metric(url, "latentwatch_batches_total", 1)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    feeding.set()
    feeder.join()
    n = len(s.refs)
    proc = start_run(kafka_bootstrap, s, model_dir, "--delivery", delivery)
    url = metrics_url(proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and committed_lag(kafka_bootstrap, s.input, s.group, s.partitions) > 0:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0

    led = s.ledger(kafka_bootstrap, read_committed=True)
    assert len(led.inputs) == n
    assert not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    assert not led.lost, f"lost {len(led.lost)} readings"
    assert len(led.dead) == len(range(3, n, 500))
    assert not led.missing_alerts(s.anomalies)
    if delivery == "exactly-once":
        assert led.duplicates == 0
    else:
        assert led.duplicates <= kills * 200  # at most one batch (200 messages) per kill


def test_two_processes_share_partitions_and_process_each_reading_once(kafka_bootstrap, make_topic, producer,
                                                                       model_dir):
    s = Stream(make_topic, partitions=4)
    a = start_run(kafka_bootstrap, s, model_dir)
    b = start_run(kafka_bootstrap, s, model_dir)
    url_a, url_b = metrics_url(a), metrics_url(b)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pa, pb = scrape(url_a, "latentwatch_assigned_partitions"), scrape(url_b, "latentwatch_assigned_partitions")
        if pa > 0 and pb > 0 and pa + pb == 4:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"partitions not shared: {pa} + {pb}")
    s.produce(producer, 4000)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = scrape(url_a, "latentwatch_readings_scored_total") + scrape(url_b, "latentwatch_readings_scored_total")
        if done >= 4000:
            break
        time.sleep(0.3)
    scored_a = scrape(url_a, "latentwatch_readings_scored_total")
    scored_b = scrape(url_b, "latentwatch_readings_scored_total")
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
    assert a.wait(timeout=40) == 0 and b.wait(timeout=40) == 0
    assert scored_a > 0 and scored_b > 0 and scored_a + scored_b == 4000
    led = s.ledger(kafka_bootstrap)
    assert len(led.scored) == 4000 and led.duplicates == 0 and not led.lost and not led.uncommitted
    assert len(read_topic(kafka_bootstrap, s.alerts)) >= len(s.anomalies)
