"""The scorer: a micro-batch of messages in, a frozen `ScoredBatch` out. Pure: no Kafka client,
no metrics, no state changed (it reads the `StateStore` and returns the batch's new entries,
which the pipeline applies once the batch is committed). Tested without a broker.

Steps, in order:
1. decode every message (pipeline.decode); a message that breaks the contract is a dead
   letter with its reason;
2. the late policy: a message whose first reading is not after its sensor's last one is a dead
   letter ("late") unless `late_policy` is "score";
3. the range check: a reading more than `MAX_Z` standard deviations (the model's training
   scale) from its channel's mean cannot be scored in float32 (its squared error overflows):
   its message is a dead letter ("out_of_range"; e.g. the 3.4e38 "no data" of field devices);
4. windows per (partition, sensor) from the stored tails and this batch's readings, in offset
   order; a sensor's first `window - 1` readings ever are its warm-up (not scored, counted);
   with a model trained per sensor (detectors/baselines.py), each window is standardised by the
   baseline of its last reading's sensor: its own from training, else its cold start's (the
   fleet's for its first `cold_start` readings, then the one learned from them);
5. one model call (and the own models of sensors that have one), the instant limits (per-sensor ones read their state, return the new one),
   the alarm rule (detectors/alarms.py: instant and EWMA, per-sensor state from the store,
   episodes), alert, episode and latent records; a non-finite score (impossible after step 3,
   kept as a guard) becomes the largest finite float, so it alerts and never reaches a metric as NaN;
6. the new state entries of the sensors touched, and their changelog records when enabled.

Sensor health (issue 30, detectors/health.py) runs between steps 4 and 5 on every kept reading,
per partition in offset order: stuck, flatline and silent episodes (`kind: health` records), marks
on the process alerts of a stuck or flatlined sensor, and the silences that close a process
episode (reason `silent`); sensors of the partition without a reading here are checked for silence
too (`StateStore.silent_due`) and get new entries.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from latentwatch.pipeline import health_steps, records, sensor_steps, state
from latentwatch.pipeline.decode import Decoder
from latentwatch.pipeline.times import iso, iso_many

# Standardised magnitude beyond which a reading is out of range: its square (1e24) and sums of
# them stay far inside float32 (3.4e38) in every model's arithmetic. No physical measurement is
# a trillion standard deviations from its training mean; sentinels and unit errors are.
MAX_Z = 1e12
_BIG = float(np.finfo(np.float64).max)


class Record(Protocol):
    """What the scorer reads of a Kafka message (confluent_kafka.Message has it)."""

    def value(self) -> bytes | None: ...
    def key(self) -> bytes | None: ...
    def topic(self) -> str: ...
    def partition(self) -> int: ...
    def offset(self) -> int: ...
    def timestamp(self) -> tuple[int, int]: ...


@dataclass(frozen=True)
class ScoredBatch:
    """Everything one micro-batch produced, ready to be produced and counted."""

    messages: list  # the batch's messages, in consume order
    dead: list[tuple[int, str, str]]  # (message index, reason, detail), in offset order
    alerts: list[tuple[bytes, bytes]]  # (key, value) for the alerts topic: per-reading alerts, then episode events
    severities: list[str]  # of each per-reading alert (counted even when `alerts.per_reading` is off)
    latents: list[tuple[bytes, bytes]]  # (key, value) for the latent topic (empty when off)
    scores: np.ndarray  # [scored] finite float64
    n_readings: int  # valid readings decoded (dead-lettered messages' not counted)
    updates: dict[state.Key, state.Entry] = field(default_factory=dict)
    changelog: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (partition, key, value)
    max_event_ts: float | None = None
    rest: list = field(default_factory=list)  # messages past `max_readings`: for the next batch
    offsets: dict = field(default_factory=dict)  # next offset per (topic, partition), computed once
    inference_s: float | None = None  # wall time of the model call (None: no call)
    values: np.ndarray | None = None  # [readings, channels] the valid readings (model lifecycle checks)
    latent: np.ndarray | None = None  # [scored, k] latent vectors of the scored readings (drift)
    flagged: np.ndarray | None = None  # [scored] alerts (above the threshold, after the persistence rule)
    refs: np.ndarray | None = None  # [scored, 3] (partition, offset, index) of each scored reading (`refs=True`)
    now: float | None = None  # the wall time the batch was judged against (future timestamps)
    episodes: list[str] = field(default_factory=list)  # the event (open, update, close) of each episode record
    health: list[tuple[str, str]] = field(default_factory=list)  # (rule, event) of each health record
    suppressed: int = 0  # alarms and health events held back by a mute (pipeline/control.py)
    adapted: int = 0  # episodes that became their sensor's new normal (baseline.adapt_after)

    @property
    def n_scored(self) -> int:
        return len(self.scores)

    def next_offsets(self) -> dict[tuple[str, int], int]:
        """The offset to commit per (topic, partition): one past the highest message."""
        return self.offsets


@dataclass
class _Kept:
    """Steps 1-3: the messages taken, and the readings of those kept (valid, in time, in range)."""

    messages: list
    rest: list
    dead: list
    offsets: dict
    valid: list  # (message, sensor id) of each kept message
    values: np.ndarray  # [readings, channels]
    ts: np.ndarray  # [readings]
    counts: np.ndarray  # readings of each kept message
    starts: np.ndarray  # its first reading's row


@dataclass
class _Windows:
    """Step 4: what the model scores, and the new state entries."""

    keys: list  # (partition, sensor) of each key index
    msg_key: np.ndarray  # key index of each kept message
    updates: dict
    windows: np.ndarray  # [scored, window, channels] (standardised by the sensor's baseline, if any)
    scored_idx: np.ndarray  # reading row of each window
    msg_of: np.ndarray  # kept message of each reading row
    pos: np.ndarray  # index of each reading in its message
    own: np.ndarray | None = None  # [readings] own model index (-1: the shared model); None: no baselines
    state: np.ndarray | None = None  # [readings] int8 index into baselines.STATES
    health: "health_steps.HealthOut | None" = None  # sensor health of the batch (None: the model has no health rule)
    resets: np.ndarray | None = None  # [readings] int8 alarms.RESETS code: silent before it, accepted from it
    reset_ts: dict = field(default_factory=dict)  # reading row -> event time of the close (silence's start, accept's at)
    muted: np.ndarray | None = None  # [readings] bool: in a mute window (pipeline/control.py)
    mutes: dict = field(default_factory=dict)  # key -> [(from, until)] mute windows in effect in this batch


@dataclass
class _Judged:
    """Step 5: scores, the alarm rule's decisions and the records made of them."""

    scores: np.ndarray = field(default_factory=lambda: np.empty(0))
    latent: np.ndarray | None = None
    flagged: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    inference_s: float | None = None
    refs: np.ndarray | None = None
    alerts: list = field(default_factory=list)
    severities: list = field(default_factory=list)
    latents: list = field(default_factory=list)
    episodes: list = field(default_factory=list)
    health: list = field(default_factory=list)
    suppressed: int = 0
    adapted: int = 0


