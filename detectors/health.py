"""Sensor health: rules that judge the *instrument*, not the process, independent of the model.
No Kafka in here; the stream (pipeline/scorer.py) and `score` (pipeline/cli/detect.py) call the
same code, so a replayed topic and a file give the same health episodes.

A frozen transmitter reports a plausible value: reconstruction error cannot see it (a frozen
vector is easy to reconstruct; issue 30: 0 of 4 frozen assets detected). Three rules:

- **stuck**: one channel *unchanged* for its limit N_c readings while another channel of the
  same sensor still moves (moved within the last half of its own limit).
- **flatline**: every judged channel unchanged for `flat_n` readings (a gateway repeating its
  last message).
- **silent**: no reading from a sensor for `silent_s` seconds of *event time* while its
  partition's newest event time moved past: a reading of the partition (any sensor) with an
  event time later than the sensor's last reading + `silent_s` arrived (in input order) before
  the sensor's next reading. Defined on the input's order and event times only, so replay ==
  live whatever the batching. The episode starts at last reading + `silent_s` and closes at the
  sensor's next reading.

"Unchanged" is judged against each channel's normal step sizes in training (`step_stats`, kept
in model.json "health"): a step is *still* when |x_t - x_(t-1)| <= tol_c (`TOL` x the channel's
training standard deviation). From the training steps of each sensor in time order: `repeat_c`,
the fraction of still steps, and `longest_c`, the longest run of them. A channel's limit is

    N_c = max(stuck_n, 2 * longest_c + 1, ceil(log(FALSE_RATE) / log(repeat_c)))

so a quantised or deadband-compressed channel that legitimately repeats values needs a run well
past anything seen in training and past a run the geometric model puts at FALSE_RATE (1e-9 a
reading). A channel still in more than `NEVER_REPEAT` of its training steps (a set-point,
a status bit) is never judged. flat_n = max(flatline_n, the smallest judged N_c): all channels
still that long means at least one of them is past its own limit.

State per sensor (`SensorHealth`): the last values [C] float32, the run of still steps per
channel [C] int32 and the open health episodes (at most one per rule): 4 C + ~200 bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

STUCK_N = 30  # readings a noisy channel must repeat before it is stuck (the default floor of N_c)
FLATLINE_N = 30  # readings every channel must repeat before the sensor is flatlined
SILENT_S = 300.0  # seconds of event time without a reading while the partition moves on
TOL = 1e-3  # a step within this x the channel's training std is "still"
FALSE_RATE = 1e-9  # the run a quantised channel needs: repeat_c ** N_c below this
NEVER_REPEAT = 0.99  # a channel still in more of its training steps is not judged
RULES = ("stuck", "flatline", "silent")
NEVER = np.iinfo(np.int32).max


@dataclass(frozen=True)
class StepStats:
    """Per channel: `tol` (a step within it is still), `repeat` (fraction of still training
    steps), `longest` (longest run of still training steps)."""

    tol: np.ndarray
    repeat: np.ndarray
    longest: np.ndarray


def step_stats(X: np.ndarray, sensor_ids=None) -> StepStats:
    """The step statistics of training readings `X` [n, C] (each sensor's rows in time order;
    `sensor_ids` [n], None: one sensor). Steps are taken within a sensor only."""
    X = np.asarray(X, np.float64)
    n, C = X.shape
    tol = TOL * X.std(axis=0) if n else np.zeros(C)
    if sensor_ids is None:
        groups = [np.arange(n)]
    else:
        from latentwatch.detectors.baselines import group_rows

        groups = group_rows(np.asarray(sensor_ids).astype(str))[1]
    still_total, steps, longest = np.zeros(C), 0, np.zeros(C, np.int64)
    for rows in groups:
        if len(rows) < 2:
            continue
        still = np.abs(np.diff(X[rows], axis=0)) <= tol
        still_total += still.sum(axis=0)
        steps += len(still)
        run = _runs(still, np.zeros(C, np.int64))
        longest = np.maximum(longest, run.max(axis=0))
    repeat = still_total / steps if steps else np.zeros(C)
    return StepStats(tol, repeat, longest)


def _runs(still: np.ndarray, run0: np.ndarray) -> np.ndarray:
    """Run of still steps after each row [m, C], given the run before the first `run0` [C]."""
    m = len(still)
    t = np.arange(m)[:, None]
    last_move = np.maximum.accumulate(np.where(still, -1, t), axis=0)  # the last row that moved, -1 none
    return np.where(last_move >= 0, t - last_move, run0[None, :] + t + 1).astype(np.int64)


@dataclass(frozen=True, slots=True)
class HealthEpisode:
    """An open health episode: `ref` names the reading that opened it ((partition, offset, index);
    a silent one: the sensor's last reading's offset is not kept, (partition, -1, 0))."""

    rule: int  # index into RULES
    ref: tuple[int, int, int]
    started_ts: float
    channels: tuple[int, ...] = ()  # stuck: the channels stuck when it opened
    value: tuple[float, ...] = ()  # their values


@dataclass(frozen=True, slots=True)
class SensorHealth:
    last: np.ndarray  # [C] float32, the last reading
    run: np.ndarray  # [C] int32, still steps up to it
    stuck: HealthEpisode | None = None
    flat: HealthEpisode | None = None
    silent: HealthEpisode | None = None

    @property
    def open_rules(self) -> list[str]:
        return [RULES[e.rule] for e in (self.stuck, self.flat, self.silent) if e is not None]


@dataclass
class Event:
    """A health episode event: `row` the reading it is at (-1: none, a silent open at batch end)."""

    event: str  # open | close
    rule: str
    key: object
    row: int
    ts: float
    episode: HealthEpisode
    evidence: dict


class HealthRule:
    """The three rules for a model's channels (`from_dict` of model.json "health", or `fit`)."""

    def __init__(self, channels: list[str], stats: StepStats, *, stuck_n: int = STUCK_N,
                 flatline_n: int = FLATLINE_N, silent_s: float = SILENT_S):
        if stuck_n < 2 or flatline_n < 2 or not silent_s > 0:
            raise ValueError("health limits: stuck_n and flatline_n >= 2 readings, silent_s > 0 seconds")
        self.channels, self.stats = list(channels), stats
        self.stuck_n, self.flatline_n, self.silent_s = int(stuck_n), int(flatline_n), float(silent_s)
        self.tol = np.asarray(stats.tol, np.float64)
        lim = []
        for p, longest in zip(np.asarray(stats.repeat, float).tolist(), np.asarray(stats.longest).tolist()):
            if p > NEVER_REPEAT:
                lim.append(NEVER)
                continue
            geo = math.ceil(math.log(FALSE_RATE) / math.log(p)) if p > 0 else 0
            lim.append(max(self.stuck_n, 2 * int(longest) + 1, geo))
        self.limit = np.array(lim, np.int64)  # N_c
        self.judged = self.limit < NEVER
        self.flat_n = max(self.flatline_n, int(self.limit[self.judged].min())) if self.judged.any() else NEVER
        self._half = np.where(self.judged, self.limit // 2, -1)
        # the run a judged channel must reach before a rule can fire on it: its own limit, or flat_n
        self._reach = np.minimum(self.limit, self.flat_n)[self.judged]
        self.fast = True  # step's shortcut (_runs_fast); False: every reading's runs, always (tests)

    @classmethod
    def fit(cls, X, channels, sensor_ids=None, **limits) -> "HealthRule":
        return cls(channels, step_stats(X, sensor_ids), **limits)

    def to_dict(self) -> dict:
        return {"stuck_n": self.stuck_n, "flatline_n": self.flatline_n, "silent_s": self.silent_s, "tol_rel": TOL,
                "channels": {c: {"tol": float(t), "repeat": float(p), "longest_still_run": int(L),
                                 "stuck_after": (int(n) if n < NEVER else None)}
                             for c, t, p, L, n in zip(self.channels, self.tol, self.stats.repeat, self.stats.longest,
                                                      self.limit)},
                "flatline_after": self.flat_n if self.flat_n < NEVER else None}

    @classmethod
    def from_dict(cls, d: dict, channels: list[str], **overrides) -> "HealthRule":
        per = d["channels"]
        stats = StepStats(np.array([float(per[c]["tol"]) for c in channels]),
                          np.array([float(per[c]["repeat"]) for c in channels]),
                          np.array([int(per[c]["longest_still_run"]) for c in channels]))
        limits = {"stuck_n": int(d["stuck_n"]), "flatline_n": int(d["flatline_n"]), "silent_s": float(d["silent_s"])}
        limits.update({k: v for k, v in overrides.items() if v is not None})
        return cls(channels, stats, **limits)

    def describe(self) -> str:
        judged = int(self.judged.sum())
        return (f"stuck after {int(self.limit[self.judged].min()) if judged else '-'}-"
                f"{int(self.limit[self.judged].max()) if judged else '-'} still readings ({judged} of "
                f"{len(self.channels)} channels judged), flatline after {self.flat_n}, silent after {self.silent_s:g} s")

    # -- one partition's readings in input order --------------------------------------------------
    def step(self, key_of_row: np.ndarray, keys: list, values: np.ndarray, ts: np.ndarray, refs: np.ndarray,
             prior: dict, last_ts: dict, wm0: float, idle: dict | None = None):
        """Judge readings `values` [m, C] of one partition in input order (`key_of_row` [m]: index
        into `keys`; `refs` [m, 3] reading ids, or anything giving row r's (partition, offset, index) as
        refs[r]), given `prior` {key index: SensorHealth} and
        `last_ts` {key index: event time of its last reading before these}, and `wm0` the
        partition's newest event time before them. `idle` {key: (last_ts, SensorHealth)}: the
        partition's sensors without a reading here (silent at the end?). Pure. Returns (events,
        posterior {key index or idle key: SensorHealth}, marks [m] int8 (bit 0 stuck, bit 1
        flatline open at the reading), silences [(key, row, started_ts)]: silences found before
        reading `row` (-1: at the end))."""
        m = len(values)
        events: list[Event] = []
        posterior: dict = {}
        marks = np.zeros(m, np.int8)
        silences = []
        ts = np.asarray(ts, np.float64)
        wm_before = np.maximum.accumulate(np.concatenate([[wm0], ts]))[:-1] if m else np.empty(0)
        wm_end = max(wm0, float(ts.max())) if m else wm0
        T, C, K = self.silent_s, values.shape[1], len(keys)
        # One vectorised pass over every sensor's readings (grouped by key, input order kept);
        # Python only for the sensors with something to say (an episode to open, close or carry).
        order = np.argsort(key_of_row, kind="stable")
        counts = np.bincount(key_of_row, minlength=K)
        ends = np.cumsum(counts)
        firsts = ends - counts
        group = key_of_row[order]
        p_last = np.full((K, C), np.nan)
        p_run = np.zeros((K, C), np.int64)
        p_ts = np.full(K, np.nan)
        busy = np.zeros(K, bool)  # an episode open before these readings
        have = [k for k, h in prior.items() if h is not None]
        if have:
            p_last[have] = np.stack([prior[k].last for k in have])
            p_run[have] = np.stack([prior[k].run for k in have])
            busy[[k for k in have if prior[k].stuck is not None or prior[k].flat is not None
                  or prior[k].silent is not None]] = True
        for k, t in last_ts.items():
            p_ts[k] = t
        Xs = values[order]  # as given (float32); the steps below in float64, exact for float32 inputs
        ts_s = ts[order]
        present = np.flatnonzero(counts)
        starts = firsts[present]
        still = np.empty((m, C), bool)  # |x_t - x_(t-1)| <= tol, the previous reading of the same sensor
        if m > 1:
            d = np.subtract(Xs[1:], Xs[:-1], dtype=np.float64)
            np.less_equal(np.abs(d, out=d), self.tol, out=still[1:])
        if m:  # NaN (a new sensor's first reading): not still
            still[starts] = np.abs(Xs[starts].astype(np.float64) - p_last[present]) <= self.tol
        run_end, frozen = self._runs_fast(still, starts, present, ends, p_run) if self.fast else (None, None)
        if run_end is None:  # a run may reach a limit in these readings: every reading's runs
            is_start = np.zeros(m, bool)
            is_start[starts] = True
            pos = np.arange(m)[:, None]
            at = np.maximum.accumulate(np.where(~still | is_start[:, None], pos, -1), axis=0)
            carried = np.take_along_axis(still, at, axis=0)  # the run began before these readings
            run = pos - at + np.where(carried, p_run[group] + 1, 0)
            frozen = ((run >= self.limit) & self.judged).any(axis=1)
            if self.judged.any():
                frozen |= (run[:, self.judged] >= self.flat_n).all(axis=1)
            run_end = run[ends - 1] if m else np.zeros((K, C), np.int64)
        prev_ts = np.empty(m)
        prev_ts[1:] = ts_s[:-1]
        prev_ts[starts] = p_ts[present]
        # Silent before this reading: the partition's clock passed the sensor's last reading + T,
        # and the sensor's own gap is longer than T (in a file sorted by sensor, or behind a sensor
        # whose readings lag its partition's, the clock is past every reading: without the second
        # condition each reading opened a "silence" that started after it). NaN (a new sensor): False
        gap = (wm_before[order] > prev_ts + T) & (ts_s > prev_ts + T)
        attention = busy.copy()
        attention[group[frozen | gap]] = True
        late = np.zeros(K, bool)
        late[counts > 0] = wm_end > ts_s[ends[counts > 0] - 1] + T
        attention |= late
        last32 = Xs[ends - 1].astype(np.float32) if m else np.empty((K, C), np.float32)  # a copy, not a view
        run32 = np.minimum(run_end, NEVER).astype(np.int32)
        for k in np.flatnonzero(counts).tolist():
            if not attention[k]:
                posterior[k] = SensorHealth(last32[k], run32[k])
                continue
            rows = order[firsts[k]:ends[k]]
            h = prior.get(k)
            g = gap[firsts[k]:ends[k]].copy()
            if h is not None and h.silent is not None:
                g[0] = True
            pts = prev_ts[firsts[k]:ends[k]]
            for j in np.flatnonzero(g).tolist():
                r = int(rows[j])
                ep = h.silent if (h is not None and j == 0 and h.silent is not None) else None
                if ep is None:
                    ep = HealthEpisode(2, (int(refs[r][0]), -1, 0), float(pts[j] + T))
                    events.append(Event("open", "silent", keys[k], r, ep.started_ts, ep,
                                        self._silent_evidence(pts[j], wm_before[r])))
                    silences.append((keys[k], r, ep.started_ts))
                events.append(Event("close", "silent", keys[k], r, float(ts[r]), ep,
                                    {"last_reading_at": float(pts[j]), "back_at": float(ts[r])}))
            if h is not None and h.silent is not None:
                h = replace(h, silent=None)
            h = self._channels(keys[k], rows, values, ts, refs, h, events, marks)
            if late[k]:  # silent at the end of these readings
                ep = HealthEpisode(2, (int(refs[rows[-1]][0]), -1, 0), float(ts[rows[-1]]) + T)
                events.append(Event("open", "silent", keys[k], -1, ep.started_ts, ep,
                                    self._silent_evidence(float(ts[rows[-1]]), wm_end)))
                silences.append((keys[k], -1, ep.started_ts))
                h = replace(h, silent=ep)
            posterior[k] = h
        for key, (lts, h) in (idle or {}).items():
            if h is not None and h.silent is not None:
                continue
            if wm_end > lts + T:
                ep = HealthEpisode(2, (int(key[0]) if isinstance(key, tuple) else 0, -1, 0), lts + T)
                events.append(Event("open", "silent", key, -1, ep.started_ts, ep, self._silent_evidence(lts, wm_end)))
                silences.append((key, -1, ep.started_ts))
                C = len(self.channels)
                base = h if h is not None else SensorHealth(np.full(C, np.nan, np.float32), np.zeros(C, np.int32))
                posterior[key] = replace(base, silent=ep)
        return events, posterior, marks, silences

    def _runs_fast(self, still: np.ndarray, starts: np.ndarray, present: np.ndarray, ends: np.ndarray,
                   p_run: np.ndarray):
        """The common case without a run per reading (`step`'s readings grouped by sensor:
        `still` [m, C], `starts` the first row of each sensor with readings, `present` their key
        indices): when no sensor's still steps here plus its run before them can reach a limit
        (a channel's N_c, or flat_n), no reading is frozen, and only each sensor's run at its
        last reading is needed (0 where that step moved: nearly always on a noisy channel).
        Returns (run at the last row [K, C], frozen [m] all False), or (None, None) when a limit
        is within reach: `step` then computes every reading's runs (the same figures).
        Why: the run of every reading ([m, C] int64, 5 passes and a gather) was ~2/3 of the
        rules' time, and the rules 14-15 % of the scorer's CPU on the bench's batch workload
        (64 sensors x 16 channels, 32,768-reading batches; 2026-12-06)."""
        m, C = still.shape
        K = len(p_run)
        if not m:
            return np.zeros((K, C), np.int64), np.zeros(0, bool)
        before = p_run[present]  # [sensors here, C]
        reach = np.add.reduceat(still, starts, axis=0, dtype=np.int64) + np.maximum(before, 0)  # the longest run possible
        if (reach[:, self.judged] >= self._reach).any():
            return None, None
        run_end = np.zeros((K, C), np.int64)
        last = ends[present] - 1
        for i, c in zip(*np.nonzero(still[last])):  # the few sensor-channels still at their last reading
            col = still[starts[i]:last[i] + 1, c]
            moved = np.flatnonzero(~col)
            run_end[present[i], c] = len(col) - 1 - moved[-1] if len(moved) else len(col) + before[i, c]
        return run_end, np.zeros(m, bool)

    def _silent_evidence(self, last: float, wm: float) -> dict:
        return {"last_reading_at": float(last), "partition_event_time": float(wm), "limit_s": self.silent_s}

    def _channels(self, key, rows, values, ts, refs, h, events, marks) -> SensorHealth:
        """stuck and flatline over one sensor's readings `rows`."""
        X = values[rows].astype(np.float64)
        C = X.shape[1]
        if h is None or not np.isfinite(h.last).all():
            prev = np.concatenate([X[:1], X[:-1]])
            run0 = np.full(C, -1, np.int64)  # the first reading ever: its "step" is not still
            first_new = True
        else:
            prev = np.concatenate([h.last[None, :].astype(np.float64), X[:-1]])
            run0 = h.run.astype(np.int64)
            first_new = False
        still = np.abs(X - prev) <= self.tol
        if first_new:
            still[0] = False
        run = _runs(still, run0)
        stuck_ep = h.stuck if h is not None else None
        flat_ep = h.flat if h is not None else None
        frozen = (run >= self.limit) & self.judged  # [m, C]
        flat = (run[:, self.judged] >= self.flat_n).all(axis=1) if self.judged.any() else np.zeros(len(rows), bool)
        if stuck_ep is not None or flat_ep is not None or frozen.any() or flat.any():
            moving = (run < self._half) & self.judged
            n_moving = moving.sum(axis=1)
            # channel c frozen while another judged channel moves
            opens = frozen & ((n_moving[:, None] - moving) > 0)
            for j in range(len(rows)):
                r = int(rows[j])
                if flat_ep is None and flat[j]:
                    judged = tuple(np.flatnonzero(self.judged).tolist())
                    flat_ep = HealthEpisode(1, tuple(int(v) for v in refs[r]), float(ts[r]), judged,
                                            tuple(float(X[j, c]) for c in judged))
                    events.append(Event("open", "flatline", key, r, float(ts[r]), flat_ep,
                                        {"readings": int(run[j, self.judged].min()), "limit": self.flat_n,
                                         "values": self._values(X[j], flat_ep.channels)}))
                elif flat_ep is not None and not flat[j]:
                    events.append(Event("close", "flatline", key, r, float(ts[r]), flat_ep, {}))
                    flat_ep = None
                if stuck_ep is None and opens[j].any():
                    ch = tuple(np.flatnonzero(opens[j]).tolist())
                    stuck_ep = HealthEpisode(0, tuple(int(v) for v in refs[r]), float(ts[r]), ch,
                                             tuple(float(X[j, c]) for c in ch))
                    events.append(Event("open", "stuck", key, r, float(ts[r]), stuck_ep,
                                        {"channels": [{"channel": self.channels[c], "value": float(X[j, c]),
                                                       "readings": int(run[j, c]), "limit": int(self.limit[c])}
                                                      for c in ch]}))
                elif stuck_ep is not None and not frozen[j, list(stuck_ep.channels)].any():
                    events.append(Event("close", "stuck", key, r, float(ts[r]), stuck_ep, {}))
                    stuck_ep = None
                marks[r] = (stuck_ep is not None) | ((flat_ep is not None) << 1)
        last = X[-1].astype(np.float32)
        return SensorHealth(last, np.minimum(run[-1], NEVER).astype(np.int32), stuck_ep, flat_ep, None)

    def _values(self, x, channels) -> dict:
        return {self.channels[c]: float(x[c]) for c in channels}


MARKS = {1: ["stuck"], 2: ["flatline"], 3: ["stuck", "flatline"]}


def check(h: SensorHealth | None, channels: int) -> bool:
    """A restored health state fits a model of `channels` channels."""
    if h is None:
        return True
    if h.last.shape != (channels,) or h.run.shape != (channels,) or (h.run < -1).any():
        return False
    for ep in (h.stuck, h.flat, h.silent):
        if ep is not None and (not math.isfinite(ep.started_ts) or any(c < 0 or c >= channels for c in ep.channels)):
            return False
    return True


def judge(rule: HealthRule, sensor_ids, values: np.ndarray, ts: np.ndarray) -> list[Event]:
    """`score`'s health episodes: a file's readings (any sensors, in file order = one partition)
    through `step` at once, sensors silent at the end included; events in event-time order
    (`Event.key` the sensor id, `row` the file row). The stream gives the same (per partition)."""
    return judge_marks(rule, sensor_ids, values, ts)[0]


def judge_marks(rule: HealthRule, sensor_ids, values, ts) -> tuple[list[Event], np.ndarray, list]:
    """`judge` with the per-row marks (bit 0 stuck, bit 1 flatline open) and the silences."""
    ids = np.asarray(sensor_ids).astype(str)
    keys, first = np.unique(ids, return_index=True)
    keys = keys[np.argsort(first)].tolist()
    index = {k: i for i, k in enumerate(keys)}
    key_of_row = np.array([index[s] for s in ids.tolist()], np.int64)
    n = len(ids)
    refs = np.stack([np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.int64)], 1)
    events, _post, marks, silences = rule.step(key_of_row, keys, np.asarray(values, np.float32),
                                               np.asarray(ts, np.float64), refs, {}, {}, -np.inf)
    return sorted(events, key=lambda e: e.ts), marks, silences
