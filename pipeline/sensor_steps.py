"""The scorer's per-sensor steps (pipeline/scorer.py steps 4-5): baselines (`BatchBaselines`: each
reading's center, scale, own model and baseline state; cold starts), the alarm rule split between
own models and the shared model (`step_split`), and the operator's commands applied per sensor
(`apply_control`, re-learning after an accept or an adaptation, mutes and their suppressed alarms;
pipeline/control.py). Kept apart from the batch flow; the scorer imports them."""

from __future__ import annotations

import dataclasses

import numpy as np
from latentwatch.pipeline import state


class BatchBaselines:
    """Step 4's baselines: per reading of a batch, the center and scale it is standardised by, its
    own model (-1: none) and its baseline state (0 own, 1 learned, 2 fleet): `known` fills the
    readings of sensors the model has a baseline of, `cold` those of one sensor new to it."""

    def __init__(self, baselines, n: int, own: bool):
        self.b, self.use_own = baselines, own
        # every reading starts as a cold start's (the fleet baseline); `known` and `cold` overwrite
        self.center = np.broadcast_to(baselines.fleet_center, (n, baselines.channels)).copy()
        self.scale = np.broadcast_to(baselines.fleet_scale, (n, baselines.channels)).copy()
        self.own = np.full(n, -1, np.int64)
        self.state = np.full(n, 2, np.int8)
        self._learned: list = []  # (readings, Baseline) of sensors whose cold start has ended

    def finish(self) -> None:
        """The readings of sensors with a learned baseline, in one scatter (a Python assignment per
        sensor cost 28 % of the scorer stage with 100,000 such sensors: bench/baselines_cost.py)."""
        if not self._learned:
            return
        idx = np.concatenate([i for i, _ in self._learned])
        counts = [len(i) for i, _ in self._learned]
        self.center[idx] = np.repeat(np.stack([b.center for _, b in self._learned]), counts, axis=0)
        self.scale[idx] = np.repeat(np.stack([b.scale for _, b in self._learned]), counts, axis=0)
        self.state[idx] = 1
        self._learned = []

    def known(self, keys, key_of_reading: np.ndarray) -> None:
        """The readings of sensors the model has a baseline of, in one gather (`rows`: each
        key's row in the baselines, -1 for a cold start, which `cold` fills)."""
        b = self.b
        self.rows = b.rows([sid for _, sid in keys])
        rr = self.rows[key_of_reading]
        hit = rr >= 0
        if hit.any():
            r = rr[hit]
            self.center[hit], self.scale[hit], self.state[hit] = b.center[r], b.scale[r], 0
            if self.use_own:
                self.own[hit] = b.own_row[r]

    def cold(self, idx: np.ndarray, values: np.ndarray, prior, reset: bool = False, defer: bool = True,
             trust: bool = False):
        """A sensor new to the model: its readings `idx` judged by the fleet baseline until its
        cold start ends, then by the one learned from it; returns its new cold start. Python
        per sensor, so kept lean: 21 -> 6 us a call in the bench's cold phase. `reset`: the
        readings were filled by `known` (a sensor the model knows, re-learning after an operator's
        accept, pipeline/control.py: scored by the shared model); `defer`: a learned baseline's
        readings may wait for `finish` (not when the caller reads `state` right after); `trust`:
        an accepted new normal, learned as it is (not shrunk toward the fleet's)."""
        b = self.b
        if reset:
            self.center[idx], self.scale[idx], self.state[idx], self.own[idx] = b.fleet_center, b.fleet_scale, 2, -1
        if prior is not None and prior.learned:  # learned: only `seen` (readings since the cold start began) moves
            if defer:
                self._learned.append((idx, prior))  # filled in one pass by `finish`
            else:
                self.center[idx], self.scale[idx], self.state[idx] = prior.center, prior.scale, 1
            return state.Baseline(prior.seen + len(idx), prior.first, prior.center, prior.scale)
        m = len(idx)
        seen0 = prior.seen if prior is not None else 0
        N, stride = b.cold_start, b.stride
        upto = min(m, N - seen0)  # this batch's readings still in the cold start
        keep = idx[(-seen0) % stride:upto:stride]  # reading numbers 0, stride, 2 stride, ... of the first N
        first = prior.first if prior is not None else None
        if len(keep):
            first = values[keep] if first is None or not len(first) else np.concatenate([first, values[keep]])
        elif first is None:
            first = np.empty((0, b.channels), np.float32)
        if upto == m:
            return state.Baseline(seen0 + m, first)
        center, scale = b.learn(first, trust)
        warm = idx[upto:]
        self.center[warm], self.scale[warm], self.state[warm] = center, scale, 1
        return state.Baseline(seen0 + m, np.empty((0, b.channels), np.float32), center, scale)


