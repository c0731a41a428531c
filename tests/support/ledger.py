"""A ledger for a run: accounts for every input reading, by (partition, offset, index).

Each reading is scored (a record on the latent topic names its source), dead-lettered (the
dead-letter topic names its source offset), or still uncommitted (at or past the group's
committed offset). Injected anomalies must each have an alert. Duplicates are counted.
Episode events (kind "episode" on the alerts topic) are counted per (episode id, event).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from confluent_kafka import Consumer, TopicPartition

from tests.support.harness import read_topic

Ref = tuple[int, int, int]  # (partition, offset, index in message)


@dataclass
class Ledger:
    inputs: set[Ref]
    scored: Counter = field(default_factory=Counter)
    dead: Counter = field(default_factory=Counter)  # (partition, offset) of dead messages, index 0..k
    alerts: Counter = field(default_factory=Counter)
    committed: dict[int, int] = field(default_factory=dict)
    sensors: dict[Ref, str] = field(default_factory=dict)  # sensor of each input (windowed models)
    window: int = 1
    # (Kafka timestamp ms, model version, source) of each latent record / alert, in topic order
    # (both topics have one partition): which version scored what, and when (hot swaps)
    scored_log: list[tuple[int, str, Ref]] = field(default_factory=list)
    alert_log: list[tuple[int, str, Ref]] = field(default_factory=list)
    episodes: Counter = field(default_factory=Counter)  # (episode_id, event) -> records
    scores: dict = field(default_factory=dict)  # ref -> set of the scores its latent records carry

    def score_faults(self, model, values: dict, rtol: float = 1e-4) -> list[str]:
        """Scored readings whose score differs from what `score` gives each (partition, sensor)'s
        readings in offset order (detectors.recipe.flag_series with the model's per-sensor
        baselines): per-sensor state (tails, cold starts) lost, doubled or mixed up across a
        fault shows as a different score. `values`: ref -> the reading's values as sent."""
        import numpy as np

        from latentwatch.detectors.recipe import flag_series

        dead_msgs = {(p, o) for p, o, _ in self.dead}
        per: dict = {}
        for ref in sorted(r for r in self.inputs if (r[0], r[1]) not in dead_msgs and r in values):
            per.setdefault((ref[0], self.sensors[ref]), []).append(ref)
        faults = []
        for (_, sensor), refs in per.items():
            f = flag_series(model.detector, model.threshold, model.alarm, np.array([values[r] for r in refs], np.float32),
                            baselines=model.baselines, sensor_id=sensor, own_rule=model.own_alarm)
            for ref, want in zip(refs, f.score.tolist()):
                for got in self.scores.get(ref, ()):
                    if not np.isclose(got, want, rtol=rtol, atol=1e-6):
                        faults.append(f"{ref} of {sensor}: scored {got}, {want} from the sensor's readings in order")
        return faults

    def episode_faults(self, exactly_once: bool) -> list[str]:
        """What is wrong with the episode events: a close or update without its open, an id that
        names no input reading, and (exactly-once) any event other than update seen twice."""
        faults = []
        opened = {i for (i, e) in self.episodes if e == "open"}
        refs = {f"{p}/{o}/{x}" for p, o, x in self.inputs}
        for (i, e), n in self.episodes.items():
            if e != "open" and i not in opened:
                faults.append(f"{e} without open: {i}")
            if i.split("/", 1)[1] not in refs:
                faults.append(f"id names no input reading: {i}")
            if exactly_once and e != "update" and n > 1:
                faults.append(f"{e} {n} times: {i}")
        return faults

    @property
    def warm_up(self) -> set[Ref]:
        """The first `window - 1` valid readings of each (partition, sensor) ever: a windowed
        model cannot score them (no full window yet) and says so (readings_warming_up_total)."""
        if self.window == 1:
            return set()
        dead_msgs = {(p, o) for p, o, _ in self.dead}
        seen: Counter = Counter()
        out = set()
        for ref in sorted(r for r in self.inputs if (r[0], r[1]) not in dead_msgs):
            key = (ref[0], self.sensors[ref])
            if seen[key] < self.window - 1:
                out.add(ref)
            seen[key] += 1
        return out

    @property
    def uncommitted(self) -> set[Ref]:
        return {r for r in self.inputs if r[1] >= self.committed.get(r[0], 0)}

    @property
    def lost(self) -> set[Ref]:
        """Committed readings that were neither scored nor dead-lettered: must be empty."""
        dead_msgs = {(p, o) for p, o, _ in self.dead}
        return {r for r in self.inputs - self.uncommitted - self.warm_up
                if r not in self.scored and (r[0], r[1]) not in dead_msgs}

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.scored.values() if n > 1) + sum(n - 1 for n in self.dead.values() if n > 1)

    def unscored_runs(self) -> dict[tuple[int, str], list[list[Ref]]]:
        """Per (partition, sensor), the runs of consecutive committed, valid readings (in offset
        order) that were never scored."""
        dead_msgs = {(p, o) for p, o, _ in self.dead}
        runs: dict[tuple[int, str], list[list[Ref]]] = {}
        last_scored: dict[tuple[int, str], bool] = {}
        for ref in sorted(r for r in self.inputs - self.uncommitted if (r[0], r[1]) not in dead_msgs):
            key = (ref[0], self.sensors[ref])
            if ref in self.scored:
                last_scored[key] = True
                continue
            if last_scored.get(key, True):
                runs.setdefault(key, []).append([])
            runs[key][-1].append(ref)
            last_scored[key] = False
        return runs

    def window_change_faults(self, new_window: int, changed_after: dict[int, int]) -> list[str]:
        """The committed readings left unscored that a change of the model's window (from
        `self.window` to `new_window`) does not explain: a (partition, sensor) may leave its first
        `window - 1` readings ever (the old model's warm-up) and, past the change (`changed_after`:
        per partition, the last offset the old model scored), runs of at most `new_window - 1`
        consecutive readings (its restored state did not fit the new model and was dropped, or a
        swap cut or grew its tail: pipeline/state.py). Anything else is a lost reading."""
        dead_msgs = {(p, o) for p, o, _ in self.dead}
        first: dict[tuple[int, str], Ref] = {}
        for ref in sorted(r for r in self.inputs if (r[0], r[1]) not in dead_msgs):
            first.setdefault((ref[0], self.sensors[ref]), ref)
        faults = []
        for key, runs in self.unscored_runs().items():
            for run in runs:
                if run[0] == first[key] and len(run) <= self.window - 1:
                    continue  # the first warm-up
                if run[0][1] > changed_after.get(key[0], -1) and len(run) <= new_window - 1:
                    continue  # a warm-up after the window changed
                faults.append(f"{key}: {len(run)} readings unscored from {run[0]} to {run[-1]}")
        return faults

    def missing_alerts(self, anomalies: set[Ref]) -> set[Ref]:
        return {r for r in anomalies - self.warm_up if r not in self.alerts}


