"""`latentwatch alerts tail | forward`: subscribers of the anomaly alerts topic."""

from __future__ import annotations

import argparse
import logging
import sys

from latentwatch.pipeline.cli.connection import add_connection_flags, connection_settings
from latentwatch.pipeline.cli.signals import stop_on_signals
from latentwatch.pipeline.errors import UserError

log = logging.getLogger(__name__)

TOPIC_HELP = "alerts topic (default: topics.alerts of --config / LATENTWATCH_TOPICS__ALERTS, else anomaly-alerts)"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alerts", help="follow the anomaly alerts topic, or forward it to Alertmanager")
    asub = p.add_subparsers(dest="alerts_command", metavar="ACTION", required=True)

    t = asub.add_parser(
        "tail", help="print anomaly alerts as they arrive, one line each (or JSON lines)",
        description="Reads every partition of the alerts topic with isolation.level=read_committed "
                    "(alerts of aborted transactions never show). Joins no consumer group and commits "
                    "nothing. Exits after --max-messages alerts, --timeout seconds, or Ctrl+C.")
    add_connection_flags(t)
    t.add_argument("--topic", default=None, help=TOPIC_HELP)
    t.add_argument("--json", action="store_true", help="print each alert as one line of JSON")
    t.add_argument("--from-beginning", action="store_true",
                   help="start at the oldest alert still in the topic (default: only new alerts)")
    t.add_argument("--min-severity", choices=["warning", "critical"], default=None,
                   help="only alerts of this severity or higher")
    t.add_argument("--sensor", action="append", default=None, metavar="ID",
                   help="only alerts of this sensor id (repeat for several)")
    t.add_argument("--max-messages", type=int, default=None, metavar="N",
                   help="exit after printing N alerts")
    t.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="exit after S seconds (default: run until Ctrl+C)")
    t.set_defaults(func=_tail)

    f = asub.add_parser(
        "forward", help="send anomaly alerts to Alertmanager (at-least-once)",
        description="Consumes the alerts topic in a consumer group (read_committed, no auto commit), "
                    "POSTs each batch to Alertmanager's /api/v2/alerts as alerts named "
                    "LatentwatchAnomaly: one per episode (labels sensor, episode, severity; startsAt the "
                    "episode's start, resolved at its close), and with --readings one per alarmed reading "
                    "(labels sensor, severity, top_channel; annotations score, threshold, alert_id, "
                    "summary), retries with exponential backoff while Alertmanager "
                    "is unreachable or failing, and commits the batch's offsets only after Alertmanager "
                    "accepted it. Runs until Ctrl+C / SIGTERM.")
    f.add_argument("--alertmanager", required=True, metavar="URL",
                   help="Alertmanager base URL, e.g. http://localhost:9093")
    add_connection_flags(f)
    f.add_argument("--topic", default=None, help=TOPIC_HELP)
    f.add_argument("--group-id", default="latentwatch-forwarder", help="consumer group (default: %(default)s)")
    f.add_argument("--batch-size", type=int, default=100, help="alerts per POST at most (default: %(default)s)")
    f.add_argument("--batch-wait", type=float, default=1.0,
                   help="seconds a batch waits for more alerts before it is sent (default: %(default)s)")
    f.add_argument("--resolve-timeout", type=float, default=300.0,
                   help="endsAt = the reading's time + this many seconds, so an alert resolves by itself "
                        "unless sent again (default: %(default)s)")
    f.add_argument("--backoff-max", type=float, default=30.0,
                   help="longest wait between two delivery attempts, seconds (default: %(default)s)")
    f.add_argument("--readings", action="store_true",
                   help="also forward the per-reading records (kind reading), not only episodes")
    f.add_argument("--max-batches", type=int, default=None, help=argparse.SUPPRESS)  # tests
    f.set_defaults(func=_forward)


def _positive(name: str, value: float | None) -> None:
    if value is not None and value <= 0:
        raise UserError(f"{name} must be positive, got {value}")


def _tail(args) -> int:
    from latentwatch.pipeline.subscribers.alert_reader import tail

    _positive("--max-messages", args.max_messages)
    _positive("--timeout", args.timeout)
    with stop_on_signals() as stop:
        settings = connection_settings(args, {"topics.alerts": args.topic})
        tail(settings, settings.topics.alerts, sys.stdout, as_json=args.json,
             from_beginning=args.from_beginning, min_severity=args.min_severity, sensors=args.sensor,
             max_messages=args.max_messages, timeout=args.timeout, stop=stop, err=sys.stderr)
    return 0


def _forward(args) -> int:
    from confluent_kafka import Consumer

    from latentwatch.pipeline.subscribers.alertmanager import AlertmanagerClient, Forwarder, forwarder_consumer_config

    if not args.alertmanager.startswith(("http://", "https://")):
        raise UserError(f"--alertmanager must be an http(s) URL, got {args.alertmanager!r}")
    for name in ("batch_size", "batch_wait", "resolve_timeout", "backoff_max"):
        _positive("--" + name.replace("_", "-"), getattr(args, name))
    settings = connection_settings(args, {"topics.alerts": args.topic})
    topic = settings.topics.alerts
    consumer = Consumer(forwarder_consumer_config(settings, args.group_id))
    log.info("forwarding %s on %s to %s (group %s)", topic, settings.kafka.bootstrap_servers,
             args.alertmanager, args.group_id)
    with stop_on_signals() as stop:
        forwarder = Forwarder(consumer, AlertmanagerClient(args.alertmanager), topic,
                              batch_size=args.batch_size, batch_wait=args.batch_wait,
                              resolve_timeout=args.resolve_timeout, backoff_max=args.backoff_max, stop=stop,
                              readings=args.readings)
        try:
            stats = forwarder.run(max_batches=args.max_batches)
        finally:
            consumer.close()
    log.info("forwarded %d alerts in %d batches (%d skipped, %d failed attempts)",
             stats.forwarded, stats.batches, stats.skipped, stats.failed_attempts)
    return 0
