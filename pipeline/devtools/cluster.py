"""A local replicated Kafka cluster: N KRaft nodes on 127.0.0.1, one JVM each (`broker start --nodes 3`).

Every node is combined broker + controller (`process.roles=broker,controller`), so three nodes
are three processes, and the controller quorum is *static*: each node lists all of them in
`controller.quorum.voters` and every data dir is formatted with the same cluster id. Topics the
cluster creates default to replication factor 3 (the node count, up to 3) and
`min.insync.replicas=2`: with one node down, writes with `acks=all` go on; with two down they
wait instead of being lost.

Layout of the state folder: `cluster.json` (cluster id, node ids and ports, fixed at the first
start so a restarted node comes back on the same ports) and `node-<id>/`, each a `LocalBroker`
state folder of its own (data, logs, config, `broker.json`).
"""

from __future__ import annotations

import json
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from latentwatch.pipeline.devtools.local_kafka import (
    KAFKA_VERSION,
    BrokerInfo,
    LocalBroker,
    _cluster_id,
    _signal_group,
    cache_root,
    free_port,
)
from latentwatch.pipeline.errors import UserError

# Three JVMs on a 2-core, 24 GiB machine shared with others: smaller heaps than a single broker's.
# 384 MiB carries the test traffic (a few thousand small messages a second) with room to spare.
CLUSTER_JVM_OPTS = ["-Xms256m", "-Xmx384m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
                    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent",
                    "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true"]


def default_cluster_dir() -> Path:
    return cache_root() / "cluster"


def replication_properties(nodes: int) -> dict[str, str]:
    """Replication defaults of an N-node cluster: every internal and new topic on min(N, 3)
    replicas, writes acknowledged by 2 of them (1 when there is a single node)."""
    rf = min(nodes, 3)
    isr = min(2, rf)
    return {
        "default.replication.factor": str(rf),
        "min.insync.replicas": str(isr),
        "offsets.topic.replication.factor": str(rf),
        "offsets.topic.num.partitions": "3",
        "transaction.state.log.replication.factor": str(rf),
        "transaction.state.log.min.isr": str(isr),
        "transaction.state.log.num.partitions": "3",
        "share.coordinator.state.topic.replication.factor": str(rf),
        "share.coordinator.state.topic.min.isr": str(isr),
        "num.partitions": "3",
        # A node that comes back takes the leadership of its partitions back within seconds, so
        # a rolling restart does not leave every leader on one node.
        "leader.imbalance.check.interval.seconds": "5",
        # Brokers notice a dead peer (and the controller moves its leaders) in ~3 s, not 9 s.
        "broker.session.timeout.ms": "3000",
        "broker.heartbeat.interval.ms": "1000",
        "replica.lag.time.max.ms": "10000",
    }


@dataclass
class NodeStatus:
    node_id: int
    port: int
    controller_port: int
    info: BrokerInfo | None  # None: not running

    def line(self) -> str:
        state = f"running (pid {self.info.pid})" if self.info else "stopped"
        return (f"node {self.node_id}: 127.0.0.1:{self.port} controller 127.0.0.1:{self.controller_port} "
                f"{state}")


