"""The detector interface: fit on normal data, then score batches.

Every detector sees *windows*: an array `[n, window, channels]` of float32, where the reading
being scored is the last one of each window (`window == 1` for point-wise models). Offline code
builds windows from a file with `sliding_windows`; the streaming pipeline builds them from its
per-sensor history. Scoring never changes the model.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Scores:
    """What a detector says about `n` readings."""

    latent: np.ndarray  # [n, k] float32: the encoder's latent vector of each reading (or window)
    channel_error: np.ndarray  # [n, channels] float32: reconstruction error per channel (standardised)
    score: np.ndarray  # [n] float32: the anomaly score (higher is more anomalous)
    # part name -> [n] float32, each row-aligned with `score` and scaled to mean 1 on normal data,
    # e.g. {"reconstruction": ..., "latent_distance": ...}: which part made a score high
    parts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.score)


class Detector(ABC):
    """Base of every model. Subclasses set `kind` and implement `fit` and `score`."""

    kind: str = "base"
    channels: list[str]
    window: int = 1
    latent_dim: int
    device: str = "cpu"  # where scoring runs; torch models accept "auto" | "cpu" | "cuda"

    def to(self, device: str) -> "Detector":
        """Move the model to `device` and return it. Models without torch ignore this."""
        return self

    @abstractmethod
    def fit(self, X: np.ndarray, **options) -> "Detector":
        """Learn normal behaviour from `X` `[n, channels]`, readings in time order."""

    @abstractmethod
    def score(self, windows: np.ndarray) -> Scores:
        """Score `windows` `[n, window, channels]` (float32, raw units). Pure: no state changes."""


def sliding_windows(X: np.ndarray, window: int) -> np.ndarray:
    """`[n, c]` -> `[n - window + 1, window, c]`, a read-only view (no copy)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if window == 1:
        return X[:, None, :]
    if len(X) < window:
        return np.empty((0, window, X.shape[1]), dtype=np.float32)
    v = np.lib.stride_tricks.sliding_window_view(X, window, axis=0)  # [n-w+1, c, w]
    return v.transpose(0, 2, 1)
