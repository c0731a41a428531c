"""Label-blind settings for the SKAB benchmark: leave-one-folder-out cross-validation.

A *setting* is a model (kind, channels, window, score_last, PCA variance, how its threshold is
calibrated) plus score smoothing and a threshold rule (quantile q of held-out normal scores x
margin). A setting's alarms on a file are a function of that file's sensor values only: the
model and its threshold see the first `train_rows` rows and no labels (`score_file`, `predict`).

Labels enter in one place, `count_table` (confusion counts per file and setting). For each
folder (valve1, valve2, other), `cross_validate` picks a setting from the counts pooled over the
*other* folders' test parts and applies it to the held-out folder, whose labels are only used
afterwards, to score that choice. Counts are summed over folds, as the SKAB protocol sums over
files.

The primary criterion was pre-registered (written here and committed before any run with it):
the best F1 on the other folders among settings whose FAR there is at most `PRIMARY_MAX_FAR` =
10 %, the target stated in issue #3, not a tuned value (no setting within it: the lowest FAR).
The unconstrained best-F1 choice (the criterion of the first blind run) is reported beside it.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.csvdata import read_csv
from latentwatch.detectors.evaluate import TRAIN_ROWS, Counts, labelled_files
from latentwatch.detectors.networks import TorchDetector, make_detector
from latentwatch.detectors.persistence import choose

log = logging.getLogger(__name__)

HOLD_OUT = 0.25  # tail calibration: the last 100 of SKAB's 400 training rows
CROSS_BLOCKS = 4  # cross calibration: out-of-block scores of 4 models, each fitted without one block
AE_FIT = {"epochs": 80, "batch_size": 32, "lr": 1e-3, "patience": 10}
PRIMARY_MAX_FAR = 10.0  # percent; issue #3's aim (FAR <= 10 %), pre-registered, never tuned
# Channels that change slowly (on the files' training rows the std of their first differences is a
# median 0.25 of the white-noise value, about 1 for the other six): 400 rows cannot show how far
# they drift in normal operation. A grid option drops them; cross-validation decides.
THERMAL = ("Temperature", "Thermocouple")


@dataclass(frozen=True)
class ModelSpec:
    """One model fitted per file. calibration "tail": fitted on the first 75 % of the training rows
    (autoencoders: early-stopped on the rest), threshold scores from the last 25 %; "cross": the
    threshold scores of every training row come from a model fitted without that row's block
    (seams between blocks are kept), the scoring model is fitted on all training rows (the
    autoencoders still early-stop on their last 25 %)."""

    kind: str  # pca | window | mlp
    window: int = 1
    score_last: int = 1
    variance: float = 0.9  # pca: components explaining this share of the variance
    calibration: str = "tail"
    drop: tuple[str, ...] = ()  # channels left out of the model (by name)

    def config(self) -> dict:
        c = {"window": self.window, "score_last": self.score_last}
        if self.kind == "pca":
            return c | {"variance": self.variance}
        if self.kind == "window":
            return c | {"latent_dim": 4, "hidden": 16, "kernel": 3}
        return c | {"latent_dim": 3, "hidden": [32]}

    def describe(self) -> str:
        var = f" var {self.variance}" if self.kind == "pca" else ""
        drop = f" without {'+'.join(self.drop)}" if self.drop else ""
        return f"{self.kind} W{self.window} last {self.score_last}{var} {self.calibration}{drop}"


@dataclass(frozen=True)
class Setting:
    model: ModelSpec
    smooth: int = 1  # trailing mean of the last `smooth` scores (causal)
    q: float = 0.99
    margin: float = 1.5
    statistic: str = "spe"  # spe | t2+spe (PCA only; see `statistics`)
    persistence: str = "none"  # none | auto: the k-of-n rule `persistence.choose` picks from the calibration scores

    def describe(self) -> str:
        stat = f", {self.statistic}" if self.statistic != "spe" else ""
        rule = ", persistence auto" if self.persistence == "auto" else ""
        return f"{self.model.describe()}{stat}, smooth {self.smooth}, q{self.q} x{self.margin}{rule}"


# The grid. First run: everything but `drop`, smoothing 16 and t2+spe, fixed before any
# cross-validated run was looked at. Second (pre-registered with PRIMARY_MAX_FAR, before running
# it): + `drop` THERMAL and smoothing 16 (between 8 and 32, whose causal lag past the end of a
# segment costs FAR). Third, after the second's result (blind F1 0.777, FAR 8.94 %): + t2+spe,
# the textbook PCA monitoring pair (SKAB's own "T-squared+Q" baseline), before running it; it gave
# 0.774 / 8.93 % (detectors/README.md). Fourth (issue #14, before running it): + persistence
# "auto", the k-of-n rule `train` uses, chosen per file without labels from the false runs above
# the threshold on the calibration scores (`persistence.choose`); nothing else changed.
SMOOTH = (1, 8, 16, 32)
QUANTILES = (0.95, 0.99, 1.0)
MARGINS = (1.0, 1.5, 2.0, 3.0)
DROPS = ((), THERMAL)
STATISTICS = ("spe", "t2+spe")
PERSISTENCE = ("none", "auto")


def model_grid(kinds: list[str] | tuple[str, ...] = ("pca",)) -> list[ModelSpec]:
    specs = []
    for drop, cal in itertools.product(DROPS, ("tail", "cross")):
        if "pca" in kinds:
            for w, var in itertools.product((1, 4, 8, 16, 32), (0.8, 0.9, 0.95)):
                specs += [ModelSpec("pca", w, last, var, cal, drop) for last in sorted({1, w})]
        if "window" in kinds:
            specs += [ModelSpec("window", w, w, calibration=cal, drop=drop) for w in (8, 16, 32)]
        if "mlp" in kinds:
            specs.append(ModelSpec("mlp", calibration=cal, drop=drop))
    return specs


def expand(specs: list[ModelSpec], smooth=SMOOTH, quantiles=QUANTILES, margins=MARGINS,
           statistics=STATISTICS, persistence=PERSISTENCE) -> list[Setting]:
    """Every (model, statistic, smoothing, q, margin, persistence), in that nesting order (ties go
    to the first); t2+spe for PCA models only."""
    return [Setting(m, s, q, k, st, p) for m in specs for st in statistics if st == "spe" or m.kind == "pca"
            for s in smooth for q in quantiles for k in margins for p in persistence]


# Library defaults (PCADetector, QuantileThreshold 0.99) with the x1.5 upper-control-limit rule of
# SKAB's own autoencoder baselines, the last 100 training rows held out, no smoothing: no tuning.
A_PRIORI = Setting(ModelSpec("pca", 1, 1, 0.9, "tail"), smooth=1, q=0.99, margin=1.5)
# The settings `evaluate.SETTINGS["pca"]` holds: chosen by a sweep on SKAB's test labels.
SWEPT = Setting(ModelSpec("pca", 8, 8, 0.8, "tail"), smooth=1, q=0.99, margin=1.5)


# --- label-free: scores and alarms from sensor values only ------------------------------------
@dataclass
class SpecScores:
    calib: np.ndarray  # spe scores of held-out normal training rows, time order
    series: np.ndarray  # the scoring model's spe scores of rows window-1 .. n-1
    first_test: int  # index in `series` of the first test row
    seconds: float  # fitting time (every model the calibration needs)
    more: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # statistic -> (calib, series)

    def pair(self, statistic: str) -> tuple[np.ndarray, np.ndarray]:
        return (self.calib, self.series) if statistic == "spe" else self.more[statistic]


def _fit(spec: ModelSpec, X: np.ndarray, channels, seed: int, device: str, val_fraction: float):
    """The fitted model and the statistics it scores with (`statistics`, normalised on its fit rows)."""
    det = make_detector(spec.kind, **spec.config(), device=device)
    if spec.kind == "pca":
        fit_rows = X[:len(X) - int(len(X) * val_fraction)]
        det.fit(fit_rows, channels=channels)
        return det, statistics(det, sliding_windows(fit_rows, spec.window))
    det.fit(X, channels=channels, val_fraction=val_fraction, seed=seed, **AE_FIT)
    return det, lambda windows: {"spe": det.score(windows).score}


def statistics(det: TorchDetector, fit_windows: np.ndarray):
    """PCA's two monitoring statistics as a function of windows: spe (the model's score: squared
    error off the principal subspace) and t2+spe = spe / its mean on the fit windows + Hotelling's
    T^2 / k (mean over the k components of latent^2 / its variance on the fit windows): both
    terms average 1 on the fit windows; T^2 sees moves *along* the principal axes, spe cannot."""
    fitted = det.score(fit_windows)
    spe_mean = max(float(np.mean(fitted.score, dtype=np.float64)), 1e-12)
    var = np.maximum(np.mean(np.square(fitted.latent, dtype=np.float64), axis=0), 1e-12)

    def score(windows: np.ndarray) -> dict[str, np.ndarray]:
        s = det.score(windows)
        t2 = np.mean(np.square(s.latent, dtype=np.float64) / var, axis=1)
        return {"spe": s.score, "t2+spe": s.score / spe_mean + t2}
    return score


def score_file(values: np.ndarray, spec: ModelSpec, *, channels=None, train_rows: int = TRAIN_ROWS,
               seed: int = 0, device: str = "cpu") -> SpecScores:
    """Fit `spec` on `values[:train_rows]` and score every row; no labels anywhere."""
    if spec.drop:
        if channels is None:
            raise ValueError("dropping channels by name needs the channel names")
        keep = [i for i, c in enumerate(channels) if c not in spec.drop]
        values, channels = values[:, keep], [channels[i] for i in keep]
    X, w = values[:train_rows], spec.window
    started = time.perf_counter()
    if spec.calibration == "tail":
        det, stats = _fit(spec, X, channels, seed, device, HOLD_OUT)
        n_val = int(len(X) * HOLD_OUT) if spec.kind == "pca" else det.training_report.validation_rows
        calib = stats(sliding_windows(X, w)[-n_val:])
    elif spec.calibration == "cross":
        edges = np.linspace(0, len(X), CROSS_BLOCKS + 1).astype(int)
        parts = []
        for a, b in itertools.pairwise(edges):
            _, held = _fit(spec, np.concatenate([X[:a], X[b:]]), channels, seed, device, 0.0 if spec.kind == "pca" else HOLD_OUT)
            lo = max(a, w - 1)  # rows with a full window of context
            if b > lo:
                parts.append(held(sliding_windows(X[lo - (w - 1):b], w)))
        calib = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        det, stats = _fit(spec, X, channels, seed, device, 0.0 if spec.kind == "pca" else HOLD_OUT)
    else:
        raise ValueError(f"unknown calibration {spec.calibration!r}; use 'tail' or 'cross'")
    seconds = time.perf_counter() - started
    series = stats(sliding_windows(values, w))
    pairs = {k: (np.asarray(calib[k], np.float64), np.asarray(series[k], np.float64)) for k in series}
    spe = pairs.pop("spe")
    return SpecScores(*spe, train_rows - (w - 1), seconds, pairs)


def trailing_mean(x: np.ndarray, k: int) -> np.ndarray:
    """Mean of the last `k` values at each position (fewer at the start): a causal smoother."""
    if k <= 1:
        return x
    c = np.concatenate([[0.0], np.cumsum(x)])
    i = np.arange(1, len(x) + 1)
    lo = np.maximum(i - k, 0)
    return (c[i] - c[lo]) / (i - lo)


def predict(sc: SpecScores, setting: Setting) -> np.ndarray:
    """The setting's alarms on the test rows: bool [n_test]."""
    calib, series = sc.pair(setting.statistic)
    smoothed = trailing_mean(calib, setting.smooth)
    thr = np.quantile(smoothed, setting.q) * setting.margin
    return apply_persistence(trailing_mean(series, setting.smooth) > thr, smoothed, thr, setting)[sc.first_test:]


