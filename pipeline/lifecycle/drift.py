"""Drift in the latent space: does the live stream still look like what the model trained on?

At training, `reference_for` summarises the training data: for every latent dimension the
decile edges of its values (windows spread over all of the training data), and the share of
held-out scores above the threshold. It goes into the model's metadata (`training.drift_reference`).

Live, `LatentDrift` keeps the last `window_s` seconds of latent vectors as counts per
dimension per decile bin, in `bucket_s` time buckets (bounded: window/bucket buckets of
dims x 10 integers, whatever the rate), and compares them with the reference:

- `psi`: the population stability index per latent dimension, sum((a - e) ln(a / e)) over the
  bins; exported is the largest over the dimensions. Rules of thumb: < 0.1 no shift, 0.1-0.25
  a moderate one, > 0.25 a significant one (the "model stale" alert fires above 0.25);
- `exceedance`: the live share of scored readings above the threshold, beside the held-out one.

A pure class (no Kafka, clock injectable); the run loop calls `observe` once per batch.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np

BINS = 10
MIN_READINGS = 500  # fewer in the window: no PSI yet (its small-sample bias is ~ bins / n)
EPS = 1e-4  # floor on a bin's share, so an empty bin does not make PSI infinite


def reference(latent: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """The training-side summary stored with the model (held-out latents and scores)."""
    latent = np.asarray(latent, dtype=np.float64)
    qs = np.linspace(0, 1, BINS + 1)[1:-1]
    edges = np.quantile(latent, qs, axis=0).T  # [dims, BINS - 1]
    expected = np.stack([_shares(np.searchsorted(e, latent[:, d], side="right"))
                         for d, e in enumerate(edges)])
    scores = np.asarray(scores, dtype=np.float64)
    return {"bins": BINS, "edges": edges.round(6).tolist(), "expected": expected.round(6).tolist(),
            "exceedance": float(np.mean(scores > threshold)) if len(scores) else 0.0, "rows": len(latent)}


def reference_for(detector, X: np.ndarray, held_out_scores: np.ndarray, threshold: float,
                  max_rows: int = 50_000) -> dict:
    """`reference` for a model trained on `X`: latents of windows spread evenly over all of `X`
    (its held-out tail alone is only the last files' or sensors' readings), exceedance of the
    held-out scores (those the threshold was fitted on, the only unbiased ones)."""
    from latentwatch.detectors import sliding_windows

    windows = sliding_windows(np.asarray(X, dtype=np.float32), detector.window)
    pick = np.unique(np.linspace(0, len(windows) - 1, min(max_rows, len(windows))).astype(np.int64))
    latent = detector.score(windows[pick]).latent
    ref = reference(latent, held_out_scores, threshold)
    return ref


def _shares(bin_index: np.ndarray, n_bins: int = BINS) -> np.ndarray:
    counts = np.bincount(bin_index, minlength=n_bins).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def psi(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """PSI per row of [dims, bins] shares."""
    a, e = np.maximum(actual, EPS), np.maximum(expected, EPS)
    return ((a - e) * np.log(a / e)).sum(axis=-1)


class LatentDrift:
    def __init__(self, ref: dict, *, window_s: float = 120.0, bucket_s: float = 10.0,
                 min_readings: int = MIN_READINGS, metrics=None, clock: Callable[[], float] = time.monotonic):
        self.edges = np.asarray(ref["edges"], dtype=np.float64)  # [dims, bins - 1]
        self.expected = np.asarray(ref["expected"], dtype=np.float64)
        self.reference_exceedance = float(ref.get("exceedance", 0.0))
        self.dims, self.bins = self.edges.shape[0], self.edges.shape[1] + 1
        self.window_s, self.bucket_s, self.min_readings = window_s, bucket_s, min_readings
        self.metrics, self.clock = metrics, clock
        self._buckets: deque = deque()  # [bucket id, counts [dims, bins], readings, exceeded]
        self._offsets = np.arange(self.dims)[:, None] * self.bins
        self._last_export = -math.inf
        if metrics is not None:
            metrics.reference_exceedance.set(self.reference_exceedance)
            self._export_now(self.clock())

    @classmethod
    def from_model(cls, model, **kw) -> LatentDrift | None:
        """None for a model trained before drift references were stored (or without latents)."""
        ref = (model.metadata or {}).get("training", {}).get("drift_reference")
        if not ref or not ref.get("edges"):
            return None
        return cls(ref, **kw)

    def observe(self, latent: np.ndarray, exceeded: np.ndarray | int, now: float | None = None) -> None:
        """Add one batch: latent vectors [n, dims] of its scored readings and which of them (or
        how many) were above the threshold. Exports the gauges at most once a second."""
        now = self.clock() if now is None else now
        n = len(latent)
        bucket = self._bucket(now)
        if n:
            lat = np.asarray(latent, dtype=np.float64).T  # [dims, n]
            idx = np.empty(lat.shape, dtype=np.int64)
            for d in range(self.dims):
                idx[d] = np.searchsorted(self.edges[d], lat[d], side="right")
            bucket[1] += np.bincount((idx + self._offsets).ravel(),
                                     minlength=self.dims * self.bins).reshape(self.dims, self.bins)
            bucket[2] += n
            bucket[3] += int(np.count_nonzero(exceeded)) if np.ndim(exceeded) else int(exceeded)
        if self.metrics is not None and now - self._last_export >= 1.0:
            self._export_now(now)

    def _bucket(self, now: float) -> list:
        bid = int(now // self.bucket_s)
        if not self._buckets or self._buckets[-1][0] != bid:
            self._buckets.append([bid, np.zeros((self.dims, self.bins), np.int64), 0, 0])
        self._expire(bid)
        return self._buckets[-1]

    def _expire(self, bid: int) -> None:
        oldest = bid - int(math.ceil(self.window_s / self.bucket_s)) + 1
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    # -- the summary -------------------------------------------------------------------------
    def readings(self) -> int:
        return sum(b[2] for b in self._buckets)

    def psi_per_dim(self, now: float | None = None) -> np.ndarray | None:
        """PSI of each latent dimension over the window; None with too few readings."""
        self._expire(int((self.clock() if now is None else now) // self.bucket_s))
        n = self.readings()
        if n < self.min_readings:
            return None
        counts = sum(b[1] for b in self._buckets)
        return psi(counts / n, self.expected)

    def max_psi(self, now: float | None = None) -> float:
        p = self.psi_per_dim(now)
        return math.nan if p is None else float(p.max())

    def exceedance(self, now: float | None = None) -> float:
        self._expire(int((self.clock() if now is None else now) // self.bucket_s))
        n = self.readings()
        return math.nan if n < self.min_readings else sum(b[3] for b in self._buckets) / n

    def _export_now(self, now: float) -> None:
        m = self.metrics
        m.latent_drift_psi.set(self.max_psi(now))
        m.live_exceedance.set(self.exceedance(now))
        m.drift_window_readings.set(self.readings())
        self._last_export = now
