"""The alarm rule: a combined Shewhart-EWMA chart on the anomaly score, with a false-alarm budget.

Two statistics per sensor, one decision (Lucas & Saccucci 1990):

- **instant** (Shewhart): the reading's own score against the instant limit. One reading far out
  alarms at once, whatever came before it.
- **ewma**: `z_t = lam * g_t + (1 - lam) * z_(t-1)` of the clipped log score
  `g_t = clip(log score_t, floor, cap)` against the EWMA limit. A small persistent shift moves z
  past its limit within a few multiples of 1/lam readings. The log and the clip are there because
  scores are squared errors with a heavy right tail: `floor` (log of the held-out median) makes
  the chart one-sided (normal readings below the median cannot pull z down and delay a shift),
  `cap` (log of the instant limit) stops one huge reading - which the instant limit has already
  alarmed on - from holding z above its limit for long. An *isolated* reading over the instant
  limit (the reading before it was not over) enters the EWMA at most at the EWMA limit: it is the
  instant rule's to judge, and alone it cannot lift z over the EWMA limit (z' = (1-lam) z + lam L
  < L while z < L). Without this, each isolated spike kept z over its limit for the next few
  normal readings (issue 28: 2.45 % of normal readings alarmed at a 1 % budget in a stream with
  1 % isolated spikes; tests/unit/test_alarms.py: 34 carried alarms after 811 spikes before, none
  after). The second of two readings in a row over the instant limit enters in full, so a run
  lifts z as before: capping every reading over the instant limit (not only isolated ones) cost
  SKAB's defaults F1 0.838 -> 0.835 (MAR 13.9 -> 15.2 %), whose anomalies are long runs.

A reading alarms when either fires. Both limits are set *jointly* on held-out normal score
sequences (in time order: `calibrate`): the instant limit takes `INSTANT_SHARE` of the budget as
an extreme-value tail quantile (POT: the held-out data rarely resolves a rate that small
empirically), and the EWMA limit is the lowest level at which the union of the two alarms on no
more than `budget` of the held-out readings. The i.i.d. formulas for EWMA limits do not hold for
these scores (a windowed model's consecutive scores share W-1 readings), hence the empirical
calibration over sequences.

Episodes: a sensor's alarmed readings are grouped into episodes. One opens at an alarmed reading
while none is open; it closes after `close_after` consecutive readings without an alarm
(hysteresis: 1/lam by default, the EWMA's memory), so a flapping statistic does not open and close
episodes at the reading rate. `step` reports, per reading, whether it opened an episode, and per
sensor where its open episode closed; the caller (the stream, or `score` over a file) names
episodes by their first reading, so a replay gives the same id.

State, per sensor, is one `SensorAlarm` (the EWMA value and the open episode, if any): `step` is
pure (prior in, posterior out), as River's `score_one`/`learn_one` split, so the stream applies
the posterior only when its batch commits and a redone batch does not smooth twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from latentwatch.detectors.thresholds import POTThreshold

BUDGET = 0.01  # default false-alarm budget: 1 % of normal readings, the old 0.99-quantile meaning
LAMBDA = 0.1  # EWMA weight: the classic range is 0.05-0.25 for shifts of ~1 sigma (notes: SPC)
INSTANT_SHARE = 0.2  # of the budget given to the instant limit ("wider than alone": Lucas & Saccucci)
RULES = ("instant", "ewma")
RESETS = ("", "silent", "accepted")  # why an episode closed before a reading (`step`'s `resets` codes)
# Automatic re-baselining (off unless `adapt_after` is set): an episode has settled into a new
# level when the mean of its root score (sqrt of a squared error: the size of the deviation, whose
# noise does not grow with it) over its last adapt_after/2 readings differs from the half before
# by at most ADAPT_STEADY times their pooled within-half standard deviation. A level with noise
# passes (its halves' means differ by ~sd*sqrt(2/half)); a ramp fails for as long as it lasts
# unless it grows by less than ~1 sd per half-span (its halves differ by its growth g*half, its
# within-half sd is sqrt(sd^2 + (g*half)^2/12)). A two-sample comparison of this kind is the usual
# SPC check of a step against a trend; chosen a priori, not on SKAB (docs/sensor-health.md).
ADAPT_STEADY = 1.0


@dataclass(frozen=True, slots=True)
class Episode:
    """An open episode of one sensor: `ref` names its first reading (the caller's id of it)."""

    ref: tuple[int, int, int]  # (partition, offset, index) in the stream; (0, row, 0) in a file
    started_ts: float
    rule: int  # index in RULES of the rule that opened it
    peak: float  # highest margin (statistic / limit) so far
    peak_score: float
    peak_ts: float
    count: int  # alarmed readings so far
    below: int  # readings without an alarm since the last alarmed one
    last_event_ts: float  # event time of the last open/update event (updates are rate-limited)
    # automatic re-baselining (`AlarmRule.adapt_after`; issue 30): readings since it opened, the sums
    # of root scores and their squares over the current half-span, the previous one's mean and
    # variance (mean -inf: none yet)
    seen: int = 0
    s1: float = 0.0
    s2: float = 0.0
    mean: float = -math.inf
    var: float = 0.0


@dataclass(frozen=True, slots=True)
class SensorAlarm:
    z: float  # EWMA of the clipped log score
    episode: Episode | None = None
    hot: bool = False  # its last reading was over the instant limit (the next one enters the EWMA in full)


@dataclass
class Decision:
    """Per reading (in the order given to `step`)."""

    alarm: np.ndarray  # bool: either rule fired
    rule: np.ndarray  # int8 index into RULES of the rule that fired (instant wins), -1 none
    statistic: np.ndarray  # the fired rule's statistic (score, or exp(z)); the score otherwise
    limit: np.ndarray  # the fired rule's limit (score units)
    ewma: np.ndarray  # exp(z) after each reading, score units
    events: list[tuple[str, int, "object", Episode]]  # (open|update|close, reading position, key, episode)
    # (key, reading position) where an episode became the sensor's new normal (`adapt_after`): its
    # readings after that one here are held back (alarm False), the caller re-learns its baseline
    adapted: list = field(default_factory=list)


class AlarmRule:
    """The combined rule, fitted (`calibrate`) or loaded (`from_dict`)."""

    kind = "shewhart-ewma"

    def __init__(self, *, instant: float, ewma_limit: float, floor: float, center: float, lam: float = LAMBDA,
                 budget: float = BUDGET, close_after: int | None = None, update_s: float = 60.0,
                 measured: float | None = None, held_out: int = 0, adapt_after: int | None = None):
        if not 0 < lam <= 1:
            raise ValueError(f"the EWMA weight must be in (0, 1], got {lam}")
        if not 0 < budget < 1:
            raise ValueError(f"the false-alarm budget must be in (0, 1), got {budget}")
        self.instant, self.ewma_limit, self.floor, self.center = float(instant), float(ewma_limit), float(floor), float(center)
        self.lam, self.budget = float(lam), float(budget)
        self.close_after = int(close_after if close_after is not None else math.ceil(1 / lam))
        self.update_s = float(update_s)
        self.measured, self.held_out = measured, int(held_out)
        self.cap = math.log(max(self.instant, 1e-300))
        self.adapt_after = adapt_after  # not saved with the model: the pipeline's `baseline.adapt_after`

    @property
    def adapt_after(self) -> int | None:
        """Readings an episode lasts, with a steady score (`ADAPT_STEADY`), before it becomes the
        sensor's new normal (issue 30; None: never, the default). Risk: a slow fault that levels
        off is learnt as normal and alarms no more (docs/sensor-health.md)."""
        return self._adapt_after

    @adapt_after.setter
    def adapt_after(self, n: int | None) -> None:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 4):
            raise ValueError(f"adapt_after must be a whole number of readings >= 4 (or null: never), got {n!r}")
        self._adapt_after = n

    # -- the statistics ---------------------------------------------------------------------------
    def g(self, scores: np.ndarray) -> np.ndarray:
        """The clipped log score the EWMA smooths."""
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.log(np.maximum(np.asarray(scores, np.float64), 1e-300))
        return np.clip(np.nan_to_num(x, nan=self.cap, posinf=self.cap), self.floor, max(self.cap, self.floor))

    def ewma(self, scores: np.ndarray, starts: np.ndarray, z0: np.ndarray,
             instant: np.ndarray | None = None) -> np.ndarray:
        """z after each reading; readings grouped by sensor (`starts`: a bool, True at a group's first
        reading; `z0` per reading, read at group starts; `instant`: readings over the instant limit,
        which enter at most at the EWMA limit when isolated: see `isolated`). One affine scan, no loop
        per reading."""
        g = self.g(scores)
        if instant is not None and math.isfinite(self.ewma_limit):
            g = np.where(instant, np.minimum(g, self.ewma_limit), g)
        return _affine_scan(self.lam, g, starts, z0)

    # -- the decision -----------------------------------------------------------------------------
    def step(self, keys, scores: np.ndarray, ts: np.ndarray, refs: np.ndarray, prior: dict,
             instant: np.ndarray | float | None = None, resets: np.ndarray | None = None) -> tuple[Decision, dict]:
        """Decide readings `scores` [m] of sensors `keys` [m] (a sensor's readings in time order;
        sensors may interleave), with event times `ts` [m] and reading ids `refs` [m, 3], given
        `prior` {key: SensorAlarm}. `instant`: per-reading instant limits (an adaptive threshold),
        default the rule's. `resets` [m] int8 (issue 30), a code of `RESETS` at a reading: 1 the
        sensor was silent before it (detectors/health.py), 2 the operator accepted a new normal
        from it (pipeline/control.py); an episode open then closes first (event `close:silent`,
        `close:accepted`), and after an accept the EWMA restarts at the center. Pure: returns the
        decision and the posterior of every sensor seen."""
        scores = np.asarray(scores, np.float64)
        m = len(scores)
        inst = np.full(m, self.instant) if instant is None else np.broadcast_to(np.asarray(instant, np.float64), (m,))
        keys = np.asarray(keys, dtype=object) if not isinstance(keys, np.ndarray) else keys
        if m == 0:
            return Decision(*(np.zeros(0, t) for t in (bool, np.int8, float, float, float)), []), {}
        uniq, inverse = np.unique(keys, return_inverse=True)
        uniq = uniq.tolist()
        order = np.argsort(inverse, kind="stable")
        counts = np.bincount(inverse, minlength=len(uniq))
        ends = np.cumsum(counts)
        first = np.zeros(m, bool)
        first[ends - counts] = True
        priors = [prior.get(u) for u in uniq]
        # a new sensor, or one whose EWMA is not in this rule's units (after a model swap: NaN), starts at the center
        z0 = np.repeat(np.array([p.z if p is not None and math.isfinite(p.z) else self.center for p in priors]), counts)
        s_sorted = scores[order]
        inst_sorted = inst[order]
        fire_i = ~(np.nan_to_num(s_sorted, nan=np.inf) <= inst_sorted)  # NaN alarms (never scored as normal)
        hot0 = np.repeat(np.array([p is not None and p.hot for p in priors], bool), counts)
        reset_sorted = np.asarray(resets, np.int8)[order] if resets is not None else None
        if reset_sorted is not None and (reset_sorted == 2).any():  # accepted: the EWMA starts again there
            restart = reset_sorted == 2
            first, z0, hot0 = first | restart, np.where(restart, self.center, z0), hot0 & ~restart
        z = self.ewma(s_sorted, first, z0, isolated(fire_i, first, hot0))
        fire_e = z > self.ewma_limit
        alarm_sorted = fire_i | fire_e
        rule_sorted = np.where(fire_i, 0, np.where(fire_e, 1, -1)).astype(np.int8)
        ez = np.exp(z)
        stat_sorted = np.where(rule_sorted == 1, ez, s_sorted)
        limit_sorted = np.where(rule_sorted == 1, math.exp(self.ewma_limit), inst_sorted)
        margin = np.where(alarm_sorted, stat_sorted / np.maximum(limit_sorted, 1e-300), 0.0)
        events, posterior, adapted = [], {}, []
        ts_sorted = np.asarray(ts, np.float64)[order]
        refs_sorted = np.asarray(refs, np.int64).reshape(m, 3)[order]
        cum = None
        if self.adapt_after is not None:  # root scores (NaN: far out), summed per span by differences
            x = np.sqrt(np.clip(np.nan_to_num(s_sorted, nan=1e200, posinf=1e200), 0.0, 1e200))
            cum = (np.concatenate([[0.0], np.cumsum(x)]), np.concatenate([[0.0], np.cumsum(x * x)]))
        for k, key in enumerate(uniq):
            lo, hi = int(ends[k] - counts[k]), int(ends[k])
            ep = priors[k].episode if priors[k] is not None else None
            at = None
            if ep is not None or alarm_sorted[lo:hi].any():
                ep, at = self._episodes(key, ep, lo, hi, alarm_sorted, rule_sorted, margin, s_sorted, ts_sorted,
                                        refs_sorted, order, events, reset_sorted, cum)
            if at is not None:  # the new normal from here: the rest held back while the caller re-learns
                alarm_sorted[at + 1:hi], rule_sorted[at + 1:hi] = False, -1
                stat_sorted[at + 1:hi], limit_sorted[at + 1:hi] = s_sorted[at + 1:hi], inst_sorted[at + 1:hi]
                adapted.append((key, int(order[at])))
                # NaN: the next rule to judge it starts at its own center (an own-model sensor is
                # judged by the shared rule while it re-learns; its EWMA is not in those units)
                posterior[key] = SensorAlarm(math.nan, None, False)
                continue
            posterior[key] = SensorAlarm(float(z[hi - 1]), ep, bool(fire_i[hi - 1]))
        out = [np.empty(m, t) for t in (bool, np.int8, np.float64, np.float64, np.float64)]
        for arr, src in zip(out, (alarm_sorted, rule_sorted, stat_sorted, limit_sorted, ez)):
            arr[order] = src
        return Decision(*out, events, adapted), posterior

    def _episodes(self, key, ep, lo, hi, alarm, rule, margin, score, ts, refs, order, events,
                  reset=None, cum=None) -> tuple[Episode | None, int | None]:
        """Walk one sensor's readings [lo, hi) of the sorted arrays: open, update, close its episodes.
        Python per alarmed reading only; a sensor without alarms is skipped when nothing is open.
        With `cum` (cumulative log scores; `adapt_after` set), the open episode's span is measured
        too: returns the sorted position where it became the new normal (event `close:adapted`)."""
        marked = alarm[lo:hi] if reset is None else alarm[lo:hi] | (reset[lo:hi] > 0)
        hits = np.flatnonzero(marked) + lo
        pos = lo

        def adapted(ep, at):
            events.append(("close:adapted", int(order[at]), key, ep))
            return None, at

        for j in hits.tolist():
            if ep is not None and ep.below + (j - pos) >= self.close_after:  # closed in the gap before j
                at = self._close_at(pos, ep)
                if cum is not None:
                    ep, p = self._span(ep, pos, at + 1, cum)
                    if p is not None:
                        return adapted(ep, p)
                events.append(("close", int(order[at]), key, replace(ep, below=self.close_after)))
                ep = None
            if reset is not None and reset[j] and ep is not None:  # silent before j, or accepted at j
                events.append((f"close:{RESETS[reset[j]]}", int(order[j]), key, replace(ep, below=ep.below + (j - pos))))
                ep = None
            if not alarm[j]:
                pos = j
                continue
            if ep is None:
                ep = Episode(tuple(int(v) for v in refs[j]), float(ts[j]), int(rule[j]), float(margin[j]),
                             float(score[j]), float(ts[j]), 1, 0, float(ts[j]))
                events.append(("open", int(order[j]), key, ep))
                if cum is not None:
                    ep, _ = self._span(ep, j, j + 1, cum)
            else:
                if cum is not None:
                    ep, p = self._span(ep, pos, j + 1, cum)
                    if p is not None:
                        return adapted(ep, p)
                peak = margin[j] > ep.peak
                ep = replace(ep, count=ep.count + 1, below=0,
                             **({"peak": float(margin[j]), "peak_score": float(score[j]), "peak_ts": float(ts[j])}
                                if peak else {}))
                if ts[j] - ep.last_event_ts >= self.update_s:
                    ep = replace(ep, last_event_ts=float(ts[j]))
                    events.append(("update", int(order[j]), key, ep))
            pos = j + 1
        if ep is not None:
            gap = hi - pos
            closes = ep.below + gap >= self.close_after
            at = self._close_at(pos, ep) if closes else hi - 1
            if cum is not None:
                ep, p = self._span(ep, pos, at + 1, cum)
                if p is not None:
                    return adapted(ep, p)
            if closes:
                events.append(("close", int(order[at]), key, replace(ep, below=self.close_after)))
                return None, None
            ep = replace(ep, below=ep.below + gap)
        return ep, None

    def _span(self, ep: Episode, a: int, b: int, cum) -> tuple[Episode, int | None]:
        """`ep` grown by the readings [a, b) of its span: root scores summed in half-spans of
        adapt_after/2 readings; the position where the means of two consecutive halves (the
        episode at least adapt_after long) first differ by at most `ADAPT_STEADY` pooled
        within-half sd (None: not steady yet). Python per half-span, not per reading."""
        half, (c1, c2) = self.adapt_after // 2, cum
        seen, s1, s2, mean0, var0 = ep.seen, ep.s1, ep.s2, ep.mean, ep.var
        while a < b:
            r = min(b - a, half - seen % half)
            s1, s2 = s1 + float(c1[a + r] - c1[a]), s2 + float(c2[a + r] - c2[a])
            seen, a = seen + r, a + r
            if seen % half == 0:
                mean = s1 / half
                var = max(s2 / half - mean * mean, 0.0)
                if seen >= self.adapt_after and abs(mean - mean0) <= ADAPT_STEADY * math.sqrt((var + var0) / 2):
                    return replace(ep, seen=seen, s1=0.0, s2=0.0, mean=mean, var=var), a - 1
                mean0, var0, s1, s2 = mean, var, 0.0, 0.0
        return replace(ep, seen=seen, s1=s1, s2=s2, mean=mean0, var=var0), None

    def _close_at(self, pos: int, ep: Episode) -> int:
        """The sorted position of the reading at which `ep` reaches `close_after` quiet readings,
        `pos` being the first quiet one not yet counted in `ep.below`. An episode restored or kept
        across a model swap may already have `below >= close_after` (v1 closed after 50, v2 after
        10): it closes at once, at `pos` (this sensor's first reading here), never before it - a
        negative position was an IndexError at every restart, or another sensor's reading."""
        return pos + max(self.close_after - ep.below - 1, 0)

    def describe(self) -> str:
        return (f"alarm when the score passes {self.instant:.5g} (instant) or its EWMA (lambda {self.lam:g}) "
                f"passes {math.exp(self.ewma_limit):.5g}; false-alarm budget {self.budget:.3%} of normal readings"
                + (f", measured {self.measured:.3%} on {self.held_out} held-out readings" if self.measured is not None else "")
                + f"; an episode closes after {self.close_after} readings without an alarm")

    def to_dict(self) -> dict:
        return {"kind": self.kind, "budget": self.budget, "instant": self.instant, "lambda": self.lam,
                "ewma_limit": self.ewma_limit, "ewma_limit_score": math.exp(self.ewma_limit), "floor": self.floor,
                "center": self.center, "close_after": self.close_after, "update_s": self.update_s,
                "measured_false_alarm_rate": self.measured, "held_out_readings": self.held_out}

    @classmethod
    def from_dict(cls, d: dict) -> "AlarmRule":
        if d.get("kind") != cls.kind:
            raise ValueError(f"unknown alarm rule kind {d.get('kind')!r}; known: {cls.kind}")
        values = [d[k] for k in ("instant", "floor", "center", "lambda", "budget")]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values) or not (
                isinstance(d["ewma_limit"], (int, float)) and d["ewma_limit"] > -math.inf):
            raise ValueError("alarm rule limits must be numbers (the EWMA limit may be Infinity: never)")
        return cls(instant=d["instant"], ewma_limit=d["ewma_limit"], floor=d["floor"], center=d["center"],
                   lam=d["lambda"], budget=d["budget"], close_after=int(d["close_after"]),
                   update_s=float(d.get("update_s", 60.0)), measured=d.get("measured_false_alarm_rate"),
                   held_out=int(d.get("held_out_readings", 0)))

    @classmethod
    def instant_only(cls, limit: float) -> "AlarmRule":
        """A plain threshold as a rule (checkpoints written before this rule): the EWMA never fires."""
        floor = math.log(max(limit, 1e-300))
        return cls(instant=limit, ewma_limit=math.inf, floor=floor, center=floor)


