"""Synthetic sensor streams with labelled anomalies, so the pipeline can be tested and demoed
without real plant data.

Two halves: `SensorSimulator` is a pure numpy generator (no Kafka, no clock), and
`produce_stream` turns its output into input-contract messages on a Kafka topic, paced to a
readings/s rate, with the ground truth in the `lw-truth` header and, after delivery, in a
`TruthSink` (CSV rows: sensor_id,ts,kind,topic,partition,offset,index).

Signal model (per sensor, per channel, in units of the channel's normal std):
    x = W_c . F_t + noise_c * eps + drift_c(t)      value = offset_c + scale_c * x
where F_t are 3 latent factors (a periodic "day" cycle of `period` simulated seconds plus AR(1)
wander), so channels are strongly correlated and a correlation break is detectable. `drift` is a
slow bounded sinusoid (25 periods long). Sensors share one channel profile with small per-sensor
differences and their own phase, so a single model can learn "normal" for all of them.

Anomalies: `anomaly_rate` is the expected fraction of each sensor's *readings* that lie inside an
anomaly. Events never overlap; each has one kind, a length (spike 1-3 readings, others 5-30) and a
random subset of channels it affects.

Fleet mode (`FleetSimulator`, issue 28; docs/fleet-simulator.md): assets of one kind driven by
the same 3 process factors, each at its own operating point with a slightly different mix, and
fleet trouble kinds (`FLEET_KINDS`: setpoint, foreign_point, stuck, ramp, spike, flatline, silent)
with documented lengths and magnitudes.

Sensor-health faults (issue 30, `HEALTH_KINDS`: stuck, flatline, silent): both simulators take
them on a chosen sensor and step (`schedule`; the classic one only these kinds), each as long as
`HEALTH_FAULT_LENGTH` says, past the health rules' default limits (detectors/health.py: 30
readings; 300 s of event time at the default 1 s interval). `schedule_health_faults` puts one of
each on the last sensors, so a short run has all three. A silent reading is NaN in the arrays and
is not sent by `produce_stream` (`on_unsent` hears of it).
"""

from __future__ import annotations

import csv
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from latentwatch.pipeline.times import iso

KINDS = ("spike", "level_shift", "drift", "stuck", "correlation_break", "noise_burst")
NORMAL = "normal"
TRUTH_HEADER = "lw-truth"
_LEN = {"spike": (1, 3)}  # readings per event; every other kind 5-30
_MAG = {"spike": (6, 10), "level_shift": (3, 5), "drift": (4, 6), "noise_burst": (3, 5)}
_FACTORS = 3
HEALTH_KINDS = ("stuck", "flatline", "silent")  # the kinds a sensor-health rule judges (detectors/health.py)
# Readings per health fault: past the rules' defaults (stuck_n = flatline_n = 30 readings; silent_s =
# 300 s, i.e. 300 readings at the default 1 s interval, + 60 so the silence is found inside it).
HEALTH_FAULT_LENGTH = {"stuck": 200, "flatline": 200, "silent": 360}
HEALTH_FAULT_START = 60  # the step `schedule_health_faults` starts them at by default


def _ar1_chunk(state: np.ndarray, eps: np.ndarray, phi: float) -> np.ndarray:
    """x_t = phi x_{t-1} + eps_t along axis 1 of eps [S, n, k], vectorised in blocks of 128."""
    n = eps.shape[1]
    out = np.empty_like(eps)
    B = 128
    powers = phi ** np.arange(B + 1)
    idx = np.arange(B)
    M = np.tril(powers[np.abs(idx[:, None] - idx[None, :])])  # M[i, j] = phi^(i-j), j <= i
    for b0 in range(0, n, B):
        e = eps[:, b0:b0 + B]
        m = e.shape[1]
        out[:, b0:b0 + m] = np.einsum("ij,sjk->sik", M[:m, :m], e) + powers[1:m + 1, None] * state[:, None, :]
        state = out[:, b0 + m - 1]
    return out


