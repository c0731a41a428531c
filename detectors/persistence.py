"""Alerting on persistence: a reading is flagged when at least `k` of its sensor's last `n`
readings (itself included) are above the threshold. `k = n = 1` is the plain threshold; SKAB's
Conv-AE baseline flags a point only when its whole preceding window is above (k = n).

The state is, per sensor, the above/below bits of its last n-1 readings (one int). The split is
River's: `flags(keys, above)` is pure (a redone batch gets the same answer), `learn(keys, above)`
changes the state and is called once a batch is committed. `step(keys, above, prior)` is the
functional form, as `AdaptiveThreshold.step`: flags against `prior` (sensor -> bits; a missing
sensor has none above) and the posterior bits of every sensor seen, for a caller that keeps
per-sensor state itself (the stream's state store and changelog); `commit(posterior)` applies it
to this object's own state. Readings of one sensor within a batch are taken in batch order. The
object's own state is bounded: at most `max_sensors` sensors, the least recently seen evicted
first (`evictions` counts them); an evicted sensor that comes back starts again from nothing
above, like a new one. `score` (a whole file, one sensor) and the stream use the same rule.

Default (`choose`): chosen without labels, from the false runs the rule would raise on held-out
normal scores at the threshold (see `choose`).
"""

from __future__ import annotations

from collections import OrderedDict
import numpy as np

MAX_SENSORS = 1_000_000  # ~150 bytes per sensor (dict entry + int): ~150 MB at the bound


class PersistenceRule:
    def __init__(self, k: int = 1, n: int = 1, max_sensors: int = MAX_SENSORS):
        if not 1 <= k <= n or n > 64:
            raise ValueError(f"persistence needs 1 <= k <= n <= 64, got k={k}, n={n}")
        if max_sensors < 1:
            raise ValueError("max_sensors must be >= 1")
        self.k, self.n, self.max_sensors = int(k), int(n), int(max_sensors)
        self.state: OrderedDict = OrderedDict()  # sensor -> bits of its last n-1 readings (bit 0 = latest)
        self.evictions = 0

    def describe(self) -> str:
        return f"{self.k} of the last {self.n} readings above the threshold"

    def step(self, keys, above: np.ndarray, prior) -> tuple[np.ndarray, dict]:
        """(flags [m] bool, posterior {sensor: bits}) for readings `above` [m] of sensors `keys` [m],
        given `prior` {sensor: bits} (a mapping; missing = none above). Pure."""
        above = np.asarray(above, dtype=bool)
        m = len(above)
        if self.n == 1 or m == 0:
            return above.copy(), {}
        keys = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) else keys
        uniq, inverse = np.unique(keys, return_inverse=True)
        uniq = uniq.tolist()
        order = np.argsort(inverse, kind="stable")  # readings grouped by sensor, batch order inside
        counts = np.bincount(inverse, minlength=len(uniq))
        h = self.n - 1
        before = np.array([prior.get(u, 0) for u in uniq], dtype=np.int64)
        prior_bits = (before[:, None] >> np.arange(h - 1, -1, -1)) & 1  # oldest first
        # per sensor: [its h prior bits, its readings in order], concatenated over sensors
        seq = np.empty(len(uniq) * h + m, dtype=np.int64)
        starts = np.arange(len(uniq)) * h + np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = starts[:, None] + np.arange(h)
        seq[pos.ravel()] = prior_bits.ravel()
        reading_pos = np.repeat(starts + h, counts) + (np.arange(m) - np.repeat(np.cumsum(counts) - counts, counts))
        seq[reading_pos] = above[order]
        c = np.concatenate([[0], np.cumsum(seq)])
        in_window = c[reading_pos + 1] - c[reading_pos + 1 - self.n]
        flags = np.empty(m, dtype=bool)
        flags[order] = in_window >= self.k
        ends = starts + h + counts  # one past each sensor's last reading: its new state is seq[end-h:end]
        tail = seq[ends[:, None] - h + np.arange(h)]  # oldest first
        new_bits = (tail << np.arange(h - 1, -1, -1)).sum(axis=1)
        return flags, dict(zip(uniq, new_bits.tolist()))

    def flags(self, keys, above: np.ndarray) -> np.ndarray:
        """Flags for a batch, given this object's state before it. Pure: call it again, same answer."""
        return self.step(keys, above, self.state)[0]

    def commit(self, posterior: dict) -> None:
        """Apply the posterior a `step` returned (once the batch is committed)."""
        for key, bits in posterior.items():
            self.state[key] = bits
            self.state.move_to_end(key)
        while len(self.state) > self.max_sensors:
            self.state.popitem(last=False)
            self.evictions += 1

    def learn(self, keys, above: np.ndarray) -> None:
        """Move this object's state past a batch (`commit(step(keys, above, state)[1])`)."""
        self.commit(self.step(keys, above, self.state)[1])

    def forget(self, keys) -> None:
        """Drop sensors' state (e.g. on a revoked partition)."""
        for key in keys:
            self.state.pop(key, None)

    def to_dict(self) -> dict:
        """The rule (not the per-sensor state: that belongs to the stream, not the model)."""
        return {"k": self.k, "n": self.n}

    @classmethod
    def from_dict(cls, d: dict, max_sensors: int = MAX_SENSORS) -> "PersistenceRule":
        return cls(int(d["k"]), int(d["n"]), max_sensors)


def false_runs(above: np.ndarray, k: int, n: int) -> int:
    """How many separate alarms (runs of flags) the rule `k of n` raises on one sensor's series."""
    flags = PersistenceRule(k, n).flags(np.zeros(len(above), dtype=np.int64), above)
    return int(np.sum(flags[1:] & ~flags[:-1]) + (flags[:1].sum() if len(flags) else 0))


CANDIDATES = ((1, 1), (2, 2), (2, 3), (3, 4), (4, 4), (4, 6), (6, 8), (8, 8))


def choose(held_out: np.ndarray, threshold: float, max_false_runs_per_1000: float = 1.0,
           candidates=CANDIDATES, level: float | None = None) -> PersistenceRule:
    """The fastest rule (smallest n, then smallest k) whose false runs on held-out normal scores
    (in time order) stay within `max_false_runs_per_1000` readings, counted at `threshold` (the
    one the rule will be used with; `level`: at that score instead). No labels: it asks how long
    normal excursions above the threshold last, not what anomalies look like. With the few hundred
    cross-fitted held-out scores `train` has, ~1 % of them are above its 0.99-quantile threshold,
    so the rule sees the runs; with fewer scores there may be none to see and the answer is 1 of 1
    (the plain threshold)."""
    s = np.asarray(held_out, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 20:
        return PersistenceRule(1, 1)
    above = s > (threshold if level is None else level)
    for k, n in candidates:
        if 1000 * false_runs(above, k, n) / len(s) <= max_false_runs_per_1000:
            return PersistenceRule(k, n)
    return PersistenceRule(*candidates[-1])
