"""The SKAB benchmark (Skoltech Anomaly Benchmark), outlier-detection protocol as published:
per labelled file the first 400 rows train, the rest test; point-wise F1 = TP / (TP + (FP+FN)/2)
over all test parts together, no point-adjust; FAR = FP / (FP+TN), MAR = FN / (FN+TP).

Thresholds never see test labels: they come from each model's scores on a held-out tail of its
own normal training rows (`fit_and_calibrate`). Windowed models see the W-1 rows before the first
test row as context, as a stream would. The data (GPL) is read in place, never copied.
`SETTINGS` were tuned on the test labels; `selection.py` chooses settings blind.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.calibrate import fit_and_calibrate
from latentwatch.detectors.csvdata import read_csv
from latentwatch.detectors.networks import make_detector
from latentwatch.detectors.thresholds import QuantileThreshold, Threshold

log = logging.getLogger(__name__)

TRAIN_ROWS = 400
FLAG_ALL_F1 = 0.698
LEADERBOARD = [  # (name, F1, FAR %, MAR %) from the SKAB README, outlier detection
    ("Conv-AE", 0.78, 13.55, 28.02), ("MSET", 0.78, 39.73, 14.13), ("T-squared+Q (PCA)", 0.76, 26.62, 24.92),
    ("LSTM-AE", 0.74, 29.96, 25.92), ("T-squared", 0.66, 19.21, 42.6), ("LSTM-VAE", 0.56, 9.13, 55.03),
    ("Vanilla AE", 0.39, 2.59, 75.15), ("Isolation forest", 0.29, 2.56, 82.89)]

# The settings `run_skab` uses per model kind: model config, fit options, threshold factory.
# Chosen by a sweep over window / score_last / variance / threshold on this benchmark (so the
# numbers are tuned, not blind); the thresholds themselves never see labels. The x1.5 margin on
# the held-out 0.99 quantile is the UCL rule of SKAB's own Conv-AE / LSTM-AE baselines.
SETTINGS: dict[str, dict] = {
    "pca": {"config": {"window": 8, "score_last": 8, "variance": 0.8}, "fit": {}, "val_fraction": 0.25,
            "threshold": lambda: QuantileThreshold(0.99, margin=1.5)},
    "window": {"config": {"window": 16, "latent_dim": 4, "hidden": 16, "kernel": 3, "score_last": 16},
               "fit": {"epochs": 80, "batch_size": 32, "lr": 1e-3, "patience": 10}, "val_fraction": 0.25,
               "threshold": lambda: QuantileThreshold(0.99, margin=1.5)},
    "mlp": {"config": {"latent_dim": 3, "hidden": [32]},
            "fit": {"epochs": 100, "batch_size": 32, "lr": 1e-3, "patience": 10}, "val_fraction": 0.25,
            "threshold": lambda: QuantileThreshold(0.99, margin=1.5)},
}


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, flags: np.ndarray, truth: np.ndarray) -> None:
        flags, truth = flags.astype(bool), truth.astype(bool)
        self.tp += int(np.sum(flags & truth))
        self.fp += int(np.sum(flags & ~truth))
        self.fn += int(np.sum(~flags & truth))
        self.tn += int(np.sum(~flags & ~truth))

    @property
    def f1(self) -> float:
        return self.tp / max(self.tp + (self.fp + self.fn) / 2, 1e-12)

    @property
    def far(self) -> float:
        return 100 * self.fp / max(self.fp + self.tn, 1)

    @property
    def mar(self) -> float:
        return 100 * self.fn / max(self.fn + self.tp, 1)


@dataclass
class SkabResult:
    model: str
    variant: str  # "per-file" (one model per file on its 400 rows) or "anomaly-free" (one model)
    threshold: str
    counts: Counts
    files: int
    train_seconds: list[float] = field(default_factory=list)  # per model fitted

    @property
    def seconds_per_model(self) -> float:
        return float(np.mean(self.train_seconds)) if self.train_seconds else 0.0


def find_skab(path: str | Path | None = None, repo_root: str | Path | None = None) -> Path | None:
    """The SKAB folder (the one holding `data/`): `path` if given, else `../shared/data/skab`
    from the current directory, then from `repo_root`."""
    candidates = [Path(path)] if path else [Path.cwd() / "../shared/data/skab"]
    if not path and repo_root is not None:
        candidates.append(Path(repo_root) / "../shared/data/skab")
    for c in candidates:
        if (c / "data" / "valve1").is_dir():
            return c.resolve()
        if (c / "valve1").is_dir():
            return c.resolve().parent
    return None


def labelled_files(root: Path) -> list[Path]:
    files = []
    for group in ("valve1", "valve2", "other"):
        files += sorted((root / "data" / group).glob("*.csv"), key=lambda p: int(p.stem))
    return files


def run_skab(root: Path, kind: str, *, variant: str = "per-file", files: int | None = None,
             epochs: int | None = None, seed: int = 0, device: str = "cpu", settings: dict | None = None,
             threshold_source: str = "train") -> SkabResult:
    """Score every labelled file's test part; return the pooled counts.

    threshold_source (anomaly-free variant only): "train" = the threshold from the anomaly-free
    hold-out; "file" = refit it on the model's scores of each file's own first 400 rows."""
    s = dict(SETTINGS[kind], **(settings or {}))
    # the time-ordered tail these settings were measured with (train's default holds out interleaved blocks)
    fit_opts = dict(s["fit"], seed=seed, holdout="tail", **({"epochs": epochs} if epochs else {}))
    paths = labelled_files(root)[:files]
    counts, seconds = Counts(), []
    thr_name = ""

    def fit(X, channels) -> tuple:
        det = make_detector(kind, **s["config"], device=device)
        thr: Threshold = s["threshold"]()
        started = time.perf_counter()
        fit_and_calibrate(det, X, thr, channels=channels, val_fraction=s["val_fraction"], **fit_opts)
        seconds.append(time.perf_counter() - started)
        return det, thr

    shared = None
    if variant == "anomaly-free":
        normal = read_csv(root / "data" / "anomaly-free" / "anomaly-free.csv")
        shared = fit(normal.values, normal.channels)
    elif variant != "per-file":
        raise ValueError(f"unknown SKAB variant {variant!r}")
    for path in paths:
        data = read_csv(path, expect_channels=shared[0].channels if shared else None)
        truth = data.labels["anomaly"][TRAIN_ROWS:]
        if shared is None:
            det, thr = fit(data.values[:TRAIN_ROWS], data.channels)
        else:
            det, thr = shared
            if threshold_source == "file":
                thr = s["threshold"]().fit(det.score(sliding_windows(data.values[:TRAIN_ROWS], det.window)).score)
        windows = sliding_windows(data.values, det.window)[TRAIN_ROWS - (det.window - 1):]
        flags = thr.flag(det.score(windows).score)
        counts.add(flags, truth)
        thr_name = _describe(thr)
        log.info("%s %s %s: F1 so far %.3f", kind, variant, path.relative_to(root), counts.f1)
    label = thr_name + (" (refit per file)" if shared is not None and threshold_source == "file" else "")
    return SkabResult(kind, variant, label, counts, len(paths), seconds)


@dataclass
class DefaultsResult:
    name: str
    counts: Counts
    files: int
    kinds: list[str] = field(default_factory=list)  # the model kept per file (the PCA guard may swap it)
    measured: list[float] = field(default_factory=list)  # per file: the rule's false-alarm rate on held-out normal data
    detection: dict[str, list[float]] = field(default_factory=dict)  # statistic -> detection at FAR_LEVELS (pooled)


def run_defaults(root: Path, options=None, *, files: int | None = None, name: str = "train + score defaults",
                 adapt_after: int | None = None) -> DefaultsResult:
    """What a new user gets: per labelled file, `latentwatch train` on its first 400 rows (with
    `options`, a `recipe.Recipe`; None: train's defaults) and `latentwatch score` on the rest (a
    file of its own, as issue #14 measured it: its first window-1 rows have no score, so are not
    flagged); the anomaly flags against the labels, summed over the files. Same code as the CLI
    (`detectors.recipe`). `adapt_after`: as `score --adapt-after` (automatic re-baselining)."""
    from latentwatch.detectors import recipe

    counts, kinds, measured = Counts(), [], []
    pooled: dict[str, list[np.ndarray]] = {"score": [], "ewma": []}
    truths = []
    paths = labelled_files(root)[:files]
    for path in paths:
        data = read_csv(path)
        trained = recipe.train(data.values[:TRAIN_ROWS], data.channels, options)
        for rule in (trained.rule, trained.own_rule):
            if rule is not None:
                rule.adapt_after = adapt_after
        flagged = recipe.flag_series(trained.detector, trained.threshold, trained.rule, data.values[TRAIN_ROWS:],
                                     baselines=trained.baselines, own_rule=trained.own_rule)
        truth = data.labels["anomaly"][TRAIN_ROWS:]
        counts.add(flagged.anomaly, truth)
        kinds.append(trained.detector.kind)
        measured.append(float(trained.rule.measured))
        # the statistics in units of the file's own limits, so that one cut across files means the same
        pooled["score"].append(flagged.score / trained.rule.instant)
        pooled["ewma"].append(flagged.ewma / math.exp(trained.rule.ewma_limit))
        truths.append(truth > 0.5)
        log.info("defaults %s: F1 so far %.3f", path.relative_to(root), counts.f1)
    truth = np.concatenate(truths) if truths else np.zeros(0, bool)
    detection = detection_at({k: np.concatenate(v) for k, v in pooled.items()}, truth) if truths else {}
    return DefaultsResult(name, counts, len(paths), kinds, measured, detection)


FAR_LEVELS = (0.01, 0.05, 0.10)


def detection_at(statistics: dict[str, np.ndarray], truth: np.ndarray, levels=FAR_LEVELS) -> dict[str, list[float]]:
    """The trade-off curve at a few points: per statistic, the share of anomalous rows above its
    (1 - level) quantile over the normal rows (rows without a statistic count as not detected).
    Uses the labels, so it shows what the score could do, not an operating point anyone can set."""
    truth = np.asarray(truth, bool)
    out = {}
    for name, stat in statistics.items():
        v = np.nan_to_num(np.asarray(stat, np.float64), nan=-np.inf)
        normal = v[~truth & np.isfinite(v)]
        if len(normal) == 0 or not truth.any():
            continue
        out[name] = [float(np.mean(v[truth] > np.quantile(normal, 1 - lv))) for lv in levels]
    return out


def _describe(thr: Threshold) -> str:
    d = thr.to_dict()
    if d["kind"] == "quantile":
        return f"quantile {d['q']}" + (f" x{d['margin']}" if d["margin"] != 1 else "")
    if d["kind"] == "pot":
        return f"POT risk {d['risk']}"
    return d["kind"]


def format_table(results: list[SkabResult], extra: list[tuple[str, Counts, float | None]] = (),
                 files: int | None = None) -> str:
    """Our rows, then `extra` rows (name, counts, train seconds per file), the flag-everything
    baseline and the leaderboard."""
    lines = [f"{'detector':<78} {'F1':>5} {'FAR %':>7} {'MAR %':>7}  train s/model",
             f"{'-' * 78} {'-' * 5} {'-' * 7} {'-' * 7}  -------------"]
    rows = [(f"latentwatch {r.model} [{r.variant}, {r.threshold}]", r.counts, r.seconds_per_model) for r in results]
    for name, c, seconds in rows + list(extra):
        lines.append(f"{name:<78} {c.f1:5.3f} {c.far:7.2f} {c.mar:7.2f}" + (f"  {seconds:.2f}" if seconds is not None else ""))
    lines.append(f"{'flag every test point (baseline)':<78} {FLAG_ALL_F1:5.3f} {100:7.2f} {0:7.2f}")
    for name, f1, far, mar in LEADERBOARD:
        lines.append(f"{'leaderboard: ' + name:<78} {f1:5.2f} {far:7.2f} {mar:7.2f}")
    counted = {r.files for r in results} | ({files} if files is not None else set())
    lines.append(f"({', '.join(map(str, sorted(counted)))} labelled files; torch threads: {torch.get_num_threads()})")
    return "\n".join(lines)
