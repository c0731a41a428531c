"""Per-sensor state of the stream: the last event time (for the late policy) and, for windowed
models, the last `window - 1` readings.

State is keyed by (partition, sensor id) and dropped when a partition is revoked or lost; the
new owner rebuilds it from the stream. Warm-up: after a (re)start or a rebalance, a sensor's
first `window - 1` readings fill its history and are not scored (counted as warming up).
"""

from __future__ import annotations

import numpy as np

from latentwatch.detectors.base import sliding_windows

Key = tuple[int, str]  # (partition, sensor_id)


class SensorHistory:
    def __init__(self, window: int, channels: int):
        self.window = window
        self.channels = channels
        self.last_ts: dict[Key, float] = {}
        self._tail: dict[Key, np.ndarray] = {}  # [<= window-1, channels]

    def is_late(self, key: Key, first_ts: float) -> bool:
        last = self.last_ts.get(key)
        return last is not None and first_ts <= last

    def advance(self, key: Key, last_ts: float) -> None:
        self.last_ts[key] = last_ts

    def windows(self, keys: list[Key], readings: list[np.ndarray], values: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Windows for the readings of this batch.

        `values` [N, C] are the batch's readings; `readings[i]` the indices (in time order) of
        the readings of `keys[i]`. Returns (windows [M, window, C], scored [M] reading indices);
        readings not in `scored` are still warming up.
        """
        if self.window == 1:
            return values[:, None, :], np.arange(len(values))
        out_windows, out_idx = [], []
        for key, idx in zip(keys, readings):
            tail = self._tail.get(key)
            seq = values[idx] if tail is None else np.concatenate([tail, values[idx]])
            self._tail[key] = seq[-(self.window - 1):].copy()
            w = sliding_windows(seq, self.window)
            if len(w):
                out_windows.append(w)
                out_idx.append(idx[len(idx) - len(w):])
        if not out_windows:
            return np.empty((0, self.window, self.channels), np.float32), np.empty(0, np.int64)
        return np.concatenate(out_windows), np.concatenate(out_idx)

    def rewindow(self, window: int) -> "SensorHistory":
        """The same sensors' state for a model of another window (a model swap): tails cut to
        the last `window - 1` readings; a longer window tops them up from the next readings."""
        new = SensorHistory(window, self.channels)
        new.last_ts = dict(self.last_ts)
        if window > 1:
            new._tail = {k: t[-(window - 1):] for k, t in self._tail.items()}
        return new

    def drop_partitions(self, partitions: set[int]) -> None:
        for store in (self.last_ts, self._tail):
            for key in [k for k in store if k[0] in partitions]:
                del store[key]

    def clear(self) -> None:
        self.last_ts.clear()
        self._tail.clear()
