"""`latentwatch demo`: the live demo (the README's first command)."""

from __future__ import annotations

import argparse

from latentwatch.pipeline.cli.connection import add_connection_flags, bootstrap_configured, connection_settings
from latentwatch.pipeline.errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from latentwatch.pipeline.devtools.live_demo import DEFAULT_FLEET_KINDS, DEFAULT_KINDS
    from latentwatch.pipeline.devtools.simulate import HEALTH_KINDS

    p = sub.add_parser(
        "demo", help="live demo: local broker, simulated sensors, pipeline, alerts, metrics",
        description="Starts a local Kafka broker (unless a Kafka address is configured: --bootstrap, the "
                    "kafka: section of --config, or LATENTWATCH_* variables), trains a model on simulated normal "
                    "data, streams simulated sensors with injected anomalies through the pipeline, shows "
                    "alerts live, and prints precision/recall/latency at the end. Stops everything it started.")
    add_connection_flags(p, bootstrap_help="use this Kafka cluster instead of starting a local broker "
                                           "[env LATENTWATCH_BOOTSTRAP or LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS]")
    p.add_argument("--scenario", choices=["anomalies", "drift"], default="anomalies",
                   help="anomalies (default): injected anomalies, alerts, precision/recall; drift: the plant "
                        "changes operating point, the drift metric rises, train --from-topic, promote, alerts "
                        "settle (a few minutes)")
    p.add_argument("--phase", type=float, default=40.0,
                   help="drift scenario: seconds per phase, also the drift metric's window (default 40)")
    p.add_argument("--duration", type=float, default=None, help="seconds to run (default: until Ctrl+C)")
    p.add_argument("--rate", type=float, default=400.0, help="readings/s across all sensors (default 400)")
    p.add_argument("--sensors", type=int, default=20)
    p.add_argument("--channels", type=int, default=8)
    p.add_argument("--anomaly-rate", type=float, default=None,
                   help="fraction of each sensor's readings inside an injected anomaly (default 0.1 for the fleet, "
                        "whose events are 1-300 readings long, so a 30 s demo still has a dozen; 0.02 --classic)")
    p.add_argument("--classic", action="store_true",
                   help="the classic simulator (every sensor alike, the kinds spike, level_shift, drift, stuck, "
                        "correlation_break, noise_burst) instead of the default fleet (assets at their own "
                        "operating points; docs/fleet-simulator.md). The drift scenario is always classic.")
    p.add_argument("--kinds", default=None,
                   help=f"random anomaly kinds to inject, comma-separated, or 'all' (default: "
                        f"{','.join(DEFAULT_FLEET_KINDS)}; with --classic: {','.join(DEFAULT_KINDS)}: the classic "
                        "stuck events, 5-30 readings, are shorter than the stuck rule's 30)")
    p.add_argument("--health-faults", default=",".join(HEALTH_KINDS),
                   help="sensor faults on sensors of their own from reading 60, comma-separated, or 'none' "
                        f"(default: {','.join(HEALTH_KINDS)}: a stuck channel and a flatlined sensor for 200 "
                        "readings, a sensor silent for 360; judged by the health rules, docs/sensor-health.md)")
    p.add_argument("--window", type=int, default=8, help="window of the demo model (default 8)")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--metrics-port", type=int, default=9464,
                   help="port of /metrics (default 9464; a free one if taken)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--quiet", action="store_true", help="no per-alert lines")
    p.add_argument("--format", choices=["json", "avro", "protobuf"], default="json",
                   help="what the simulated sensors write: the JSON contract (default), or Avro / Protobuf records "
                        "in the Confluent wire format through a local schema registry the demo starts "
                        "(Apicurio, needs Java; docs/schemas.md)")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from latentwatch.pipeline.devtools.live_demo import DEFAULT_FLEET_KINDS, DEFAULT_KINDS, DemoOptions, main_demo
    from latentwatch.pipeline.devtools.simulate import FLEET_ALL_KINDS, HEALTH_KINDS, KINDS

    fleet = not args.classic and args.scenario == "anomalies"
    known, default = (FLEET_ALL_KINDS, DEFAULT_FLEET_KINDS) if fleet else (KINDS, DEFAULT_KINDS)
    text = args.kinds if args.kinds is not None else ",".join(default)
    kinds = tuple(known) if text == "all" else tuple(k.strip() for k in text.split(",") if k.strip())
    unknown = set(kinds) - set(known)
    if unknown or not kinds:
        raise UserError(f"unknown anomaly kind(s) {', '.join(sorted(unknown)) or '(none)'}: "
                        f"choose from {', '.join(known)} or 'all'" + ("" if args.classic else
                                                                       " (or --classic for the classic simulator)"))
    faults = () if args.health_faults.strip() == "none" else tuple(
        k.strip() for k in args.health_faults.split(",") if k.strip())
    if set(faults) - set(HEALTH_KINDS) or len(set(faults)) != len(faults):
        raise UserError(f"--health-faults {args.health_faults!r}: give some of {', '.join(HEALTH_KINDS)} "
                        "(each at most once), or 'none'")
    if args.duration is not None and args.duration <= 0:
        raise UserError("--duration must be positive")
    if args.phase < 5:
        raise UserError("--phase must be at least 5 seconds (the drift metric needs readings to compare)")
    if args.format != "json" and args.scenario == "drift":
        raise UserError(f"--format {args.format} is for the anomalies scenario; the drift scenario writes JSON")
    settings = connection_settings(args, local_fallback=False)
    kafka = settings.kafka if bootstrap_configured(settings) else None
    opts = DemoOptions(kafka=kafka, duration=args.duration, rate=args.rate, sensors=args.sensors,
                       channels=args.channels,
                       anomaly_rate=args.anomaly_rate if args.anomaly_rate is not None else (0.1 if fleet else 0.02),
                       kinds=DEFAULT_KINDS if fleet else kinds, fleet=fleet,
                       fleet_kinds=kinds if fleet else DEFAULT_FLEET_KINDS, window=args.window,
                       health_faults=faults if args.scenario == "anomalies" else (),
                       epochs=args.epochs, metrics_port=args.metrics_port, seed=args.seed, quiet=args.quiet,
                       scenario=args.scenario, phase=args.phase, format=args.format)
    if args.scenario == "drift":
        from latentwatch.pipeline.devtools.drift_demo import run_drift

        return main_demo(opts, run_drift)
    return main_demo(opts)