def apply_persistence(above: np.ndarray, calib: np.ndarray, thr: float, setting: Setting) -> np.ndarray:
    """`above` over a file's whole scored series, through the setting's persistence rule (chosen
    from the calibration scores, no labels): a stream that has run since the file's first row."""
    if setting.persistence == "none":
        return above
    rule = choose(calib, thr)
    return rule.flags(np.zeros(len(above), dtype=np.int64), above)


@dataclass
class FileRun:
    path: Path
    group: str  # the folder: the cross-validation fold
    scores: dict[ModelSpec, SpecScores]


def score_files(paths: list[Path], specs: list[ModelSpec], *, train_rows: int = TRAIN_ROWS, seed: int = 0,
                device: str = "cpu") -> list[FileRun]:
    runs = []
    for path in paths:
        data = read_csv(path)
        values = data.values  # labels stay unread here
        runs.append(FileRun(path, path.parent.name, {s: score_file(values, s, channels=data.channels,
                                                                   train_rows=train_rows, seed=seed, device=device)
                                                     for s in specs}))
        log.info("scored %s with %d models", path, len(specs))
    return runs


# --- labels: counting and choosing --------------------------------------------------------------
def read_truth(path: Path, train_rows: int = TRAIN_ROWS) -> np.ndarray:
    return read_csv(path).labels["anomaly"][train_rows:].astype(bool)


