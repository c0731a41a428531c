"""`latentwatch train | score | evaluate`: fit a detector on CSV files, score a CSV file, and
run the SKAB benchmark. The detectors package raises its own errors (`CheckpointError`,
`CSVError`, `ValueError`); here they become `UserError`, which the CLI prints as one line."""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from latentwatch.pipeline.errors import UserError

log = logging.getLogger(__name__)
AUTO_AE_MIN_ROWS = 5000  # detectors.recipe.AUTO_AE_MIN_ROWS (not imported here: the CLI starts without torch)


def register(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train a detector on normal readings from CSV files or a topic and save it")
    t.add_argument("--data", action="append", metavar="CSV",
                   help="CSV of normal readings (repeat for several files; they must share channels)")
    t.add_argument("--out", required=True, metavar="MODEL_DIR",
                   help="versioned model directory: the model becomes a new version under MODEL_DIR/versions/ "
                        "and MODEL_DIR/current points at it (see `latentwatch models`)")
    t.add_argument("--no-promote", action="store_true",
                   help="write the new version but leave `current` where it is (promote it later)")
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
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--latent", type=int, default=None, help="latent size k (default: the model's)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of the data held out, in interleaved blocks, for early stopping, the score "
                        "parts and the threshold (default: %(default)s)")
    t.add_argument("--threshold", choices=["quantile", "pot", "adaptive"], default="quantile")
    t.add_argument("--quantile", type=float, default=0.99, help="quantile for --threshold quantile/adaptive")
    t.add_argument("--margin", type=float, default=1.0,
                   help="multiply the quantile threshold by this (default: %(default)s; SKAB's autoencoder "
                        "baselines use 1.5, the default before cross-fitted calibration)")
    t.add_argument("--calibration", choices=["auto", "cross", "blocks"], default="auto",
                   help="held-out scores for the score parts, threshold and persistence rule: cross = every "
                        "window scored by a model fitted without its block (5 fits), then the model fitted on "
                        "all; blocks = one set of interleaved blocks held out; auto = cross for PCA, blocks "
                        "for autoencoders (default: %(default)s)")
    t.add_argument("--risk", type=float, default=1e-3, help="tail probability for --threshold pot")
    t.add_argument("--persistence", default="auto", metavar="K/N|auto",
                   help="flag a reading when K of its sensor's last N readings are above the threshold; auto: "
                        "the fastest rule without false runs above the threshold on held-out normal scores; 1/1: the plain "
                        "threshold (default: %(default)s)")
    t.add_argument("--name", default=None, help="model name (default: the directory name)")
    _data_options(t)
    from latentwatch.pipeline.retrain import add_train_arguments

    add_train_arguments(t)
    t.set_defaults(func=_train)

    s = sub.add_parser("score", help="score every row of a CSV with a saved model")
    s.add_argument("--model", required=True, metavar="MODEL_DIR")
    s.add_argument("--data", required=True, metavar="CSV")
    s.add_argument("--out", required=True, metavar="SCORES_CSV", help="'-' for stdout")
    s.add_argument("--latent", action="store_true", help="add latent_0..latent_{k-1} columns")
    s.add_argument("--persistence", default=None, metavar="K/N",
                   help="override the model's persistence rule (e.g. 1/1: flag every reading above the threshold)")
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


def _recipe(args):
    from latentwatch.detectors.recipe import Recipe

    return Recipe(model=args.model, window=args.window, score_last=args.score_last, variance=args.variance,
                  score=args.score, latent=args.latent, threshold=args.threshold, quantile=args.quantile,
                  margin=args.margin, risk=args.risk, persistence=args.persistence, val_fraction=args.val_fraction,
                  calibration=args.calibration, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                  device=_device(args.device))


def _train(args) -> int:
    from latentwatch.detectors import recipe
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.versions import VersionError, publish

    options = _recipe(args)
    if args.persistence != "auto":
        _rule(args.persistence)  # a bad K/N is refused before any data is read
    if bool(args.data) == bool(args.from_topic):
        raise UserError("give either --data CSV (repeatable) or --from-topic TOPIC --since TIME")
    if args.from_topic:
        from latentwatch.pipeline.retrain import training_data_from_args

        stream = training_data_from_args(args)
        X, channels, parts = stream.values, stream.channels, []
    else:
        parts = [_read(p, args) for p in args.data]
        channels = parts[0].channels
        for part in parts[1:]:
            if set(part.channels) != set(channels):
                raise UserError(f"{part.path}: channels {part.channels} differ from {parts[0].path}'s {channels}")
        X = np.concatenate([parts[0].values] + [_reorder(p, channels) for p in parts[1:]])
    started = time.perf_counter()
    try:
        trained = recipe.train(X, channels, options)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    detector, threshold, held, rule = trained.detector, trained.threshold, trained.held, trained.rule
    seconds = time.perf_counter() - started
    summary = summarise_training_data(X, channels, [p.path for p in parts])
    if args.from_topic:
        summary["source"] = stream.finish(detector, threshold, held)
    from latentwatch.pipeline.drift import reference_for

    summary["drift_reference"] = reference_for(detector, X, held, threshold.value)
    name = args.name or Path(args.out).resolve().name
    try:
        version = publish(args.out, lambda d, v: save(d, detector, threshold, summary, name=name, version=v,
                                                      persistence=rule),
                          make_current=not args.no_promote)
    except VersionError as exc:
        raise UserError(str(exc)) from None
    out = f"{args.out} as version {version}" + (" (not current)" if args.no_promote else "")
    r = detector.training_report
    epochs = f", {r.epochs_run} epochs (best {r.best_epoch})" if r and r.epochs_run else ""
    origin = f"{args.from_topic}" if args.from_topic else f"{len(parts)} file(s)"
    print(f"trained {detector.kind} model on {len(X)} rows x {len(channels)} channels from {origin} "
          f"in {seconds:.1f}s{epochs}; threshold {threshold.kind} = {threshold.value:.5g}, alert when "
          f"{rule.describe()}; saved to {out}")
    return 0


def _rule(text: str):
    from latentwatch.detectors.recipe import parse_rule

    try:
        return parse_rule(text)
    except ValueError as exc:
        raise UserError(f"--{exc}") from None


def _reorder(part, channels: list[str]) -> np.ndarray:
    return part.values[:, [part.channels.index(c) for c in channels]]


def _score(args) -> int:
    from latentwatch.detectors.checkpoint import CheckpointError, load
    from latentwatch.detectors.recipe import flag_series

    device = _device(args.device)
    try:
        model = load(args.model, device=device)
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    data = _read(args.data, args, expect=model.detector.channels)
    det = model.detector
    rule = _rule(args.persistence) if args.persistence else model.persistence
    f = flag_series(det, model.threshold, rule, data.values)
    rows = _format_rows(data.timestamps, f.score, f.threshold, f.anomaly, f.above, f.parts,
                        f.scored.latent if args.latent else None, f.first)
    header = ["row", "timestamp", "score", "threshold", "anomaly", "above", *f.parts]
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
    log.info("scored %d rows (%d anomalous: %s) with %s", len(data), int(f.anomaly.sum()), rule.describe(), model.name)
    return 0


def _format_rows(timestamps, score, threshold, anomaly, above, parts, latent, first):
    n = len(score)
    stamps = timestamps if timestamps is not None else [""] * n
    fmt = lambda a: ["" if np.isnan(v) else f"{v:.6g}" for v in a.tolist()]  # noqa: E731
    cols = [range(n), stamps, fmt(score), fmt(threshold), anomaly.astype(int).tolist(), above.astype(int).tolist(),
            *(fmt(v) for v in parts.values())]
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
            r = evaluate.run_defaults(root, options, files=args.files, name=f"train --model {kind} + score, defaults")
        except ValueError as exc:
            raise UserError(str(exc)) from None
        rules = ", ".join(f"{k} x{v}" for k, v in sorted(Counter(r.rules).items()))
        kept = ", ".join(f"{k} x{v}" for k, v in sorted(Counter(r.kinds).items()))
        rows.append((f"latentwatch {r.name}", r.counts, None))
        print(f"{kind}: models kept {kept}; persistence rules {rules}")
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
