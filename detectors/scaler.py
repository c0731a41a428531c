"""Per-channel standardisation fitted on training data and saved with the model.

Autoencoders train badly on raw units (a pressure in bar next to a voltage in volts), and the
reconstruction error is only comparable across channels in standard units.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_STD = 1e-6  # a constant training channel would otherwise divide by zero


@dataclass
class Standardiser:
    mean: np.ndarray  # [channels] float32
    std: np.ndarray  # [channels] float32, floored at MIN_STD

    @classmethod
    def fit(cls, X: np.ndarray) -> "Standardiser":
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or len(X) == 0:
            raise ValueError(f"need a non-empty [n, channels] array to standardise, got shape {X.shape}")
        std = X.std(axis=0)
        return cls(X.mean(axis=0).astype(np.float32), np.maximum(std, MIN_STD).astype(np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return ((np.asarray(X, dtype=np.float32) - self.mean) / self.std).astype(np.float32, copy=False)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardiser":
        mean = np.asarray(d["mean"], dtype=np.float32)
        std = np.asarray(d["std"], dtype=np.float32)
        if mean.ndim != 1 or mean.shape != std.shape or not np.all(np.isfinite(mean)) or not np.all(std > 0):
            raise ValueError("scaler mean/std must be equal-length lists of finite numbers, std > 0")
        return cls(mean, std)
