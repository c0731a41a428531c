"""Fit a model and its threshold on normal data without the threshold seeing training scores.

Scores of readings a model was trained on are optimistically low, so a threshold set on them
flags too much. We hold out the last `val_fraction` of the readings (time order): the
autoencoders use it for early stopping and never train on it; PCA is fitted on the rest. The
threshold is then fitted on the model's scores of that held-out tail.
"""

from __future__ import annotations

import numpy as np

from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.models import TorchDetector
from latentwatch.detectors.thresholds import Threshold


def fit_and_calibrate(detector: TorchDetector, X: np.ndarray, threshold: Threshold, *,
                      channels: list[str] | None = None, val_fraction: float = 0.2,
                      **fit_options) -> np.ndarray:
    """Fit `detector` on `X` `[n, channels]` and `threshold` on held-out scores; return those scores."""
    X = np.asarray(X, dtype=np.float32)
    n_val = int(len(X) * val_fraction)
    if n_val < 10:
        raise ValueError(f"{len(X)} readings leave too few (<10) held-out readings to set a threshold; "
                         "give more normal data or a larger validation fraction")
    if detector.kind == "pca":
        detector.fit(X[: len(X) - n_val], channels=channels)
    else:
        detector.fit(X, channels=channels, val_fraction=val_fraction, **fit_options)
        n_val = detector.training_report.validation_rows  # the windows early stopping held out
    held_out = detector.score(sliding_windows(X, detector.window)[-n_val:]).score
    threshold.fit(held_out)
    return held_out
