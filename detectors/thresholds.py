"""Thresholds: when is a score anomalous? Separate from the models so they compose (River style):
any detector's scores go into any threshold.

    thr = QuantileThreshold(q=0.99).fit(scores_on_held_out_normal_data)
    flags = scores > thr.thresholds(scores)          # or thr.flag(scores)

Every threshold is fitted on scores of *normal* data only (never on test labels), exposes `.value`
(its global threshold) and `thresholds(scores, keys=None)`, the threshold each reading is compared
against. Only `AdaptiveThreshold` has state that `thresholds` updates (per key, e.g. per sensor).

Default: `QuantileThreshold(q=0.99)`. It makes no assumption about the score distribution, its
meaning is plain (about 1 % of normal readings flagged), and it is stable once there are a few
hundred held-out scores. Use `POTThreshold` when the false-alarm rate you want is below what
the held-out data can resolve (e.g. 1e-4 from 5,000 scores): it extrapolates the tail with a
generalised Pareto fit instead of reading an empirical quantile that is really the maximum.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import numpy as np


class Threshold(ABC):
    kind = "base"
    value: float = math.nan

    @abstractmethod
    def fit(self, normal_scores: np.ndarray) -> "Threshold":
        """Set the threshold from scores of normal (held-out) data."""

    def thresholds(self, scores: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """The threshold each of `scores` is compared against (`[n]` float64)."""
        self._check_fitted()
        return np.full(len(scores), self.value)

    def flag(self, scores: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """`scores > thresholds` as a bool array; NaN scores (nothing to score yet) are not flagged."""
        scores = np.asarray(scores, dtype=np.float64)
        return np.nan_to_num(scores, nan=-np.inf) > self.thresholds(scores, keys)

    @abstractmethod
    def to_dict(self) -> dict:
        """JSON-ready parameters and fitted state; `threshold_from_dict` inverts it."""

    def _check_fitted(self) -> None:
        if not math.isfinite(self.value):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit(normal_scores)")


def _clean(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).ravel()
    s = s[np.isfinite(s)]
    if len(s) == 0:
        raise ValueError("no finite scores to fit a threshold on")
    return s


class QuantileThreshold(Threshold):
    """The `q` quantile of normal scores, times `margin` (1.0: the plain quantile)."""

    kind = "quantile"

    def __init__(self, q: float = 0.99, margin: float = 1.0):
        if not 0 < q <= 1:
            raise ValueError("q must be in (0, 1]")
        self.q, self.margin = q, margin

    def fit(self, normal_scores: np.ndarray) -> "QuantileThreshold":
        self.value = float(np.quantile(_clean(normal_scores), self.q) * self.margin)
        return self

    def to_dict(self) -> dict:
        return {"kind": self.kind, "q": self.q, "margin": self.margin, "value": self.value}


def fit_gpd(excesses: np.ndarray) -> tuple[float, float]:
    """(shape xi, scale sigma) of a generalised Pareto distribution by probability-weighted
    moments (Hosking & Wallis 1987): closed form, no optimiser, valid for xi < 1."""
    y = np.sort(np.asarray(excesses, dtype=np.float64))
    n = len(y)
    a0 = y.mean()
    p = (np.arange(1, n + 1) - 0.35) / n  # plotting positions of the ascending order statistics
    a1 = np.mean((1 - p) * y)
    denom = a0 - 2 * a1
    if denom <= 0 or a0 <= 0:  # degenerate (all excesses equal): exponential with that mean
        return 0.0, max(a0, 1e-12)
    xi = 2 - a0 / denom
    sigma = 2 * a0 * a1 / denom
    return float(xi), float(sigma)


class POTThreshold(Threshold):
    """Peaks over threshold (extreme value theory, as in SPOT, Siffer et al. 2017): take the
    `level` quantile t of normal scores, fit a GPD to the excesses above t, and set the threshold
    where the tail probability is `risk`. Falls back to the empirical `1 - risk` quantile when
    there are fewer than `min_peaks` peaks."""

    kind = "pot"

    def __init__(self, risk: float = 1e-3, level: float = 0.98, min_peaks: int = 20):
        if not 0 < risk < 1 or not 0 < level < 1:
            raise ValueError("risk and level must be in (0, 1)")
        self.risk, self.level, self.min_peaks = risk, level, min_peaks
        self.xi = self.sigma = self.t = math.nan

    def fit(self, normal_scores: np.ndarray) -> "POTThreshold":
        s = _clean(normal_scores)
        n = len(s)
        level = min(self.level, 1 - self.min_peaks / n) if n > 2 * self.min_peaks else None
        if level is None:
            self.value = float(np.quantile(s, 1 - self.risk))
            return self
        self.t = float(np.quantile(s, level))
        peaks = s[s > self.t] - self.t
        if len(peaks) < 3:
            self.value = float(np.quantile(s, 1 - self.risk))
            return self
        self.xi, self.sigma = fit_gpd(peaks)
        ratio = self.risk * n / len(peaks)  # tail probability beyond the answer, given a peak
        if ratio >= 1:  # the requested risk is inside the body: the empirical quantile is fine
            self.value = float(np.quantile(s, 1 - self.risk))
        elif abs(self.xi) < 1e-6:
            self.value = self.t - self.sigma * math.log(ratio)
        else:
            self.value = self.t + self.sigma / self.xi * (ratio ** (-self.xi) - 1)
        return self

    def to_dict(self) -> dict:
        return {"kind": self.kind, "risk": self.risk, "level": self.level, "min_peaks": self.min_peaks,
                "value": self.value, "xi": self.xi, "sigma": self.sigma, "t": self.t}


class AdaptiveThreshold(Threshold):
    """Per-key (per-sensor) threshold for streams: an exponentially weighted mean and variance
    of each key's normal scores, threshold = mean + z * std. `z` is calibrated at `fit` so that a
    new key starts at the `base` threshold (default the 0.99 quantile). Each `thresholds` call
    compares a batch against the state before it, then moves each key's state towards that
    batch's *unflagged* scores (anomalies do not raise their own bar). `alpha` is the weight of
    one reading, so a key adapts over about 1/alpha readings."""

    kind = "adaptive"

    def __init__(self, alpha: float = 0.01, base: Threshold | None = None):
        if not 0 < alpha <= 1:
            raise ValueError("alpha must be in (0, 1]")
        self.alpha = alpha
        self.base = base if base is not None else QuantileThreshold(0.99)
        self.mean0 = self.var0 = self.z = math.nan
        self.state: dict = {}  # key -> [mean, var]

    def fit(self, normal_scores: np.ndarray) -> "AdaptiveThreshold":
        s = _clean(normal_scores)
        self.base.fit(s)
        self.mean0, self.var0 = float(s.mean()), float(max(s.var(), 1e-12))
        self.z = (self.base.value - self.mean0) / math.sqrt(self.var0)
        self.value = self.base.value
        self.state = {}
        return self

    def thresholds(self, scores: np.ndarray, keys: np.ndarray | None = None) -> np.ndarray:
        """`step` against this object's own state, which then takes the new values (offline use)."""
        out, posterior = self.step(scores, keys, self.state)
        self.state.update(posterior)
        return out

    def step(self, scores: np.ndarray, keys: np.ndarray | None, prior) -> tuple[np.ndarray, dict]:
        """Pure: each score's threshold against `prior` (key -> (mean, var); a missing key starts
        at the fitted base), and the new (mean, var) of every key seen. Changes nothing, so the
        stream applies the new state only when its batch is committed (a redone batch does not
        move a threshold twice)."""
        self._check_fitted()
        scores = np.asarray(scores, dtype=np.float64)
        if keys is None:
            keys = np.zeros(len(scores), dtype=np.int64)
        uniq, inverse = np.unique(np.asarray(keys), return_inverse=True)
        uniq = uniq.tolist()
        st = np.array([prior.get(k, (self.mean0, self.var0)) for k in uniq], dtype=np.float64)
        per_key = st[:, 0] + self.z * np.sqrt(st[:, 1])
        out = per_key[inverse]
        normal = np.isfinite(scores) & (scores <= out)
        counts = np.bincount(inverse[normal], minlength=len(uniq))
        sums = np.bincount(inverse[normal], weights=scores[normal], minlength=len(uniq))
        posterior = {}
        for i in np.flatnonzero(counts):
            x = scores[normal & (inverse == i)]
            keep = (1 - self.alpha) ** counts[i]  # weight left on the old state after counts[i] readings
            m = keep * st[i, 0] + (1 - keep) * sums[i] / counts[i]
            v = keep * st[i, 1] + (1 - keep) * float(np.mean((x - m) ** 2))
            posterior[uniq[i]] = (float(m), max(float(v), 1e-12))
        return out, posterior

    def to_dict(self) -> dict:
        return {"kind": self.kind, "alpha": self.alpha, "base": self.base.to_dict(), "value": self.value,
                "mean0": self.mean0, "var0": self.var0, "z": self.z,
                "state": [[k, m, v] for k, (m, v) in self.state.items()]}


def threshold_from_dict(d: dict) -> Threshold:
    """Rebuild a fitted threshold from `to_dict()` output; ValueError when it is not one."""
    try:
        kind = d["kind"]
        if kind == "quantile":
            thr: Threshold = QuantileThreshold(d["q"], d.get("margin", 1.0))
        elif kind == "pot":
            thr = POTThreshold(d["risk"], d["level"], d["min_peaks"])
            thr.xi, thr.sigma, thr.t = (float(d[k]) for k in ("xi", "sigma", "t"))
        elif kind == "adaptive":
            thr = AdaptiveThreshold(d["alpha"], threshold_from_dict(d["base"]))
            thr.mean0, thr.var0, thr.z = (float(d[k]) for k in ("mean0", "var0", "z"))
            thr.state = {(tuple(k) if isinstance(k, list) else k): (float(m), float(v)) for k, m, v in d["state"]}
        else:
            raise ValueError(f"unknown threshold kind {kind!r}; known: quantile, pot, adaptive")
        thr.value = float(d["value"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not a threshold description: {exc!r}") from None
    return thr


THRESHOLDS = {"quantile": QuantileThreshold, "pot": POTThreshold, "adaptive": AdaptiveThreshold}
