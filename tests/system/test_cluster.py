"""The local replicated cluster (`latentwatch broker start --nodes 3`): three KRaft nodes, topics
replicated three times with min.insync.replicas=2, status and stop for every node."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from latentwatch.pipeline.devtools.local_kafka import _alive
from latentwatch.pipeline.devtools.cluster import LocalCluster

from tests.support.cluster import leaders, replicated_topic_maker

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "broker", *args],
                          capture_output=True, text=True, timeout=240, check=False)


def _retrying(call, attempts: int = 20):
    """A topic just made reaches every broker's metadata a moment later."""
    for attempt in range(attempts):
        try:
            return call()
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    return None


def _topic(admin, name: str):
    deadline = time.monotonic() + 30
    while True:
        md = admin.list_topics(timeout=10).topics.get(name)
        if (md is not None and md.partitions) or time.monotonic() > deadline:
            assert md is not None, f"{name} not in the metadata"
            return md
        time.sleep(0.2)


def test_cli_three_nodes_replicated_status_and_stop(tmp_path):
    state = str(tmp_path / "cluster")
    started = _cli("start", "--nodes", "3", "--state-dir", state)
    assert started.returncode == 0, started.stdout + started.stderr
    lines = started.stdout.strip().splitlines()
    bootstrap = lines[-1]
    assert len(bootstrap.split(",")) == 3 and all(b.startswith("127.0.0.1:") for b in bootstrap.split(","))
    pids = [s.info.pid for s in LocalCluster(state, nodes=3).status()]
    try:
        status = _cli("status", "--state-dir", state)
        assert status.returncode == 0
        node_lines = status.stdout.strip().splitlines()
        assert [line.split(":")[0] for line in node_lines] == ["node 1", "node 2", "node 3"]
        assert all("running" in line for line in node_lines)

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic("replicated", 3)])["replicated"].result(timeout=30)  # broker defaults
        md = _topic(admin, "replicated")
        assert all(sorted(p.replicas) == [1, 2, 3] for p in md.partitions.values())
        resource = ConfigResource("topic", "replicated")
        conf = _retrying(lambda: admin.describe_configs([resource])[resource].result())
        assert conf["min.insync.replicas"].value == "2"
        # The offsets and transaction-state topics are replicated too (made on first use).
        p = Producer({"bootstrap.servers": bootstrap, "transactional.id": "t-1"})
        p.init_transactions(60)
        internal = _topic(admin, "__transaction_state")
        assert all(len(part.replicas) == 3 for part in internal.partitions.values())
    finally:
        stopped = _cli("stop", "--state-dir", state)
    assert stopped.returncode == 0
    assert stopped.stdout.strip().splitlines() == [f"node {i}: stopped" for i in (1, 2, 3)]
    assert not any(_alive(pid) for pid in pids)
    down = _cli("status", "--state-dir", state)
    assert down.returncode == 1 and down.stdout.count("stopped") == 3


def test_one_node_down_writes_go_on_two_down_they_wait(cluster):
    """acks=all with min.insync.replicas=2: with one of three nodes down a write is acknowledged;
    with two down it is refused (NOT_ENOUGH_REPLICAS) rather than acknowledged by one copy."""
    topic = replicated_topic_maker(cluster.bootstrap)(partitions=1, prefix="isr")
    leader = leaders(cluster.bootstrap, [topic])[(topic, 0)]
    others = [n for n in (1, 2, 3) if n != leader]
    cluster.node(others[0]).kill()
    results: list = []
    p = Producer({"bootstrap.servers": cluster.bootstrap, "acks": "all", "message.timeout.ms": 8000,
                  "log_level": 0})
    p.produce(topic, b"two of three", on_delivery=lambda err, msg: results.append(err))
    p.flush(30)
    assert results == [None]
    cluster.node(others[1]).kill()
    p.produce(topic, b"one of three", on_delivery=lambda err, msg: results.append(err))
    p.flush(30)
    assert results[1] is not None, "acknowledged with a single in-sync replica"