def count_table(runs: list[FileRun], truths: list[np.ndarray], settings: list[Setting]) -> np.ndarray:
    """[files, settings, 4] confusion counts (tp, fp, fn, tn) of every setting on every file."""
    index = {s: i for i, s in enumerate(settings)}
    table = np.zeros((len(runs), len(settings), 4), dtype=np.int64)
    groups: dict[tuple, list[Setting]] = {}
    for s in settings:
        groups.setdefault((s.model, s.statistic, s.smooth), []).append(s)
    for f, (run, truth) in enumerate(zip(runs, truths)):
        for (spec, statistic, smooth), members in groups.items():
            sc = run.scores[spec]
            calib, series = sc.pair(statistic)
            whole = trailing_mean(series, smooth)
            test = whole[sc.first_test:]
            if len(test) != len(truth):
                raise ValueError(f"{run.path}: {len(test)} scored test rows for {len(truth)} labels")
            smoothed = trailing_mean(calib, smooth)
            qs = np.quantile(smoothed, [m.q for m in members])
            thr = qs * np.array([m.margin for m in members])
            flags = test[None, :] > thr[:, None]
            for i, m in enumerate(members):
                if m.persistence != "none":
                    flags[i] = apply_persistence(whole > thr[i], smoothed, thr[i], m)[sc.first_test:]
            tp = (flags & truth).sum(axis=1)
            fp = (flags & ~truth).sum(axis=1)
            pos = int(truth.sum())
            rows = [index[m] for m in members]
            table[f, rows] = np.stack([tp, fp, pos - tp, len(truth) - pos - fp], axis=1)
    return table


