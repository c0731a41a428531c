"""Each sensor's own normal: a per-sensor baseline, an own model where a sensor has the history for
one, and the fleet as the fallback. No Kafka in here; the stream and `score` call the same code.

Why: a plant is a fleet of assets of one kind at different set points. One scaler and one model
fitted to the pooled readings learn the *union* of every asset's normal, so an asset moving to
another asset's operating point, a stuck channel or a slow ramp looks normal (issue 28: 0 of 4
detected each on a 32-asset fleet). Three layers fix that:

1. **Baseline** per sensor and channel: median and MAD (x 1.4826, sigma for Gaussian data) of
   the sensor's training readings, robust to a bad stretch (notes/fleets.md). Every reading is
   standardised by its sensor's baseline before any model sees it, so the shared model learns
   the fleet's *shape* of normal, not the union of its set points.
2. **Own model** for a sensor with at least `own_min` training readings: a PCA of its own
   standardised readings, scored by
   its squared prediction error (SPE, the Q statistic of multivariate SPC: Jackson & Mudholkar
   1979) divided by that sensor's median SPE on its own held-out readings (interleaved blocks).
   Each asset's mix of the shared process factors differs a little, so one fleet model's
   residual on an asset carries that difference and its limit must be loose; the asset's own
   subspace leaves only noise, and a ramp or small jump on one channel stands out (issue 28's
   table: own PCA 4/4 ramps and 24/24 jumps, fleet PCA after baselines 0/4 and 13/24). It keeps
   the components whose variance is over OWN_NOISE_RATIO x the noise floor (the median variance
   of the smaller half of the components; at least 1, at most C-1): a share-of-variance rule
   (0.9) dropped a process factor carrying 5 % of an asset's variance, whose normal wander then
   alarmed on 16.5 % of that asset's normal readings (tests/support/fleet.py, asset 2). An own
   model is kept only if its SPE is stationary over the sensor's own history: fitted on the first
   half, its median SPE on the second half is at most OWN_GATE = 1.25x the first half's, and the
   fleet's median of that ratio is too (a sensor's history is short; the fleet's many histories
   say whether own models of this kind of asset hold over time: a sensor that passed on its own
   but belongs to a fleet that fails was lucky in its stretch of a slow drift). An own
   model's scores are nearly independent from reading to reading, so its EWMA catches a sustained
   rise of 20-30 % in the SPE as a shift; a sensor that shows one within its training history will
   show it live. The classic simulator's sensors (per-channel drift, 25 cycles long) measured
   1.23-1.95 (and 1.3-1.8 on their later stream): with own models 39-45 % of their normal readings
   alarmed, 93-97 % on the worst sensor (20 sensors x 2,000 readings), where the shared model,
   trained on every sensor's phase of the drift, alarmed on 0.65 %. tests/support/fleet.py's
   assets (stationary noise around 3 process factors) measured 0.97-1.07.
   Noise-floor ratio 2 / 3
   / 5 on 18 such assets: normal readings alarmed 0.99 / 0.91 / 1.30 % (worst asset 4.9 / 4.5 /
   14.9 %), stuck and ramp 18/18 each, one-reading 1.5-sigma jumps 16 / 17 / 17 of 18. Memory:
   (3 + K) x C + 2 float32 and an int per sensor (K = kept components; ~340 B at C=8, K=7).
3. **Cold start**: a sensor the model has never seen is scored from its first readings with the
   *fleet baseline* (median of the sensors' centers; scale = sqrt(median sensor variance + the
   spread of centers), so a new asset at its own set point is not read as a shift). From its
   `cold_start`-th reading on, its own baseline is learned from those first readings (median and
   MAD, with the fleet's typical per-sensor scale as a floor: a short stretch of a slow process
   underestimates its spread). The stream keeps every `stride`-th of those first readings in the
   sensor's state (at most COLD_KEEP = 64 rows: 2 KB at 8 channels) until then, then only the
   learned center and scale (pipeline/state.py `Baseline`); `score` learns from the same rows.

Which one judged a reading is its *baseline state*: `own` (a baseline from training; scored by
its own model when it has one), `learned` (a cold start that finished), `fleet` (still cold).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAD_SIGMA = 1.4826  # MAD x this estimates sigma for Gaussian data
COLD_START = 500  # readings a new sensor is judged by the fleet baseline
COLD_KEEP = 64  # of them a cold sensor keeps (every stride-th): bounded state, median's s.e. ~0.16 sigma
OWN_MIN = 1000  # training readings before a sensor gets its own model (SKAB's per-file 400 rows: none)
OWN_MAX = 20_000  # readings an own model is fitted on (evenly spread over the sensor's history)
OWN_NOISE_RATIO = 3.0  # an own PCA keeps the components whose variance is over 3x the noise floor
OWN_BLOCKS = 10  # interleaved blocks; every 5th is held out for the sensor's score scale
OWN_GATE = 1.25  # fitted on the first half, median SPE on the second over 1.25x the first's: no own model
SCALE_FLOOR = 1e-3  # of the fleet's typical scale: a constant channel cannot divide by ~0
STATES = ("own", "learned", "fleet")  # baseline states, in the order of the metric's label values
FILE = "baselines.npz"


class BaselineError(ValueError):
    """A baselines file that cannot be used (the checkpoint loader names the path and the fix)."""


def robust(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and MAD-sigma per column of `X` [n, C] (float64)."""
    X = np.asarray(X, np.float64)
    center = np.median(X, axis=0)
    return center, MAD_SIGMA * np.median(np.abs(X - center), axis=0)


