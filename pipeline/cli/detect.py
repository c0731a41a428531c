"""`latentwatch train | score | evaluate`: fit a detector on CSV files, score a CSV file, and
run the SKAB benchmark. The detectors package raises its own errors (`CheckpointError`,
`CSVError`, `ValueError`); here they become `UserError`, which the CLI prints as one line."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

from latentwatch.pipeline.errors import UserError

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a detector on normal readings from CSV files and save it")
    t.add_argument("--data", action="append", required=True, metavar="CSV",
                   help="CSV of normal readings (repeat for several files; they must share channels)")
    t.add_argument("--out", required=True, metavar="MODEL_DIR", help="directory to write the model to")
    t.add_argument("--model", choices=["mlp", "window", "pca"], default="window",
                   help="mlp: point-wise autoencoder; window: 1-D conv autoencoder over the last W "
                        "readings; pca: linear baseline (default: %(default)s)")
    t.add_argument("--window", type=int, default=None, help="readings per window (default: 32 for window, 1 otherwise)")
    t.add_argument("--score-last", type=int, default=1,
                   help="average the error over the last N readings of each window (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=50)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--latent", type=int, default=None, help="latent size k (default: the model's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="last part of the data held out for early stopping and the threshold (default: %(default)s)")
    t.add_argument("--threshold", choices=["quantile", "pot", "adaptive"], default="quantile")
    t.add_argument("--quantile", type=float, default=0.99, help="quantile for --threshold quantile/adaptive")
    t.add_argument("--risk", type=float, default=1e-3, help="tail probability for --threshold pot")
    t.add_argument("--name", default=None, help="model name (default: the directory name)")
    _data_options(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("score", help="score every row of a CSV with a saved model")
    s.add_argument("--model", required=True, metavar="MODEL_DIR")
    s.add_argument("--data", required=True, metavar="CSV")
    s.add_argument("--out", required=True, metavar="SCORES_CSV", help="'-' for stdout")
    s.add_argument("--latent", action="store_true", help="add latent_0..latent_{k-1} columns")
    _data_options(s)
    s.set_defaults(func=_score)

    e = sub.add_parser("evaluate", help="benchmark detectors on a public dataset")
    esub = e.add_subparsers(dest="benchmark", metavar="BENCHMARK", required=True)
    sk = esub.add_parser("skab", help="SKAB outlier-detection protocol (first 400 rows train, rest test)")
    sk.add_argument("--data", default=None, help="SKAB folder (default: ../shared/data/skab from here or the repo)")
    sk.add_argument("--models", default=None,
                    help="comma-separated kinds (default: pca,window,mlp; with --select cv: pca)")
    sk.add_argument("--select", choices=["none", "cv"], default="none",
                    help="cv: choose model, window, smoothing and threshold blind, by leave-one-folder-out "
                         "cross-validation (each folder scored with the setting that did best on the others), "
                         "beside a fixed a-priori default (default: %(default)s: the fixed SETTINGS)")
    sk.add_argument("--max-far", type=float, default=None, metavar="PCT",
                    help="with --select cv, also choose by F1 among settings whose FAR on the other folders "
                         "is at most PCT %% (e.g. 13.55, the best published detector's; the primary, "
                         "pre-registered choice always uses 10)")
    sk.add_argument("--variant", choices=["per-file", "anomaly-free", "both"], default="both")
    sk.add_argument("--files", type=int, default=None, help="only the first N labelled files (smoke runs)")
    sk.add_argument("--epochs", type=int, default=None)
    sk.add_argument("--seed", type=int, default=0)
    sk.add_argument("--device", default="cpu", help="auto|cpu|cuda (default: %(default)s)")
    sk.set_defaults(func=_evaluate_skab)


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--columns", default=None, help="comma-separated channel columns (default: all but time/labels)")
    p.add_argument("--time-column", default=None, help="time column name (default: timestamp/datetime/time/ts)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda (default: %(default)s)")


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


def _train(args) -> int:
    from latentwatch.detectors import AdaptiveThreshold, POTThreshold, QuantileThreshold, make_detector
    from latentwatch.detectors.calibrate import fit_and_calibrate
    from latentwatch.detectors.checkpoint import save, summarise_training_data

    device = _device(args.device)
    parts = [_read(p, args) for p in args.data]
    channels = parts[0].channels
    for part in parts[1:]:
        if set(part.channels) != set(channels):
            raise UserError(f"{part.path}: channels {part.channels} differ from {parts[0].path}'s {channels}")
    X = np.concatenate([parts[0].values] + [_reorder(p, channels) for p in parts[1:]])
    config: dict = {"device": device}
    if args.window is not None:
        config["window"] = args.window
    if args.latent is not None:
        config["latent_dim"] = args.latent
    if args.score_last != 1:
        config["score_last"] = args.score_last
    threshold = {"quantile": lambda: QuantileThreshold(args.quantile), "pot": lambda: POTThreshold(args.risk),
                 "adaptive": lambda: AdaptiveThreshold(base=QuantileThreshold(args.quantile))}[args.threshold]()
    started = time.perf_counter()
    try:
        detector = make_detector(args.model, **config)
        fit_and_calibrate(detector, X, threshold, channels=channels, val_fraction=args.val_fraction,
                          epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    seconds = time.perf_counter() - started
    summary = summarise_training_data(X, channels, [p.path for p in parts])
    out = save(args.out, detector, threshold, summary, name=args.name)
    epochs = f", {detector.training_report.epochs_run} epochs" if detector.training_report else ""
    print(f"trained {detector.kind} model on {len(X)} rows x {len(channels)} channels from {len(parts)} file(s) "
          f"in {seconds:.1f}s{epochs}; threshold {threshold.kind} = {threshold.value:.5g}; saved to {out}")
    return 0


def _reorder(part, channels: list[str]) -> np.ndarray:
    return part.values[:, [part.channels.index(c) for c in channels]]


def _score(args) -> int:
    from latentwatch.detectors import sliding_windows
    from latentwatch.detectors.checkpoint import CheckpointError, load

    device = _device(args.device)
    try:
        model = load(args.model, device=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = _read(args.data, args, expect=model.detector.channels)
    det = model.detector
    scored = det.score(sliding_windows(data.values, det.window))
    n, first = len(data), det.window - 1  # rows before `first` have no full window yet
    score = np.full(n, np.nan)
    score[first:] = scored.score
    threshold = np.full(n, model.threshold.value)
    threshold[first:] = model.threshold.thresholds(scored.score)
    anomaly = np.nan_to_num(score, nan=-np.inf) > threshold  # warm-up rows: no score, never anomalous
    rows = _format_rows(data.timestamps, score, threshold, anomaly, scored.latent if args.latent else None, first)
    header = ["row", "timestamp", "score", "threshold", "anomaly"]
    if args.latent:
        header += [f"latent_{i}" for i in range(det.latent_dim)]
    out = sys.stdout if args.out == "-" else open(args.out, "w", newline="")
    try:
        w = csv.writer(out, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()
    log.info("scored %d rows (%d anomalous) with %s", n, int(anomaly.sum()), model.name)
    return 0


def _format_rows(timestamps, score, threshold, anomaly, latent, first):
    n = len(score)
    stamps = timestamps if timestamps is not None else [""] * n
    score_s = ["" if np.isnan(v) else f"{v:.6g}" for v in score.tolist()]
    thr_s = [f"{v:.6g}" for v in threshold.tolist()]
    flags = anomaly.astype(int).tolist()
    if latent is None:
        return zip(range(n), stamps, score_s, thr_s, flags)
    blank = [""] * latent.shape[1]
    lat = [blank] * first + [[f"{v:.6g}" for v in r] for r in latent.tolist()]
    return ([i, t, s, h, f, *z] for i, t, s, h, f, z in zip(range(n), stamps, score_s, thr_s, flags, lat))


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