def f1_scores(counts: np.ndarray) -> np.ndarray:
    """F1 = TP / (TP + (FP + FN) / 2) over the last axis (tp, fp, fn, tn)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return tp / np.maximum(tp + (fp + fn) / 2, 1e-12)


def _counts(row: np.ndarray) -> Counts:
    return Counts(*(int(v) for v in row))


@dataclass
class Fold:
    group: str  # the held-out folder
    chosen: int  # index of the setting chosen on the other folders
    inner_f1: float  # its F1 on the other folders (optimistic: it was chosen there)
    counts: Counts  # its counts on the held-out folder


def cross_validate(table: np.ndarray, groups: list[str], max_far: float | None = None) -> list[Fold]:
    """Leave one group out: choose by F1 summed over the other groups' files, score on the group.
    `max_far` (percent): choose only among settings whose FAR on the other groups is at most that
    (none is: the one with the lowest FAR there). Ties go to the first setting."""
    groups_a = np.asarray(groups)
    order = list(dict.fromkeys(groups))
    if len(order) < 2:
        raise ValueError("cross-validation needs files in at least two folders")
    folds = []
    for g in order:
        pooled = table[groups_a != g].sum(axis=0)  # [settings, 4]: the held-out folder is not in it
        f1 = f1_scores(pooled)
        criterion = f1
        if max_far is not None:
            far = 100 * pooled[:, 1] / np.maximum(pooled[:, 1] + pooled[:, 3], 1)
            criterion = np.where(far <= max_far, f1, -1.0) if np.any(far <= max_far) else -far
        chosen = int(np.argmax(criterion))
        folds.append(Fold(g, chosen, float(f1[chosen]), _counts(table[groups_a == g, chosen].sum(axis=0))))
    return folds


def pooled_counts(folds: list[Fold]) -> Counts:
    c = Counts()
    for f in folds:
        c.tp, c.fp, c.fn, c.tn = c.tp + f.counts.tp, c.fp + f.counts.fp, c.fn + f.counts.fn, c.tn + f.counts.tn
    return c


@dataclass
class SelectionResult:
    settings: list[Setting]
    cv: dict[str, list[Fold]]  # selection criterion -> its folds; the first is the primary one
    table: np.ndarray
    runs: list[FileRun]
    wall_seconds: float
    grid_size: int  # settings[:grid_size] are the candidates; the rest are fixed rows scored as is
    fixed: dict[str, Setting] = field(default_factory=dict)  # name -> setting scored as is

    @property
    def folds(self) -> list[Fold]:
        return next(iter(self.cv.values()))

    @property
    def blind(self) -> Counts:
        return pooled_counts(self.folds)

    def counts_of(self, setting: Setting) -> Counts:
        return _counts(self.table[:, self.settings.index(setting)].sum(axis=0))

    def best_on_test(self) -> tuple[Setting, Counts]:
        """The grid's best setting by pooled F1 on every file: tuned on test labels, not blind."""
        i = int(np.argmax(f1_scores(self.table[:, :self.grid_size].sum(axis=0))))
        return self.settings[i], _counts(self.table[:, i].sum(axis=0))

    def seconds_per_file(self, spec: ModelSpec) -> float:
        return float(np.mean([r.scores[spec].seconds for r in self.runs]))

    def predictions(self, folds: list[Fold] | None = None) -> dict[Path, np.ndarray]:
        """Each file's alarms under the setting chosen for its fold."""
        chosen = {f.group: self.settings[f.chosen] for f in (folds or self.folds)}
        return {r.path: predict(r.scores[chosen[r.group].model], chosen[r.group]) for r in self.runs}


