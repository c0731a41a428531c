"""Score alerts against the simulator's ground truth: event-level recall, alert precision and
detection delay.

An *event* is a run of consecutive anomalous readings of one sensor with the same kind. It is
detected when an alert for that sensor falls on one of its readings or on the next `tolerance`
readings (a windowed model still sees the anomaly while it is inside its window). An alert is a
true positive when it falls inside or within `tolerance` readings after an event.

Sensor faults (`health_kinds`: stuck, flatline, silent; issue 30) are judged by the health rules,
not by alerts: `evaluate` leaves them out of its events (an alert on one of their readings still
counts as right), and `evaluate_health` matches each against the health episodes: caught when an
episode of the fault's rule opened on its sensor within the fault (a silence: after the sensor's
last reading before it, before its next one).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from latentwatch.pipeline.devtools.simulate import NORMAL, TruthRow
from latentwatch.pipeline.times import parse_time


@dataclass
class Evaluation:
    events: int = 0
    detected: int = 0
    alerts: int = 0
    true_alerts: int = 0
    delays_s: list[float] = field(default_factory=list)
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # kind -> [events, detected]

    @property
    def recall(self) -> float:
        return self.detected / self.events if self.events else float("nan")

    @property
    def precision(self) -> float:
        return self.true_alerts / self.alerts if self.alerts else float("nan")


def evaluate(truth: list[TruthRow], alerts: list[dict], tolerance: int = 0,
             health_kinds: tuple[str, ...] = ()) -> Evaluation:
    """`alerts` are alert records (their `source` names the reading); `truth` the delivered rows;
    events of `health_kinds` are not counted as events (see `evaluate_health`)."""
    by_ref = {(r.partition, r.offset, r.index): r for r in truth}
    per_sensor: dict[str, list[TruthRow]] = defaultdict(list)
    for r in truth:
        per_sensor[r.sensor_id].append(r)
    # position of each reading in its sensor's stream, and the event (if any) it belongs to
    position: dict[tuple, tuple[str, int]] = {}
    events: dict[str, list[tuple[int, int, str, float]]] = {}  # sensor -> [(start, end, kind, start_ts)]
    for sensor, rows in per_sensor.items():
        rows.sort(key=lambda r: parse_time(r.ts))
        evs = []
        for i, r in enumerate(rows):
            position[(r.partition, r.offset, r.index)] = (sensor, i)
            if r.kind != NORMAL:
                if evs and evs[-1][1] == i - 1 and evs[-1][2] == r.kind:
                    evs[-1] = (evs[-1][0], i, r.kind, evs[-1][3])
                else:
                    evs.append((i, i, r.kind, parse_time(r.ts)))
        events[sensor] = evs

    ev = Evaluation()
    kinds: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    first_alert: dict[tuple[str, int], float] = {}
    for a in alerts:
        if a.get("kind") in ("episode", "health"):
            continue  # the readings' own alerts are counted; an episode names its first one
        src = a["source"]
        ref = (src["partition"], src["offset"], src["index"])
        if ref not in by_ref:
            continue  # not a simulated reading (e.g. produced before truth was recorded)
        ev.alerts += 1
        sensor, pos = position[ref]
        for k, (start, end, _kind, start_ts) in enumerate(events[sensor]):
            if start <= pos <= end + tolerance:
                ev.true_alerts += 1
                key = (sensor, k)
                first_alert[key] = min(first_alert.get(key, float("inf")), parse_time(a["ts"]) - start_ts)
                break
    for sensor, evs in events.items():
        for k, (_s, _e, kind, _t) in enumerate(evs):
            if kind in health_kinds:
                continue
            kinds[kind][0] += 1
            ev.events += 1
            if (sensor, k) in first_alert:
                kinds[kind][1] += 1
                ev.detected += 1
                ev.delays_s.append(max(0.0, first_alert[(sensor, k)]))
    ev.by_kind = dict(kinds)
    return ev


def kind_counts(truth: list[TruthRow]) -> Counter:
    return Counter(r.kind for r in truth)


@dataclass
class HealthFault:
    kind: str
    sensor_id: str
    start_ts: float  # its first reading (sent or not)
    readings: int  # labelled readings (a silence's were not sent)
    span_s: float  # event time from the sensor's last reading before it to its last one
    status: str  # caught | missed | too short (did not outlast its rule's limit before the run ended)
    delay_s: float | None = None  # the caught episode's start after the fault's first reading


@dataclass
class HealthEvaluation:
    faults: list[HealthFault]
    opened: dict[str, list[str]]  # rule -> the sensor of each episode opened
    false: list[tuple[str, str]]  # (rule, sensor) of episodes opened outside any injected fault


def evaluate_health(truth: list[TruthRow], unsent: list[TruthRow], records: list[dict],
                    limits: dict[str, float | None], kinds: tuple[str, ...] = ("stuck", "flatline", "silent"),
                    ) -> HealthEvaluation:
    """Injected sensor faults (runs of one of `kinds` in `truth` + `unsent`, the rows not sent) against
    the `kind: health` records. `limits`: stuck / flatline in readings, silent in seconds of event
    time; a fault shorter than its limit is "too short" (cut by the end of the run)."""
    rows: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for r in [*truth, *unsent]:
        rows[r.sensor_id].append((parse_time(r.ts), r.kind))
    faults: list[tuple[HealthFault, float, float]] = []  # (fault, window from, window to)
    for sensor, seq in rows.items():
        seq.sort()
        i = 0
        while i < len(seq):
            kind = seq[i][1]
            j = i
            while j + 1 < len(seq) and seq[j + 1][1] == kind:
                j += 1
            if kind in kinds:
                before = seq[i - 1][0] if i > 0 else None
                after = seq[j + 1][0] if j + 1 < len(seq) else float("inf")
                n, first, last = j - i + 1, seq[i][0], seq[j][0]
                span = last - before if before is not None else last - first
                limit = limits.get(kind)
                if kind == "silent":
                    long_enough = limit is not None and before is not None and span > limit
                else:
                    long_enough = limit is not None and n >= limit
                f = HealthFault(kind, sensor, first, n, span, "missed" if long_enough else "too short")
                faults.append((f, before if kind == "silent" and before is not None else first, after))
            i = j + 1
    opened: dict[str, list[str]] = {k: [] for k in kinds}
    false: list[tuple[str, str]] = []
    for rec in records:
        if rec.get("kind") != "health" or rec.get("event") != "open":
            continue
        rule, sensor, at = rec["rule"], rec["sensor_id"], parse_time(rec["started_at"])
        opened.setdefault(rule, []).append(sensor)
        hit = [f for f, lo, hi in faults if f.kind == rule and f.sensor_id == sensor and lo - 1e-3 <= at < hi]
        if not hit:
            false.append((rule, sensor))
            continue
        f = hit[0]
        if f.status != "caught":
            f.status, f.delay_s = "caught", max(0.0, at - f.start_ts)
    return HealthEvaluation([f for f, _, _ in sorted(faults, key=lambda x: (x[0].start_ts, x[0].sensor_id))],
                            opened, false)
