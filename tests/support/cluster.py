"""The three-node Kafka cluster for replication and failover tests (`kafka_cluster`, one per
test session, started on first use), and helpers on it. A pytest plugin (tests/conftest.py).

Each node is a JVM with a 384 MiB heap (devtools/cluster.py): about 1.5 GiB for the three.
"""

from __future__ import annotations

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