def build_ledger(bootstrap: str, input_topic: str, inputs: set[Ref], group: str, latent_topic: str,
                 dead_topic: str, alerts_topic: str, partitions: int, read_committed: bool = True,
                 sensors: dict | None = None, window: int = 1) -> Ledger:
    led = Ledger(inputs, sensors=sensors or {}, window=window)
    for m in read_topic(bootstrap, latent_topic, timeout=60, read_committed=read_committed):
        ref = _log(led.scored_log, m)
        led.scored[ref] += 1
        led.scores.setdefault(ref, set()).add(json.loads(m.value())["score"])
    for m in read_topic(bootstrap, dead_topic, timeout=60, read_committed=read_committed):
        h = dict(m.headers())
        led.dead[(int(h["lw-source-partition"]), int(h["lw-source-offset"]), 0)] += 1
    for m in read_topic(bootstrap, alerts_topic, timeout=60, read_committed=read_committed):
        record = json.loads(m.value())
        if record.get("kind") in ("episode", "health"):  # health (issue 30): its own episode ids
            led.episodes[(record["episode_id"], record["event"])] += 1
        else:
            led.alerts[_log(led.alert_log, m)] += 1
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    for tp in c.committed([TopicPartition(input_topic, p) for p in range(partitions)], timeout=10):
        led.committed[tp.partition] = max(tp.offset, 0)
    c.close()
    return led


def _log(log: list, message) -> Ref:
    record = json.loads(message.value())
    src = record["source"]
    ref = (src["partition"], src["offset"], src["index"])
    log.append((message.timestamp()[1], str(record.get("model", {}).get("version")), ref))
    return ref


def committed_lag(bootstrap: str, topic: str, group: str, partitions: int) -> int:
    """Messages of `topic` past `group`'s committed offsets (-1 when the broker does not answer)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "log_level": 0})
    try:
        lag = 0
        for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10):
            _, high = c.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    except Exception:  # noqa: BLE001 - broker restarting
        return -1
    finally:
        c.close()
