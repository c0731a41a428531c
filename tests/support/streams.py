"""Streams for tests that run the pipeline as a real process: a small trained model (fixture
`model_dir`), an input topic with the readings sent (`Stream`), starting `latentwatch run` and
reading its metrics. A pytest plugin (tests/conftest.py lists it)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest

from tests.support.ledger import build_ledger

CH = ["c0", "c1", "c2", "c3"]


def normal_values(rng, n):
    f = rng.normal(size=(n, 2))
    return np.stack([f[:, 0], f[:, 0] + 0.1 * rng.normal(size=n), f[:, 1], f[:, 0] - f[:, 1]], 1)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import MLPAutoencoder
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(0)
    X = normal_values(rng, 4000).astype(np.float32)
    det = MLPAutoencoder(latent_dim=2, hidden=16, device="cpu").fit(X, CH, epochs=8, seed=0)
    held = normal_values(rng, 4000).astype(np.float32)
    thr = QuantileThreshold(0.999).fit(det.score(held[:, None, :]).score)
    path = tmp_path_factory.mktemp("model") / "mlp"
    save(path, det, thr, summarise_training_data(X, CH), name="test-mlp")
    return str(path)


@pytest.fixture(scope="session")
def window_model_dir(tmp_path_factory):
    """A windowed model (W=8): its history must survive rewinds, restarts and rebalances."""
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import make_detector
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(0)
    X = normal_values(rng, 3000).astype(np.float32)
    det = make_detector("pca", window=WINDOW, latent_dim=3).fit(X, CH)  # exact, no training time
    held = normal_values(rng, 3000).astype(np.float32)
    from latentwatch.detectors.base import sliding_windows

    thr = QuantileThreshold(0.999).fit(det.score(sliding_windows(held, WINDOW)).score)
    path = tmp_path_factory.mktemp("model") / "window"
    save(path, det, thr, summarise_training_data(X, CH), name="test-window")
    return str(path)


@pytest.fixture(scope="session")
def baseline_window_model_dir(tmp_path_factory):
    """The windowed model (W=8) trained the way `train` does now, with per-sensor baselines: the
    stream's sensors (s0..s15) are new to it, so each is judged by the fleet baseline for its
    first 48 readings and by its own learned one after (a cold start kept in the per-sensor state
    and changelog)."""
    from latentwatch.detectors import alarms, baselines as bl
    from latentwatch.detectors.base import sliding_windows
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import make_detector
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(0)
    X = normal_values(rng, 3000).astype(np.float32)
    b, _, _ = bl.fit(X, np.full(len(X), "trained"), cold_start=48, own_min=10**9)
    Z = bl.standardise(X, b.center[0], b.scale[0])
    det = make_detector("pca", window=WINDOW, latent_dim=3).fit(Z, CH)
    held = bl.standardise(normal_values(rng, 3000).astype(np.float32), b.center[0], b.scale[0])
    thr = QuantileThreshold(0.999).fit(det.score(sliding_windows(held, WINDOW)).score)
    rule = alarms.calibrate(det.score(sliding_windows(held, WINDOW)).score, 0.001, instant=thr.value)
    path = tmp_path_factory.mktemp("model") / "baseline-window"
    save(path, det, thr, summarise_training_data(X, CH), name="test-baseline-window", alarm=rule, baselines=b)
    return str(path)


WINDOW = 8


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
        self.sensors: dict = {}  # ref -> sensor id
        self.window = 1  # of the model under test: its warm-up readings are not scored
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
                self.sensors[(msg.partition(), msg.offset(), 0)] = msg.key().decode()
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
                            self.partitions, read_committed, self.sensors, self.window)


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
    cmd = [sys.executable, "-m", "latentwatch.pipeline.cli", "run", "--model", model_dir, "--bootstrap", bootstrap,
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


def versioned_window_models(root, channels=CH) -> dict[str, str]:
    """A versioned model directory (detectors/versions.py) of W=8 PCA models for hot-swap tests:
    "a" current; "b" a compatible retrain (other data, same window and channels); "incompatible"
    (other channel names) and "corrupt" (truncated weights) written but not current. Returns
    {role: version name}. PCA: exact, no training time."""
    from latentwatch.detectors import versions

    out = {"a": versions.publish(root, _pca_writer(0, channels))}
    for role, seed, names, corrupt in (("b", 1, channels, False), ("incompatible", 2, [*channels[:-1], "other"], False),
                                       ("corrupt", 3, channels, True)):
        out[role] = versions.publish(root, _pca_writer(seed, names, corrupt), make_current=False)
    return out


def window_change_models(root, old: int = WINDOW, new: int = 4, channels=CH) -> dict[str, str]:
    """A versioned model directory whose current version is a W=`old` PCA model and whose "new"
    version (written, not current) is a retrain with another window: {"old": name, "new": name}."""
    from latentwatch.detectors import versions

    return {"old": versions.publish(root, _pca_writer(0, channels, window=old)),
            "new": versions.publish(root, _pca_writer(1, channels, window=new), make_current=False)}


def _pca_writer(seed, names, corrupt=False, window=WINDOW):
    from latentwatch.detectors import versions
    from latentwatch.detectors.base import sliding_windows
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import make_detector
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(seed)
    X = normal_values(rng, 3000).astype(np.float32)
    det = make_detector("pca", window=window, latent_dim=3).fit(X, list(names))
    thr = QuantileThreshold(0.999).fit(det.score(sliding_windows(normal_values(rng, 3000).astype(np.float32),
                                                                 window)).score)

    def write(d, v):
        save(d, det, thr, summarise_training_data(X, list(names)), name="swap", version=v)
        if corrupt:
            weights = d / versions.WEIGHTS
            weights.write_bytes(weights.read_bytes()[:100])
    return write