@dataclass
class Baselines:
    """Per-sensor baselines and own models of one model version (rows sorted by sensor id)."""

    ids: np.ndarray  # [S] str
    center: np.ndarray  # [S, C] float32
    scale: np.ndarray  # [S, C] float32, > 0
    count: np.ndarray  # [S] int64 training readings
    fleet_center: np.ndarray  # [C]
    fleet_scale: np.ndarray  # [C]
    typical_scale: np.ndarray  # [C] median per-sensor scale: the floor of a learned one
    cold_start: int = COLD_START
    own_row: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))  # [S] index into own_*, -1 none
    own_mean: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [O, C]
    own_basis: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))  # [O, C, K]
    own_norm: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # [O] held-out median SPE
    own_gain: np.ndarray | None = None  # [O, C] from the shared standardisation to the own model's (raw median/MAD)
    shrink: np.ndarray | None = None  # [C] how far a sensor's own center is trusted (1: fully; _shrinkage)
    wander: np.ndarray | None = None  # [C] variance of a sensor's level over time, in every scale
    _index: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        C = len(self.fleet_center)
        self.shrink = np.ones(C, np.float32) if self.shrink is None else np.asarray(self.shrink, np.float32)
        self.wander = np.zeros(C, np.float32) if self.wander is None else np.asarray(self.wander, np.float32)
        if self.own_gain is None or len(self.own_gain) != len(self.own_norm):
            self.own_gain = np.ones((len(self.own_norm), C), np.float32)
        self._index = {str(s): i for i, s in enumerate(self.ids.tolist())}
        if len(self.own_row) != len(self.ids):
            self.own_row = np.full(len(self.ids), -1, np.int32)

    @property
    def channels(self) -> int:
        return len(self.fleet_center)

    @property
    def sensors(self) -> int:
        return len(self.ids)

    @property
    def owned(self) -> int:
        return len(self.own_norm)

    def row(self, sensor_id: str) -> int:
        """The sensor's row, -1 for a sensor the model has never seen."""
        return self._index.get(sensor_id, -1)

    def rows(self, sensor_ids) -> np.ndarray:
        get = self._index.get
        return np.fromiter((get(s, -1) for s in sensor_ids), np.int64, count=len(sensor_ids))

    @property
    def stride(self) -> int:
        """A cold sensor keeps readings 0, stride, 2 stride, ... of its first `cold_start`."""
        return cold_stride(self.cold_start)

    def learn(self, kept: np.ndarray, trust: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """A cold sensor's own baseline from the rows it kept of its first readings [<=64, C],
        shrunk toward the fleet's center and widened by the wander as the trained ones are;
        `trust`: an operator said these readings are the new normal (accept): its own, unshrunk."""
        center, scale = robust(kept)
        w = np.ones_like(self.shrink) if trust else self.shrink
        center = self.fleet_center + w * (center - self.fleet_center)
        scale = np.maximum(np.sqrt(w * (scale ** 2 + self.wander) + (1 - w) * self.fleet_scale ** 2),
                           self.typical_scale)
        return center.astype(np.float32), scale.astype(np.float32)

    def bytes_per_sensor(self) -> int:
        k = self.own_basis.shape[2] if self.own_basis.ndim == 3 else 0
        return 4 * self.channels * (3 + k) + 8 + 8 + 4 + 64  # arrays + count + own_row + id and index slot

    # -- the own models -------------------------------------------------------------------------
    def own_scores(self, Z: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SPE of standardised readings `Z` [n, C] under the own models `own` [n] (indices into
        own_*), each divided by its sensor's held-out median: (score [n], channel error [n, C])."""
        Z = np.asarray(Z, np.float32)
        if len(Z) == 0:
            return np.zeros(0, np.float32), np.zeros((0, self.channels), np.float32)
        D = (Z - self.own_mean[own]) * self.own_gain[own]
        P = self.own_basis[own]  # [n, C, K]
        R = D - np.matmul(P, np.matmul(D[:, None, :], P).transpose(0, 2, 1))[:, :, 0]
        err = R * R
        return (err.mean(axis=1) / self.own_norm[own]).astype(np.float32), err

    # -- files ----------------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, ids=np.asarray(self.ids, dtype=str), center=self.center, scale=self.scale, count=self.count,
                 fleet_center=self.fleet_center, fleet_scale=self.fleet_scale, typical_scale=self.typical_scale,
                 cold_start=np.int64(self.cold_start), own_row=self.own_row, own_mean=self.own_mean,
                 own_basis=self.own_basis, own_norm=self.own_norm, shrink=self.shrink, wander=self.wander,
                 own_gain=self.own_gain)
        return buf.getvalue()

    def save(self, directory: Path) -> str:
        """Write `baselines.npz` into `directory`; returns its sha256 (model.json keeps it)."""
        data = self.to_bytes()
        (Path(directory) / FILE).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def load(cls, path: Path, channels: int) -> "Baselines":
        """Read and check a baselines file (no pickle: string ids are a unicode array)."""
        try:
            with np.load(path, allow_pickle=False) as z:
                d = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise BaselineError(f"{FILE} is unreadable ({exc})") from None
        try:
            b = cls(ids=d["ids"].astype(str), center=d["center"].astype(np.float32),
                    scale=d["scale"].astype(np.float32), count=d["count"].astype(np.int64),
                    fleet_center=d["fleet_center"].astype(np.float32), fleet_scale=d["fleet_scale"].astype(np.float32),
                    typical_scale=d["typical_scale"].astype(np.float32), cold_start=int(d["cold_start"]),
                    own_row=d["own_row"].astype(np.int32), own_mean=d["own_mean"].astype(np.float32),
                    own_basis=d["own_basis"].astype(np.float32), own_norm=d["own_norm"].astype(np.float32),
                    own_gain=d["own_gain"].astype(np.float32) if "own_gain" in d else None,
                    shrink=d["shrink"].astype(np.float32) if "shrink" in d else None,
                    wander=d["wander"].astype(np.float32) if "wander" in d else None)
        except KeyError as exc:
            raise BaselineError(f"{FILE} lacks {exc}") from None
        b.check(channels)
        return b

    def check(self, channels: int) -> None:
        """Shapes that fit `channels`, finite values, positive scales, own rows in range."""
        S, O = len(self.ids), len(self.own_norm)
        shapes = [(self.center.shape, (S, channels)), (self.scale.shape, (S, channels)), (self.count.shape, (S,)),
                  (self.fleet_center.shape, (channels,)), (self.fleet_scale.shape, (channels,)),
                  (self.typical_scale.shape, (channels,)), (self.own_row.shape, (S,))]
        if O:
            shapes += [(self.own_mean.shape, (O, channels)), (self.own_basis.shape[:2], (O, channels)),
                       (self.own_gain.shape, (O, channels))]
        for got, want in shapes:
            if tuple(got) != want:
                raise BaselineError(f"{FILE}: an array of shape {tuple(got)} where the model needs {want}")
        arrays = (self.center, self.scale, self.fleet_center, self.fleet_scale, self.typical_scale, self.own_mean,
                  self.own_basis, self.own_norm, self.shrink, self.wander, self.own_gain)
        if self.shrink.shape != (channels,) or self.wander.shape != (channels,):
            raise BaselineError(f"{FILE}: shrink or wander of another channel count than the model's {channels}")
        if (self.shrink < 0).any() or (self.shrink > 1).any() or (self.wander < 0).any():
            raise BaselineError(f"{FILE}: shrink outside [0, 1] or a negative wander")
        if not all(np.isfinite(a).all() for a in arrays):
            raise BaselineError(f"{FILE}: non-finite values")
        if (self.scale <= 0).any() or (self.fleet_scale <= 0).any() or (self.own_norm <= 0).any():
            raise BaselineError(f"{FILE}: a scale is not positive")
        if ((self.own_row < -1) | (self.own_row >= max(O, 0))).any() or self.cold_start < 1:
            raise BaselineError(f"{FILE}: own-model rows or the cold-start length are out of range")
        if len(set(self._index)) != S:
            raise BaselineError(f"{FILE}: duplicate sensor ids")


def cold_stride(cold_start: int) -> int:
    return max(1, -(-int(cold_start) // COLD_KEEP))


def group_rows(sensor_ids: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique ids and, for each, its rows in their original (time) order."""
    ids = np.asarray(sensor_ids).astype(str)
    uniq, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(uniq)))
    return uniq, np.split(order, bounds[:-1])


def fit(X: np.ndarray, sensor_ids, *, cold_start: int = COLD_START, own_min: int = OWN_MIN,
        noise_ratio: float = OWN_NOISE_RATIO) -> tuple[Baselines, np.ndarray, np.ndarray]:
    """Baselines (and own models) of readings `X` [n, C] of sensors `sensor_ids` [n] (each
    sensor's rows in time order). Returns (baselines, own held-out scores, their segment ids):
    the held-out scores, already divided by their sensor's median, calibrate the own models'
    alarm rule; a segment id changes wherever one held-out block ends."""
    X = np.asarray(X, np.float32)
    if sensor_ids is None:
        sensor_ids = np.zeros(len(X), dtype="U1")
    uniq, groups = group_rows(sensor_ids)
    S, C = len(uniq), X.shape[1]
    center = np.empty((S, C), np.float64)
    scale = np.empty((S, C), np.float64)
    for s, rows in enumerate(groups):
        center[s], scale[s] = robust(X[rows])
    fleet_center = np.median(center, axis=0)
    spread = MAD_SIGMA * np.median(np.abs(center - fleet_center), axis=0) if S > 1 else np.zeros(C)
    shrink, wander = _shrinkage(X, groups, spread)
    raw_center, raw_scale = center.copy(), scale.copy()  # the own models' standardisation
    pooled_var = np.median(scale ** 2, axis=0) + spread ** 2  # what one pooled baseline's scale would be
    center = fleet_center + shrink * (center - fleet_center)  # shrunk toward the fleet's by w...
    scale = np.sqrt(shrink * (scale ** 2 + wander) + (1 - shrink) * pooled_var)  # ...and so is the scale
    var = np.median(scale ** 2, axis=0)
    typical = np.sqrt(var)
    floor = np.maximum(SCALE_FLOOR * np.sqrt(np.maximum(var, pooled_var)), 1e-6)
    scale = np.maximum(scale, floor)
    typical = np.maximum(typical, floor)
    fleet_scale = np.maximum(np.sqrt(pooled_var), floor)
    b = Baselines(uniq, center.astype(np.float32), scale.astype(np.float32),
                  np.array([len(g) for g in groups], np.int64), fleet_center.astype(np.float32),
                  fleet_scale.astype(np.float32), typical.astype(np.float32), cold_start=int(cold_start),
                  shrink=shrink.astype(np.float32), wander=wander.astype(np.float32))
    raw_scale = np.maximum(raw_scale, floor)
    held, segs = _fit_own(b, X, groups, own_min, noise_ratio, raw_center, raw_scale)
    return b, held, segs


def _shrinkage(X: np.ndarray, groups, spread: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How far each sensor's own center is trusted (`shrink` w per channel, 0..1) and how much its
    level wanders over time (`wander`, a variance per channel): empirical Bayes over the fleet.

    A sensor's level over its training history differs from its level later by its *wander*,
    estimated from the fleet's half-history differences (median of (first-half median - second-
    half median)^2, / 2, / 0.4549 for a chi-square(1) median). The spread of the sensors' centers
    is the true between-sensor spread plus that wander; the true part tau^2 = spread^2 - wander.
    Then w = tau^2 / (tau^2 + wander) (James-Stein): assets at set points that differ for good keep
    their own baselines (w ~ 1, the scale widened by the wander); sensors alike but caught at
    different phases of a slow drift get the fleet's (w ~ 0: the pooled center and scale). With the
    scale shrunk as the center is (not only widened by the wander), the classic simulator with the
    shared PCA (W=8): 4.6 % of normal readings alarmed -> see detectors/README.md. One sensor: no
    evidence of a spread between sensors, so w = 0 (a new sensor is taken to be like the one the
    model knows, as before issue 28) and no wander. With w = 1 there, a new sensor's baseline
    learned from its first 500 readings of a slow process alarmed on 19 % of a 600-reading stream
    (tests/integration/test_pipeline.py's trained MLP; 2.2 % for the trained sensor itself). Measured on the classic simulator (20
    alike sensors, per-channel drift 25 cycles long, 2,000 readings each): own centers and scales
    alone alarmed on 3.6 % of later normal readings, 26 % on the worst sensor, against 0.65 % for the
    pooled baseline."""
    S, C = len(groups), X.shape[1]
    if S < 2:  # no evidence of any spread between sensors: a new one is taken to be like the one known
        return np.zeros(C), np.zeros(C)
    d = np.zeros((S, C))
    for s, rows in enumerate(groups):
        h = len(rows) // 2
        if h:
            d[s] = np.median(X[rows[:h]], axis=0) - np.median(X[rows[h:]], axis=0)
    wander = np.median(d ** 2, axis=0) / (2 * 0.4549)
    tau2 = np.maximum(spread ** 2 - wander, 0.0)
    total = tau2 + wander
    shrink = np.divide(tau2, total, out=np.ones(C), where=total > 0)
    return shrink, wander


def components(sv: np.ndarray, channels: int, noise_ratio: float = OWN_NOISE_RATIO) -> int:
    """How many principal components are process, not noise: variance over `noise_ratio` x the
    median variance of the smaller half (the noise floor); at least 1, at most C-1."""
    var = np.sort(np.asarray(sv, np.float64) ** 2)[::-1]
    floor = float(np.median(var[len(var) // 2:])) if len(var) > 1 else 0.0
    return int(min(max(int((var > noise_ratio * floor).sum()), 1), channels - 1))


def _fit_own(b: Baselines, X: np.ndarray, groups, own_min: int, noise_ratio: float, raw_center: np.ndarray,
             raw_scale: np.ndarray):
    """Own models, each fitted in its sensor's own standardisation (raw median / MAD: a PCA is not
    invariant to the channels' scaling, and the shared one's is shrunk and widened for the fleet;
    fitting in that one raised the worst asset's false alarms on tests/support/fleet.py from
    under 3 % to 3.4 %), stored as a gain and mean on the shared standardisation."""
    C = b.channels
    if C < 2:
        return np.zeros(0), np.zeros(0, np.int64)
    means, bases, norms, held_all, seg_all = [], [], [], [], []
    seg = 0
    spread_rows = {s: (rows if len(rows) <= OWN_MAX else rows[np.linspace(0, len(rows) - 1, OWN_MAX).astype(np.int64)])
                   for s, rows in enumerate(groups) if len(rows) >= own_min}  # evenly over the sensor's history
    ratio_of = {s: _later_ratio((X[rows] - raw_center[s]) / raw_scale[s], C, noise_ratio)
                for s, rows in spread_rows.items()}
    if ratio_of and np.median(list(ratio_of.values())) > OWN_GATE:
        spread_rows = {}  # the fleet's own models do not hold over time: a lucky sensor's would not either
    gains = []
    for s, rows in spread_rows.items():
        Z = (X[rows] - raw_center[s]) / raw_scale[s]
        block = np.arange(len(Z)) * OWN_BLOCKS // len(Z)
        hold = block % 5 == 2  # blocks 2 and 7 of 10: 20 %, away from the ends
        fit_z, held_z = Z[~hold], Z[hold]
        mean = fit_z.mean(axis=0)
        _, sv, vt = np.linalg.svd(fit_z - mean, full_matrices=False)
        k = components(sv, C, noise_ratio)
        basis = np.zeros((C, C - 1), np.float32)
        basis[:, :k] = vt[:k].T
        D = held_z - mean
        R = D - (D @ basis) @ basis.T
        spe = (R * R).mean(axis=1)
        hb = block[hold]
        if ratio_of[s] > OWN_GATE:
            continue  # no own model: it does not hold over the sensor's own later readings (the shared one judges it)
        norm = float(np.median(spe))
        if not np.isfinite(norm) or norm <= 0:
            continue
        b.own_row[s] = len(norms)
        gain = b.scale[s] / raw_scale[s]  # own space = gain * (shared space - mean')
        means.append(((mean - (b.center[s] - raw_center[s]) / raw_scale[s]) / gain).astype(np.float32))
        gains.append(gain.astype(np.float32))
        bases.append(basis)
        norms.append(norm)
        held_all.append(spe / norm)
        seg_all.append(seg + hb)
        seg += OWN_BLOCKS
    if norms:
        b.own_mean = np.stack(means)
        b.own_basis = np.stack(bases)
        b.own_norm = np.asarray(norms, np.float32)
        b.own_gain = np.stack(gains)
        return np.concatenate(held_all), _segments(np.concatenate(seg_all))
    b.own_mean = np.zeros((0, C), np.float32)
    b.own_basis = np.zeros((0, C, C - 1), np.float32)
    b.own_gain = np.zeros((0, C), np.float32)
    return np.zeros(0), np.zeros(0, np.int64)


def _spe(Z: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    D = Z - mean
    R = D - (D @ basis) @ basis.T
    return (R * R).mean(axis=1)


def _later_ratio(Z: np.ndarray, C: int, noise_ratio: float) -> float:
    """Fitted on the first half of a sensor's history, its own PCA's median SPE on the second half
    over the first half's (inf when it cannot say)."""
    half = len(Z) // 2
    a = Z[:half]
    mean = a.mean(axis=0)
    _, sv, vt = np.linalg.svd(a - mean, full_matrices=False)
    basis = vt[:components(sv, C, noise_ratio)].T
    first, second = float(np.median(_spe(a, mean, basis))), float(np.median(_spe(Z[half:], mean, basis)))
    return second / first if np.isfinite(first) and first > 0 and np.isfinite(second) else float("inf")


def _segments(block_ids: np.ndarray) -> np.ndarray:
    """Consecutive index per held-out reading, jumping by 2 at each block change, so
    `alarms.calibrate` (a new segment wherever an index does not follow the one before) restarts
    the EWMA at each block."""
    change = np.r_[False, np.diff(block_ids) != 0]
    return np.arange(len(block_ids)) + np.cumsum(change)


def standardise(values: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return ((np.asarray(values, np.float32) - center) / scale).astype(np.float32, copy=False)


def sample_for_fleet(groups: list[np.ndarray], cap: int, chunk: int) -> np.ndarray:
    """Rows for the shared model, about `cap` at most: an equal share per sensor, taken as
    contiguous chunks of `chunk` readings evenly spread over each sensor's history (windows need
    neighbours), sensor after sensor. With more sensors than `cap // chunk`, one chunk from each
    of that many sensors spread evenly over the sorted ids."""
    if len(groups) * chunk > cap:
        pick = np.linspace(0, len(groups) - 1, max(cap // chunk, 1)).astype(np.int64)
        groups = [groups[i] for i in np.unique(pick)]
    share = max(cap // max(len(groups), 1), chunk)
    out = []
    for rows in groups:
        if len(rows) <= share:
            out.append(rows)
            continue
        n_chunks = max(share // chunk, 1)
        starts = np.linspace(0, len(rows) - chunk, n_chunks).astype(np.int64)
        out.append(np.concatenate([rows[s:s + chunk] for s in starts]))
    return np.concatenate(out) if out else np.zeros(0, np.int64)
