"""`latentwatch simulate | replay | report`: data into Kafka (synthetic or from a CSV) and an
offline HTML report of a model on a file."""

from __future__ import annotations

import argparse
import contextlib
import sys

from latentwatch.pipeline.cli import outputs
from latentwatch.pipeline.cli.connection import add_connection_flags, connection_settings
from latentwatch.pipeline.cli.signals import stop_on_signals
from latentwatch.pipeline.errors import UserError


def make_producer(args):
    """A producer to the cluster of --bootstrap / --config / the environment (TLS, SASL)."""
    from confluent_kafka import Producer

    from latentwatch.pipeline.kafka.clients import tool_producer_config

    return Producer(tool_producer_config(connection_settings(args)))


def start_time(text: str) -> float:
    """--start-time: ISO-8601 (naive = UTC) or epoch seconds."""
    from latentwatch.pipeline.times import parse_time

    try:
        return parse_time(text)
    except ValueError:
        raise UserError(f"not a time: {text!r} (use ISO-8601 or epoch seconds)") from None


def _truth_sink(path):
    from latentwatch.pipeline.devtools.simulate import TruthCSV

    if not path:
        return contextlib.nullcontext()
    try:
        return TruthCSV(path)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None


def _kafka_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic", required=True, help="Kafka topic to produce to")
    add_connection_flags(p)
    p.add_argument("--batch-size", type=int, default=1,
                   help="readings per message; 1 = single-reading messages (default: %(default)s)")
    p.add_argument("--format", choices=["json", "frames", "avro", "protobuf"], default="json",
                   help="message format: the JSON contract, binary frames (Apache Arrow IPC stream, one "
                        "per --batch-size readings of a sensor; see README), or Avro / Protobuf in the "
                        "Confluent wire format through --schema-registry (docs/schemas.md) (default: %(default)s)")
    p.add_argument("--schema-registry", metavar="URL", default=None,
                   help="Schema Registry URL for --format avro|protobuf (default: $LATENTWATCH_SCHEMA_REGISTRY__URL)")
    p.add_argument("--truth-csv", metavar="PATH", default=None,
                   help="also write the delivered ground truth: sensor_id,ts,kind,topic,partition,offset,index")


def register(sub: argparse._SubParsersAction) -> None:
    from latentwatch.pipeline.devtools.simulate import FLEET_ALL_KINDS, FLEET_KINDS, KINDS

    p = sub.add_parser("simulate", help="stream synthetic multi-sensor data with labelled anomalies into Kafka",
                       description="Ground truth travels in the `lw-truth` header of each message: the kind "
                                   "('normal' or an anomaly kind) of each reading, comma-separated in order.")
    _kafka_flags(p)
    p.add_argument("--sensors", type=int, default=10, help="number of sensors (default: %(default)s)")
    p.add_argument("--channels", type=int, default=8, help="channels per sensor (default: %(default)s)")
    p.add_argument("--rate", type=float, default=100.0,
                   help="readings/s over all sensors; 0 = as fast as possible (default: %(default)s)")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--count", type=int, default=None, help="stop after this many readings")
    p.add_argument("--anomaly-rate", type=float, default=0.01,
                   help="expected fraction of each sensor's readings inside an anomaly (default: %(default)s)")
    p.add_argument("--fleet", action="store_true",
                   help="fleet mode: assets of one kind, each at its own operating point with a slightly different "
                        "mix of the same process factors, and fleet trouble kinds (docs/fleet-simulator.md)")
    p.add_argument("--kinds", default=None,
                   help=f"anomaly kinds to inject (default: {','.join(KINDS)}; with --fleet: {','.join(FLEET_KINDS)}, "
                        f"from {','.join(FLEET_ALL_KINDS)})")
    p.add_argument("--health-faults", default=None, metavar="KINDS",
                   help="sensor faults on sensors of their own from step 60, comma-separated, or 'none' (default with "
                        "--fleet: stuck,flatline,silent: a stuck channel and a flatlined sensor for 200 readings, a "
                        "sensor silent for 360, past the health rules' 30 readings and 300 s at --interval 1; "
                        "classic: none; docs/fleet-simulator.md)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="simulated seconds between two readings of one sensor (default: %(default)s)")
    p.add_argument("--period", type=float, default=300.0,
                   help="simulated seconds of one 'day' cycle (default: %(default)s)")
    p.add_argument("--seed", type=int, default=None, help="random seed: same seed, same data")
    p.add_argument("--operating-point-change", default=None, metavar="AFTER_S[:SHIFT]",
                   help="after AFTER_S simulated seconds the plant moves to another operating point, SHIFT "
                        "stds of its factors away (default 2): not anomalous, but drift for the model")
    p.add_argument("--start-time", default=None,
                   help="use simulated event time from this ISO time or epoch (default: ts = wall-clock now)")
    p.add_argument("--values-as", choices=["object", "list"], default="object",
                   help="values as {channel: value} or a list in channel order (default: %(default)s)")
    p.set_defaults(func=_simulate)

    r = sub.add_parser("replay", help="stream a CSV file (e.g. SKAB) into Kafka, keeping its timestamps",
                       description="Label columns (anomaly, changepoint, label...) are not sent as channels: "
                                   "they go into the `lw-truth` header ('normal' or the names of the "
                                   "non-zero labels joined by '+').")
    r.add_argument("csv", metavar="CSV", help="CSV file (, or ; separated) with a time column (timestamp, datetime, time or ts)")
    _kafka_flags(r)
    pace = r.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0,
                      help="replay the file's own time spacing X times faster; 0 = no pacing (default: %(default)s)")
    pace.add_argument("--rate", type=float, default=None, help="fixed readings/s instead of the file's spacing")
    pace.add_argument("--as-fast-as-possible", action="store_true", help="no pacing (same as --speed 0)")
    r.add_argument("--sensor-id", default=None, help="message key and sensor_id (default: from the file name)")
    r.set_defaults(func=_replay)

    rep = sub.add_parser("report", help="HTML + PNG report of a model on a CSV file (needs the report extra)")
    rep.add_argument("--model", required=True, metavar="MODEL_DIR", help="a saved model (checkpoint folder)")
    rep.add_argument("--data", required=True, metavar="CSV", help="CSV file with the model's channels")
    rep.add_argument("--out", required=True, metavar="HTML", help="report file to write")
    rep.add_argument("--png", metavar="PREFIX", default=None,
                     help="PNG files PREFIX-latent.png, -score.png, -channels.png (default: --out minus .html)")
    rep.add_argument("--top", type=int, default=6, help="alerts shown with per-channel errors (default: %(default)s)")
    rep.set_defaults(func=_report)


