"""Issue 29.4: a sensor evicted (capacity or idle TTL) while its alarm episode is open gets a close
event (`reason: "evicted"`), produced with the next batch beside the changelog tombstone, never
silently dropped: when the sensor returns, its next `open` follows a closed episode."""

from __future__ import annotations

import json
import math

import numpy as np
from latentwatch.detectors.alarms import AlarmRule, Episode, SensorAlarm
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.state import Entry, StateStore

from tests.support.fakes import messages
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


def _open(last_ts=NOW - 10):
    ep = Episode((0, 3, 0), NOW - 20, 0, 2.7, 81.0, NOW - 20, 2, 1, NOW - 20)
    return Entry(last_ts, np.empty((0, 3), np.float32), None, 4, SensorAlarm(0.5, ep))


def test_the_store_hands_over_evicted_entries_with_an_open_episode_by_capacity_and_idle():
    store = StateStore(max_sensors=2, idle_ttl_s=100)
    quiet = Entry(NOW, np.empty((0, 3), np.float32), None, 1, SensorAlarm(0.1, None))
    t0 = store._last_sweep  # the idle sweep's clock (monotonic): the times below are relative to it
    store.apply({(0, "open-1"): _open(), (0, "quiet"): quiet}, now=t0)
    store.apply({(0, "new"): quiet}, now=t0 + 1)  # capacity: "open-1" (least recently seen) goes
    assert [k for k, _ in store.take_evicted_open()] == [(0, "open-1")] and store.take_evicted_open() == []
    store.apply({(0, "open-2"): _open()}, now=t0 + 2)  # capacity: "quiet" goes, nothing to close
    assert store.take_evicted_open() == []
    store.apply({}, now=t0 + 500)  # idle: "new" and "open-2"
    taken = store.take_evicted_open()
    assert [k for k, _ in taken] == [(0, "open-2")] and taken[0][1].alarm.episode.ref == (0, 3, 0)


def test_a_restore_that_evicts_an_idle_entry_hands_its_open_episode_over_too():
    store = StateStore(max_sensors=10, idle_ttl_s=100)
    import time

    store.load({(1, "stale"): _open()}, seen={(1, "stale"): time.time() - 1000})
    assert [k for k, _ in store.take_evicted_open()] == [(1, "stale")]


class _Sink:
    def __init__(self):
        self.alerts, self.tombstones, self.truncated = [], [], 0

    def produce_batch(self, batch, state_topic, tombstones):
        self.alerts += [json.loads(v) for _, v in batch.alerts]
        self.tombstones += list(tombstones)


class _Committer:
    def begin(self):
        pass

    def commit(self, offsets):
        pass


def test_the_pipeline_produces_a_close_with_reason_evicted_before_the_sensor_returns():
    from latentwatch.pipeline.runner import Pipeline

    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=50)
    p = Pipeline(Settings(state={"max_sensors": 1}, batch={"max_future_s": 10**9}, topics={"input": "in"}), model)
    p.sink, p.committer, p.state_topic = _Sink(), _Committer(), "changelog"
    reading = lambda sid, i, v: {"sensor_id": sid, "ts": NOW + i, "values": [v] * 3}
    p.process(messages([reading("pump-a", 0, 9.0)]))  # score 81: an episode opens
    p.process(messages([reading("pump-b", 1, 0.1)], first_offset=1))  # max_sensors 1: pump-a evicted
    p.process(messages([reading("pump-a", 2, 9.0)], first_offset=2))  # pump-a returns, alarmed again
    episodes = [(a["sensor_id"], a["event"], a.get("reason")) for a in p.sink.alerts if a["kind"] == "episode"]
    assert episodes == [("pump-a", "open", None), ("pump-a", "close", "evicted"), ("pump-a", "open", None)]
    close = next(a for a in p.sink.alerts if a.get("reason") == "evicted")
    assert close["episode_id"] == "in/0/0/0" and close["ended_at"] == close["ts"]  # its last reading's time
    assert (0, "pump-a") in p.sink.tombstones
    closes = p.metrics.registry.get_sample_value("latentwatch_episode_events_total", {"event": "close"})
    assert closes == 1


def test_subscribers_show_the_reason_of_an_evicted_close():
    from latentwatch.pipeline import records
    from latentwatch.pipeline.subscribers.alert_reader import format_line, parse_alert
    from latentwatch.pipeline.subscribers.alertmanager import episode_to_alertmanager

    rec = records.evicted_close_records([((0, "pump-a"), _open())], topic="in", model_name="m", model_version="1",
                                        critical_ratio=2.0, detected_at="2027-01-15T08:00:00Z")[0]
    alert = parse_alert(records.encode(rec))
    assert format_line(alert).endswith(", evicted [in/0/3/0]")
    assert {a["annotations"]["close_reason"] for a in episode_to_alertmanager(alert)} == {"evicted"}
