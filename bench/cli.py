"""`python -m latentwatch.bench` / `latentwatch bench`: run every measurement of issue 7 in one go."""

from __future__ import annotations

import argparse
import atexit
import os
import shlex
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
WARMUP_RUN_S = 10.0  # the unmeasured latency run before the measured ones


def add_arguments(p: argparse.ArgumentParser) -> None:
    from latentwatch.pipeline.cli.connection import add_connection_flags

    add_connection_flags(p, bootstrap_help="use this Kafka instead of a temporary local broker [env "
                                           "LATENTWATCH_BOOTSTRAP or LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS]")
    p.add_argument("--nodes", type=int, default=1,
                   help="nodes of the temporary local Kafka: 1 (default) or 3 (replicated: RF 3, min ISR 2)")
    p.add_argument("--scale", default="", help="comma-separated process counts for the scale-out stage, "
                   "e.g. 1,2: the workload through that many pipeline processes in one group (default: off)")
    p.add_argument("--readings", type=int, default=1_000_000, help="readings per workload (default 1,000,000)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (20k readings, short latency run)")
    p.add_argument("--workloads", default="single,batch,frames",
                   help="comma-separated: single, batch (JSON), frames (binary Arrow frames of --batch-readings), "
                        "avro, protobuf (single-reading Avro / Protobuf records through a registry the bench starts) "
                        "(default the first three)")
    p.add_argument("--channels", type=int, default=16, help="channels per reading, 8-32 (default 16)")
    p.add_argument("--sensors", type=int, default=64, help="sensors (message keys) (default 64)")
    p.add_argument("--batch-readings", type=int, default=250,
                   help="readings per message, batch and frames workloads (default 250)")
    p.add_argument("--models", default="mlp,pca,window",
                   help="comma-separated models, each with its model stage and end-to-end rows: mlp (point-wise), "
                        "pca and window (plain `latentwatch train`'s: PCA over 8-reading windows, the window "
                        "autoencoder W=8) (default mlp,pca,window; the first fills the top-level keys)")
    p.add_argument("--reuse-models", default=None,
                   help="a work dir of an earlier run: its model-KIND directories are used instead of training")
    p.add_argument("--model-kind", default=None, choices=["mlp", "pca", "window"], help="one model (as --models)")
    p.add_argument("--batch-size", type=int, default=32768, help="pipeline batch.max_readings (default 32768, as `run`)")
    p.add_argument("--frames-batch-size", type=int, default=65536,
                   help="pipeline batch.max_readings for the frames workload (default 65536: the setting for "
                        "high-rate sensors; 4,096 readings are 16 frames, and a batch's two round trips to the "
                        "broker then cost more than decoding it)")
    p.add_argument("--max-wait-ms", type=float, default=None,
                   help="pipeline batch.max_wait_ms (default: the pipeline's, 5)")
    p.add_argument("--max-bytes", type=int, default=None,
                   help="pipeline batch.max_bytes (default: the pipeline's, 4 MiB); frames are ~3.6x denser "
                        "than JSON, so the same byte cap holds ~3.6x the readings per batch")
    p.add_argument("--torch-threads", type=int, default=None, help="OMP_NUM_THREADS for the pipeline process")
    p.add_argument("--naive-readings", type=int, default=20_000, help="prefix the naive baseline reads (default 20k)")
    p.add_argument("--naive-seconds", type=float, default=30.0,
                   help="... or stop the naive baseline after this long (default 30)")
    p.add_argument("--latency-seconds", type=float, default=15.0, help="length of the latency run (default 15)")
    p.add_argument("--latency-rate", type=float, default=None,
                   help="offered readings/s of the latency run (default: half the measured pipeline maximum)")
    p.add_argument("--latency-fractions", default="0.5",
                   help="comma-separated fractions of the measured maximum to offer; the first is the headline "
                        "(default 0.5; e.g. 0.5,0.25,0.1 for a sweep)")
    p.add_argument("--skip", default="", help="comma-separated stages to skip: ceilings,pipeline,naive,latency,model")
    p.add_argument("--ab", default="",
                   help="the pipeline stage (and latency) as an A/B in one run: variants that differ in the pipeline "
                        "process's environment, 'NAME:VAR=VALUE,...;NAME:...' (the first is A, e.g. "
                        "'new:;old:PYTHONPATH=/path/to/tree'), run alternated A B A B ...; 'health' is short for "
                        "'on:;off:LATENTWATCH_SENSORS__ENABLED=false' (bench/ab.py)")
    p.add_argument("--ab-rounds", type=int, default=2, help="rounds of the A/B (each runs every variant once; default 2)")
    p.add_argument("--profile", action="store_true", help="run the pipeline processes under py-spy (speedscope files in the work dir)")
    p.add_argument("--out", default=str(RESULTS), help="results folder (default bench/results)")
    p.add_argument("--stem", default="latest", help="results file name stem (default latest)")
    p.add_argument("--work-dir", default=None, help="keep models, logs and profiles here (default: a temp dir)")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(args) -> int:
    from latentwatch.pipeline.cli.connection import bootstrap_configured
    from latentwatch.pipeline.config import KafkaSettings

    if args.quick:
        args.readings = min(args.readings, 20_000)
        args.naive_readings = min(args.naive_readings, 2_000)
        args.naive_seconds = min(args.naive_seconds, 5.0)
        args.latency_seconds = min(args.latency_seconds, 3.0)
    if not 1 <= args.channels <= 1024:
        raise SystemExit("--channels must be positive")
    with tempfile.TemporaryDirectory(prefix="latentwatch-bench-") as tmp:
        work = Path(args.work_dir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        broker = None
        cluster = _cluster(args)
        if bootstrap_configured(cluster):
            broker_info = {"kind": "external", "version": "?"}
        else:
            from latentwatch.pipeline.devtools.local_kafka import KAFKA_VERSION, LocalBroker

            if args.nodes > 1:
                from latentwatch.pipeline.devtools.cluster import LocalCluster

                log(f"starting a local {args.nodes}-node Kafka cluster")
                # A new group's first assignment waits 5 s for more members (Kafka's own default is
                # 3 s): the processes of the scale-out stage, started together, share the first one.
                broker = LocalCluster(work / "cluster", nodes=args.nodes,
                                      extra_properties={"group.initial.rebalance.delay.ms": "5000"})
                started = broker.start()
                broker_info = {"kind": f"local {args.nodes}-node KRaft cluster (RF {min(args.nodes, 3)}, "
                                       "min.insync.replicas 2)", "version": KAFKA_VERSION}
            else:
                log("starting a local Kafka broker")
                broker = LocalBroker(work / "broker")
                started = broker.start().bootstrap
                broker_info = {"kind": "local single-node KRaft", "version": KAFKA_VERSION}
            cluster = cluster.model_copy(update={"kafka": KafkaSettings(bootstrap_servers=started)})
        try:
            res = _measure(args, cluster, broker_info, work)
        finally:
            if broker is not None:
                broker.stop()
    j, md = _write(args, res)
    log(f"wrote {j} and {md}")
    print(Path(md).read_text())
    return 0


def _write(args, res):
    from latentwatch.bench import summary

    return summary.write(res, Path(args.out), args.stem)


def _cluster(args):
    """The Kafka settings of --bootstrap / --config / LATENTWATCH_* (TLS, SASL), as every command
    reads them. The pipeline processes under test inherit them: --config goes to them through
    $LATENTWATCH_CONFIG."""
    import os

    from latentwatch.pipeline.cli.connection import connection_settings

    if args.config:
        os.environ["LATENTWATCH_CONFIG"] = os.path.abspath(args.config)
    return connection_settings(args, local_fallback=False)


def _measure(args, cluster, broker_info: dict, work: Path) -> dict:
    from latentwatch.bench import summary
    from latentwatch.bench.ceilings import consume_rate
    from latentwatch.bench.latency import run_latency
    from latentwatch.bench.naive import run_naive
    from latentwatch.bench.pipeline_proc import run_pipeline
    from latentwatch.bench.workload import (
        PARTITIONS,
        Workload,
        end_offsets,
        make_topics,
        produce,
        train_model,
        unique,
    )

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    env = {"OMP_NUM_THREADS": str(args.torch_threads)} if args.torch_threads else {}
    if args.max_bytes:
        env["LATENTWATCH_BATCH__MAX_BYTES"] = str(args.max_bytes)
    env = env or None
    res = {"started_at": datetime.now(UTC).isoformat(timespec="seconds"),
           "command": "python -m latentwatch.bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
           "machine": summary.machine(), "loadavg_start": summary.loadavg(), "broker": broker_info,
           "settings": {"batch_size": args.batch_size, "frames_batch_size": args.frames_batch_size, "max_wait_ms": args.max_wait_ms, "max_bytes": args.max_bytes,
                        "torch_threads_env": args.torch_threads,
                        "partitions": PARTITIONS, "quick": args.quick},
           "targets": summary.TARGETS, "workloads": {}}
    models = [args.model_kind] if args.model_kind else [m.strip() for m in args.models.split(",") if m.strip()]
    res["models"] = {}
    # avro, protobuf: single-reading Avro / Protobuf records (the Confluent wire format through a real
    # registry, started here): beside `single`, the same readings as JSON messages.
    shapes = {"single": 1, "batch": args.batch_readings, "frames": args.batch_readings, "avro": 1, "protobuf": 1}
    workloads: dict = {}
    names = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if {"avro", "protobuf"} & set(names) and not os.environ.get("LATENTWATCH_SCHEMA_REGISTRY__URL"):
        from latentwatch.pipeline.devtools.local_registry import LocalRegistry

        registry = LocalRegistry(work / "registry")
        os.environ["LATENTWATCH_SCHEMA_REGISTRY__URL"] = registry.start().url  # the pipeline processes inherit it
        atexit.register(registry.stop)
        log(f"schema registry on {os.environ['LATENTWATCH_SCHEMA_REGISTRY__URL']}")
    for name in names:
        per = shapes[name]
        fmt = name if name in ("frames", "avro", "protobuf") else "json"
        w = Workload(name, per, args.channels, args.sensors, args.readings // per * per, format=fmt)
        log(f"{name}: producing {w.readings:,} readings ({per} per message) to 8 partitions")
        produce(cluster, w)
        workloads[name] = (w, end_offsets(cluster, w.topic))
    ceilings: dict = {}
    for kind in models:
        reuse = Path(args.reuse_models or "/nonexistent") / f"model-{kind}"
        if reuse.is_dir():
            log(f"using the {kind} model in {reuse}")
            model_dir = str(reuse)
        else:
            log(f"training the {kind} model ({args.channels} channels)")
            model_dir = str(train_model(work / f"model-{kind}", args.channels, args.sensors, kind,
                                        epochs=3 if args.quick else 10))
        from latentwatch.detectors.checkpoint import load

        det = load(model_dir, device="cpu").detector
        m: dict = {"model": {"kind": det.kind, "window": det.window, "channels": len(det.channels),
                             "path": model_dir, "requested": kind}, "workloads": {}}
        res["models"][kind] = m
        channels = list(det.channels)
        if "model" not in skip:
            from latentwatch.bench import model_stage

            log(f"{kind}: model stage alone")
            sizes = model_stage.BATCH_SIZES[:7] if args.quick else model_stage.BATCH_SIZES
            m["model_stage"] = model_stage.run(model_dir, sizes, budget_s=0.05 if args.quick else 0.5)
        for name, (w, ends) in workloads.items():
            per, fmt = w.readings_per_message, w.format
            batch_size = args.frames_batch_size if name == "frames" else args.batch_size
            out: dict = {"workload": w.describe()}
            m["workloads"][name] = out
            if "ceilings" not in skip:
                if name not in ceilings:  # the same topic for every model: read it once
                    log(f"{name}: ceilings")
                    ceilings[name] = (consume_rate(cluster, w.topic, ends, per),
                                      consume_rate(cluster, w.topic, ends, per, channels))
                out["ceiling_bare"], out["ceiling_decode"] = ceilings[name]
            if m.get("model_stage"):
                from latentwatch.bench.model_stage import ceiling

                out["model_stage_ceiling"] = {"readings_per_s": ceiling(m["model_stage"], batch_size),
                                              "max_batch": batch_size}
            if "pipeline" not in skip and args.ab:
                _ab(args, cluster, model_dir, work, out, kind, name, w, ends, batch_size, env, run_pipeline)
                if "ceilings" not in skip:
                    out["ceiling_decode_after"] = consume_rate(cluster, w.topic, ends, per, channels)
            elif "pipeline" not in skip:
                log(f"{name} / {kind}: pipeline end to end")
                prof = work / f"profile-{kind}-{name}.speedscope.json" if args.profile else None
                out["pipeline"] = run_pipeline(cluster, model_dir, w.topic, ends, per, work, batch_size,
                                               env=env, profile_out=prof, max_wait_ms=args.max_wait_ms)
                if prof is not None:
                    out["pipeline"]["profile"] = str(prof)
                log(f"{name} / {kind}: pipeline {out['pipeline']['readings_per_s']:,.0f} readings/s")
                if "ceilings" not in skip:  # again, so a change in background load shows (the ratio uses the mean)
                    out["ceiling_decode_after"] = consume_rate(cluster, w.topic, ends, per, channels)
            for n in [int(x) for x in args.scale.split(",") if x.strip()]:
                from latentwatch.bench.scale import run_group

                log(f"{name}: {n} pipeline process(es) in one group")
                row = run_group(cluster.kafka.bootstrap_servers, model_dir, w.topic, ends, per, work, batch_size, n,
                                env=env, max_wait_ms=args.max_wait_ms)
                out.setdefault("scale", []).append(row)
                log(f"{name}: {n} process(es) {row['readings_per_s'] or 0:,.0f} readings/s")
            if "naive" not in skip and det.window == 1 and fmt in ("json", "frames"):  # it reads no schema'd records
                log(f"{name}: naive baseline on the first {args.naive_readings:,} readings "
                    f"(at most {args.naive_seconds:.0f} s)")
                alerts = unique("naive-alerts")
                make_topics(cluster, {alerts: (1, {})})
                out["naive"] = run_naive(cluster, w.topic, PARTITIONS, model_dir, alerts,
                                         min(args.naive_readings, w.readings), args.naive_seconds, fmt=fmt)
            if "latency" not in skip and args.ab:
                _ab_latency(args, cluster, model_dir, work, out, name, per, batch_size, env, fmt)
            elif "latency" not in skip:
                _latency(args, cluster, model_dir, work, out, name, per, batch_size, env, fmt, run_latency)
            out["verdict"] = summary.verdicts(out)
            log(f"{name} / {kind}: {out['verdict']}")
    first = res["models"][models[0]]
    res["model"], res["workloads"] = first["model"], first["workloads"]
    if first.get("model_stage"):
        res["model_stage"] = first["model_stage"]
    res["loadavg_end"] = summary.loadavg()
    return res


def _ab(args, cluster, model_dir, work, out, kind, name, w, ends, batch_size, env, run_pipeline) -> None:
    """The pipeline stage as an A/B (bench/ab.py): every variant once a round, alternated."""
    from latentwatch.bench import ab, summary

    variants = ab.parse(args.ab)
    codes = {n: ab.code_of({**(env or {}), **e}) for n, e in variants.items()}
    runs = []
    for rnd, v in ab.order(variants, args.ab_rounds):
        log(f"{name} / {kind}: pipeline end to end, A/B round {rnd + 1}, {v}")
        load = summary.loadavg()
        prof = work / f"profile-{kind}-{name}-{v}-{rnd + 1}.speedscope.json" if args.profile else None
        r = run_pipeline(cluster, model_dir, w.topic, ends, w.readings_per_message, work, batch_size,
                         env={**(env or {}), **variants[v]}, max_wait_ms=args.max_wait_ms, profile_out=prof)
        r.update(variant=v, round=rnd, code=codes[v], loadavg_start=load, profile=str(prof) if prof else None)
        runs.append(r)
        log(f"{name} / {kind}: {v}: {r['readings_per_s']:,.0f} readings/s, "
            f"{r['readings_per_cpu_s'] or 0:,.0f} per CPU s, health events "
            f"{(r.get('pipeline_metrics') or {}).get('health_episode_events')}, state records with health "
            f"{r['state'].get('with_health')} of {r['state'].get('records')}")
    res = {"variants": variants, "rounds": args.ab_rounds, "model": kind, "workload": name, "code": codes,
           "runs": runs, "summary": {k: ab.summarise(runs, variants, k)
                                     for k in ("readings_per_s", "readings_per_cpu_s", "peak_rss_bytes")}}
    out["ab"] = res
    first = next(iter(variants))
    out["pipeline"] = dict(next(r for r in runs if r["variant"] == first),
                           readings_per_s=res["summary"]["readings_per_s"]["median"][first],
                           note=f"the A/B's first variant ({first}): readings/s the median of its runs")


def _ab_latency(args, cluster, model_dir, work, out, name, per, batch_size, env, fmt) -> None:
    """Latency of the A/B's variants at one offered rate (a fraction of A's median), alternated."""
    from latentwatch.bench import ab
    from latentwatch.bench.latency import run_latency

    res = out["ab"]
    variants = res["variants"]
    first = next(iter(variants))
    frac = float(args.latency_fractions.split(",")[0])
    rate = args.latency_rate or frac * res["summary"]["readings_per_s"]["median"][first]

    def latency(v: str, duration: float) -> dict:
        return run_latency(cluster, model_dir, work, rate=rate, duration=duration, channels=args.channels,
                           sensors=args.sensors, readings_per_message=per, batch_size=batch_size,
                           env={**(env or {}), **variants[v]}, max_wait_ms=args.max_wait_ms, fmt=fmt)

    if not args.quick:
        log(f"{name}: latency warm-up run at {rate:,.0f} readings/s for {WARMUP_RUN_S:.0f} s (not reported)")
        latency(first, WARMUP_RUN_S)
    lat = []
    for rnd, v in ab.order(variants, args.ab_rounds):
        log(f"{name}: latency at {rate:,.0f} readings/s for {args.latency_seconds:.0f} s, {v}")
        x = latency(v, args.latency_seconds)
        x.update(variant=v, round=rnd)
        lat.append(x)
    res["latency"] = lat
    res["summary"]["p99_ms"] = ab.summarise(lat, variants, "p99_ms")
    out["latency"] = next(x for x in lat if x["variant"] == first)


def _latency(args, cluster, model_dir, work, out, name, per, batch_size, env, fmt, run_latency) -> None:
    max_rate = (out.get("pipeline") or {}).get("readings_per_s") or 10_000.0
    fractions = [float(f) for f in args.latency_fractions.split(",") if f.strip()]
    rates = [args.latency_rate] if args.latency_rate else [f * max_rate for f in fractions]

    def latency(rate: float, duration: float, profile: Path | None = None) -> dict:
        return run_latency(cluster, model_dir, work, rate=rate, duration=duration, channels=args.channels,
                           sensors=args.sensors, readings_per_message=per, batch_size=batch_size,
                           env=env, max_wait_ms=args.max_wait_ms, profile_out=profile, fmt=fmt)

    if not args.quick:
        # One unmeasured run first: the broker's JIT compiles its produce/fetch paths for
        # this live pattern over ~10 s, which showed as a slow fall of the first measured
        # run's medians (15 -> 8 ms) while the runs after it were flat from their start.
        log(f"{name}: latency warm-up run at {rates[0]:,.0f} readings/s for {WARMUP_RUN_S:.0f} s (not reported)")
        warm = latency(rates[0], WARMUP_RUN_S)
        out["latency_warmup_run"] = {k: warm.get(k) for k in ("offered_readings_per_s", "duration_s", "p50_ms",
                                                              "p99_ms", "startup_p99_ms", "samples")}
    sweep = []
    for rate in rates:
        log(f"{name}: latency at {rate:,.0f} readings/s for {args.latency_seconds:.0f} s")
        tag = f"{Path(model_dir).name}-{name}-{rate:.0f}"
        lat = latency(rate, args.latency_seconds,
                      work / f"profile-latency-{tag}.speedscope.json" if args.profile else None)
        lat["fraction_of_max"] = round(rate / max_rate, 3)
        sweep.append(lat)
    out["latency"] = sweep[0]
    if len(sweep) > 1:
        out["latency_sweep"] = sweep


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["fleet"]:  # `python -m latentwatch.bench fleet ...`: the fleet harness (bench/fleet.py)
        from latentwatch.bench.fleet import main as fleet_main

        return fleet_main(argv[1:])
    p = argparse.ArgumentParser(prog="python -m latentwatch.bench", description=__doc__,
                                epilog="python -m latentwatch.bench fleet --help: the fleet detection harness "
                                       "and training-scale timer (bench/fleet.py)")
    add_arguments(p)
    return run(p.parse_args(argv))