class LocalCluster:
    """`nodes` local brokers bound to one state folder; `node(i)` is the LocalBroker of node i."""

    def __init__(self, state_dir: Path | str | None = None, nodes: int = 3, version: str = KAFKA_VERSION,
                 base_port: int | None = None, extra_properties: dict[str, str] | None = None):
        self.state_dir = Path(state_dir) if state_dir else default_cluster_dir()
        self.version = version
        self.extra_properties = dict(extra_properties or {})
        layout = self._load_layout()
        if layout is None:
            if nodes < 1:
                raise UserError("--nodes must be at least 1")
            layout = self._new_layout(nodes, base_port)
        elif nodes and base_port is None and len(layout["nodes"]) != nodes:
            raise UserError(f"{self.state_dir} holds a {len(layout['nodes'])}-node cluster, not {nodes}: "
                            "use that count, or another --state-dir")
        self.cluster_id: str = layout["cluster_id"]
        self.layout = layout["nodes"]  # [{"node_id", "port", "controller_port"}]
        self.voters = ",".join(f"{n['node_id']}@127.0.0.1:{n['controller_port']}" for n in self.layout)
        props = replication_properties(len(self.layout)) | self.extra_properties
        self.nodes = [LocalBroker(self.state_dir / f"node-{n['node_id']}", port=n["port"], version=version,
                                  node_id=n["node_id"], controller_port=n["controller_port"],
                                  quorum_voters=self.voters, cluster_id=self.cluster_id,
                                  extra_properties=props, jvm_opts=CLUSTER_JVM_OPTS)
                      for n in self.layout]

    # -- layout --------------------------------------------------------------------------------
    @property
    def layout_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @staticmethod
    def is_cluster(state_dir: Path | str) -> bool:
        return (Path(state_dir) / "cluster.json").exists()

    def _load_layout(self) -> dict | None:
        try:
            return json.loads(self.layout_file.read_text())
        except (OSError, ValueError):
            return None

    def _new_layout(self, nodes: int, base_port: int | None) -> dict:
        ports: list[int] = []
        if base_port:  # node i: client port base+i-1, controller port base+100+i-1
            ports = [base_port + i for i in range(nodes)] + [base_port + 100 + i for i in range(nodes)]
        while len(ports) < 2 * nodes:
            p = free_port()
            if p not in ports:
                ports.append(p)
        layout = {"cluster_id": _cluster_id(), "kafka_version": self.version,
                  "nodes": [{"node_id": i + 1, "port": ports[i], "controller_port": ports[nodes + i]}
                            for i in range(nodes)]}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.layout_file.write_text(json.dumps(layout, indent=2))
        return layout

    # -- queries -------------------------------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{n['port']}" for n in self.layout)

    def node(self, node_id: int) -> LocalBroker:
        return self.nodes[[n["node_id"] for n in self.layout].index(node_id)]

    def status(self) -> list[NodeStatus]:
        return [NodeStatus(n["node_id"], n["port"], n["controller_port"], b.status())
                for n, b in zip(self.layout, self.nodes)]

    def quorum_leader(self) -> int | None:
        """The node id of the active controller, from a running node's quorum-state file."""
        for b in self.nodes:
            if b.status() is None:
                continue
            try:
                state = json.loads((b.state_dir / "data" / "__cluster_metadata-0" / "quorum-state").read_text())
            except (OSError, ValueError):
                continue
            leader = state.get("data", state).get("leaderId", -1)
            if leader is not None and leader >= 0:
                return int(leader)
        return None

    # -- start / stop --------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> str:
        """Start every node that is not running (together: a quorum needs a majority up), wait
        until all serve and see each other; returns the bootstrap list."""
        launched = []
        try:
            for b in self.nodes:
                if b.status() is None:
                    launched.append((b, b.launch()))
            deadline = time.monotonic() + timeout
            for b, info in launched:
                b.wait_ready(info, max(1.0, deadline - time.monotonic()))
            self.wait_brokers(len(self.nodes), max(1.0, deadline - time.monotonic()))
        except BaseException:
            for b, _ in launched:
                b.stop()
            raise
        return self.bootstrap

    def start_node(self, node_id: int, timeout: float = 90.0) -> BrokerInfo:
        """Bring one node (back) up on its ports and data dir, and wait until it serves."""
        info = self.node(node_id).start(timeout=timeout)
        self.wait_brokers(sum(1 for s in self.status() if s.info), timeout)
        return info

    def stop(self, timeout: float = 30.0) -> int:
        """Stop every node: SIGTERM to all at once (SIGKILL after `timeout`). Returns how many ran."""
        running = [(b, s.info) for b, s in zip(self.nodes, self.status()) if s.info]
        for _, info in running:  # all at once: one by one, the last ones wait on a lost quorum
            _signal_group(info.pid, signal.SIGTERM)
        for b, _ in running:
            b.stop(timeout=timeout)
        return len(running)

    def wait_brokers(self, count: int, timeout: float = 60.0) -> None:
        """Until `count` brokers are registered in the cluster's metadata."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            try:
                seen = len(admin.list_topics(timeout=5).brokers)
            except Exception:  # noqa: BLE001 - a node restarting
                seen = 0
            if seen >= count:
                return
            time.sleep(0.3)
        raise UserError(f"only {seen} of {count} Kafka nodes joined the cluster within {timeout:.0f} s: "
                        f"see the logs under {self.state_dir}")

    def wait_in_sync(self, timeout: float = 90.0, topics: list[str] | None = None) -> None:
        """Until every partition (of `topics`, or all) has its whole replica set in sync: what a
        rolling restart waits for before it takes the next node down."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout
        behind = -1
        while time.monotonic() < deadline:
            try:
                md = admin.list_topics(timeout=5)
                behind = sum(1 for name, t in md.topics.items() if topics is None or name in topics
                             for p in t.partitions.values() if len(p.isrs) < len(p.replicas))
            except Exception:  # noqa: BLE001
                behind = -1
            if behind == 0:
                return
            time.sleep(0.3)
        raise UserError(f"{behind} partitions still under-replicated after {timeout:.0f} s")
