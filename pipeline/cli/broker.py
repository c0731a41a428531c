"""`latentwatch broker start|stop|status`: the local single-node Kafka broker."""

from __future__ import annotations

import argparse

from latentwatch.pipeline.cli.signals import stop_on_signals
from latentwatch.pipeline.devtools.broker import KAFKA_VERSION, LocalBroker, default_state_dir


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("broker", help="start, stop or inspect a local Apache Kafka broker (KRaft, no Docker)")
    bsub = p.add_subparsers(dest="broker_command", metavar="ACTION", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--state-dir", default=str(default_state_dir()),
                        help="folder for the broker's data, logs and pid (default: %(default)s)")

    start = bsub.add_parser("start", help="start the broker in the background and print its address")
    common(start)
    start.add_argument("--port", type=int, default=None, help="PLAINTEXT port (default: a free one)")
    start.add_argument("--kafka-version", default=KAFKA_VERSION, help="Kafka 4.x version (default: %(default)s)")
    start.add_argument("--foreground", action="store_true",
                       help="stay in the foreground until Ctrl+C or SIGTERM, then stop the broker")
    start.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for readiness")
    start.set_defaults(func=_start)

    stop = bsub.add_parser("stop", help="stop the broker cleanly (SIGTERM, SIGKILL after --timeout)")
    common(stop)
    stop.add_argument("--timeout", type=float, default=30.0)
    stop.set_defaults(func=_stop)

    status = bsub.add_parser("status", help="print the running broker's address (exit 1 if none)")
    common(status)
    status.set_defaults(func=_status)


def _start(args) -> int:
    broker = LocalBroker(args.state_dir, port=args.port, version=args.kafka_version)
    running = broker.status()
    if running is not None:
        print(f"a broker is already running for {args.state_dir} (pid {running.pid})")
        print(running.bootstrap)
        return 0
    info = broker.start(timeout=args.timeout)
    print(info.bootstrap, flush=True)
    if not args.foreground:
        return 0
    with stop_on_signals() as done:
        try:
            while not done.wait(1.0):
                if broker.status() is None:
                    print("latentwatch: the broker exited; see", broker.log_file)
                    return 1
        finally:
            broker.stop()
    return 0


def _stop(args) -> int:
    broker = LocalBroker(args.state_dir)
    if broker.stop(timeout=args.timeout):
        print("broker stopped")
    else:
        print(f"no broker is running for {args.state_dir}")
    return 0


def _status(args) -> int:
    info = LocalBroker(args.state_dir).status()
    if info is None:
        print(f"no broker is running for {args.state_dir}")
        return 1
    print(info.bootstrap)
    return 0
