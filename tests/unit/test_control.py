"""Issue 30.2 without a broker: operator commands (pipeline/control.py) parsed, applied in
event-time order with the input, once; mute holds alerts back and counts them; accept closes the
open episode (reason accepted) and re-learns the baseline, so alarms on the new normal stop within
the cold start's N readings. The real-broker tests are in tests/integration/test_control.py."""

from __future__ import annotations


import numpy as np
import orjson
import pytest
from latentwatch.pipeline import control
from latentwatch.pipeline.control import BadCommand, Command, Commands
from latentwatch.pipeline.state import unpack_record
from latentwatch.pipeline.times import iso

from tests.support.control_harness import NOW, _feed, _pipeline, _trained

def _cmd(**kw):
    d = {"command": "mute", "sensor_id": "pump-1", "at": iso(NOW), "until": iso(NOW + 60), "by": "alice",
         "reason": "maintenance"}
    d.update(kw)
    return orjson.dumps({k: v for k, v in d.items() if v is not None})


@pytest.mark.parametrize("value, key, why", [
    (b"{not json", b"pump-1", "not JSON"),
    (_cmd(command="pause"), b"pump-1", "unknown command 'pause'"),
    (_cmd(by=None), b"pump-1", "'by' is missing"),
    (_cmd(reason="  "), b"pump-1", "'reason' is missing"),
    (_cmd(until=iso(NOW - 1)), b"pump-1", "'until' must be after"),
    (_cmd(at="yesterday-ish"), b"pump-1", "'at' is not a time"),
    (_cmd(), b"pump-2", "is not the sensor id"),
    (None, b"pump-1", "tombstone"),
])
def test_a_malformed_command_says_why(value, key, why):
    with pytest.raises(BadCommand, match=why.replace("(", r"\(").replace("'", "'")):
        control.parse(value, key)


def test_a_command_parses_and_the_latest_per_sensor_is_kept():
    c = control.parse(_cmd(), b"pump-1")
    assert c == Command("mute", "pump-1", NOW, NOW + 60, "alice", "maintenance")
    cs = Commands(limit=2)
    cs.put(c)
    cs.put(Command("unmute", "pump-1", NOW - 5, 0, "bob", "late arrival"))  # older: the newer stays
    assert cs.get("pump-1") == c
    cs.put(Command("accept", "a", NOW, 0, "x", "y"))
    cs.put(Command("accept", "b", NOW, 0, "x", "y"))
    assert len(cs) == 2 and cs.get("pump-1") is None  # bounded


def _spiky(n=120, start=0):
    """pump-1 alarms at every 10th second, pump-2 never."""
    out = []
    for t in range(start, start + n):
        out.append({"sensor_id": "pump-1", "ts": NOW + t, "values": [9.0] * 3 if t % 10 == 0 else [0.1] * 3})
        out.append({"sensor_id": "pump-2", "ts": NOW + t, "values": [0.2] * 3})
    return out


def test_a_muted_sensor_publishes_nothing_until_its_end_and_its_alarms_are_counted():
    mute = Command("mute", "pump-1", NOW + 25, NOW + 75, "alice", "maintenance until :75")
    seen = []
    p = _pipeline(commands=[mute])
    p.events.on_batch_committed = seen.append
    _feed(p, _spiky())
    alarmed = sorted({a["ts"] for a in p.sink.alerts if a["kind"] == "reading"})
    assert alarmed == [iso(NOW + t) for t in (0, 10, 20, 80, 90, 100, 110)]  # 30..70 held back
    assert sum(d.batch.suppressed for d in seen) == 5
    e = p.state.get((0, "pump-1"))
    assert e.control.suppressed == 5 and e.control.mute_until == NOW + 75 and e.control.by == "alice"
    assert seen[-1].muted == 0  # the mute is over at the partition's newest event time