class SensorSimulator:
    """Deterministic (for a given `seed` and sequence of calls) multi-sensor generator."""

    def __init__(self, sensors: int = 10, channels: int = 8, seed: int | None = None,
                 anomaly_rate: float = 0.01, kinds: tuple[str, ...] | list[str] | None = None,
                 interval: float = 1.0, period: float = 300.0,
                 channel_names: list[str] | None = None, sensor_prefix: str = "sensor-"):
        if sensors < 1 or channels < 1:
            raise ValueError("need at least one sensor and one channel")
        if not 0.0 <= anomaly_rate < 0.9:
            raise ValueError("anomaly_rate is a fraction of readings in [0, 0.9)")
        if kinds is None:
            kinds = [k for k in KINDS if channels > 1 or k != "correlation_break"]
        kinds = list(dict.fromkeys(kinds))
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown anomaly kinds {unknown}; choose from {', '.join(KINDS)}")
        if channels < 2 and "correlation_break" in kinds:
            raise ValueError("correlation_break needs at least 2 channels")
        if channel_names is not None and len(channel_names) != channels:
            raise ValueError("channel_names must have one name per channel")
        self.sensors, self.channels, self.interval, self.period = sensors, channels, interval, period
        self.anomaly_rate, self.kinds, self.seed = anomaly_rate, kinds, seed
        self.sensor_ids = [f"{sensor_prefix}{i:03d}" for i in range(sensors)]
        self.channel_names = list(channel_names or (f"ch{i}" for i in range(channels)))
        self.step = 0  # simulated steps generated so far (same for every sensor)

        self._seeds = np.random.SeedSequence(seed).spawn(4)  # profile, signal, events, training
        p = np.random.default_rng(self._seeds[0])
        S, C, K = sensors, channels, _FACTORS
        # every channel loads strongly on factor 0 (the cycle): pairs are well correlated
        W0 = np.column_stack([p.choice([-1.0, 1.0], C) * p.uniform(0.7, 1.2, C), 0.4 * p.normal(size=(C, K - 1))])
        self._W = W0 + 0.1 * p.normal(size=(S, C, K))
        self._noise = p.uniform(0.15, 0.35, size=C)
        self._drift_amp = p.uniform(0.1, 0.4, size=(S, C))
        self._drift_phase = p.uniform(0, 2 * np.pi, size=(S, C))
        self._phase = p.uniform(0, 2 * np.pi, size=S)
        scale0 = p.uniform(0.5, 10.0, size=C)
        self._offset = p.uniform(0, 100, size=C) + 0.05 * scale0 * p.normal(size=(S, C))
        self._scale = np.broadcast_to(scale0, (S, C)).copy()
        self._amp = np.array([1.5, 0.5, 0.0])  # periodic amplitude per factor (2nd harmonic on F1)
        self._phi = float(np.exp(-interval / 20.0))  # AR(1) with a 20 s time constant
        fvar = self._amp ** 2 / 2 + 1.0
        self._std = np.sqrt((self._W ** 2 * fvar).sum(-1) + self._noise ** 2 + self._drift_amp ** 2 / 2)

        self._rng = np.random.default_rng(self._seeds[1])
        self._ev_rng = np.random.default_rng(self._seeds[2])  # separate: same seed, same clean signal
        self._ar = self._rng.normal(size=(S, K))
        lens = np.array([_LEN.get(k, (5, 30)) for k in kinds], dtype=float)
        mean_len = lens.mean(axis=1).mean()
        self._gap_mean = mean_len * (1 - anomaly_rate) / anomaly_rate if anomaly_rate > 0 else None
        self._ev = {k: np.zeros((S, 0), dtype=np.int64) for k in ("start", "end", "kind")}
        self._ev["mag"] = np.zeros((S, 0))
        self._ev["mask"] = np.zeros((S, 0, C), dtype=bool)
        self._ev["stuck"] = np.zeros((S, 0, C))
        self._horizon = np.zeros(S, dtype=np.int64)  # events are generated up to here
        self._op_from: int | None = None  # operating-point change: from this step on ...
        self._op_delta = np.zeros((S, C))  # ... every reading moves by this (standardised units)
        self._faults: list[FleetEvent] = []  # scheduled health faults (`schedule`), not yet wholly generated
        self._last = None  # [S, C] the last reading (standardised units), for a fault that holds it

    def schedule(self, sensor: int, kind: str, start: int, *, channel: int | None = None) -> FleetEvent:
        """A sensor-health fault (`HEALTH_KINDS`) on `sensor` from absolute step `start`, for
        `HEALTH_FAULT_LENGTH[kind]` readings: stuck holds one channel (`channel`, default random) at
        the reading before it, flatline holds every channel, silent sends nothing (NaN). It
        overrides the random anomalies of its readings (values and labels)."""
        if kind not in HEALTH_KINDS:
            raise ValueError(f"the classic simulator schedules {', '.join(HEALTH_KINDS)}, not {kind!r}")
        if not 0 <= sensor < self.sensors:
            raise ValueError(f"no sensor {sensor}")
        if start < self.step:
            raise ValueError(f"step {start} is already generated (next step {self.step})")
        end = start + HEALTH_FAULT_LENGTH[kind]
        for e in self._faults:
            if e.asset == sensor and e.start < end and start < e.end:
                raise ValueError(f"sensor {sensor}: a {kind} fault at {start} would overlap the {e.kind} fault at {e.start}")
        if kind == "stuck" and channel is None:
            channel = int(self._ev_rng.integers(self.channels))
        ev = FleetEvent(sensor, kind, int(start), -1 if channel is None else int(channel))
        self._faults.append(ev)
        return ev

    # ---- clean signal -------------------------------------------------------------------
    def _clean(self, rng: np.random.Generator, steps: np.ndarray, ar_state: np.ndarray):
        """(x, latent part, new AR state) for absolute `steps` [S, n] (standardised units)."""
        S, n = steps.shape
        eps = rng.normal(size=(S, n, _FACTORS)) * np.sqrt(1 - self._phi ** 2)
        F = _ar1_chunk(ar_state, eps, self._phi)
        state = F[:, -1].copy()  # the AR part only: the cycle is added afresh on every call
        ang = 2 * np.pi * steps * self.interval / self.period + self._phase[:, None]
        F[..., 0] += self._amp[0] * np.sin(ang)
        F[..., 1] += self._amp[1] * np.sin(2 * ang)
        lat = np.einsum("snk,sck->snc", F, self._W)
        slow = 2 * np.pi * steps[..., None] * self.interval / (25 * self.period)
        drift = self._drift_amp[:, None] * np.sin(slow + self._drift_phase[:, None])
        x = lat + self._noise * rng.normal(size=(S, n, self.channels)) + drift
        return x / self._std[:, None], lat / self._std[:, None], state

    def _to_units(self, x: np.ndarray) -> np.ndarray:
        return self._offset[:, None] + self._scale[:, None] * x

    def normal_training_data(self, n: int) -> np.ndarray:
        """`[n, channels]` anomaly-free readings for training, in time order per sensor and
        sensors one after another, from random points of the cycle. Leaves the stream untouched."""
        rng = np.random.default_rng(self._seeds[3])
        per = -(-n // self.sensors)
        t0 = rng.integers(0, int(25 * self.period / self.interval), size=self.sensors)
        steps = t0[:, None] + np.arange(per)[None]
        x, _, _ = self._clean(rng, steps, rng.normal(size=(self.sensors, _FACTORS)))
        return self._to_units(x).reshape(-1, self.channels)[:n].astype(np.float32)

    def change_operating_point(self, shift: float = 2.0, at_step: int | None = None) -> None:
        """From step `at_step` (default: the next reading) on, the plant runs at another
        operating point: the latent factors settle `shift` of their std away (mostly the main
        cycle factor), so every channel moves, consistently with the others. Not an anomaly
        (labels stay "normal"), but no longer what a model trained before it knows: the
        scenario for drift. `shift=0` goes back to the original point."""
        direction = np.array([1.0, 0.6, -0.4])[:_FACTORS]
        self._op_from = self.step if at_step is None else int(at_step)
        self._op_delta = shift * np.einsum("sck,k->sc", self._W, direction) / self._std

    # ---- anomaly events -----------------------------------------------------------------
    def _extend_events(self, until: int) -> None:
        """Draw more events for every sensor until each timeline reaches `until`."""
        rng, S, C = self._ev_rng, self.sensors, self.channels
        while self._horizon.min() < until:
            R = 8 + int((until - self._horizon.min()) / (self._gap_mean + 5))
            code = rng.integers(0, len(self.kinds), size=(S, R))
            lens = np.array([_LEN.get(k, (5, 30)) for k in self.kinds])[code]  # [S, R, (lo, hi)]
            length = rng.integers(lens[..., 0], lens[..., 1] + 1)
            gap = rng.geometric(1.0 / (self._gap_mean + 1.0), size=(S, R)) - 1
            end = self._horizon[:, None] + np.cumsum(gap + length, axis=1)
            mags = np.array([_MAG.get(k, (0, 0)) for k in self.kinds], dtype=float)[code]
            mag = rng.uniform(mags[..., 0], mags[..., 1]) * rng.choice([-1.0, 1.0], size=(S, R))
            names = np.array(self.kinds)[code]
            most = np.where(np.isin(names, ["stuck"]), C, np.where(names == "spike", min(2, C), max(1, C // 2)))
            most = np.where(names == "correlation_break", np.minimum(most, C - 1), most)
            size = rng.integers(1, most + 1)
            mask = np.argsort(rng.random((S, R, C)), axis=-1) < size[..., None]
            kind_idx = np.array([KINDS.index(k) + 1 for k in self.kinds])[code]
            new = {"start": end - length, "end": end, "kind": kind_idx, "mag": mag, "mask": mask,
                   "stuck": np.zeros((S, R, C))}
            for key, arr in new.items():
                self._ev[key] = np.concatenate([self._ev[key], arr], axis=1)
            self._horizon = end[:, -1]

    def _drop_events_before(self, t: int) -> None:
        """Forget events that ended at or before step `t`; live ones move to the front in order."""
        ev = self._ev
        keep = (ev["end"] > t) & (ev["kind"] > 0)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :int(keep.sum(axis=1).max())]
        rows = np.arange(self.sensors)[:, None]
        valid = keep[rows, order]
        for key in ev:
            ev[key] = ev[key][rows, order]
        ev["kind"] = np.where(valid, ev["kind"], 0)

    # ---- the stream ---------------------------------------------------------------------
    def next_readings(self, n_per_sensor: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` readings of every sensor: `(values [S, n, C] float64, kinds [S, n] str)`;
        `kinds` is "normal" or the anomaly kind of each reading."""
        S, n, t0 = self.sensors, n_per_sensor, self.step
        steps = np.broadcast_to(t0 + np.arange(n), (S, n))
        x, lat, self._ar = self._clean(self._rng, steps, self._ar)
        if self._op_from is not None:
            moved = (steps >= self._op_from)[..., None] * self._op_delta[:, None, :]
            x, lat = x + moved, lat + moved
        codes = np.zeros((S, n), dtype=np.int64)
        if self._gap_mean is not None and n > 0:
            self._extend_events(t0 + n)
            ev = self._ev
            live = (ev["start"] < t0 + n) & (ev["end"] > t0) & (ev["kind"] > 0)
            s_i, k_i = np.nonzero(live)
            diff = np.zeros((S, n + 1), dtype=np.int64)
            np.add.at(diff, (s_i, np.clip(ev["start"][s_i, k_i] - t0, 0, n)), k_i + 1)
            np.add.at(diff, (s_i, np.clip(ev["end"][s_i, k_i] - t0, 0, n)), -(k_i + 1))
            eid = np.cumsum(diff[:, :n], axis=1) - 1  # event slot of each reading, -1 = none
            new_stuck = live & (ev["start"] >= t0) & (ev["kind"] == KINDS.index("stuck") + 1)
            ss, sk = np.nonzero(new_stuck)
            ev["stuck"][ss, sk] = x[ss, ev["start"][ss, sk] - t0]
            self._apply(x, lat, eid, t0)
            codes = np.where(eid >= 0, ev["kind"][np.arange(S)[:, None], np.maximum(eid, 0)], 0)
            self._drop_events_before(t0 + n)
        labels = np.array((NORMAL,) + KINDS)[codes]
        silent = _hold_faults(self._faults, x, labels, self._last, t0) if self._faults and n > 0 else None
        if n > 0:
            self._last = x[:, -1].copy()
        if silent is not None:
            x[silent] = np.nan
            self._faults = [e for e in self._faults if e.end > t0 + n]
        self.step += n
        return self._to_units(x), labels

    def _apply(self, x: np.ndarray, lat: np.ndarray, eid: np.ndarray, t0: int) -> None:
        """Add each reading's anomaly to `x` in place (standardised units)."""
        s, t = np.nonzero(eid >= 0)
        k = eid[s, t]
        ev = self._ev
        kind = np.array((NORMAL,) + KINDS)[ev["kind"][s, k]]
        mask, mag = ev["mask"][s, k], ev["mag"][s, k][:, None]
        pos = (t0 + t - ev["start"][s, k])[:, None]
        length = (ev["end"][s, k] - ev["start"][s, k])[:, None]
        cur = x[s, t]
        add = np.zeros_like(cur)
        add += np.where((kind == "spike")[:, None] | (kind == "level_shift")[:, None], mag, 0.0)
        add += np.where((kind == "drift")[:, None], mag * (pos + 1) / length, 0.0)
        add += np.where((kind == "noise_burst")[:, None], np.abs(mag) * self._ev_rng.normal(size=cur.shape), 0.0)
        add += np.where((kind == "correlation_break")[:, None], -2.0 * lat[s, t], 0.0)
        new = np.where((kind == "stuck")[:, None], ev["stuck"][s, k], cur + add)
        x[s, t] = np.where(mask, new, cur)


# ---- fleet mode -------------------------------------------------------------------------------
# Assets of one kind (issue 28): the same 3 process factors drive every asset, but each asset runs
# at its own operating point with a slightly different mix, so "normal" differs per asset. Trouble
# kinds, magnitudes in units (1 unit = the typical std of one channel of one asset over time):
# The default trouble kinds: process trouble, and the sensor-health faults (HEALTH_KINDS: stuck,
# flatline, silent; issue 30), every one of them since the health rules see the last three.
FLEET_KINDS = ("setpoint", "foreign_point", "stuck", "ramp", "spike", "flatline", "silent")
FLEET_ALL_KINDS = FLEET_KINDS
FLEET_LABELLED = {  # labelled readings per event (also the readings it occupies: events never overlap)
    "setpoint": 60,  # the set point moves by 1.5 units on every channel and stays; first 60 labelled
    "foreign_point": 80,  # 80 readings at another asset's operating point
    "stuck": HEALTH_FAULT_LENGTH["stuck"],  # 200: one channel holds its last value
    "ramp": 300,  # one channel ramps to +1.0 unit, then is back (recalibrated)
    "spike": 1,  # an isolated 1.5-unit jump on one channel
    "flatline": HEALTH_FAULT_LENGTH["flatline"],  # 200: every channel holds its last value
    "silent": HEALTH_FAULT_LENGTH["silent"],  # 360: no readings (NaN in the arrays, left out of messages and CSV rows)
}
FLEET_MAGNITUDE = {"setpoint": 1.5, "ramp": 1.0, "spike": 1.5}


@dataclass
class FleetEvent:
    """One trouble event of one asset, at absolute simulated steps [start, start + length)."""

    asset: int
    kind: str
    start: int
    channel: int = -1  # stuck, ramp, spike
    other: int = -1  # foreign_point: whose operating point
    delta: np.ndarray | None = None  # setpoint: the move per channel (units); spike: its jump;
    # stuck / flatline: the values held (units), known once the event starts

    @property
    def length(self) -> int:
        return FLEET_LABELLED[self.kind]

    span = length  # the readings the event occupies (no other event of its asset may start there)

    @property
    def end(self) -> int:
        return self.start + self.length


class FleetSimulator:
    """Deterministic (per `seed` and sequence of calls) fleet of `assets` of one kind, C channels
    each: `x[a, t] = op[a] + moves[a, t] + (L[a] . F[a, t] + noise) / std[a]`, in units; values
    are `base + unit * x` per channel (one engineering scale for the fleet: the assets are alike).

    - F: 3 process factors, each asset its own realisation of the same process (a periodic "day"
      cycle of `period` s with the asset's own phase, plus AR(1) wander, 20 s time constant);
    - L[a] = L0 + `mix` x N(0, 1): a shared loading matrix with a small per-asset perturbation;
      std[a] scales each channel to 1 unit of std over time;
    - op[a] ~ N(0, `spread`^2) per channel: the operating points differ between assets by about
      as much as one asset varies over time (spread 1);
    - noise: small, 0.1-0.2 of a factor's loading before scaling.
    Trouble events come from `schedule` (explicit) and/or `anomaly_rate` (random, kinds from
    `kinds`, geometric gaps, never overlapping). Same interface as `SensorSimulator` for
    `produce_stream`: `sensors`, `sensor_ids`, `channel_names`, `interval`, `step`, `next_readings`.
    """

    def __init__(self, assets: int = 32, channels: int = 8, seed: int | None = None,
                 anomaly_rate: float = 0.0, kinds: tuple[str, ...] | list[str] | None = None,
                 interval: float = 1.0, period: float = 300.0, channel_names: list[str] | None = None,
                 sensor_prefix: str = "asset-", spread: float = 1.0, mix: float = 0.2):
        if assets < 1 or channels < 1:
            raise ValueError("need at least one asset and one channel")
        if not 0.0 <= anomaly_rate < 0.9:
            raise ValueError("anomaly_rate is a fraction of readings in [0, 0.9)")
        kinds = list(dict.fromkeys(kinds if kinds is not None else FLEET_KINDS))
        unknown = [k for k in kinds if k not in FLEET_ALL_KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown fleet trouble kinds {unknown}; choose from {', '.join(FLEET_ALL_KINDS)}")
        if "foreign_point" in kinds and assets < 2 and anomaly_rate > 0:
            raise ValueError("foreign_point needs at least 2 assets")
        if channel_names is not None and len(channel_names) != channels:
            raise ValueError("channel_names must have one name per channel")
        self.sensors = self.assets = assets
        self.channels, self.interval, self.period = channels, interval, period
        self.anomaly_rate, self.kinds, self.seed = anomaly_rate, kinds, seed
        self.sensor_ids = [f"{sensor_prefix}{i:03d}" for i in range(assets)]
        self.channel_names = list(channel_names or (f"c{i}" for i in range(channels)))
        self.step = 0
        self.events: list[FleetEvent] = []  # every event scheduled so far, in scheduling order
        self._pending: list[FleetEvent] = []  # those not yet wholly generated

        self._seeds = np.random.SeedSequence(seed).spawn(4)  # profile, signal, events, training
        p = np.random.default_rng(self._seeds[0])
        A, C, K = assets, channels, _FACTORS
        L0 = np.column_stack([p.choice([-1.0, 1.0], C) * p.uniform(0.7, 1.2, C), 0.6 * p.normal(size=(C, K - 1))])
        self.loadings = L0 + mix * p.normal(size=(A, C, K))  # [A, C, K]
        self._noise = p.uniform(0.1, 0.2, size=C)
        self._phase = p.uniform(0, 2 * np.pi, size=A)
        self._amp = np.array([1.5, 0.5, 0.0])
        self._phi = float(np.exp(-interval / 20.0))
        fvar = self._amp ** 2 / 2 + 1.0
        self._std = np.sqrt((self.loadings ** 2 * fvar).sum(-1) + self._noise ** 2)  # [A, C]
        self.operating_points = spread * p.normal(size=(A, C))  # op[a] in units
        self.unit = p.uniform(0.5, 10.0, size=C)  # engineering units per unit, per channel
        self.base = p.uniform(0, 100, size=C)

        self._rng = np.random.default_rng(self._seeds[1])
        self._ev_rng = np.random.default_rng(self._seeds[2])
        self._ar = self._rng.normal(size=(A, K))
        self._moves = np.zeros((A, C))  # set-point moves so far (units), as of `step`
        self._last = None  # [A, C] the last reading of every asset (units), for stuck/flatline
        self._busy = np.zeros(A, dtype=np.int64)  # each asset's events occupy steps before this
        mean_len = float(np.mean([FLEET_LABELLED[k] for k in kinds]))
        self._gap_mean = mean_len * (1 - anomaly_rate) / anomaly_rate if anomaly_rate > 0 else None
        self._horizon = np.zeros(A, dtype=np.int64)  # random events are drawn up to here

    # ---- events -------------------------------------------------------------------------------
    def schedule(self, asset: int, kind: str, start: int, *, channel: int | None = None,
                 other: int | None = None, sign: float | None = None) -> FleetEvent:
        """Add a trouble event of `kind` on `asset` from absolute step `start` (not before the
        next reading). Refuses an event that overlaps another of the same asset."""
        if kind not in FLEET_ALL_KINDS:
            raise ValueError(f"unknown fleet trouble kind {kind!r}; choose from {', '.join(FLEET_ALL_KINDS)}")
        if not 0 <= asset < self.assets:
            raise ValueError(f"no asset {asset}")
        if start < self.step:
            raise ValueError(f"step {start} is already generated (next step {self.step})")
        end = start + FLEET_LABELLED[kind]
        for e in self._pending:  # an event that ended before `step` cannot overlap
            if e.asset == asset and e.start < end and start < e.end:
                raise ValueError(f"asset {asset}: a {kind} event at {start} would overlap the {e.kind} event at {e.start}")
        rng, C = self._ev_rng, self.channels
        if channel is None and kind in ("stuck", "ramp", "spike"):
            channel = int(rng.integers(C))
        if kind == "foreign_point" and other is None:
            if self.assets < 2:
                raise ValueError("foreign_point needs another asset")
            other = int((asset + 1 + rng.integers(self.assets - 1)) % self.assets)
        delta = None
        if kind == "setpoint":
            delta = FLEET_MAGNITUDE["setpoint"] * rng.choice([-1.0, 1.0], size=C)
        elif kind == "spike":
            delta = np.array([FLEET_MAGNITUDE["spike"] * (sign if sign is not None else rng.choice([-1.0, 1.0]))])
        ev = FleetEvent(asset, kind, int(start), -1 if channel is None else int(channel),
                        -1 if other is None else int(other), delta)
        self.events.append(ev)
        self._pending.append(ev)
        self._busy[asset] = max(self._busy[asset], end)
        return ev

    def _draw_events(self, until: int) -> None:
        """Random events (anomaly_rate) for every asset until its timeline reaches `until`."""
        rng = self._ev_rng
        for a in range(self.assets):
            while self._horizon[a] < until:
                gap = int(rng.geometric(1.0 / (self._gap_mean + 1.0))) - 1
                kind = self.kinds[int(rng.integers(len(self.kinds)))]
                # after a scheduled event (busy) the gap counts from its end, not from before it
                start = max(int(self._horizon[a]), self.step, int(self._busy[a])) + gap
                if kind == "foreign_point" and self.assets < 2:
                    kind = "spike"
                self.schedule(a, kind, start)
                self._horizon[a] = start + FLEET_LABELLED[kind]

    # ---- the stream ---------------------------------------------------------------------------
    def _clean(self, rng: np.random.Generator, steps: np.ndarray, ar_state: np.ndarray):
        """(x in units without the operating point, new AR state) for absolute `steps` [A, n]."""
        A, n = steps.shape
        eps = rng.normal(size=(A, n, _FACTORS)) * np.sqrt(1 - self._phi ** 2)
        F = _ar1_chunk(ar_state, eps, self._phi)
        state = F[:, -1].copy()
        ang = 2 * np.pi * steps * self.interval / self.period + self._phase[:, None]
        F[..., 0] += self._amp[0] * np.sin(ang)
        F[..., 1] += self._amp[1] * np.sin(2 * ang)
        x = np.einsum("ank,ack->anc", F, self.loadings) + self._noise * rng.normal(size=(A, n, self.channels))
        return x / self._std[:, None], state

    def to_values(self, x: np.ndarray) -> np.ndarray:
        """Units -> engineering values (`base + unit * x`, per channel)."""
        return self.base + self.unit * x

    def normal_training_data(self, n: int) -> np.ndarray:
        """`[n, channels]` trouble-free readings for training: each asset at its own operating
        point, assets one after another, from random points of the cycle. Leaves the stream alone."""
        rng = np.random.default_rng(self._seeds[3])
        per = -(-n // self.assets)
        t0 = rng.integers(0, int(25 * self.period / self.interval), size=self.assets)
        x, _ = self._clean(rng, t0[:, None] + np.arange(per)[None], rng.normal(size=(self.assets, _FACTORS)))
        x = x + self.operating_points[:, None, :]
        return self.to_values(x).reshape(-1, self.channels)[:n].astype(np.float32)

    def next_readings(self, n_per_sensor: int) -> tuple[np.ndarray, np.ndarray]:
        """The next `n` readings of every asset: `(values [A, n, C] float64, kinds [A, n] str)`;
        `kinds` is "normal" or the trouble kind of each labelled reading; a silent reading's
        values are NaN."""
        A, C, n, t0 = self.assets, self.channels, n_per_sensor, self.step
        if n <= 0:
            return np.zeros((A, 0, C)), np.zeros((A, 0), dtype="<U13")
        if self._gap_mean is not None:
            self._draw_events(t0 + n)
        steps = np.broadcast_to(t0 + np.arange(n), (A, n))
        x, self._ar = self._clean(self._rng, steps, self._ar)
        op = np.broadcast_to((self.operating_points + self._moves)[:, None, :], (A, n, C)).copy()
        live = sorted((e for e in self._pending if e.start < t0 + n), key=lambda e: e.start)
        for e in live:  # set-point moves first: they move the operating point for good
            if e.kind == "setpoint" and e.start >= t0:
                op[e.asset, e.start - t0:] += e.delta
                self._moves[e.asset] += e.delta
        x += op
        labels = np.full((A, n), NORMAL, dtype="<U13")
        silent = np.zeros((A, n), dtype=bool)
        last = self._last if self._last is not None else x[:, 0].copy()
        for e in live:
            a, lo, hi = e.asset, max(e.start - t0, 0), min(e.end - t0, n)
            labels[a, lo:hi] = e.kind
            pos = np.arange(lo, hi) + t0 - e.start  # position inside the event
            if e.kind == "foreign_point":
                x[a, lo:hi] += self.operating_points[e.other] - op[a, lo:hi]
            elif e.kind == "ramp":
                x[a, lo:hi, e.channel] += FLEET_MAGNITUDE["ramp"] * (pos + 1) / e.length
            elif e.kind == "spike":
                x[a, lo:hi, e.channel] += e.delta[0]
            elif e.kind in ("stuck", "flatline"):
                if e.delta is None:  # the value held: the reading just before the event
                    e.delta = (x[a, lo - 1] if lo > 0 else last[a]).copy()
                chans = slice(None) if e.kind == "flatline" else e.channel
                x[a, lo:hi, chans] = e.delta[chans]
            elif e.kind == "silent":
                silent[a, lo:hi] = True
        self._last = x[:, -1].copy()
        x[silent] = np.nan
        self._pending = [e for e in self._pending if e.end > t0 + n]
        self.step += n
        return self.to_values(x), labels


def _hold_faults(faults: list[FleetEvent], x: np.ndarray, labels: np.ndarray, last: np.ndarray | None,
                 t0: int) -> np.ndarray:
    """The classic simulator's health faults on readings [t0, t0 + n) in place: stuck / flatline
    hold the reading before the fault, labels become the fault's kind. Returns the silent mask [S, n]."""
    S, n = labels.shape
    silent = np.zeros((S, n), dtype=bool)
    for e in sorted(faults, key=lambda e: e.start):
        a, lo, hi = e.asset, max(e.start - t0, 0), min(e.end - t0, n)
        if lo >= hi:
            continue
        labels[a, lo:hi] = e.kind
        if e.kind == "silent":
            silent[a, lo:hi] = True
            continue
        if e.delta is None:  # the value held: the reading just before the fault
            e.delta = (x[a, lo - 1] if lo > 0 else (last[a] if last is not None else x[a, 0])).copy()
        chans = slice(None) if e.kind == "flatline" else e.channel
        x[a, lo:hi, chans] = e.delta[chans]
    return silent


def schedule_health_faults(sim: SensorSimulator | FleetSimulator, kinds=HEALTH_KINDS,
                           start: int = HEALTH_FAULT_START) -> list[FleetEvent]:
    """One fault of each of `kinds` (stuck, flatline, silent) from step `start`, each on a sensor of
    its own from the last sensor backwards (sim.sensor_ids[-1] gets the first kind); with fewer
    sensors than kinds, a sensor's next fault follows its previous one 60 steps after it ends.
    Before any reading of those sensors is generated (the fleet's random events then avoid them)."""
    out: list[FleetEvent] = []
    S = sim.sensors
    free = {}  # sensor -> the first step free for its next fault
    for i, kind in enumerate(kinds):
        if kind not in HEALTH_KINDS:
            raise ValueError(f"unknown health fault {kind!r}; choose from {', '.join(HEALTH_KINDS)}")
        sensor = S - 1 - i % S
        at = max(start, free.get(sensor, start))
        out.append(sim.schedule(sensor, kind, at))
        free[sensor] = at + HEALTH_FAULT_LENGTH[kind] + 60
    return out


# ---- producing to Kafka ---------------------------------------------------------------------
@dataclass
class TruthRow:
    sensor_id: str
    ts: str
    kind: str
    topic: str
    partition: int
    offset: int
    index: int  # position of the reading inside its message (0 for single readings)


TRUTH_COLUMNS = ("sensor_id", "ts", "kind", "topic", "partition", "offset", "index")


class TruthCSV:
    """A truth sink: appends delivered rows to a CSV file (`with TruthCSV(path) as sink`)."""

    def __init__(self, path):
        self._f = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._w = csv.writer(self._f)
        self._w.writerow(TRUTH_COLUMNS)

    def __call__(self, rows: list[TruthRow]) -> None:
        self._w.writerows((r.sensor_id, r.ts, r.kind, r.topic, r.partition, r.offset, r.index) for r in rows)

    def close(self) -> None:
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class ProduceStats:
    """Live counters; safe to read from another thread while a stream runs."""

    messages: int = 0
    readings: int = 0
    delivered_messages: int = 0
    delivered_readings: int = 0
    failed_messages: int = 0
    by_kind: Counter = field(default_factory=Counter)  # readings produced per truth kind
    elapsed_s: float = 0.0


iso_ts = iso  # epoch seconds -> ISO-8601 UTC with milliseconds (the contract's formatter)


def encode_message(sensor_id: str, ts: list[str], values: np.ndarray, channels: list[str] | None):
    """Input-contract JSON for one sensor's readings (`values` [n, C]); single form when n == 1.
    `channels=None` sends values as a list in channel order; NaN/inf become null."""
    v = np.round(values, 5)
    rows = v.tolist()
    if not np.isfinite(v).all():
        rows = [[x if np.isfinite(x) else None for x in r] for r in rows]
    vals = rows if channels is None else [dict(zip(channels, r)) for r in rows]
    if len(ts) == 1:
        obj = {"sensor_id": sensor_id, "ts": ts[0], "values": vals[0]}
    else:
        obj = {"sensor_id": sensor_id, "readings": [{"ts": t, "values": v} for t, v in zip(ts, vals)]}
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


FORMATS = ("json", "frames")  # the JSON contract, or binary frames (pipeline/decode/frames.py)
SCHEMA_FORMATS = ("avro", "protobuf")  # through a Schema Registry: schema_encoder


def schema_encoder(fmt: str, registry_url: str, topic: str, batch_size: int = 1):
    """The `encode` callable of a schema'd format (avro_readings.py, protobuf_readings.py), its schema
    registered under `<topic>-value` now, so a wrong URL fails before anything is produced.
    Problems are one line (UserError)."""
    from latentwatch.pipeline.config import mask_url
    from latentwatch.pipeline.errors import UserError

    try:
        if fmt == "avro":
            from latentwatch.pipeline.devtools.avro_readings import READING_V1, READINGS_V1, AvroReadings

            enc = AvroReadings(registry_url, topic, READING_V1 if batch_size == 1 else READINGS_V1)
        else:
            from latentwatch.pipeline.devtools.protobuf_readings import ProtobufReadings

            enc = ProtobufReadings(registry_url, topic, batch=batch_size > 1)
    except ImportError as exc:
        raise UserError(f"--format {fmt} needs the protobuf extra ({exc.name} is missing): "
                        "pip install 'latentwatch[protobuf]'") from None
    try:
        enc.register()
    except Exception as exc:  # noqa: BLE001 - the registry's or the network's error, as one line
        raise UserError(f"cannot register the {fmt} schema at {mask_url(registry_url)}: {type(exc).__name__}: "
                        f"{str(exc)[:200]}") from None
    return enc


def encode(fmt: str, sensor_id: str, ts: list[float], values: np.ndarray, channels: list[str],
           values_as: str = "object") -> bytes:
    """One sensor's readings (`ts` epoch seconds, sent to the millisecond either way) as a JSON
    message or a binary frame (sensor id as the message key, so every frame shares a schema)."""
    if callable(fmt):  # a schema'd encoder (devtools/avro_readings.py, simulate --format avro)
        return fmt(sensor_id, ts, values, channels)
    if fmt == "frames":
        from latentwatch.pipeline.decode import encode_frame

        return encode_frame(np.round(np.asarray(ts) * 1000) / 1000, values, channels)
    return encode_message(sensor_id, [iso_ts(t) for t in ts], values, channels if values_as == "object" else None)


def send(producer, topic: str, key: str, value: bytes, truth: list[tuple[str, str]], stats: ProduceStats,
         on_truth: Callable[[list[TruthRow]], None] | None, stop: threading.Event | None = None) -> None:
    """Produce one message whose readings have `truth` [(ts, kind)], retrying on a full queue;
    the delivery report updates `stats` and passes TruthRows to `on_truth`."""
    def delivered(err, msg):
        if err is not None:
            stats.failed_messages += 1
            return
        stats.delivered_messages += 1
        stats.delivered_readings += len(truth)
        if on_truth is not None:
            on_truth([TruthRow(key, ts, kind, msg.topic(), msg.partition(), msg.offset(), i)
                      for i, (ts, kind) in enumerate(truth)])

    header = ",".join(kind for _, kind in truth).encode()
    while True:
        try:
            producer.produce(topic, key=key.encode(), value=value, headers=[(TRUTH_HEADER, header)],
                             on_delivery=delivered)
            break
        except BufferError:
            producer.poll(0.1)
    producer.poll(0)
    stats.messages += 1
    stats.readings += len(truth)
    stats.by_kind.update(kind for _, kind in truth)


def produce_stream(producer, topic: str, simulator: SensorSimulator | FleetSimulator, rate: float = 100.0, *,
                   count: int | None = None, duration: float | None = None, batch_size: int = 1,
                   stop: threading.Event | None = None, on_truth=None, start_ts: float | None = None,
                   values_as: str = "object", stats: ProduceStats | None = None,
                   flush_timeout: float = 30.0, fmt: str = "json",
                   on_unsent: Callable[[list[TruthRow]], None] | None = None) -> ProduceStats:
    """Stream the simulator to `topic` until `count` readings, `duration` seconds or `stop`.

    `rate` is total readings/s (0 = as fast as possible). Messages go out time-major (every sensor's
    next batch, then the next step). `ts` is wall-clock now at produce time (earlier readings of a
    batch are spaced back by the real per-sensor interval), or with `start_ts` the simulated event
    time `start_ts + step * simulator.interval`. `fmt` "frames" sends binary frames instead of
    JSON (see `encode`). Silent readings (a health fault, either simulator) are not sent (`count`
    counts them as simulated); `on_unsent` gets them as TruthRows with partition and offset -1
    and the event time they would have had. Returns `stats` (also updated live)."""
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    stats = stats if stats is not None else ProduceStats()
    stop = stop or threading.Event()
    channels = simulator.channel_names
    S, b = simulator.sensors, batch_size
    rounds = max(1, 2000 // (S * b))  # steps per chunk, independent of timing -> deterministic
    spacing_ms = max(round(1000 * S / rate), 1) if rate > 0 else 1
    last_ms: dict[str, int] = {}  # per sensor: the last event time sent, in ms
    t_start = time.monotonic()
    done = 0
    try:
        while not stop.is_set():
            step0 = simulator.step
            values, kinds = simulator.next_readings(rounds * b)
            any_silent = bool((kinds == "silent").any())  # a silent sensor sends nothing for those steps
            for r in range(rounds):
                for s in range(S):
                    if stop.is_set() or (count is not None and done >= count):
                        return stats
                    if duration is not None and time.monotonic() - t_start >= duration:
                        return stats
                    n = b if count is None else min(b, count - done)
                    if rate > 0:
                        delay = t_start + (done + n - 1) / rate - time.monotonic()
                        if delay > 0 and stop.wait(delay):
                            return stats
                    sl = slice(r * b, r * b + n)
                    sid = simulator.sensor_ids[s]
                    if start_ts is None:
                        # Event times strictly increase per sensor at the millisecond precision we
                        # send, even when the loop catches up in a burst.
                        first = max(int(time.time() * 1000) - (n - 1) * spacing_ms, last_ms.get(sid, 0) + 1)
                        last_ms[sid] = first + (n - 1) * spacing_ms
                        ts = [(first + i * spacing_ms) / 1000 for i in range(n)]
                    else:
                        ts = [start_ts + (step0 + r * b + i) * simulator.interval for i in range(n)]
                    vals, labels = values[s, sl], kinds[s, sl]
                    if any_silent:
                        keep = labels != "silent"
                        if not keep.all():
                            if on_unsent is not None:
                                on_unsent([TruthRow(sid, iso_ts(t), "silent", topic, -1, -1, i)
                                           for i, (t, k) in enumerate(zip(ts, keep)) if not k])
                            vals, labels, ts = vals[keep], labels[keep], [t for t, k in zip(ts, keep) if k]
                            if not len(labels):
                                done += n
                                continue
                    send(producer, topic, sid, encode(fmt, sid, ts, vals, channels, values_as),
                         list(zip(map(iso_ts, ts), labels.tolist())), stats, on_truth)
                    done += n
    finally:
        producer.flush(flush_timeout)
        stats.elapsed_s = time.monotonic() - t_start
    return stats


class BackgroundStream:
    """`produce_stream` in a daemon thread, for the demo: `.start()`, read `.stats`, `.stop()`."""

    def __init__(self, producer, topic: str, simulator: SensorSimulator | FleetSimulator, rate: float = 100.0,
                 **kwargs):
        self.stats = ProduceStats()
        self._stop = threading.Event()
        self.error: BaseException | None = None

        def run():
            try:
                produce_stream(producer, topic, simulator, rate, stop=self._stop, stats=self.stats, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - surfaced to the caller through .error
                self.error = exc

        self._thread = threading.Thread(target=run, name="latentwatch-simulate", daemon=True)

    def start(self) -> BackgroundStream:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> ProduceStats:
        self._stop.set()
        self._thread.join(timeout)
        return self.stats

    def is_alive(self) -> bool:
        return self._thread.is_alive()
