"""The three-node Kafka cluster for replication and failover tests (`kafka_cluster`, one per
test session, started on first use), and helpers on it. A pytest plugin (tests/conftest.py).

Each node is a JVM with a 384 MiB heap (devtools/cluster.py): about 1.5 GiB for the three.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from latentwatch.pipeline.devtools.cluster import LocalCluster


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), nodes=3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(kafka_cluster) -> Iterator[LocalCluster]:
    """The session's cluster with every node up and every partition in sync, before and after
    the test (a test that kills nodes hands back a whole cluster, passed or failed)."""
    heal(kafka_cluster)
    yield kafka_cluster
    heal(kafka_cluster)


def heal(cluster: LocalCluster) -> None:
    down = [s.node_id for s in cluster.status() if s.info is None]
    for node_id in down:
        cluster.start_node(node_id)
    cluster.wait_brokers(len(cluster.nodes))
    cluster.wait_in_sync()


def replicated_topic_maker(bootstrap: str):
    """`make_topic(partitions=1, prefix="t")` with the cluster's defaults (RF 3, min ISR 2)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})

    def make(partitions: int = 1, prefix: str = "t", config: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        # replication_factor -1: the broker's default.replication.factor (KIP-464)
        admin.create_topics([NewTopic(name, partitions, -1, config=config or {})])[name].result(timeout=30)
        return name

    return make


def leader_assigned_topic_maker(bootstrap: str, leader: int, nodes=(1, 2, 3)):
    """`make_topic` whose partitions all have `leader` as preferred leader (first replica) and
    the other nodes as followers: one node to kill takes every leader of these topics down."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    followers = [n for n in nodes if n != leader]

    def make(partitions: int = 1, prefix: str = "t", config: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        assignment = [[leader, *followers] for _ in range(partitions)]
        admin.create_topics([NewTopic(name, partitions, replica_assignment=assignment, config=config or {})])[name].result(
            timeout=30)
        return name

    return make


def leaders(bootstrap: str, topics: list[str], timeout: float = 30) -> dict[tuple[str, int], int]:
    """(topic, partition) -> leader node, once every topic is in the metadata with every
    partition led (a topic just made may take a moment to reach the broker that answers: CI
    once read it with no partitions yet, KeyError 0). At the deadline, what the metadata says."""
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(timeout=10)
        ready = all(t in md.topics and md.topics[t].partitions
                    and all(p.leader >= 0 for p in md.topics[t].partitions.values()) for t in topics)
        if ready or time.monotonic() > deadline:
            return {(t, p.id): p.leader for t in topics if t in md.topics
                    for p in md.topics[t].partitions.values()}
        time.sleep(0.2)


class ProgressWatch:
    """Scrapes a pipeline's `latentwatch_offset_commits_total` every 50 ms in a thread and keeps
    when it rose: `longest_gap()` is the longest stretch without a commit between `start()` and
    `stop()` (the figure the failover tests report; never asserted on, as timings are not)."""

    def __init__(self, url: str, interval: float = 0.05):
        import threading

        self.url = url
        self.interval = interval
        self.rises: list[float] = []
        self._last = -1.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.started = self.stopped = 0.0

    def start(self) -> ProgressWatch:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped = time.monotonic()
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from tests.support.streams import scrape

        while not self._stop.is_set():
            try:
                value = scrape(self.url, "latentwatch_offset_commits_total")
            except OSError:
                value = self._last
            if value > self._last:
                self._last = value
                self.rises.append(time.monotonic())
            self._stop.wait(self.interval)

    def longest_gap(self) -> float:
        marks = [self.started, *(t for t in self.rises if self.started <= t <= self.stopped), self.stopped]
        return round(max(b - a for a, b in itertools.pairwise(marks)), 2)


@pytest.fixture(scope="session")
def windowed_model_dir(tmp_path_factory):
    """A 1-D convolutional autoencoder over windows of 8 readings of one sensor, on the same
    4-channel data as `model_dir` (it flags the injected +12 spikes when they end a window)."""
    import numpy as np

    from latentwatch.detectors.base import sliding_windows
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import WindowAutoencoder
    from latentwatch.detectors.thresholds import QuantileThreshold

    from tests.support.streams import CH, normal_values

    rng = np.random.default_rng(0)
    X = normal_values(rng, 4000).astype(np.float32)
    det = WindowAutoencoder(window=8, latent_dim=2, hidden=16, kernel=3, device="cpu").fit(X, CH, epochs=8, seed=0)
    held = normal_values(rng, 4000).astype(np.float32)
    thr = QuantileThreshold(0.999).fit(det.score(sliding_windows(held, 8)).score)
    path = tmp_path_factory.mktemp("model") / "window"
    save(path, det, thr, summarise_training_data(X, CH), name="test-window")
    return str(path)


def unexplained_by_warm_up(lost: set, bootstrap: str, input_topic: str, window: int) -> set:
    """The readings of `lost` that a windowed model's warm-up does not explain.

    A windowed model scores a reading once its sensor has `window - 1` readings before it in the
    process's history; after a (re)assignment or a rewind that history starts empty, so up to
    `window - 1` readings of each sensor in a row are kept as history, not scored (counted in
    latentwatch_readings_warming_up_total). Anything else unscored is lost: a run of more than
    `window - 1` consecutive unscored readings of one sensor, all of it."""
    from tests.support.harness import read_topic

    by_sensor: dict[tuple[int, bytes], list[int]] = {}
    for m in read_topic(bootstrap, input_topic, timeout=60):
        by_sensor.setdefault((m.partition(), m.key()), []).append(m.offset())
    left = set()
    for (partition, _), offsets in by_sensor.items():
        run: list = []
        for offset in sorted(offsets) + [None]:
            ref = None if offset is None else (partition, offset, 0)
            if ref in lost:
                run.append(ref)
                continue
            if len(run) > window - 1:
                left.update(run)
            run = []
    return left