def _simulate(args) -> int:
    from latentwatch.pipeline.devtools.simulate import (
        FLEET_KINDS,
        HEALTH_KINDS,
        KINDS,
        FleetSimulator,
        ProduceStats,
        SensorSimulator,
        produce_stream,
        schedule_health_faults,
    )

    if args.count is not None and args.count < 1:
        raise UserError("--count must be at least 1")
    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    if args.fleet and args.operating_point_change:
        raise UserError("--operating-point-change is for the classic simulator; in --fleet mode every asset "
                        "has its own operating point (the setpoint kind moves one)")
    kinds_text = args.kinds if args.kinds is not None else ",".join(FLEET_KINDS if args.fleet else KINDS)
    kinds = [k.strip() for k in kinds_text.split(",") if k.strip()]
    make = FleetSimulator if args.fleet else SensorSimulator
    try:
        sim = make(args.sensors, args.channels, seed=args.seed, anomaly_rate=args.anomaly_rate,
                   kinds=kinds, interval=args.interval, period=args.period)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    text = args.health_faults if args.health_faults is not None else (",".join(HEALTH_KINDS) if args.fleet else "none")
    faults = [] if text.strip() == "none" else [k.strip() for k in text.split(",") if k.strip()]
    if set(faults) - set(HEALTH_KINDS) or len(set(faults)) != len(faults):
        raise UserError(f"--health-faults {text!r}: give some of {', '.join(HEALTH_KINDS)} (each at most once), "
                        "or 'none'")
    schedule_health_faults(sim, faults)
    if args.operating_point_change:
        after, _, shift = args.operating_point_change.partition(":")
        try:
            sim.change_operating_point(float(shift or 2.0), at_step=int(float(after) / args.interval))
        except ValueError:
            raise UserError(f"--operating-point-change {args.operating_point_change!r}: give AFTER_S or "
                            "AFTER_S:SHIFT, e.g. 600:2") from None
    start_ts = start_time(args.start_time) if args.start_time else None
    fmt = _format(args)
    producer = make_producer(args)
    stats = ProduceStats()
    with stop_on_signals() as stop, _truth_sink(args.truth_csv) as sink:
        produce_stream(producer, args.topic, sim, args.rate, count=args.count, duration=args.duration,
                       batch_size=args.batch_size, stop=stop, on_truth=sink, start_ts=start_ts,
                       values_as=args.values_as, stats=stats, fmt=fmt)
    _summary(stats, args.topic)
    return 0 if stats.failed_messages == 0 else 1


def _format(args):
    """`--format` as `simulate.encode` takes it: a name, or a schema'd encoder (simulate.schema_encoder)."""
    if args.format not in ("avro", "protobuf"):
        return args.format
    import os

    from latentwatch.pipeline.devtools.simulate import schema_encoder

    url = args.schema_registry or os.environ.get("LATENTWATCH_SCHEMA_REGISTRY__URL")
    if not url:
        raise UserError(f"--format {args.format} needs a Schema Registry: give --schema-registry URL "
                        "(or set LATENTWATCH_SCHEMA_REGISTRY__URL)")
    return schema_encoder(args.format, url, args.topic, args.batch_size)


def _summary(stats, topic: str) -> None:
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(stats.by_kind.items()))
    print(f"{stats.readings} readings in {stats.messages} messages to {topic} in {stats.elapsed_s:.1f}s "
          f"({stats.delivered_messages} delivered, {stats.failed_messages} failed); {kinds}", file=sys.stderr)


def _replay(args) -> int:
    from latentwatch.pipeline.devtools.replay import replay_file
    from latentwatch.pipeline.devtools.simulate import ProduceStats

    if args.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    speed = 0.0 if args.as_fast_as_possible else args.speed
    fmt = _format(args)
    if speed < 0 or (args.rate is not None and args.rate <= 0):
        raise UserError("--speed must be >= 0 and --rate > 0")
    producer = make_producer(args)
    stats = ProduceStats()
    with stop_on_signals() as stop, _truth_sink(args.truth_csv) as sink:
        replay_file(producer, args.topic, args.csv, speed=speed, rate=args.rate, sensor_id=args.sensor_id,
                    batch_size=args.batch_size, stop=stop, on_truth=sink, stats=stats, fmt=fmt)
    _summary(stats, args.topic)
    return 0 if stats.failed_messages == 0 else 1


def _report(args) -> int:
    from latentwatch.pipeline.devtools.html_report import report_from_files

    outputs.writable(args.out, "--out")  # not made silently: a typo in the path is an error
    if args.png:
        outputs.writable(args.png + "-score.png", "--png")
    paths = report_from_files(args.model, args.data, args.out, png_prefix=args.png, top=args.top)
    for path in paths:
        print(path)
    return 0
