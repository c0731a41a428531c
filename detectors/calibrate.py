"""Fit a model, its score parts and its threshold on normal data, without the threshold seeing
training scores.

Scores of readings a model was trained on are optimistically low, so a threshold set on them
flags too much. `fit` holds out interleaved blocks of the windows (`training.split_blocks`): the
autoencoders early-stop on them and never train on them; PCA is not fitted on them. The latent
distribution is fitted on the training windows; the score parts are scaled, and the threshold
fitted, on the model's scores of the held-out windows. `calibration="cross"` (`cross_fit`; train's
default for PCA) holds out every block once, in 5 folds, and fits the model kept on all windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.latent import DEFAULT_USE, ScoreParts
from latentwatch.detectors.networks import PCADetector, TorchDetector
from latentwatch.detectors.thresholds import Threshold
from latentwatch.detectors.training import n_folds, split_blocks

log = logging.getLogger(__name__)


CALIBRATIONS = ("blocks", "cross", "auto")


def fit_and_calibrate(detector: TorchDetector, X: np.ndarray, threshold: Threshold, *,
                      channels: list[str] | None = None, val_fraction: float = 0.2,
                      use: tuple[str, ...] = DEFAULT_USE, calibration: str = "blocks", **fit_options) -> np.ndarray:
    """Fit `detector` on `X` `[n, channels]`, its score parts and `threshold` on held-out windows;
    return the held-out scores (in time order). `calibration`: "blocks" (one set of interleaved
    blocks held out; the model never fits them), "cross" (`cross_fit`: every window held out once,
    the model then fitted on all of them), "auto" (cross for PCA, whose fits take milliseconds;
    blocks for the autoencoders, which would train once per fold)."""
    X = np.asarray(X, dtype=np.float32)
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    if int(len(X) * val_fraction) < 10:
        raise ValueError(f"{len(X)} readings leave too few (<10) held-out readings to set a threshold; "
                         "give more normal data or a larger validation fraction")
    if calibration == "cross" or (calibration == "auto" and detector.kind == "pca"):
        held_out = cross_fit(detector, X, channels=channels, val_fraction=val_fraction, use=use, **fit_options)
        if held_out is not None:
            threshold.fit(held_out)
            return held_out
    detector.fit(X, channels=channels, val_fraction=val_fraction, **fit_options)
    report = detector.training_report
    windows = sliding_windows(X, detector.window)
    held = windows[report.validation_index]
    if len(held) < 10:
        raise ValueError(f"{len(X)} readings leave {len(held)} held-out windows of {detector.window} readings "
                         "(<10) to set a threshold; give more normal data or a smaller window")
    detector.calibrate(windows[report.train_index], held, use)
    held_out = detector.score(held).score
    threshold.fit(held_out)
    return held_out


def cross_fit(detector: TorchDetector, X: np.ndarray, *, channels: list[str] | None = None, val_fraction: float = 0.2,
              use: tuple[str, ...] = DEFAULT_USE, **fit_options) -> np.ndarray | None:
    """Cross-fitted calibration: the interleaved blocks are dealt into round(1/val_fraction) folds;
    per fold a model of the same configuration is fitted without that fold's blocks (seams purged)
    and scores them, so every window gets a held-out score (5x as many as one hold-out gives at
    0.2). `detector` itself is then fitted on all the windows, its latent distribution on all of
    them; its part scales and the returned held-out scores come from the folds' unscaled parts
    (reconstruction error; latent Mahalanobis distance, each fold against its own latent fit:
    invariant to the basis each fold's model chose). None when the data has fewer blocks than
    folds (the caller then holds out one set of blocks)."""
    folds = n_folds(val_fraction)
    windows = sliding_windows(X, detector.window)
    splits = [split_blocks(len(windows), val_fraction, detector.window, fit_options.get("holdout", "blocks"), f)
              for f in range(folds)]
    held_index = np.concatenate([v for _, v in splits])
    if any(len(v) == 0 or len(t) == 0 for t, v in splits) or len(np.unique(held_index)) != len(held_index):
        return None
    config = detector.config()
    raw: dict[str, list[np.ndarray]] = {}
    losses = []  # per fold: (the model's best held-out loss, PCA's with the same latent size), for the guard
    for f in range(folds):
        model = type(detector)(**config, device=detector.device)
        model.fit(X, channels=channels, val_fraction=val_fraction, fold=f, **fit_options)
        r = model.training_report
        losses.append((r.best_val_loss, r.pca_val_loss))
        fitted, held = model.score(windows[r.train_index]), model.score(windows[r.validation_index])
        for p, v in ScoreParts.fit(fitted.latent, fitted.score).raw(held.score, held.latent).items():
            raw.setdefault(p, []).append(v)
    order = np.argsort(held_index, kind="stable")
    held_raw = {p: np.concatenate(v)[order] for p, v in raw.items()}
    detector.fit(X, channels=channels, val_fraction=0.0, **fit_options)
    every = detector.score(windows)
    detector.parts = ScoreParts.fit(every.latent, every.score, use=use, held_raw=held_raw)
    r = detector.training_report
    r.validation_rows, r.validation_index, r.calibration = len(held_index), held_index[order], "cross"
    if detector.kind != "pca":  # the kept model had no hold-out: the guard compares the folds' losses
        r.best_val_loss, r.pca_val_loss = (float(np.mean(v)) for v in zip(*losses))
    return detector.parts.combine_raw(held_raw)[1]


def fit_no_worse_than_pca(detector: TorchDetector, X: np.ndarray, make_threshold: Callable[[], Threshold], *,
                          channels: list[str] | None = None, val_fraction: float = 0.2,
                          use: tuple[str, ...] = DEFAULT_USE, calibration: str = "blocks",
                          **fit_options) -> tuple[TorchDetector, Threshold, np.ndarray]:
    """`fit_and_calibrate`, then the guard: an autoencoder whose best held-out reconstruction loss
    is worse than PCA's with the same latent size on the same split has not learnt what a linear
    model can; it is replaced by that PCA (window and score_last kept), with a warning.
    Returns (detector, threshold, held-out scores)."""
    threshold = make_threshold()
    held = fit_and_calibrate(detector, X, threshold, channels=channels, val_fraction=val_fraction, use=use,
                             calibration=calibration, **fit_options)
    report = detector.training_report
    if detector.kind == "pca" or not report.pca_val_loss < report.best_val_loss:
        return detector, threshold, held
    log.warning("the %s autoencoder ended worse than PCA on held-out data (loss %.4g vs %.4g): using PCA with "
                "%d components instead", detector.kind, report.best_val_loss, report.pca_val_loss, detector.latent_dim)
    pca = PCADetector(latent_dim=detector.latent_dim, window=detector.window, score_last=detector.score_last,
                      device=detector.device)
    threshold = make_threshold()
    held = fit_and_calibrate(pca, X, threshold, channels=channels, val_fraction=val_fraction, use=use,
                             calibration=calibration)
    return pca, threshold, held


# Retraining on a range of the stream (`train --from-topic`, pipeline/lifecycle/retrain.py): the
# readings the current model alerted on are left out; how many of them were false alerts, and
# putting those back into the threshold's data.

def model_alert_rate(metadata: dict | None) -> float:
    """The share of normal readings a model alerts on by design: its alarm rule's false-alarm
    budget (instant and EWMA alarms together, what the alerts topic carries), else what its
    threshold flags (a model from before the alarm rule)."""
    alarm = (metadata or {}).get("alarm")
    if isinstance(alarm, dict) and isinstance(alarm.get("budget"), (int, float)) and alarm.get("ewma_limit") != float("inf"):
        return float(alarm["budget"])
    return expected_alert_rate((metadata or {}).get("threshold"))


def expected_alert_rate(threshold: dict | None) -> float:
    """The share of normal readings a model's threshold flags by design (quantile: 1 - q; POT:
    its risk; adaptive: its base's), 0 when unknown."""
    if not isinstance(threshold, dict):
        return 0.0
    kind = threshold.get("kind")
    if kind == "quantile":
        return max(0.0, 1.0 - float(threshold.get("q", 1.0)))
    if kind == "pot":
        return float(threshold.get("risk", 0.0))
    if kind == "adaptive":
        return expected_alert_rate(threshold.get("base"))
    return 0.0


def recalibrate(detector, threshold, full: np.ndarray | None, kept: np.ndarray | None, held_out: np.ndarray,
                rate: float) -> int:
    """Refit `threshold` on the held-out scores plus the model's false alerts among them.

    `full` [n, channels]: the training range with the alerted readings still in, in the order
    the model was trained on (pipeline/lifecycle/retrain.py's `StreamData.full`); `kept` [n]
    bool: not alerted (the model was trained on `full[kept]`); `held_out`: its held-out scores.

    Leaving out every alerted reading also leaves out the current model's false alerts: by
    design (rate `rate`, e.g. 1 % for a 0.99 quantile) the top of the normal scores. A
    threshold fitted without them sits lower (the 0.99 quantile of what is left is about the
    0.98 one of normal data). So the alerted readings in the held-out part are scored by the new
    model and the lowest-scoring `rate x held-out` of them, the likely false alerts (anomalies
    score higher), go back into the threshold's data. The held-out windows are interleaved blocks
    spread over the whole range (detectors.training), so the alerted readings of the whole range
    stand for theirs, in proportion. Returns how many went back.

    Taking the lowest k of all the range's alerted readings (not a spread sample of its likely
    false ones) errs low; measured in tests/integration/test_retrain.py it offsets part of the
    push up that anomalies the current model missed give the held-out top (ratio to a clean-range
    threshold 1.106; with a spread sample 1.117)."""
    if rate <= 0 or full is None or kept.all() or len(held_out) == 0:
        return 0
    w = detector.window
    share = len(held_out) / max(1, int(kept.sum()))  # of the kept readings, held out
    candidates = np.flatnonzero(~kept)
    candidates = candidates[candidates >= w - 1]
    k = min(len(candidates), int(round(rate * (len(held_out) + share * len(candidates)))))
    if k == 0:
        return 0
    windows = np.stack([full[i - w + 1:i + 1] for i in candidates])
    scores = np.sort(detector.score(windows).score)[:k]
    threshold.fit(np.concatenate([held_out, scores]))
    return k
