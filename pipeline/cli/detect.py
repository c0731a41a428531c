"""`latentwatch train | score | evaluate`: fit a detector on CSV files, score a CSV file, and
run the SKAB benchmark. The detectors package raises its own errors (`CheckpointError`,
`CSVError`, `ValueError`); here they become `UserError`, which the CLI prints as one line."""

from __future__ import annotations

import argparse
import csv
import logging
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from latentwatch.pipeline.cli import outputs
from latentwatch.pipeline.cli.connection import BOOTSTRAP_HELP
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.times import parse_time

log = logging.getLogger(__name__)
AUTO_AE_MIN_ROWS = 5000  # detectors.recipe.AUTO_AE_MIN_ROWS (not imported here: the CLI starts without torch)
_RELATIVE = re.compile(r"^-?(\d+(?:\.\d+)?)([smhd])$")  # a time ago: --since 6h
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a detector on normal readings from CSV files or a topic and save it")
    t.add_argument("--data", action="append", metavar="CSV",
                   help="CSV of normal readings (repeat for several files; they must share channels)")
    t.add_argument("--out", required=True, metavar="MODEL_DIR",
                   help="versioned model directory: the model becomes a new version under MODEL_DIR/versions/ "
                        "and MODEL_DIR/current points at it (see `latentwatch models`)")
    t.add_argument("--no-promote", action="store_true",
                   help="write the new version but leave `current` where it is (promote it later)")
    t.add_argument("--new-channels", action="store_true",
                   help="allow channels other than those of MODEL_DIR's current version (a running pipeline "
                        "refuses to swap such a version in; score and report need data of the new channels)")
    t.add_argument("--model", choices=["auto", "mlp", "window", "vae", "pca"], default="auto",
                   help="auto: PCA over windows, or the window autoencoder when there are at least "
                        f"{AUTO_AE_MIN_ROWS} training readings (kept only if it beats PCA on held-out data); "
                        "mlp: point-wise autoencoder; window: 1-D conv autoencoder over the last W readings; "
                        "vae: the same as a variational autoencoder (latent mean as the latent vector); "
                        "pca: linear (default: %(default)s)")
    t.add_argument("--window", type=int, default=None,
                   help="readings per window (default: 8 for auto and pca, 32 for window and vae, 1 for mlp)")
    t.add_argument("--score-last", type=int, default=None,
                   help="average the error over the last N readings of each window (default: the window)")
    t.add_argument("--variance", type=float, default=0.8,
                   help="PCA: keep the components explaining this share of the variance (default: %(default)s)")
    t.add_argument("--score", choices=["reconstruction", "both"], default="reconstruction",
                   help="what the score is: reconstruction error, or its mean with the latent distance (both "
                        "are always reported, in score's columns and in alerts) (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=100, help="most epochs (early stopping ends sooner; default: %(default)s)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="windows per step (default: about 16 steps an epoch, 16-256 windows)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of the autoencoders (default: %(default)s)")
    t.add_argument("--latent", type=int, default=None, help="latent size k (default: the model's)")
    t.add_argument("--seed", type=int, default=0,
                   help="random seed: the same data and options give the same weights (default: %(default)s)")
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the data held out, in interleaved blocks, for early stopping, the score "
                        "parts and the threshold (default: %(default)s)")
    t.add_argument("--false-alarm-rate", type=float, default=0.01, metavar="FRACTION",
                   help="the alarm rule's budget: the fraction of normal readings allowed to alarm, met on "
                        "held-out normal data by the instant and EWMA limits together (default: %(default)s)")
    t.add_argument("--ewma-lambda", type=float, default=0.1,
                   help="weight of the newest reading in the EWMA of the log score: smaller is more sensitive "
                        "to small persistent shifts and slower to settle (default: %(default)s)")
    t.add_argument("--threshold", choices=["auto", "quantile", "pot", "adaptive"], default="auto",
                   help="the instant limit: auto = a POT tail quantile at a fifth of the false-alarm budget; "
                        "quantile/pot/adaptive as given (the EWMA limit then spends what is left of the budget)")
    t.add_argument("--quantile", type=float, default=0.99, help="quantile for --threshold quantile/adaptive")
    t.add_argument("--margin", type=float, default=1.0,
                   help="multiply the quantile threshold by this (default: %(default)s; SKAB's autoencoder "
                        "baselines use 1.5, the default before cross-fitted calibration)")
    t.add_argument("--calibration", choices=["auto", "cross", "blocks"], default="auto",
                   help="held-out scores for the score parts, threshold and alarm rule: cross = every "
                        "window scored by a model fitted without its block (5 fits), then the model fitted on "
                        "all; blocks = one set of interleaved blocks held out; auto = cross for PCA, blocks "
                        "for autoencoders (default: %(default)s)")
    t.add_argument("--risk", type=float, default=None,
                   help="tail probability for --threshold pot (default: a fifth of the false-alarm rate)")
    t.add_argument("--name", default=None, help="model name (default: the directory name)")
    fl = t.add_argument_group("per-sensor normal (docs/fleets.md)")
    fl.add_argument("--sensor-id", default=None, metavar="ID",
                    help="whose readings a file without a sensor_id column holds (default: the unnamed sensor \"\")")
    fl.add_argument("--cold-start-readings", type=int, default=None, metavar="N",
                    help="a sensor the model has not seen is judged by the fleet baseline for its first N readings, "
                         "then by its own learned from them (default: 500)")
    fl.add_argument("--own-min-readings", type=int, default=None, metavar="N",
                    help="training readings a sensor needs for its own model (default: 1000)")
    fl.add_argument("--no-own-models", action="store_true", help="every sensor is scored by the shared model")
    fl.add_argument("--max-train-readings", type=int, default=None, metavar="N",
                    help="readings the shared model is trained on, drawn evenly per sensor over time "
                         "(baselines use every reading; default: 20000)")
    hl = t.add_argument_group("sensor health (docs/sensor-health.md); kept in the model, run's sensors.* override")
    hl.add_argument("--stuck-after", type=int, default=None, metavar="N",
                    help="readings a noisy channel must repeat to be stuck (default 30; a channel that repeats in "
                         "the training data needs longer, from its step statistics)")
    hl.add_argument("--flatline-after", type=int, default=None, metavar="N",
                    help="readings every channel must repeat for the sensor to be flatlined (default 30)")
    hl.add_argument("--silent-after", type=float, default=None, metavar="S",
                    help="seconds of event time without a reading, while others on its partition report, "
                         "before a sensor is silent (default 300)")
    _data_options(t)
    _stream_options(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("score", help="score every row of a CSV with a saved model")
    s.add_argument("--model", required=True, metavar="MODEL_DIR",
                   help="a model directory written by `train --out` (its current version is used)")
    s.add_argument("--data", required=True, metavar="CSV", help="CSV file with the model's channels (and a time column)")
    s.add_argument("--out", required=True, metavar="SCORES_CSV",
                   help="CSV of one row per reading (score, threshold, anomaly, rule, ...); '-' for stdout")
    s.add_argument("--latent", action="store_true", help="add latent_0..latent_{k-1} columns")
    s.add_argument("--episodes", default=None, metavar="CSV",
                   help="also write the episode events (open, update, close) the stream would publish")
    s.add_argument("--sensor-id", default=None, metavar="ID",
                   help="whose readings a file without a sensor_id column holds (default: the unnamed sensor \"\")")
    s.add_argument("--adapt-after", type=_adapt_after, default=None, metavar="N",
                   help="automatic re-baselining, as the pipeline's baseline.adapt_after: an episode of N readings "
                        "whose score has settled becomes the sensor's new normal (default: never; "
                        "docs/sensor-health.md)")
    _data_options(s)
    s.set_defaults(func=_score)

    e = sub.add_parser("evaluate", help="benchmark detectors on a public dataset")
    esub = e.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    sk = esub.add_parser("skab", help="SKAB outlier-detection protocol (first 400 rows train, rest test)")
    sk.add_argument("--data", default=None, help="SKAB folder (default: ../shared/data/skab from here or the repo)")
    sk.add_argument("--models", default=None,
                    help="comma-separated kinds (default: pca,window,mlp; with --select cv: pca)")
    sk.add_argument("--select", choices=["none", "cv", "defaults"], default="none",
                    help="cv: choose model, window, smoothing and threshold blind, by leave-one-folder-out "
                         "cross-validation (each folder scored with the setting that did best on the others), "
                         "beside a fixed a-priori default; defaults: what plain `train` (first 400 rows) and "
                         "`score` (the rest) give on each file, with train's defaults or the --models kinds "
                         "(default: %(default)s: the fixed SETTINGS)")
    sk.add_argument("--max-far", type=float, default=None, metavar="PCT",
                    help="with --select cv, also choose by F1 among settings whose FAR on the other folders "
                         "is at most PCT %% (e.g. 13.55, the best published detector's; the primary, "
                         "pre-registered choice always uses 10)")
    sk.add_argument("--variant", choices=["per-file", "anomaly-free", "both"], default="both")
    sk.add_argument("--files", type=int, default=None, help="only the first N labelled files (smoke runs)")
    sk.add_argument("--epochs", type=int, default=None)
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    sk.add_argument("--adapt-after", type=_adapt_after, default=None, metavar="N",
                    help="with --select defaults: score with automatic re-baselining after N readings")
    sk.set_defaults(func=_evaluate_skab)


def _adapt_after(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 4:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of readings >= 4")
    return n


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default=None, help="comma-separated channel columns (default: all but time/labels)")
    p.add_argument("--time-column", default=None, help="time column name (default: timestamp/datetime/time/ts)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")


def _stream_options(t) -> None:
    """`train`'s options for training from the stream instead of --data."""
    g = t.add_argument_group("training from the stream (instead of --data); Kafka settings as for `run`")
    g.add_argument("--from-topic", metavar="TOPIC", help="input topic to read the training readings from")
    g.add_argument("--since", help="start of the range: ISO-8601 (2026-11-20T00:00Z), epoch seconds or a time ago: 6h, 7d")
    g.add_argument("--until", default=None, help="end of the range, exclusive (default: the end of the topic)")
    g.add_argument("--config", default=None, help="YAML config of `run` (Kafka connection, TLS, SASL) "
                                                  "[env LATENTWATCH_CONFIG]")
    g.add_argument("--bootstrap", default=None, help=BOOTSTRAP_HELP)
    g.add_argument("--alerts-topic", default=None, help="alerts whose readings are left out (default: the "
                                                        "settings' topics.alerts)")
    g.add_argument("--include-alerted", action="store_true", help="keep the readings alerts name")
    g.add_argument("--max-readings", type=int, default=5_000_000, help="refuse a larger range (default: %(default)s)")


def parse_time_arg(text: str, now: float | None = None) -> float:
    """A `--since`/`--until` argument -> epoch seconds: what `times.parse_time` reads (ISO-8601,
    naive = UTC, or epoch seconds), or a time ago as docker logs --since takes it: 30m, 6h, 7d (or
    -6h). Only these two flags take a time ago (a relative event time in a message or a CSV would
    depend on when it is read), hence its own name; a UserError in the CLI's words otherwise."""
    now = time.time() if now is None else now
    m = _RELATIVE.match(text.strip())
    if m:
        return now - float(m.group(1)) * _UNIT[m.group(2)]
    try:
        return parse_time(text.strip())
    except (TypeError, ValueError):
        raise UserError(f"time {text!r}: give ISO-8601 (2026-11-20T00:00Z), epoch seconds or a time ago (6h, 7d)") from None


def _stream_training(args):
    """`train --from-topic`'s data (pipeline/lifecycle/retrain.py). Channels: --columns, else
    those of the current model at --out (retraining it), whose threshold also says how many of
    its alerts were false ones."""
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.lifecycle.retrain import current_metadata, stream_training

    if not args.since:
        raise UserError("--from-topic needs --since (e.g. --since 24h or --since 2026-11-20T00:00Z)")
    current = current_metadata(args.out)
    if args.columns:
        channels = [c.strip() for c in args.columns.split(",")]
    elif current:
        channels = list(current["channels"])
    else:
        raise UserError(f"no model at {args.out} to take the channels from: pass --columns a,b,c")
    settings = load_settings(args.config, {"kafka.bootstrap_servers": args.bootstrap,
                                           "topics.alerts": args.alerts_topic})
    now = time.time()
    since, until = parse_time_arg(args.since, now), (parse_time_arg(args.until, now) if args.until else None)
    return stream_training(settings, args.from_topic, channels, since, until, current=current,
                           exclude_alerted=not args.include_alerted, max_readings=args.max_readings)


def _device(name: str) -> str:
    from latentwatch.detectors import resolve_device

    try:
        return str(resolve_device(name))
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _read(path: str, args, expect=None):
    from latentwatch.detectors.csvdata import CSVError, read_csv

    columns = [c.strip() for c in args.columns.split(",")] if args.columns else None
    try:
        return read_csv(path, columns=columns, time_column=args.time_column, expect_channels=expect)
    except CSVError as exc:
        raise UserError(str(exc)) from None


def _recipe(args):
    from latentwatch.detectors.recipe import Recipe

    return Recipe(model=args.model, window=args.window, score_last=args.score_last, variance=args.variance,
                  score=args.score, latent=args.latent, threshold=args.threshold, quantile=args.quantile,
                  margin=args.margin, risk=args.risk, false_alarm_rate=args.false_alarm_rate,
                  ewma_lambda=args.ewma_lambda, val_fraction=args.val_fraction,
                  calibration=args.calibration, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  device=_device(args.device), own=not getattr(args, "no_own_models", False),
                  **{k: v for k, v in (("cold_start", getattr(args, "cold_start_readings", None)),
                                       ("own_min", getattr(args, "own_min_readings", None)),
                                       ("max_train_readings", getattr(args, "max_train_readings", None)),
                                       ("stuck_n", getattr(args, "stuck_after", None)),
                                       ("flatline_n", getattr(args, "flatline_after", None)),
                                       ("silent_s", getattr(args, "silent_after", None)))
                     if v is not None})


def _train(args) -> int:
    from latentwatch.pipeline.lifecycle.train import train_version

    options = _recipe(args)
    if not 0 < args.false_alarm_rate < 1:  # refused before any data is read
        raise UserError(f"--false-alarm-rate {args.false_alarm_rate}: give a fraction in (0, 1), e.g. 0.01 (1 %)")
    if not 0 < args.ewma_lambda <= 1:
        raise UserError(f"--ewma-lambda {args.ewma_lambda}: give a weight in (0, 1], e.g. 0.1")
    if bool(args.data) == bool(args.from_topic):
        raise UserError("give either --data CSV (repeatable) or --from-topic TOPIC --since TIME")
    stream = None
    if args.from_topic:
        stream = _stream_training(args)
        X, channels, parts = stream.values, stream.channels, []
    else:
        t_read = time.perf_counter()
        parts = [_read(p, args) for p in args.data]
        channels = parts[0].channels
        for part in parts[1:]:
            if set(part.channels) != set(channels):
                raise UserError(f"{part.path}: channels {part.channels} differ from {parts[0].path}'s {channels}")
        X = np.concatenate([parts[0].values] + [_reorder(p, channels) for p in parts[1:]])
        X, channels = _as_current_channels(X, channels, args)
    sensor_ids = None
    if parts and any(p.sensor_ids is not None for p in parts):  # a file without the column: --sensor-id or ""
        sensor_ids = np.concatenate([p.sensor_ids if p.sensor_ids is not None else
                                     np.full(len(p), args.sensor_id or "", dtype=object) for p in parts]).astype(str)
    elif parts and args.sensor_id:
        sensor_ids = np.full(len(X), args.sensor_id, dtype=object).astype(str)
    if parts:  # a progress line before the long part: what was read, and how fast
        n_sensors = len(np.unique(sensor_ids)) if sensor_ids is not None else 1
        took = time.perf_counter() - t_read
        print(f"read {len(X):,} readings of {n_sensors:,} sensor(s) from {len(parts)} file(s) in {took:.1f}s "
              f"({len(X) / max(took, 1e-9):,.0f} readings/s); training ...", flush=True)
    new = train_version(X, channels, options, args.out, parts=parts, stream=stream, name=args.name,
                        promote=not args.no_promote, sensor_ids=sensor_ids)
    print(new.describe(f"{args.from_topic}" if args.from_topic else f"{len(parts)} file(s)"))
    if new.note():
        print(new.note())
    return 0


def _as_current_channels(X: np.ndarray, channels: list[str], args) -> tuple[np.ndarray, list[str]]:
    """The training data in the channel order of the current version at --out. The same names in
    another column order are reordered (a running pipeline swaps a version in only with the same
    names in the same order); other names are refused unless --new-channels: training them made
    the incompatible model current without a word."""
    from latentwatch.pipeline.lifecycle.retrain import current_metadata

    current = current_metadata(args.out)
    have = list(current["channels"]) if current else None
    if have is None or have == list(channels):
        return X, channels
    if set(have) == set(channels):
        return X[:, [channels.index(c) for c in have]], have
    if not args.new_channels:
        raise UserError(f"{args.out}: its current version has channels {have}, the data {list(channels)}; pass "
                        f"--new-channels to make a model of the new ones current, or --out another directory")
    return X, channels


def _reorder(part, channels: list[str]) -> np.ndarray:
    return part.values[:, [part.channels.index(c) for c in channels]]


def _score(args) -> int:
    from latentwatch.detectors.checkpoint import CheckpointError, load
    from latentwatch.detectors.recipe import flag_series

    outputs.writable(args.out, "--out")  # before any work: not a traceback after the scoring
    outputs.writable(args.episodes, "--episodes")
    device = _device(args.device)
    try:
        model = load(args.model, device=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = _read(args.data, args, expect=model.detector.channels)
    det = model.detector
    rule = model.alarm
    if args.adapt_after is not None and model.baselines is None:
        print("--adapt-after is ignored: the model has no per-sensor baselines to learn again (train it again)",
              file=sys.stderr)
    for r in (model.alarm, model.own_alarm):
        if r is not None:
            r.adapt_after = args.adapt_after
    ids = data.sensor_ids
    if ids is None:
        ids = np.full(len(data), args.sensor_id or "", dtype=object)
    health = _health(model, data, ids)
    groups, flagged = _flag_per_sensor(model, data.values, ids, health)
    f = _merge_flagged(groups, flagged, len(data))
    rows = _format_rows(data.timestamps, f, f.scored.latent if args.latent else None)
    header = ["row", "timestamp", "score", "threshold", "anomaly", "above", "rule", "statistic", "limit", "ewma",
              *f.parts]
    if args.latent:
        header += [f"latent_{i}" for i in range(det.latent_dim)]
    if model.baselines is not None:  # whose reading, and which baseline judged it
        header += ["sensor_id", "baseline"]
        ids_list = np.asarray(ids).astype(str).tolist()
        rows = ([*r, sid, b] for r, sid, b in zip(rows, ids_list, f.baseline.tolist()))
    out = sys.stdout if args.out == "-" else outputs.open_for_writing(args.out, "--out")
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()
    from latentwatch.detectors.alarms import RULES

    if args.episodes:
        with outputs.open_for_writing(args.episodes, "--episodes") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["event", "episode_row", "row", "rule", "readings", "peak_score", "peak_margin", "kind",
                        "sensor_id", "reason"])
            for event, row, ep in f.events:
                name, _, reason = event.partition(":")  # close:silent
                w.writerow([name, ep.ref[1], row, RULES[ep.rule], ep.count, f"{ep.peak_score:.6g}", f"{ep.peak:.4g}",
                            "episode", str(ids[row]), reason])
            for e in (health[0] if health is not None else []):  # health episodes (issue 30)
                w.writerow([e.event, e.episode.ref[1], e.row, e.rule, "", "", "", "health", e.key, ""])
    opened = sum(1 for e in f.events if e[0] == "open")
    # Plain lines, as `train` prints (a log line's timestamp and logger name are noise here); on
    # stderr when the scores go to stdout. "anomalous": alarmed by either rule (instant or EWMA).
    summary = sys.stderr if args.out == "-" else sys.stdout
    print(f"scored {len(data)} rows of {len(groups)} sensor(s) with {model.name} version {model.version}: "
          f"{int(f.anomaly.sum())} anomalous (instant or EWMA rule), {opened} episodes", file=summary)
    print(f"alarm rule: {rule.describe()}", file=summary)
    if model.baselines is not None and model.own_alarm is not None:
        print(f"own models' alarm rule: {model.own_alarm.describe()}", file=summary)
    if health is not None:
        from collections import Counter

        opened = Counter(e.rule for e in health[0] if e.event == "open")
        print(f"sensor health: {model.health.describe()}; episodes opened: "
              + ", ".join(f"{r} {opened.get(r, 0)}" for r in ("stuck", "flatline", "silent")), file=summary)
    if "anomaly" in data.labels:
        print(_tradeoff(f, data.labels["anomaly"]), file=summary)
    return 0


def _health(model, data, ids):
    """Health episodes of the file (detectors/health.py `judge_marks`, the file one partition in
    row order, as the stream judges a partition): (events, marks, silences); None for a model
    without health rules. Event times from the time column, else the row number as seconds."""
    if getattr(model, "health", None) is None:
        return None
    from latentwatch.detectors.health import judge_marks
    from latentwatch.pipeline.times import parse_time

    n = len(data)
    try:
        ts = np.array([parse_time(t) for t in data.timestamps], np.float64) if data.timestamps is not None else None
    except (TypeError, ValueError):
        ts = None
    return judge_marks(model.health, np.asarray(ids).astype(str), data.values,
                       ts if ts is not None else np.arange(n, dtype=np.float64))


def _flag_per_sensor(model, values, ids, health=None):
    """Each sensor's rows (in file order) flagged as the stream would: its own baseline and model;
    with `health` (`_health`), a silence closes the sensor's open episode (reason silent)."""
    from latentwatch.detectors.baselines import group_rows
    from latentwatch.detectors.recipe import flag_series

    uniq, groups = group_rows(np.asarray(ids).astype(str))
    resets, silent_end = np.zeros(len(values), np.int8), set()
    for key, row, _started in (health[2] if health is not None else []):
        if row >= 0:
            resets[row] = 1
        else:
            silent_end.add(key)
    flagged = [flag_series(model.detector, model.threshold, model.alarm, values[rows], baselines=model.baselines,
                           sensor_id=str(sid), own_rule=model.own_alarm, resets=resets[rows],
                           silent_end=str(sid) in silent_end) for sid, rows in zip(uniq.tolist(), groups)]
    return groups, flagged


def _merge_flagged(groups, flagged, n):
    """One `Flagged` over the file's rows from each sensor's (episode rows back in file numbering)."""
    import dataclasses

    from latentwatch.detectors.base import Scores

    if len(flagged) == 1:
        f = flagged[0]
        if f.baseline is None:
            f = dataclasses.replace(f, baseline=np.full(n, "", dtype=object))
        return f
    first = max(f.first for f in flagged)
    one = flagged[0]

    def col(name, fill, dtype=np.float64):
        out = np.full(n, fill, dtype=dtype)
        for rows, f in zip(groups, flagged):
            out[rows] = getattr(f, name)
        return out

    parts = {}
    for k in one.parts:
        parts[k] = np.full(n, np.nan)
        for rows, f in zip(groups, flagged):
            parts[k][rows] = f.parts[k]
    k = one.scored.latent.shape[1]
    latent = np.full((n, k), np.nan, np.float32)
    for rows, f in zip(groups, flagged):
        latent[rows[f.first:]] = f.scored.latent
    events = sorted(((e, int(rows[r]), ep) for rows, f in zip(groups, flagged) for e, r, ep in f.events),
                    key=lambda t: t[1])
    scored = Scores(latent[first:], np.zeros((n - first, 0), np.float32), np.zeros(n - first, np.float32), {})
    return dataclasses.replace(
        one, score=col("score", np.nan), threshold=col("threshold", np.nan), above=col("above", False, bool),
        anomaly=col("anomaly", False, bool), first=first, scored=scored, parts=parts, rule=col("rule", -1, np.int8),
        statistic=col("statistic", np.nan), limit=col("limit", np.nan), ewma=col("ewma", np.nan), events=events,
        baseline=col("baseline", "", object))


def _tradeoff(f, labels) -> str:
    """The labelled file's detection rate at 1 %, 5 % and 10 % false alarms (the score and its EWMA
    cut at those quantiles of the normal rows) beside the model's own operating point."""
    from latentwatch.detectors.evaluate import Counts, detection_at

    truth = np.asarray(labels) > 0.5
    own = Counts()
    own.add(f.anomaly, truth)
    rates = detection_at({"score": f.score, "ewma": f.ewma}, truth)
    lines = [f"operating point (the model's rule): detection {1 - own.mar / 100:.3f} at {own.far:.2f} % false alarms"]
    for name, row in rates.items():
        lines.append(f"{name} cut at 1 / 5 / 10 % false alarms: detection " + " / ".join(f"{v:.3f}" for v in row))
    return "\n".join(lines)


def _format_rows(timestamps, f, latent):
    n, first = len(f.score), f.first
    stamps = timestamps if timestamps is not None else [""] * n
    from latentwatch.detectors.alarms import RULES

    fmt = lambda a: ["" if np.isnan(v) else f"{v:.6g}" for v in a.tolist()]  # noqa: E731
    names = ["", *RULES]  # rule index -1 (none) -> ""
    cols = [range(n), stamps, fmt(f.score), fmt(f.threshold), f.anomaly.astype(int).tolist(),
            f.above.astype(int).tolist(), [names[r + 1] for r in f.rule.tolist()], fmt(f.statistic), fmt(f.limit),
            fmt(f.ewma), *(fmt(v) for v in f.parts.values())]
    if latent is not None:
        blank = [""] * latent.shape[1]
        cols.append([blank] * first + [[f"{v:.6g}" for v in r] for r in latent.tolist()])
        return ([*row[:-1], *row[-1]] for row in zip(*cols))
    return zip(*cols)


def _evaluate_skab(args) -> int:
    from latentwatch.detectors import evaluate

    root = evaluate.find_skab(args.data, repo_root=Path(__file__).resolve().parents[2])
    if root is None:
        raise UserError(f"SKAB data not found (looked for {args.data or '../shared/data/skab'} from the current "
                        "directory and the repository root): get it with 'git clone "
                        "https://github.com/waico/SKAB ../shared/data/skab' (GPL-3.0, not shipped here) "
                        "or pass --data PATH")
    _device(args.device)
    if args.select == "cv":
        return _select_skab(root, args)
    if args.select == "defaults":
        return _defaults_skab(root, args)
    variants = ["per-file", "anomaly-free"] if args.variant == "both" else [args.variant]
    results = []
    for kind in _kinds(args.models or "pca,window,mlp"):
        for variant in variants:
            sources = ["train", "file"] if variant == "anomaly-free" else ["train"]
            try:
                for source in sources:
                    results.append(evaluate.run_skab(root, kind, variant=variant, files=args.files, epochs=args.epochs,
                                                     seed=args.seed, device=args.device, threshold_source=source))
            except ValueError as exc:
                raise UserError(str(exc)) from None
    print(evaluate.format_table(results))
    return 0


def _defaults_skab(root: Path, args) -> int:
    from latentwatch.detectors import evaluate
    from latentwatch.detectors.recipe import Recipe

    rows = []
    for kind in _kinds(args.models or "auto"):
        options = Recipe(model=kind, seed=args.seed, device=args.device, **({"epochs": args.epochs} if args.epochs else {}))
        try:
            r = evaluate.run_defaults(root, options, files=args.files, name=f"train --model {kind} + score, defaults"
                                      + (f", adapt after {args.adapt_after}" if args.adapt_after else ""),
                                      adapt_after=args.adapt_after)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        kept = ", ".join(f"{k} x{v}" for k, v in sorted(Counter(r.kinds).items()))
        rows.append((f"latentwatch {r.name}", r.counts, None))
        print(f"{kind}: models kept {kept}; false-alarm budget {options.false_alarm_rate:.2%}, measured on held-out "
              f"normal data {np.mean(r.measured):.3%} (mean over files)")
        for name, row in r.detection.items():
            print(f"{kind}: {name} cut at 1 / 5 / 10 % false alarms (pooled test rows): detection "
                  + " / ".join(f"{v:.3f}" for v in row) + f"; the rule's own: {1 - r.counts.mar / 100:.3f} at "
                  f"{r.counts.far:.2f} %")
    print(evaluate.format_table([], rows, files=args.files or len(evaluate.labelled_files(root))))
    return 0


def _kinds(models: str) -> list[str]:
    return [k.strip() for k in models.split(",") if k.strip()]


def _select_skab(root: Path, args) -> int:
    from latentwatch.detectors import evaluate, selection

    try:
        result = selection.run_selection(root, kinds=_kinds(args.models or "pca"), files=args.files, seed=args.seed,
                                         device=args.device, max_far=args.max_far)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    print(evaluate.format_table([], selection.table_rows(result), files=len(result.runs)))
    print(selection.describe_folds(result))
    return 0
