"""`latentwatch run`, `latentwatch config show` and `latentwatch schema`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

import yaml

from latentwatch.pipeline.cli.connection import add_connection_flags, connection_settings
from latentwatch.pipeline.config import ENV_PREFIX
from latentwatch.pipeline.errors import UserError

log = logging.getLogger("latentwatch.run")

# flag -> (settings path, environment variable, help)
RUN_FLAGS = {
    "--model": ("model.path", "MODEL__PATH", "model directory written by 'latentwatch train'"),
    "--input-topic": ("topics.input", "TOPICS__INPUT", "topic of sensor readings (default sensor-readings)"),
    "--alerts-topic": ("topics.alerts", "TOPICS__ALERTS", "topic for alerts (default anomaly-alerts)"),
    "--dead-letter-topic": ("topics.dead_letter", "TOPICS__DEAD_LETTER",
                            "topic for messages that break the contract (default sensor-readings.dlq)"),
    "--latent-topic": ("topics.latent", "TOPICS__LATENT", "optional topic with every reading's latent vector"),
    "--group-id": ("group_id", "GROUP_ID", "consumer group (default latentwatch)"),
    "--metrics-port": ("metrics.port", "METRICS__PORT", "port of /metrics (default 9464; 0 = any free port)"),
    "--metrics-host": ("metrics.host", "METRICS__HOST", "address /metrics binds to (default 127.0.0.1)"),
    "--shadow": ("model.shadow", "MODEL__SHADOW", "candidate model directory scored beside --model on every batch, "
                 "without alerts; compare with latentwatch_shadow_* metrics before 'models promote'"),
    "--device": ("model.device", "MODEL__DEVICE", "auto | cpu | cuda (default auto)"),
    "--delivery": ("delivery", "DELIVERY", "at-least-once (default) | exactly-once"),
    "--batch-size": ("batch.max_readings", "BATCH__MAX_READINGS", "readings per micro-batch (default 32768)"),
    "--max-wait-ms": ("batch.max_wait_ms", "BATCH__MAX_WAIT_MS", "longest wait to fill a batch (default 5)"),
}


def add_settings_flags(p: argparse.ArgumentParser) -> None:
    # run's default address is kafka.bootstrap_servers' (127.0.0.1:9092, docker-compose's broker)
    add_connection_flags(p, local_fallback=False)
    for flag, (_, env, text) in RUN_FLAGS.items():
        p.add_argument(flag, dest=flag[2:].replace("-", "_"), default=None,
                       help=f"{text} [env {ENV_PREFIX}{env}]")
    p.add_argument("--create-topics", action="store_const", const=True, default=None,
                   help=f"create missing topics at start [env {ENV_PREFIX}CREATE_TOPICS]")


def settings_from_args(args):
    overrides = {path: getattr(args, flag[2:].replace("-", "_")) for flag, (path, _, _) in RUN_FLAGS.items()}
    overrides["create_topics"] = getattr(args, "create_topics", None)
    return connection_settings(args, overrides, local_fallback=False)


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser(
        "run", help="run the streaming pipeline: readings topic -> model -> alerts topic",
        description="Flags override LATENTWATCH_* environment variables, which override the config "
                    "file, which overrides the defaults.")
    add_settings_flags(run)
    run.set_defaults(func=_run)

    config = sub.add_parser("config", help="show the effective configuration (secrets masked)")
    csub = config.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = csub.add_parser("show", help="print the effective configuration as YAML, secrets masked")
    add_settings_flags(show)
    show.add_argument("--json", action="store_true", help="JSON instead of YAML")
    show.set_defaults(func=_config_show)

    schema = sub.add_parser("schema", help="print the JSON Schemas of the input messages")
    schema.set_defaults(func=_schema)


def load_model(path: str | None, device: str):
    if not path:
        raise UserError(f"no model given: pass --model DIR (or set {ENV_PREFIX}MODEL__PATH); "
                        "train one with 'latentwatch train'")
    from latentwatch.detectors.checkpoint import CheckpointError, load

    try:
        return load(path, device=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None


def load_groups(settings) -> list:
    """(GroupSpec, model, shadow model or None) of each configured group, the fallback last."""
    from latentwatch.pipeline.groups import group_specs

    out = []
    for spec in group_specs(settings):
        try:
            model = load_model(spec.model, settings.model.device)
            shadow = load_model(spec.shadow, settings.model.device) if spec.shadow else None
        except UserError as exc:
            raise UserError(f"group {spec.name}: {exc}") from None
        out.append((spec, model, shadow))
    return out


def _run(args) -> int:
    from latentwatch.pipeline.runner import Pipeline

    settings = settings_from_args(args)
    if settings.groups:  # model groups (pipeline/groups.py): a model per group, the fallback's last
        groups = load_groups(settings)
        pipeline = Pipeline(settings, groups[-1][1] if settings.fallback_group else groups[0][1], groups=groups)
    else:
        model = load_model(settings.model.path, settings.model.device)
        shadow = None
        if settings.model.shadow:
            try:
                shadow = load_model(settings.model.shadow, settings.model.device)
            except UserError as exc:
                raise UserError(f"shadow model (--shadow): {exc}") from None
        pipeline = Pipeline(settings, model, shadow=shadow)
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal: exiting now")
            os._exit(130)
        log.info("%s: finishing the batch in hand, then exiting", signal.Signals(signum).name)
        pipeline.stop()

    def on_hup(signum, frame):  # reload: look at the model directory's `current` pointer now
        life = getattr(pipeline, "lifecycle", None)  # pipeline/lifecycle/, wired by the run loop
        if life is not None:
            life.request_check()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hup)
    pipeline.start()
    if pipeline.metrics_server is not None:
        print(f"metrics: http://{settings.metrics.host}:{pipeline.metrics_server.server_port}/metrics",
              flush=True)
    rc = pipeline.run()
    if pipeline.unclean_exit:
        # A Kafka client still stuck in a call (the broker is gone): its destructor at interpreter
        # exit could wait for it too. The batch in hand was not committed; exit within the budget.
        logging.shutdown()
        os._exit(rc)
    return rc


def _config_show(args) -> int:
    data = settings_from_args(args).masked()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        yaml.safe_dump(data, sys.stdout, sort_keys=False)
    return 0


def _schema(args) -> int:
    from latentwatch.pipeline.decode import json_schemas

    print(json.dumps(json_schemas(), indent=2))
    return 0
