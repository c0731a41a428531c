"""The scorer's sensor-health steps (issue 30; detectors/health.py): `health_step` between the
scorer's steps 4 and 5 (per partition, offset order), `health_finish` after step 5 (health
records, silences that close a process episode, marks on process alerts). `b`, `w` and `out`
are the scorer's `_Kept`, `_Windows` and `_Judged` of the batch (pipeline/scorer.py)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np
from latentwatch.pipeline import records, state
from latentwatch.pipeline.sensor_steps import count_suppressed, muted_at
from latentwatch.pipeline.times import iso


# -- sensor health (issue 30; detectors/health.py): between steps 4 and 5, then after 5 ----------
@dataclass
class HealthOut:
    marks: np.ndarray  # [readings] int8: bit 0 stuck, bit 1 flatline open at the reading
    events: list  # (health.Event, reading row or -1)
    silent_end: list  # (key, started_ts): silent at the end of the batch
    idle: dict  # key -> new entry of a sensor without a reading here that fell silent


def health_step(rule, b, w, store) -> HealthOut:
    """The health rules per partition over the batch's kept readings (offset order), the
    partition's other sensors checked for silence; new health state into `w.updates`."""
    n = len(b.values)
    out = HealthOut(np.zeros(n, np.int8), [], [], {})
    part_msg = np.array([m.partition() for m, _ in b.valid], np.int64)
    off_msg = np.array([m.offset() for m, _ in b.valid], np.int64)
    part_row, key_row = part_msg[w.msg_of], w.msg_key[w.msg_of]
    topic = b.valid[0][0].topic()
    # Rows by partition (input order kept) with one stable sort, the keys of each partition from
    # the keys' own partitions: no mask and np.unique per partition (a third of this function's
    # time on 32,768-reading batches over 8 partitions, 2026-12-06).
    by_part = np.argsort(part_row, kind="stable")
    parts, part_first, part_n = np.unique(part_row[by_part], return_index=True, return_counts=True)
    key_part = np.fromiter((k[0] for k in w.keys), np.int64, len(w.keys))
    key_part[np.bincount(key_row, minlength=len(w.keys)) == 0] = -1  # a key without a reading (none today)
    local = np.empty(len(w.keys), np.int64)  # key index -> its index among its partition's keys
    for p, first, cnt in zip(parts.tolist(), part_first.tolist(), part_n.tolist()):
        rows = by_part[first:first + cnt]
        kidx = np.flatnonzero(key_part == p)  # the keys with a reading in partition p
        local[kidx] = np.arange(len(kidx))
        keys = [w.keys[g] for g in kidx.tolist()]
        prior, last = {}, {}
        for i, key in enumerate(keys):
            e = store.get(key)
            if e is not None:
                last[i] = e.last_ts
                if e.health is not None:
                    prior[i] = e.health
        wm0 = store.watermark(p)
        wm_end = max(wm0, float(b.ts[rows].max()))
        present = set(keys)
        idle = {key: (e.last_ts, e.health) for key, e in store.silent_due(p, wm_end, rule.silent_s)
                if key not in present}
        refs = Refs(p, off_msg, w.msg_of, w.pos, rows)
        events, post, marks, silences = rule.step(local[key_row[rows]], keys, b.values[rows],
                                                  b.ts[rows], refs, prior, last, wm0, idle)
        out.marks[rows] = marks
        for i, key in enumerate(keys):  # (positional: 3x dataclasses.replace's speed, per sensor per batch)
            e = w.updates[key]
            w.updates[key] = state.Entry(e.last_ts, e.tail, e.threshold, e.valid_at, e.alarm, e.baseline, post[i],
                                         e.control)
        for key in idle:
            if key in post:
                out.idle[key] = dataclasses.replace(store.get(key), health=post[key], valid_at=b.offsets[(topic, p)])
        for key, r, started in silences:
            if r >= 0:
                if not w.resets[rows[r]]:  # an accept at the same reading wins
                    w.resets[rows[r]], w.reset_ts[int(rows[r])] = 1, started
            else:
                out.silent_end.append((key, started))
        out.events += [(e, int(rows[e.row]) if e.row >= 0 else -1) for e in events]
    return out


class Refs:
    """(partition, offset, index) of a partition's reading `r` (local row), made when asked: the
    rules need them only for the rare reading that opens an episode."""

    __slots__ = ("msg_of", "off", "p", "pos", "rows")

    def __init__(self, p, off, msg_of, pos, rows):
        self.p, self.off, self.msg_of, self.pos, self.rows = p, off, msg_of, pos, rows

    def __getitem__(self, r) -> tuple[int, int, int]:
        row = self.rows[r]
        return (self.p, int(self.off[self.msg_of[row]]), int(self.pos[row]))


def health_finish(scorer, b, w, out, store) -> None:
    """After step 5: health records; a process episode open when its sensor fell silent closes
    (reason silent, at the silence's start); the idle sensors' new entries join the updates."""
    h = w.health
    model, version, at = scorer.model.name, str(scorer.model.version), iso(time.time())
    topic = b.valid[0][0].topic()
    w.updates.update(h.idle)
    closes = []
    for key, started in h.silent_end:
        e = w.updates[key]
        if e.alarm is not None and e.alarm.episode is not None:
            closes.append((key, e.alarm.episode, started))
            w.updates[key] = dataclasses.replace(e, alarm=state.SensorAlarm(e.alarm.z, None, e.alarm.hot))
    if closes:
        recs = records.reason_close_records(closes, "silent", topic=topic, model_name=model, model_version=version,
                                            critical_ratio=scorer.critical_ratio, detected_at=at)
        out.alerts += [(r["sensor_id"].encode(), records.encode(r)) for r in recs]
        out.episodes += [r["event"] for r in recs]
    if h.events:  # a muted sensor's health events are held back too (counted)
        held = [muted_at(w, e.key, e.ts) for e, _r in h.events]
        if any(held):
            out.suppressed += count_suppressed(w, [e.key for (e, _r), q in zip(h.events, held) if q], None)
            h.events = [ev for ev, q in zip(h.events, held) if not q]
    if h.events:
        src = records.reading_sources(b.valid, w.msg_of, w.pos, np.array([max(r, 0) for _, r in h.events], np.int64))
        recs = records.health_records([e for e, _ in h.events], [s if r >= 0 else None for s, (_, r) in
                                                                 zip(src, h.events)],
                                      topic=topic, model_name=model, model_version=version, detected_at=at,
                                      channels=scorer.channels)
        out.alerts += [(r["sensor_id"].encode(), records.encode(r)) for r in recs]
        out.health = [(r["rule"], r["event"]) for r in recs]


def mark(recs: list[dict], marks: np.ndarray) -> None:
    """Process alerts of a sensor with a stuck or flatline episode open are marked, not held back."""
    from latentwatch.detectors.health import MARKS

    for r, m in zip(recs, marks.tolist()):
        if m:
            r["sensor_health"] = MARKS[m]