class Scorer:
    """Scores micro-batches for one model. `changelog`: return state records for the changelog;
    `refs`: say which reading each score is of (shadow scoring pairs two models' readings).
    `group`: the model group it scores for (groups.py), named in its records' `model.group`."""

    group: str | None = None

    def __init__(self, model, *, max_message_bytes: int, max_future_s: float, late_policy: str,
                 critical_ratio: float, latent_topic: bool, changelog: bool, refs: bool = False,
                 max_message_readings: int | None = None, per_reading: bool = True, schemas=None):
        self.model = model
        self.detector = model.detector
        self.channels = list(self.detector.channels)
        self.window = self.detector.window
        self.decoder = Decoder(self.channels, max_message_bytes, max_future_s, schemas)  # schemas: decode/wire.py
        self.late_dead = late_policy == "dead-letter"
        self.critical_ratio = critical_ratio
        self.latent_topic = latent_topic
        self.changelog = changelog
        self.refs = refs
        self.per_reading = per_reading
        self.max_message_readings = max_message_readings  # more in one message: too_large (budget.py)
        scaler = getattr(self.detector, "scaler", None)
        self._mean = None if scaler is None else np.asarray(scaler.mean, np.float64)
        self._std = None if scaler is None else np.asarray(scaler.std, np.float64)
        if scaler is not None:  # the range as float32 bounds: most batches need one min and max per channel
            with np.errstate(over="ignore"):
                self._lo = (self._mean - MAX_Z * self._std).astype(np.float32)
                self._hi = (self._mean + MAX_Z * self._std).astype(np.float32)
        self._empty_tail = np.empty((0, len(self.channels)), np.float32)
        self.rule = model.alarm
        self.baselines = getattr(model, "baselines", None)  # per-sensor baselines (detectors/baselines.py)
        self.own_rule = getattr(model, "own_alarm", None)
        self.health = getattr(model, "health", None)  # detectors/health.py HealthRule (None: no health rules)
        if self.baselines is not None and self._mean is not None:  # the range in raw units: the fleet baseline's
            b = self.baselines
            self._mean = b.fleet_center.astype(np.float64) + b.fleet_scale * self._mean
            self._std = b.fleet_scale.astype(np.float64) * self._std
            with np.errstate(over="ignore"):
                self._lo = (self._mean - MAX_Z * self._std).astype(np.float32)
                self._hi = (self._mean + MAX_Z * self._std).astype(np.float32)

    def score(self, messages: list[Record], store: state.StateStore, now: float | None = None,
              max_readings: int | None = None, controls=None) -> ScoredBatch:
        """Score `messages` against `store` (read only). With `max_readings`, only the longest
        prefix of messages holding at most that many readings (at least one message) is taken;
        the others are handed back in `rest`. `controls`: the operator's latest command per sensor
        (pipeline/control.py `Commands`; read only). The steps of the module's docstring, in order."""
        now = time.time() if now is None else now
        b = self._decode(messages, store, now, max_readings)  # steps 1-3
        if not b.valid:
            return ScoredBatch(b.messages, b.dead, [], [], [], np.empty(0), 0, offsets=b.offsets, rest=b.rest, now=now)
        w = self._windows(b, store, controls)  # step 4
        if self.health is not None:  # sensor health (issue 30)
            w.health = health_steps.health_step(self.health, b, w, store)
        out = self._judge(b, w, store) if len(w.scored_idx) else _Judged()  # step 5
        if w.health is not None:
            health_steps.health_finish(self, b, w, out, store)
        changelog = ([(key[0], key[1].encode(), state.pack(entry, store.get(key))) for key, entry in w.updates.items()]
                     if self.changelog else [])  # step 6
        return ScoredBatch(b.messages, b.dead, out.alerts, out.severities, out.latents, out.scores, len(b.values),
                           w.updates, changelog, float(b.ts.max()), values=b.values, latent=out.latent,
                           flagged=out.flagged, offsets=b.offsets, inference_s=out.inference_s, rest=b.rest,
                           refs=out.refs, now=now, episodes=out.episodes, health=out.health,
                           suppressed=out.suppressed, adapted=out.adapted)

    # -- steps 1-3: decode, then the late policy and the range check ---------------------------
    def _decode(self, messages, store, now: float, max_readings: int | None) -> "_Kept":
        d = self.decoder.decode_many([(m.value(), m.key()) for m in messages], now, max_readings)
        rest = []
        if d.taken is not None and d.taken < len(messages):
            messages, rest = messages[:d.taken], list(messages[d.taken:])
        dead = [(i, err.reason, err.detail) for i, err in d.errors]
        keep = self._late_and_range(messages, d, store, dead)
        rows = np.repeat(keep, d.counts)
        counts = d.counts[keep]
        dead.sort(key=lambda e: e[0])
        return _Kept(messages, rest, dead, _next_offsets(messages),
                     [(messages[i], sid) for i, sid, k in zip(d.index, d.sensor_ids, keep) if k],
                     d.values[rows], d.ts[rows], counts, np.cumsum(counts) - counts)

    # -- step 4: windows and tails per (partition, sensor), in offset order ----------------------
    def _windows(self, b: "_Kept", store, controls=None) -> "_Windows":
        """Readings are grouped by key with one stable argsort, not a Python loop per message
        (4 ms a batch of 4096). Each key's new entry: its last event time, tail and offset; the
        per-sensor threshold and alarm state carried over (steps 5 replaces them)."""
        valid, values, ts, counts, starts = b.valid, b.values, b.ts, b.counts, b.starts
        key_of_msg: dict[state.Key, int] = {}
        msg_key = np.array([key_of_msg.setdefault((msg.partition(), sid), len(key_of_msg))
                            for msg, sid in valid], dtype=np.int64)
        keys = list(key_of_msg)
        last_msg = np.zeros(len(keys), np.int64)
        last_msg[msg_key] = np.arange(len(valid))  # later messages overwrite: the last of each key
        key_of_reading = np.repeat(msg_key, counts)
        by_key = np.argsort(key_of_reading, kind="stable")
        bounds = np.cumsum(np.bincount(msg_key, weights=counts, minlength=len(keys)).astype(np.int64))
        win_parts, idx_parts, updates = [], [], {}
        base = None
        if self.baselines is not None:  # sensors with a baseline from training, all at once; cold starts per sensor
            base = sensor_steps.BatchBaselines(self.baselines, len(values), self.own_rule is not None)
            base.known(keys, key_of_reading)
        resets, reset_ts, muted, mutes = np.zeros(len(values), np.int8), {}, np.zeros(len(values), bool), {}
        for k, key in enumerate(keys):
            idx = by_key[(bounds[k - 1] if k else 0):bounds[k]]
            prior = store.get(key)
            cmd = controls.get(key[1]) if controls is not None else None
            ctl, at = sensor_steps.apply_control(prior, cmd, ts[idx], idx, muted, mutes, key)
            if at is not None:  # accepted from reading idx[at]: a new normal (pipeline/control.py)
                resets[idx[at]], reset_ts[int(idx[at])] = 2, ctl.accepted
            cold = None
            if base is not None:
                known = bool(base.rows[k] >= 0)
                pb = prior.baseline if prior is not None else None
                relearning = ctl is not None and ctl.accepted > 0  # a cold start even if the model knows it
                if at is None:
                    if not known or relearning:
                        cold = base.cold(idx, values, pb, reset=known, defer=not relearning, trust=relearning)
                else:  # the old baseline before the accept, a cold start from it
                    was = prior is not None and prior.control is not None and prior.control.accepted > 0
                    if at and (not known or was):
                        base.cold(idx[:at], values, pb, reset=known, defer=False, trust=was)
                    cold = base.cold(idx[at:], values, None, reset=known, defer=False, trust=True)
                if relearning:
                    sensor_steps.relearning(base, idx[at:] if at is not None else idx, at is not None or (
                        pb is not None and not pb.learned), muted, resets, reset_ts, ts)
            new_tail = self._empty_tail
            if self.window > 1:
                tail = prior.tail if prior is not None else self._empty_tail
                seq = np.concatenate([tail, values[idx]]) if len(tail) else values[idx]
                w = _windows(seq, self.window)
                if len(w):
                    win_parts.append(w)
                    idx_parts.append(idx[len(idx) - len(w):])
                new_tail = seq[-(self.window - 1):].copy()
            m = int(last_msg[k])
            updates[key] = state.Entry(float(ts[starts[m] + counts[m] - 1]), new_tail,
                                       prior.threshold if prior is not None else None,
                                       b.offsets[(valid[m][0].topic(), key[0])],
                                       prior.alarm if prior is not None else None, cold,
                                       prior.health if prior is not None else None, ctl)
        if base is not None:
            base.finish()
        if self.window == 1:
            windows, scored_idx = values[:, None, :], np.arange(len(values))
        elif win_parts:
            windows, scored_idx = np.concatenate(win_parts), np.concatenate(idx_parts)
        else:
            windows, scored_idx = np.empty((0, self.window, len(self.channels)), np.float32), np.empty(0, np.int64)
        if base is not None and len(scored_idx):  # each window by its last reading's baseline
            windows = ((windows - base.center[scored_idx][:, None, :]) / base.scale[scored_idx][:, None, :]
                       ).astype(np.float32, copy=False)
        return _Windows(keys, msg_key, updates, windows, scored_idx, np.repeat(np.arange(len(valid)), counts),
                        np.arange(len(values)) - np.repeat(starts, counts),
                        base.own if base is not None else None, base.state if base is not None else None,
                        resets=resets, reset_ts=reset_ts, muted=muted, mutes=mutes)

    # -- step 5: the model, the limits and the alarm rule, then the records ----------------------
    def _judge(self, b: "_Kept", w: "_Windows", store) -> "_Judged":
        valid, scored_idx = b.valid, w.scored_idx
        t0 = time.perf_counter()
        s = self.detector.score(w.windows)
        own = w.own[scored_idx] if w.own is not None else None
        own_mask = own >= 0 if own is not None else None
        if own_mask is not None and own_mask.any():  # sensors with an own model: scored by it
            sc, err = self.baselines.own_scores(w.windows[own_mask, -1, :], own[own_mask])
            score, channel_error = np.array(s.score, np.float32), np.array(s.channel_error, np.float32)
            score[own_mask], channel_error[own_mask] = sc, err
            parts = {k: np.where(own_mask, score, v) for k, v in s.parts.items()}
            s = dataclasses.replace(s, score=score, channel_error=channel_error, parts=parts)
        elif own_mask is not None:
            own_mask = None
        inference_s = time.perf_counter() - t0
        scores64 = s.score.astype(np.float64)
        bad = ~np.isfinite(scores64)
        if bad.any():
            scores64[bad] = _BIG
        scored_msg = w.msg_of[scored_idx]
        sensor_of = np.array([sid for _, sid in valid], dtype=object)[scored_msg]
        key_idx = w.msg_key[scored_msg]  # each scored reading's (partition, sensor), an index into keys
        thresholds = self._thresholds(scores64, sensor_of, key_idx, w.keys, w.updates, store)
        if own_mask is not None:
            thresholds = np.where(own_mask, self.own_rule.instant, thresholds)
        # (partition, offset, index) of each scored reading: names episodes (and pairs shadow scores)
        reading_refs = np.stack([np.array([m.partition() for m, _ in valid], np.int64)[scored_msg],
                                 np.array([m.offset() for m, _ in valid], np.int64)[scored_msg], w.pos[scored_idx]], 1)
        resets = w.resets[scored_idx] if w.resets is not None and w.resets.any() else None
        judged = scores64
        if w.muted is not None and w.muted.any():  # muted: scored, but the alarm rule sees a quiet reading
            mute = w.muted[scored_idx]
            judged = np.where(mute, 0.0, scores64)
            held = mute & (scores64 > thresholds)  # would have alarmed (over its instant limit)
            n_held = sensor_steps.count_suppressed(w, w.keys, key_idx[held])
        else:
            n_held = 0
        d = self._alarms(w.keys, key_idx, judged, thresholds, b.ts[scored_idx], reading_refs,
                         w.updates, store, own_mask, resets)
        out = _Judged(scores=scores64, latent=s.latent, flagged=d.alarm, inference_s=inference_s,
                      refs=reading_refs if self.refs else None, suppressed=n_held, adapted=len(d.adapted))
        self._records(out, b, w, s, d, sensor_of, thresholds)
        return out

    def _records(self, out: "_Judged", b: "_Kept", w: "_Windows", s, d, sensor_of, thresholds) -> None:
        """Alert, episode and latent records (pipeline/records.py builds all three)."""
        scored_idx, ts = w.scored_idx, b.ts

        def sources(rows):
            return records.reading_sources(b.valid, w.msg_of, w.pos, rows)

        raised = np.flatnonzero(out.flagged)
        rows = scored_idx[raised]
        sensor_ids = sensor_of[raised].tolist()
        model_name, model_version, detected_at = self.model.name, str(self.model.version), iso(time.time())
        alerts = records.alert_records(
            sources=sources(rows), sensor_ids=sensor_ids, ts=iso_many(ts[rows]),
            scores=out.scores[raised], thresholds=thresholds[raised],
            tops=records.top_channels(s.channel_error[raised], self.channels),
            latent=s.latent[raised], model_name=model_name, model_version=model_version,
            critical_ratio=self.critical_ratio, detected_at=detected_at,
            parts={name: v[raised] for name, v in s.parts.items()},
            rules=d.rule[raised], statistics=d.statistic[raised], limits=d.limit[raised],
            baselines=self._baseline_names(w, rows), model_group=self.group)
        if w.health is not None:
            health_steps.mark(alerts, w.health.marks[rows])
        out.severities = [r["severity"] for r in alerts]
        if self.per_reading:
            out.alerts = [(sid.encode(), records.encode(r)) for sid, r in zip(sensor_ids, alerts)]
        if d.events:
            at = np.array([e[1] for e in d.events], np.int64)
            ev_rows = scored_idx[at]
            why = [e[0].partition(":")[2] for e in d.events]  # close:silent, close:accepted
            ev_ts = ts[ev_rows].astype(np.float64)
            for i, q in enumerate(why):
                if q:  # a silence's start, an accept's time
                    ev_ts[i] = w.reset_ts.get(int(ev_rows[i]), ev_ts[i])
            episodes = records.episode_records(
                [("close",) + e[1:] if q else e for e, q in zip(d.events, why)], sources=sources(ev_rows),
                sensor_ids=sensor_of[at].tolist(), ts=ev_ts,
                tops=records.top_channels(s.channel_error[at], self.channels), model_name=model_name,
                model_version=model_version, critical_ratio=self.critical_ratio, detected_at=detected_at,
                baselines=self._baseline_names(w, ev_rows), model_group=self.group)
            for r, q in zip(episodes, why):
                if q:
                    r["reason"] = q
            if w.health is not None:
                health_steps.mark(episodes, w.health.marks[ev_rows])
            out.alerts += [(r["sensor_id"].encode(), records.encode(r)) for r in episodes]
            out.episodes = [r["event"] for r in episodes]
        if self.latent_topic:
            out.latents = records.latent_records(sources(scored_idx), sensor_of.tolist(), iso_many(ts[scored_idx]),
                                                 out.scores, s.latent, model_name, model_version, self.group)

    @staticmethod
    def _baseline_names(w: "_Windows", rows) -> list[str] | None:
        if w.state is None:
            return None
        from latentwatch.detectors.baselines import STATES

        return [STATES[i] for i in w.state[rows].tolist()]

    def _late_and_range(self, messages, d, store, dead) -> np.ndarray:
        """Steps 2 and 3: which valid messages to keep (bool per valid message)."""
        keep = np.ones(len(d.index), dtype=bool)
        ends = np.cumsum(d.counts)
        firsts, lasts = d.ts[ends - d.counts].tolist(), d.ts[ends - 1].tolist()
        far_msgs: set[int] = set()
        if self._mean is not None and len(d.values) and not (
                (d.values.min(axis=0) >= self._lo).all() and (d.values.max(axis=0) <= self._hi).all()):
            z = np.abs((d.values.astype(np.float64) - self._mean) / self._std)
            far_rows = (z > MAX_Z).any(axis=1)
            if far_rows.any():
                far_msgs = set(np.repeat(np.arange(len(d.index)), d.counts)[far_rows].tolist())
        last_seen: dict[state.Key, float] = {}
        cap = self.max_message_readings
        for j, (i, sid) in enumerate(zip(d.index, d.sensor_ids)):
            if cap is not None and d.counts[j] > cap:
                dead.append((i, "too_large", (f"{int(d.counts[j])} readings in one message could make more "
                                              f"records than batch.max_output_bytes allows ({cap} readings)")))
                keep[j] = False
                continue
            if j in far_msgs:
                dead.append((i, "out_of_range", f"a value is more than {MAX_Z:.0e} standard deviations from "
                             "its channel's training mean (a 'no data' sentinel such as 3.4e38, or wrong units)"))
                keep[j] = False
                continue
            key = (messages[i].partition(), sid)
            last = last_seen.get(key)
            if last is None:
                prior = store.get(key)
                last = prior.last_ts if prior is not None else None
            if self.late_dead and last is not None and firsts[j] <= last:
                dead.append((i, "late", f"event time {iso(firsts[j])} is not after the sensor's last reading"))
                keep[j] = False
                continue
            last_seen[key] = lasts[j]
        return keep

    def _alarms(self, keys, key_idx, scores, instant, ts, refs, updates, store, own_mask=None, resets=None):
        """The alarm rule over the scored readings (`key_idx`: each one's index into `keys`): its
        per-sensor state (EWMA, open episode) comes from the store and goes back through `updates`.
        Readings scored by their sensor's own model (`own_mask`) are judged by the own models' rule."""
        prior = {k: e.alarm for k in np.unique(key_idx).tolist()
                 if (e := store.get(keys[k])) is not None and e.alarm is not None}
        if own_mask is None:
            d, posterior = self.rule.step(key_idx, scores, ts, refs, prior, instant=instant, resets=resets)
        else:
            d, posterior = sensor_steps.step_split(((self.own_rule, own_mask), (self.rule, ~own_mask)), key_idx,
                                                   scores, ts, refs, prior, instant, resets)
        for k, a in posterior.items():
            key = keys[k]
            if key in updates:
                updates[key] = dataclasses.replace(updates[key], alarm=a)
        for k, at in d.adapted:  # `baseline.adapt_after`: the new normal, as an operator's accept
            self._adapt(keys[k], float(ts[at]), updates)
        return d

    def _adapt(self, key, t: float, updates) -> None:
        """An episode became `key`'s new normal at event time `t` (detectors/alarms.py `adapt_after`):
        from its next batch its baseline is learnt again from its next `cold_start` readings, held
        back meanwhile, as after an operator's accept (pipeline/control.py), by "latentwatch". A
        model without baselines is never given `adapt_after` (runner.py `_configure`)."""
        e = updates.get(key)
        if e is None or self.baselines is None:
            return
        c = e.control if e.control is not None else state.Control()
        why = f"adapt_after: an episode of {self.rule.adapt_after}+ readings with a steady score"
        updates[key] = dataclasses.replace(e, baseline=state.Baseline(0, self._empty_tail),
                                           control=dataclasses.replace(c, accepted=t, by="latentwatch", why=why))

    def _thresholds(self, scores, sensor_of, key_idx, keys, updates, store) -> np.ndarray:
        """Each scored reading's instant limit. A per-sensor (adaptive) threshold's state is keyed
        like windows and alarms, by (partition, sensor) (`key_idx`: each reading's index into
        `keys`): a sensor id on two partitions in one batch is two sensors, never one pooled state."""
        thr = self.model.threshold
        step = getattr(thr, "step", None)
        if step is None:  # one threshold for all
            return np.asarray(thr.thresholds(scores, sensor_of), dtype=np.float64)
        prior = {k: e.threshold for k in np.unique(key_idx).tolist()
                 if (e := store.get(keys[k])) is not None and e.threshold is not None}
        out, posterior = step(scores, key_idx, prior)
        for k, t in posterior.items():
            key = keys[k]
            if key in updates:
                updates[key] = dataclasses.replace(updates[key], threshold=t)
        return np.asarray(out, dtype=np.float64)


def _windows(seq: np.ndarray, window: int) -> np.ndarray:
    if len(seq) < window:
        return np.empty((0, window, seq.shape[1]), np.float32)
    return np.lib.stride_tricks.sliding_window_view(seq, window, axis=0).transpose(0, 2, 1)


def _next_offsets(messages) -> dict[tuple[str, int], int]:
    """One past the last message of each partition: a partition's messages come in offset order
    (consume order, and what `Source.put_back` returns goes first), so the last one wins."""
    return {(m.topic(), m.partition()): m.offset() + 1 for m in messages}