def test_unmute_ends_a_mute_and_a_repeated_command_does_nothing_again():
    p = _pipeline(commands=[Command("mute", "pump-1", NOW + 25, NOW + 1000, "alice", "maintenance")])
    _feed(p, _spiky(60))
    p.commands.put(Command("unmute", "pump-1", NOW + 45, 0, "alice", "done early"))
    _feed(p, _spiky(60, start=60), first=1000)
    alarmed = sorted({a["ts"] for a in p.sink.alerts if a["kind"] == "reading"})
    assert alarmed == [iso(NOW + t) for t in (0, 10, 20, 60, 70, 80, 90, 100, 110)]
    # the same mute again (the compacted topic re-read at a restart): applied already, nothing muted
    p.commands.put(Command("mute", "pump-1", NOW + 25, NOW + 1000, "alice", "maintenance"))
    before = len(p.sink.alerts)
    _feed(p, _spiky(20, start=120), first=2000)
    assert len([a for a in p.sink.alerts[before:] if a["kind"] == "reading"]) == 2  # 120 and 130: not held


def test_control_state_is_in_the_changelog_record():
    p = _pipeline(commands=[Command("mute", "pump-1", NOW + 5, NOW + 50, "alice", "why")])
    _feed(p, _spiky(20))
    last = [v for part, k, v in p.sink.changelog if k == b"pump-1"][-1]
    entry, _before, _ = unpack_record(last)
    assert entry.control.mute_until == NOW + 50 and entry.control.applied == NOW + 5 and entry.control.why == "why"


def test_accept_closes_the_episode_and_alarms_on_the_new_normal_stop_within_the_cold_start(tmp_path):
    model = _trained(tmp_path)
    rng = np.random.default_rng(4)
    shifted = [{"sensor_id": "s1", "ts": NOW + t, "values": (rng.normal(0, 1, 3) + (6.0 if t >= 100 else 0)
                                                             ).round(4).tolist()} for t in range(600)]
    p = _pipeline(model, commands=[Command("accept", "s1", NOW + 200, 0, "carol", "set-point raised on purpose")])
    _feed(p, shifted, batch=37)
    alerts = [a for a in p.sink.alerts if a["kind"] == "reading"]
    after = [a for a in alerts if a["ts"] >= iso(NOW + 200 + 50)]
    assert any(a["ts"] >= iso(NOW + 150) and a["ts"] < iso(NOW + 200) for a in alerts)  # the shift alarmed
    assert len(after) <= 0.02 * 350  # the false-alarm budget (1 %) doubled, after the N=50 re-learning readings
    closes = [a for a in p.sink.alerts if a["kind"] == "episode" and a.get("reason") == "accepted"]
    assert len(closes) == 1 and closes[0]["ts"] == iso(NOW + 200)
    e = p.state.get((0, "s1"))
    assert e.control.accepted == NOW + 200 and e.baseline is not None and e.baseline.learned
    without = _pipeline(model)  # no accept: the shift alarms on
    _feed(without, shifted, batch=37)
    assert len([a for a in without.sink.alerts if a["kind"] == "reading" and a["ts"] >= iso(NOW + 250)]) > 100


def test_catch_up_asks_again_while_the_leader_moves_and_never_crashes_the_start():
    """The failover system test: a leader moving at start answered the control topic's watermark
    query with NOT_LEADER_FOR_PARTITION and `run` died with a traceback."""
    from types import SimpleNamespace

    from confluent_kafka import KafkaError, KafkaException

    class Flaky:
        def __init__(self, failures):
            self.failures, self.asked = failures, 0

        def assignment(self):
            return [SimpleNamespace(topic="in.control", partition=0)]

        def get_watermark_offsets(self, tp, timeout):
            self.asked += 1
            if self.asked <= self.failures:
                raise KafkaException(KafkaError(KafkaError.NOT_LEADER_FOR_PARTITION))
            return (0, 0)

        def consume(self, n, timeout):
            return []

    reader = control.ControlReader.__new__(control.ControlReader)
    reader.topic, reader.commands, reader.bad_total, reader._on_command = "in.control", Commands(), 0, lambda c: None
    reader._consumer = Flaky(2)
    assert reader.catch_up(5.0) == [] and reader._consumer.asked == 3
    reader._consumer = Flaky(10**6)  # never answers: the start goes on after the timeout
    assert reader.catch_up(0.6) == []