def step_split(rules, keys, scores, ts, refs, prior, instant, resets=None):
    """`AlarmRule.step` of each (rule, mask) on its readings, merged back into one Decision in
    the readings' order (event positions too). A sensor's readings are all under one rule."""
    from latentwatch.detectors.alarms import Decision

    m = len(scores)
    out = [np.empty(m, t) for t in (bool, np.int8, np.float64, np.float64, np.float64)]
    events, posterior, adapted = [], {}, []
    for rule, mask in rules:
        sub = np.flatnonzero(mask)
        if not len(sub):
            continue
        d, post = rule.step(keys[sub], scores[sub], ts[sub], refs[sub], prior, instant=instant[sub],
                            resets=resets[sub] if resets is not None else None)
        for arr, src in zip(out, (d.alarm, d.rule, d.statistic, d.limit, d.ewma)):
            arr[sub] = src
        events += [(e, int(sub[p]), k, ep) for e, p, k, ep in d.events]
        adapted += [(k, int(sub[p])) for k, p in d.adapted]
        posterior.update(post)
    events.sort(key=lambda e: e[1])
    return Decision(*out, events, adapted), posterior


# -- operator commands (issue 30.2; pipeline/control.py): applied per sensor in step 4 -------------
def apply_control(prior, cmd, ts_k: np.ndarray, idx: np.ndarray, muted: np.ndarray, mutes: dict, key):
    """The sensor's control state after its readings here (`ts_k`, rows `idx`) and the position in
    them from which an accept applies (None: none). Its command applies from its first reading at
    or after `cmd.at`, once (a command not after the last one applied is a repeat). Marks the
    muted rows in `muted` and the mute windows in `mutes[key]`."""
    pc = prior.control if prior is not None else None
    until0 = pc.mute_until if pc is not None else 0.0
    ctl, at, j = pc, None, len(ts_k)
    if cmd is not None and cmd.at > (pc.applied if pc is not None else -np.inf):
        later = np.flatnonzero(ts_k >= cmd.at)
        if len(later):
            j = int(later[0])
            until = cmd.until if cmd.command == "mute" else (0.0 if cmd.command == "unmute" else until0)
            accepted = cmd.at if cmd.command == "accept" else (pc.accepted if pc is not None else 0.0)
            ctl = state.Control(until, cmd.at, pc.suppressed if pc is not None else 0, accepted, cmd.by[:500],
                                cmd.reason[:500])
            at = j if cmd.command == "accept" else None
            if until > 0:
                muted[idx[j:]] = ts_k[j:] < until
                mutes.setdefault(key, []).append((cmd.at if cmd.command == "mute" else -np.inf, until))
    if until0 > 0:
        muted[idx[:j]] = ts_k[:j] < until0
        mutes.setdefault(key, []).append((-np.inf, until0 if j == len(ts_k) else min(until0, float(ts_k[j]))))
    return ctl, at


def relearning(base, rows: np.ndarray, was_cold: bool, muted, resets, reset_ts, ts) -> None:
    """An accepted sensor re-learning its baseline: its readings judged by the fleet baseline
    meanwhile are held back like a mute's (they measure the new normal against the old); the
    EWMA restarts at its first reading judged by the re-learnt baseline."""
    st = base.state[rows]
    muted[rows[st == 2]] = True
    if was_cold and (st == 1).any():
        j = int(np.argmax(st == 1))
        if (st[:j] == 2).all() and not resets[rows[j]]:
            resets[rows[j]], reset_ts[int(rows[j])] = 2, float(ts[rows[j]])


def muted_at(w, key, t: float) -> bool:
    """Whether `key` is muted at event time `t`: a mute window of this batch, or (a sensor without
    a reading here, e.g. gone silent during maintenance) the mute its state holds."""
    if any(a <= t < u for a, u in w.mutes.get(key, ())):
        return True
    e = w.updates.get(key)
    return e is not None and e.control is not None and e.control.applied <= t < e.control.mute_until


def count_suppressed(w, keys, key_idx) -> int:
    """Alarms (or health events) a mute held back, counted into each sensor's control state."""
    from collections import Counter

    n = 0
    for k, c in Counter(key_idx.tolist() if key_idx is not None else keys).items():
        key = keys[k] if key_idx is not None else k
        e = w.updates.get(key)
        if e is not None and e.control is not None:
            w.updates[key] = dataclasses.replace(e, control=dataclasses.replace(e.control,
                                                                                suppressed=e.control.suppressed + c))
        n += c
    return n
