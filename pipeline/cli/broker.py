"""`latentwatch broker start|stop|status`: a local Kafka broker, or with `--nodes 3` a local
replicated cluster (three KRaft nodes, replication factor 3, min.insync.replicas=2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentwatch.pipeline.cli.signals import stop_on_signals
from latentwatch.pipeline.devtools.local_kafka import KAFKA_VERSION, LocalBroker, default_state_dir
from latentwatch.pipeline.devtools.cluster import LocalCluster, default_cluster_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="start, stop or inspect a local Apache Kafka broker or cluster (KRaft, no Docker)")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", default=None,
                        help=f"folder for the data, logs and pids (default: {default_state_dir()}, "
                             f"or {default_cluster_dir()} for a cluster)")

    start = bsub.add_parser("start", help="start the broker (or cluster) in the background and print its address")
    common(start)
    start.add_argument("--nodes", type=int, default=1,
                       help="1: one broker (default); 3: a replicated cluster (RF 3, min.insync.replicas=2)")
    start.add_argument("--port", type=int, default=None,
                       help="PLAINTEXT port (default: a free one); with --nodes, node i gets PORT+i-1 "
                            "and its controller PORT+100+i-1")
    start.add_argument("--kafka-version", default=KAFKA_VERSION, help="Kafka 4.x version (default: %(default)s)")
    start.add_argument("--foreground", action="store_true",
                       help="stay in the foreground until Ctrl+C or SIGTERM, then stop the broker")
    start.add_argument("--timeout", type=float, default=None, help="seconds to wait for readiness (90, cluster 120)")
    start.set_defaults(func=_start)

    stop = bsub.add_parser("stop", help="stop the broker or every node cleanly (SIGTERM, SIGKILL after --timeout)")
    common(stop)
    stop.add_argument("--timeout", type=float, default=30.0)
    stop.set_defaults(func=_stop)

    status = bsub.add_parser("status", help="print the address (a cluster: one line per node); exit 1 if down")
    common(status)
    status.set_defaults(func=_status)


def _target(args, nodes: int | None = None):
    """The broker or cluster that `args` name: an explicit --state-dir (a cluster if it holds
    one), else a cluster's default folder when --nodes > 1 or when one lives there."""
    if args.state_dir:
        state = Path(args.state_dir)
        if (nodes or 1) > 1 or LocalCluster.is_cluster(state):
            return LocalCluster(state, nodes=nodes or 0, version=getattr(args, "kafka_version", KAFKA_VERSION),
                                base_port=getattr(args, "port", None))
        return LocalBroker(state, port=getattr(args, "port", None))
    if (nodes or 1) > 1 or (nodes is None and LocalCluster.is_cluster(default_cluster_dir())
                            and LocalBroker(default_state_dir()).status() is None):
        return LocalCluster(default_cluster_dir(), nodes=nodes or 0, base_port=getattr(args, "port", None),
                            version=getattr(args, "kafka_version", KAFKA_VERSION))
    return LocalBroker(default_state_dir(), port=getattr(args, "port", None))


def _start(args) -> int:
    target = _target(args, args.nodes)
    if isinstance(target, LocalBroker):
        target.version = args.kafka_version
        running = target.status()
        if running is not None:
            print(f"a broker is already running for {target.state_dir} (pid {running.pid})")
            print(running.bootstrap)
            return 0
        info = target.start(timeout=args.timeout or 90.0)
        print(info.bootstrap, flush=True)
        down = lambda: target.status() is None
    else:
        if all(s.info for s in target.status()):
            print(f"a cluster is already running for {target.state_dir}")
        else:
            target.start(timeout=args.timeout or 120.0)
        for s in target.status():
            print(s.line())
        print(target.bootstrap, flush=True)  # last line: the bootstrap list, for scripts
        down = lambda: not all(s.info for s in target.status())
    if not args.foreground:
        return 0
    with stop_on_signals() as done:
        try:
            while not done.wait(1.0):
                if down():
                    print("latentwatch: a broker exited; see the logs under", target.state_dir)
                    return 1
        finally:
            target.stop()
    return 0


def _stop(args) -> int:
    target = _target(args)
    if isinstance(target, LocalCluster):
        before = target.status()
        target.stop(timeout=args.timeout)
        for s in before:
            print(f"node {s.node_id}: {'stopped' if s.info else 'was not running'}")
        return 0
    if target.stop(timeout=args.timeout):
        print("broker stopped")
    else:
        print(f"no broker is running for {target.state_dir}")
    return 0


def _status(args) -> int:
    target = _target(args)
    if isinstance(target, LocalCluster):
        nodes = target.status()
        for s in nodes:
            print(s.line())
        up = sum(1 for s in nodes if s.info)
        return 0 if up == len(nodes) else (1 if up == 0 else 3)
    info = target.status()
    if info is None:
        print(f"no broker is running for {target.state_dir}")
        return 1
    print(info.bootstrap)
    return 0