def calibrate(held: np.ndarray, budget: float = BUDGET, *, lam: float = LAMBDA, segments: np.ndarray | None = None,
              instant: float | None = None, share: float = INSTANT_SHARE, close_after: int | None = None) -> AlarmRule:
    """Set both limits on held-out normal scores `held` (time order within each segment;
    `segments`: the index each score belongs to, a new segment wherever it does not follow the one
    before, e.g. at the seams of interleaved held-out blocks). `instant`: a given instant limit (an
    explicit `--threshold`), else the POT tail quantile at `share * budget`. The EWMA limit is then
    the lowest that keeps the union of alarms on held-out within `budget`."""
    s = np.asarray(held, np.float64)
    ok = np.isfinite(s)
    s = s[ok]
    if len(s) < 10:
        raise ValueError(f"{len(s)} held-out scores are too few (<10) to set alarm limits; give more normal data")
    if not 0 < budget < 1:
        raise ValueError(f"the false-alarm budget must be in (0, 1), got {budget}")
    seg = np.zeros(len(s), bool)
    seg[0] = True
    if segments is not None:
        idx = np.asarray(segments)[ok]
        seg[1:] = np.diff(idx) != 1
    if instant is None:
        instant = POTThreshold(risk=min(share * budget, 0.5)).fit(s).value
    floor = math.log(max(float(np.median(s)), 1e-300))
    rule = AlarmRule(instant=instant, ewma_limit=math.inf, floor=floor, center=floor, lam=lam, budget=budget,
                     close_after=close_after)
    gs = rule.g(s)
    center = float(gs.mean())
    rule.center = center
    inst = s > instant
    allowed = int(math.floor(budget * len(s))) - int(inst.sum())
    lone = isolated(inst, seg, np.zeros(len(s), bool))
    for _ in range(4):  # isolated instant readings enter z at most at the limit: the two settle together
        z = rule.ewma(s, seg, np.full(len(s), center), lone)
        zn = np.sort(z[~inst])[::-1]
        if allowed < 0 or len(zn) == 0:
            limit = float(z.max()) + 1e-9  # the instant limit alone spends the budget
        elif allowed >= len(zn):
            limit = float(zn[-1]) - 1e-9
        else:
            limit = float(zn[allowed])  # exactly `allowed` non-instant readings strictly above it
        limit = max(limit, floor)  # z never goes below the floor: a limit there would always fire
        if limit == rule.ewma_limit:
            break
        rule.ewma_limit = limit
    z = rule.ewma(s, seg, np.full(len(s), center), lone)
    rule.measured = float(np.mean(inst | (z > rule.ewma_limit)))
    rule.held_out = len(s)
    return rule


def isolated(fire: np.ndarray, starts: np.ndarray, hot0: np.ndarray) -> np.ndarray:
    """Readings over the instant limit whose previous reading (of the same sensor: `starts` marks a
    group's first, whose previous is `hot0`) was not."""
    prev = np.empty_like(fire)
    prev[1:] = fire[:-1]
    prev[starts] = hot0[starts]
    return fire & ~prev


def _affine_scan(lam: float, g: np.ndarray, starts: np.ndarray, z0: np.ndarray) -> np.ndarray:
    """z_t = (1-lam) z_(t-1) + lam g_t per group, z_(-1) = z0 at each group's start, for all groups
    at once: the prefix composition of the affine maps (A, B) (Hillis-Steele, log2(m) numpy passes;
    no cancellation, unlike a weighted cumsum over long runs)."""
    a = 1.0 - lam
    A = np.where(starts, 0.0, a)
    B = lam * g + np.where(starts, a * z0, 0.0)
    d = 1
    m = len(g)
    while d < m:
        A_prev, B_prev = A[:-d], B[:-d]
        B = np.concatenate([B[:d], A[d:] * B_prev + B[d:]])
        A = np.concatenate([A[:d], A[d:] * A_prev])
        d *= 2
    return B
