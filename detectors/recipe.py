"""What `latentwatch train` and `latentwatch score` do, as two functions, so the CLI and the
defaults benchmark (`evaluate skab --select defaults`) run the same code.

    options = Recipe()                                  # train's defaults; Recipe(model="vae", ...) etc.
    trained = train(X, channels, options)               # .detector .threshold .rule .held
    out = flag_series(trained.detector, trained.threshold, trained.rule, values)   # per row of `values`

`flag_series` scores every row of a file (rows before the first full window have no score and are
never anomalous) and applies the persistence rule to the scored readings, as the stream does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latentwatch.detectors import persistence
from latentwatch.detectors.base import Scores, sliding_windows
from latentwatch.detectors.calibrate import fit_no_worse_than_pca
from latentwatch.detectors.models import TorchDetector, make_detector
from latentwatch.detectors.persistence import PersistenceRule
from latentwatch.detectors.thresholds import AdaptiveThreshold, POTThreshold, QuantileThreshold, Threshold

AUTO_AE_MIN_ROWS = 5000  # below this, autoencoders ended worse than PCA on held-out data (SKAB, 400 rows)
DEFAULT_WINDOW = {"auto": 8, "pca": 8, "window": 32, "mlp": 1, "vae": 32}
SCORES = {"reconstruction": ("reconstruction",), "both": ("reconstruction", "latent_distance")}


@dataclass
class Recipe:
    """`latentwatch train`'s options (the defaults are train's defaults)."""

    model: str = "auto"  # auto | pca | window | mlp | vae
    window: int | None = None  # None: DEFAULT_WINDOW[model]
    score_last: int | None = None  # None: the window
    variance: float = 0.8  # PCA: share of the variance its components explain
    score: str = "reconstruction"  # a key of SCORES
    latent: int | None = None
    threshold: str = "quantile"  # quantile | pot | adaptive
    quantile: float = 0.99
    margin: float = 1.0
    risk: float = 1e-3
    persistence: str = "auto"  # "auto" or "K/N"
    val_fraction: float = 0.2
    calibration: str = "auto"  # blocks | cross | auto (cross for PCA): calibrate.fit_and_calibrate
    epochs: int = 100
    batch_size: int | None = None
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"

    def kind(self, rows: int) -> str:
        if self.model != "auto":
            return self.model
        return "window" if rows >= AUTO_AE_MIN_ROWS else "pca"

    def make_threshold(self) -> Threshold:
        q = lambda: QuantileThreshold(self.quantile, self.margin)  # noqa: E731
        makers = {"quantile": q, "pot": lambda: POTThreshold(self.risk), "adaptive": lambda: AdaptiveThreshold(base=q())}
        if self.threshold not in makers:
            raise ValueError(f"unknown threshold {self.threshold!r}; known: {', '.join(makers)}")
        return makers[self.threshold]()


def parse_rule(text: str) -> PersistenceRule:
    """"K/N" -> PersistenceRule(K, N); ValueError saying what is expected."""
    try:
        k, n = (int(v) for v in text.split("/"))
        return PersistenceRule(k, n)
    except ValueError as exc:
        raise ValueError(f"persistence {text!r}: expected K/N with 1 <= K <= N <= 64, e.g. 3/4 ({exc})") from None


@dataclass
class Trained:
    detector: TorchDetector
    threshold: Threshold
    rule: PersistenceRule
    held: np.ndarray  # the held-out normal scores the threshold and rule were set on


def train(X: np.ndarray, channels: list[str] | None, options: Recipe | None = None) -> Trained:
    """Fit the detector `options` describe on `X` [n, channels] (time order), with its score
    parts, threshold and persistence rule (all from held-out normal data, no labels)."""
    o = options or Recipe()
    fixed_rule = None if o.persistence == "auto" else parse_rule(o.persistence)
    if o.score not in SCORES:
        raise ValueError(f"unknown score {o.score!r}; known: {', '.join(SCORES)}")
    kind = o.kind(len(X))
    window = o.window or DEFAULT_WINDOW[o.model]
    config: dict = {"device": o.device, "window": window, "score_last": o.score_last or window}
    if kind == "pca":
        config["variance"] = o.variance
    if o.latent is not None:
        config["latent_dim"] = o.latent
    detector = make_detector(kind, **config)
    detector, threshold, held = fit_no_worse_than_pca(
        detector, X, o.make_threshold, channels=channels, val_fraction=o.val_fraction, use=SCORES[o.score],
        calibration=o.calibration, epochs=o.epochs, batch_size=o.batch_size, lr=o.lr, seed=o.seed)
    rule = fixed_rule or persistence.choose(held, threshold.value)
    return Trained(detector, threshold, rule, held)


@dataclass
class Flagged:
    """Per row of a file: score, threshold, above it, anomaly (the rule); `scored` holds the
    detector's output for rows `first`.. (latent vectors, parts)."""

    score: np.ndarray
    threshold: np.ndarray
    above: np.ndarray
    anomaly: np.ndarray
    first: int  # rows before this one have no full window: no score, never anomalous
    scored: Scores
    parts: dict[str, np.ndarray] = field(default_factory=dict)  # per row, NaN before `first`


def flag_series(detector: TorchDetector, threshold: Threshold, rule: PersistenceRule, values: np.ndarray) -> Flagged:
    """Score every row of `values` [n, channels] (one sensor, time order) and flag it as `score` does."""
    scored = detector.score(sliding_windows(values, detector.window))
    n, first = len(values), detector.window - 1
    score = np.full(n, np.nan)
    score[first:] = scored.score
    thr = np.full(n, threshold.value)
    thr[first:] = threshold.thresholds(scored.score)
    above = np.nan_to_num(score, nan=-np.inf) > thr
    anomaly = np.zeros(n, dtype=bool)  # the rule sees scored readings only, as in the stream
    anomaly[first:] = rule.flags(np.zeros(n - first, dtype=np.int64), above[first:])
    parts = {p: np.concatenate([np.full(first, np.nan), v]) for p, v in scored.parts.items()}
    return Flagged(score, thr, above, anomaly, first, scored, parts)
