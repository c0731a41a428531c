"""Fit a model, its score parts and its threshold on normal data, without the threshold seeing
training scores.

Scores of readings a model was trained on are optimistically low, so a threshold set on them
flags too much. `fit` holds out interleaved blocks of the windows (`training.split_blocks`): the
autoencoders early-stop on them and never train on them; PCA is not fitted on them. The latent
distribution is fitted on the training windows; the score parts are scaled, and the threshold
fitted, on the model's scores of the held-out windows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.latent import DEFAULT_USE
from latentwatch.detectors.models import PCADetector, TorchDetector
from latentwatch.detectors.thresholds import Threshold

log = logging.getLogger(__name__)


def fit_and_calibrate(detector: TorchDetector, X: np.ndarray, threshold: Threshold, *,
                      channels: list[str] | None = None, val_fraction: float = 0.2,
                      use: tuple[str, ...] = DEFAULT_USE, **fit_options) -> np.ndarray:
    """Fit `detector` on `X` `[n, channels]`, its score parts and `threshold` on held-out windows;
    return the held-out scores."""
    X = np.asarray(X, dtype=np.float32)
    if int(len(X) * val_fraction) < 10:
        raise ValueError(f"{len(X)} readings leave too few (<10) held-out readings to set a threshold; "
                         "give more normal data or a larger validation fraction")
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


def fit_no_worse_than_pca(detector: TorchDetector, X: np.ndarray, make_threshold: Callable[[], Threshold], *,
                          channels: list[str] | None = None, val_fraction: float = 0.2,
                          use: tuple[str, ...] = DEFAULT_USE,
                          **fit_options) -> tuple[TorchDetector, Threshold, np.ndarray]:
    """`fit_and_calibrate`, then the guard: an autoencoder whose best held-out reconstruction loss
    is worse than PCA's with the same latent size on the same split has not learnt what a linear
    model can; it is replaced by that PCA (window and score_last kept), with a warning.
    Returns (detector, threshold, held-out scores)."""
    threshold = make_threshold()
    held = fit_and_calibrate(detector, X, threshold, channels=channels, val_fraction=val_fraction, use=use,
                             **fit_options)
    report = detector.training_report
    if detector.kind == "pca" or not report.pca_val_loss < report.best_val_loss:
        return detector, threshold, held
    log.warning("the %s autoencoder ended worse than PCA on held-out data (loss %.4g vs %.4g): using PCA with "
                "%d components instead", detector.kind, report.best_val_loss, report.pca_val_loss, detector.latent_dim)
    pca = PCADetector(latent_dim=detector.latent_dim, window=detector.window, score_last=detector.score_last,
                      device=detector.device)
    threshold = make_threshold()
    held = fit_and_calibrate(pca, X, threshold, channels=channels, val_fraction=val_fraction, use=use)
    return pca, threshold, held
