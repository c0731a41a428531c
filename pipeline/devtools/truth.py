"""Score alerts against the simulator's ground truth: event-level recall, alert precision and
detection delay.

An *event* is a run of consecutive anomalous readings of one sensor with the same kind. It is
detected when an alert for that sensor falls on one of its readings or on the next `tolerance`
readings (a windowed model still sees the anomaly while it is inside its window). An alert is a
true positive when it falls inside or within `tolerance` readings after an event.
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


def evaluate(truth: list[TruthRow], alerts: list[dict], tolerance: int = 0) -> Evaluation:
    """`alerts` are alert records (their `source` names the reading); `truth` the delivered rows."""
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
