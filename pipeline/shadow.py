"""Shadow scoring: a candidate model scores every batch beside the current one, raises no
alerts, and the two are compared, so an operator can judge it before `models promote`.

    shadow = ShadowScorer(candidate, model.detector.channels, metrics)   # same channels needed
    # in the scoring step, with what the current model's step used and produced:
    shadow.observe(keys, groups, values, scored_idx, scores.score, flagged, sensor_ids)

The candidate keeps its own per-sensor history (its window may differ from the current one's).
Compared are the readings both models scored: counts by agreement (both flagged, only the
current, only the candidate, neither) and the Pearson correlation of their scores over the last
`window_s` seconds (bounded: running sums per time bucket).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

import numpy as np
from latentwatch.detectors.checkpoint import LoadedModel
from latentwatch.pipeline.history import SensorHistory

AGREEMENT = ("both", "current_only", "candidate_only", "neither")
MIN_READINGS = 100


class ShadowScorer:
    def __init__(self, candidate: LoadedModel, channels: list[str], metrics=None, *, window_s: float = 300.0,
                 bucket_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        if list(candidate.detector.channels) != list(channels):
            raise ValueError(f"shadow model {candidate.name} {candidate.version} has channels "
                             f"{list(candidate.detector.channels)}, the running model {list(channels)}: "
                             "the same names in the same order are needed")
        self.candidate, self.metrics, self.clock = candidate, metrics, clock
        self.window_s, self.bucket_s = window_s, bucket_s
        self.history = SensorHistory(candidate.detector.window, len(channels))
        self.counts = dict.fromkeys(AGREEMENT, 0)
        self._buckets: deque = deque()  # [bucket id, sums [n, x, y, xx, yy, xy]]
        if metrics is not None:
            metrics.shadow_info.info({"name": candidate.name, "version": str(candidate.version)})

    def observe(self, keys, groups, values: np.ndarray, scored_idx: np.ndarray, current_score: np.ndarray,
                current_flag: np.ndarray, sensor_ids: np.ndarray | None = None, now: float | None = None) -> None:
        """`keys`, `groups`, `values`: what the current model's `SensorHistory.windows` got;
        `scored_idx`, `current_score`, `current_flag`: which readings it scored, their scores and
        flags; `sensor_ids` [n readings] for per-sensor thresholds."""
        windows, idx = self.history.windows(keys, groups, values)
        if len(idx) == 0:
            return
        scores = self.candidate.detector.score(windows).score
        keys_of = None if sensor_ids is None else np.asarray(sensor_ids, dtype=object)[idx]
        flag = scores > np.asarray(self.candidate.threshold.thresholds(scores, keys_of), dtype=np.float64)
        common, i_cur, i_cand = np.intersect1d(np.asarray(scored_idx), idx, assume_unique=True,
                                               return_indices=True)
        if len(common) == 0:
            return
        a, b = np.asarray(current_flag, dtype=bool)[i_cur], flag[i_cand]
        for name, n in zip(AGREEMENT, (np.sum(a & b), np.sum(a & ~b), np.sum(~a & b), np.sum(~a & ~b))):
            self.counts[name] += int(n)
            if self.metrics is not None and n:
                self.metrics.shadow_readings.labels(agreement=name).inc(int(n))
        x = np.asarray(current_score, dtype=np.float64)[i_cur]
        y = scores.astype(np.float64)[i_cand]
        self._add(now if now is not None else self.clock(), x, y)
        if self.metrics is not None:
            self.metrics.shadow_correlation.set(self.correlation(now))

    def _add(self, now: float, x: np.ndarray, y: np.ndarray) -> None:
        bid = int(now // self.bucket_s)
        if not self._buckets or self._buckets[-1][0] != bid:
            self._buckets.append([bid, np.zeros(6)])
        self._buckets[-1][1] += (len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
        oldest = bid - int(math.ceil(self.window_s / self.bucket_s)) + 1
        while self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def correlation(self, now: float | None = None) -> float:
        """Pearson correlation of the two models' scores over the window (NaN: too few)."""
        if now is not None:
            oldest = int(now // self.bucket_s) - int(math.ceil(self.window_s / self.bucket_s)) + 1
            while self._buckets and self._buckets[0][0] < oldest:
                self._buckets.popleft()
        if not self._buckets:
            return math.nan
        n, sx, sy, sxx, syy, sxy = sum(b[1] for b in self._buckets)
        if n < MIN_READINGS:
            return math.nan
        cov, vx, vy = sxy - sx * sy / n, sxx - sx * sx / n, syy - sy * sy / n
        return float(cov / math.sqrt(vx * vy)) if vx > 0 and vy > 0 else math.nan
