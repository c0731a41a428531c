"""The two parts of a score, as in classic process monitoring (SPE + Hotelling's T^2):

- `reconstruction`: squared reconstruction error (the model's error, mean over channels): how far a
  reading is *off* the normal manifold the model learnt;
- `latent_distance`: squared Mahalanobis distance of its latent vector from the latent vectors
  of normal data (mean and a Ledoit-Wolf shrunk covariance, divided by k): how far *along* the
  manifold it is, in a region normal operation does not visit. Reconstruction error is blind to
  that: a reading the model reconstructs well can still sit where training never went.

Each part is divided by its mean on held-out normal data, so both average 1 on normal readings
and neither dominates by scale; the score is the mean of the parts in `use` (both: Yue & Qin's
combined index divided by the number of parts; `("reconstruction",)`: reconstruction alone, with
the latent distance still reported in `Scores.parts`). The latent distribution is fitted on the windows the model
trained on (more rows than the hold-out: a better covariance), the scales on held-out windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PARTS = ("reconstruction", "latent_distance")
# What the score is by default: reconstruction error; the latent distance is reported beside it. On SKAB
# (400 training rows of a drifting process) adding it to the score raised FAR 12.6 -> 29.7 % (README).
DEFAULT_USE = ("reconstruction",)


def ledoit_wolf(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of rows `Z` [n, k], the covariance shrunk towards a multiple of the
    identity by the Ledoit-Wolf (2004) closed-form intensity: well conditioned with few rows."""
    Z = np.asarray(Z, dtype=np.float64)
    n, k = Z.shape
    mean = Z.mean(axis=0)
    X = Z - mean
    S = X.T @ X / n
    mu = max(float(np.trace(S)) / k, 1e-12)
    d2 = float(np.sum((S - mu * np.eye(k)) ** 2))
    b2 = (float(np.sum(np.sum(X**2, axis=1) ** 2)) / n - float(np.sum(S**2))) / n
    shrink = 1.0 if d2 <= 0 else min(max(b2, 0.0), d2) / d2
    return mean, (1 - shrink) * S + shrink * mu * np.eye(k)


@dataclass
class ScoreParts:
    """Fitted latent distribution and per-part scales; `combine` turns (error, latent) into parts and a score."""

    mean: np.ndarray  # [k] latent mean of normal data
    precision: np.ndarray  # [k, k] inverse of the shrunk latent covariance
    scales: dict[str, float]  # part -> its mean on held-out normal data
    use: tuple[str, ...] = PARTS  # the parts averaged into the score

    def __post_init__(self) -> None:
        self._mean32 = np.asarray(self.mean, np.float64).astype(np.float32)
        self._prec32 = (np.asarray(self.precision, np.float64) / max(len(self.mean), 1)).astype(np.float32)

    @classmethod
    def fit(cls, fit_latent: np.ndarray, fit_error: np.ndarray, held_latent: np.ndarray | None = None,
            held_error: np.ndarray | None = None, use: tuple[str, ...] = PARTS,
            held_raw: dict[str, np.ndarray] | None = None) -> "ScoreParts":
        """Latent distribution from `fit_latent` [n, k]; scales from the held-out pair (else the fit
        pair), or from `held_raw` (part -> unscaled held-out values, e.g. cross-fitted ones)."""
        if not use or not set(use) <= set(PARTS):
            raise ValueError(f"score parts to use must be among {', '.join(PARTS)}, got {use!r}")
        mean, cov = ledoit_wolf(fit_latent)
        parts = cls(mean, np.linalg.pinv(cov), {p: 1.0 for p in PARTS}, tuple(use))
        if held_raw is None:
            if held_latent is None or len(held_latent) == 0:
                held_latent, held_error = fit_latent, fit_error
            held_raw = parts.raw(held_error, held_latent)
        raw = {p: np.asarray(held_raw[p], np.float64) for p in PARTS}
        parts.scales = {p: max(float(np.mean(v[np.isfinite(v)])) if np.isfinite(v).any() else 1.0, 1e-12)
                        for p, v in raw.items()}
        return parts

    def raw(self, error: np.ndarray, latent: np.ndarray) -> dict[str, np.ndarray]:
        """Unscaled parts: reconstruction error [n] and latent Mahalanobis^2 / k [n] (float32: one
        small matrix product per batch, so the stream's model stage stays as fast)."""
        d = np.asarray(latent, dtype=np.float32) - self._mean32
        maha = np.einsum("ij,ij->i", d @ self._prec32, d)
        return {"reconstruction": np.asarray(error, np.float32), "latent_distance": maha}

    def combine(self, error: np.ndarray, latent: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(parts scaled to mean 1 on normal data, float32 [n] each; score = their mean, float32 [n])."""
        return self.combine_raw(self.raw(error, latent))

    def combine_raw(self, raw: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """`combine` from unscaled parts (`raw`'s output)."""
        parts = {p: np.asarray(v, np.float32) * np.float32(1 / self.scales[p]) for p, v in raw.items()}
        score = parts[self.use[0]] if len(self.use) == 1 else np.mean(
            np.stack([parts[p] for p in self.use]), axis=0, dtype=np.float32)
        return parts, score

    def to_dict(self) -> dict:
        return {"latent_mean": self.mean.tolist(), "latent_precision": self.precision.tolist(),
                "scales": dict(self.scales), "use": list(self.use)}

    @classmethod
    def from_dict(cls, d: dict, latent_dim: int) -> "ScoreParts":
        mean = np.asarray(d["latent_mean"], dtype=np.float64)
        precision = np.asarray(d["latent_precision"], dtype=np.float64)
        scales = {str(k): float(v) for k, v in d["scales"].items()}
        use = tuple(d.get("use", PARTS))
        if not use or not set(use) <= set(PARTS):
            raise ValueError(f"score_parts: use must be among {', '.join(PARTS)}")
        if mean.shape != (latent_dim,) or precision.shape != (latent_dim, latent_dim):
            raise ValueError(f"score_parts: latent mean/precision do not match latent_dim {latent_dim}")
        if set(scales) != set(PARTS) or not all(np.isfinite(v) and v > 0 for v in scales.values()):
            raise ValueError(f"score_parts: scales must be positive numbers for {', '.join(PARTS)}")
        if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(precision))):
            raise ValueError("score_parts: latent mean/precision must be finite")
        return cls(mean, precision, scales, use)