PRIMARY = f"best F1, FAR <= {PRIMARY_MAX_FAR:g} % (pre-registered)"


def run_selection(root: Path, *, kinds: list[str] | tuple[str, ...] = ("pca",), settings: list[Setting] | None = None,
                  train_rows: int = TRAIN_ROWS, files: int | None = None, seed: int = 0, device: str = "cpu",
                  max_far: float | None = None) -> SelectionResult:
    """Score every labelled file under `root`/data with every setting, then cross-validate by
    folder: first by the pre-registered criterion (best F1 among settings within FAR 10 % on the
    other folders), then by F1 alone, and (with `max_far`) by F1 among settings within that FAR."""
    started = time.perf_counter()
    grid = list(settings) if settings is not None else expand(model_grid(kinds))
    fixed = {"fixed a-priori default": A_PRIORI, "evaluate.SETTINGS pca (swept on test labels)": SWEPT}
    fixed = {k: s for k, s in fixed.items() if s.model.kind in kinds}
    settings = grid + [s for s in fixed.values() if s not in grid]  # extras are scored, never chosen
    paths = labelled_files(root)[:files]
    specs = list(dict.fromkeys(s.model for s in settings))
    runs = score_files(paths, specs, train_rows=train_rows, seed=seed, device=device)
    table = count_table(runs, [read_truth(p, train_rows) for p in paths], settings)
    groups = [r.group for r in runs]
    cv = {PRIMARY: cross_validate(table[:, :len(grid)], groups, PRIMARY_MAX_FAR),
          "best F1": cross_validate(table[:, :len(grid)], groups)}
    if max_far is not None and max_far != PRIMARY_MAX_FAR:
        cv[f"best F1, FAR <= {max_far:g} %"] = cross_validate(table[:, :len(grid)], groups, max_far)
    return SelectionResult(settings, cv, table, runs, time.perf_counter() - started, len(grid), fixed)


def table_rows(result: SelectionResult) -> list[tuple[str, Counts, float | None]]:
    """Rows for `evaluate.format_table`: the blind cross-validated results first."""
    rows = []
    for name, folds in result.cv.items():
        chosen = {result.settings[f.chosen].model for f in folds}
        secs = float(np.mean([result.seconds_per_file(m) for m in chosen]))
        rows.append((f"latentwatch BLIND CV: {name} on other folders", pooled_counts(folds), secs))
    for name, s in result.fixed.items():
        rows.append((f"latentwatch {name}", result.counts_of(s), result.seconds_per_file(s.model)))
    best, counts = result.best_on_test()
    rows.append(("latentwatch grid's best on the test labels (NOT blind)", counts, result.seconds_per_file(best.model)))
    return rows


def describe_folds(result: SelectionResult) -> str:
    lines = [f"{result.grid_size} settings in the grid; per held-out folder, the setting chosen on the others:"]
    for name, folds in result.cv.items():
        lines.append(f" {name}:")
        for f in folds:
            s = result.settings[f.chosen]
            lines.append(f"  {f.group:<8} {s.describe():<60} F1 other folders {f.inner_f1:.3f}; "
                         f"held out F1 {f.counts.f1:.3f} FAR {f.counts.far:.2f} MAR {f.counts.mar:.2f}; "
                         f"train {result.seconds_per_file(s.model):.2f} s/file")
    for name, s in list(result.fixed.items()) + [("grid's best on test labels", result.best_on_test()[0])]:
        lines.append(f"  {name}: {s.describe()}")
    lines.append(f"evaluation wall time {result.wall_seconds:.1f} s")
    return "\n".join(lines)
