"""Issue 30.1 in the stream: a frozen sensor and a silent one give health episodes (kind health)
through the run loop, the same as `score`'s (detectors.health.judge) over the same readings; a
silent sensor's open process episode closes with reason silent; process alerts of a frozen
sensor are marked."""

from __future__ import annotations

import json
import math

import numpy as np
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.detectors.health import HealthRule, judge
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.times import iso

from tests.support.fakes import messages
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0
CH = ["a", "b", "c"]


class _Sink:
    def __init__(self):
        self.alerts, self.tombstones, self.truncated = [], [], 0

    def produce_batch(self, batch, state_topic, tombstones):
        self.alerts += [json.loads(v) for _, v in batch.alerts]


class _Committer:
    def begin(self):
        pass

    def commit(self, offsets):
        pass


def _readings(seed=0):
    """Three sensors, one reading each per second for 400 s: `frozen` repeats its message from
    t=100 (a gateway fault), `quiet` stops at t=150 and is back at t=300, `spiky` alarms at
    t=140-149 (an open process episode) and stops at t=150 for good; `ok` is normal."""
    rng = np.random.default_rng(seed)
    out = []
    for t in range(400):
        for sid in ("ok", "frozen", "quiet", "spiky"):
            v = rng.normal(0, 1, 3).round(4).tolist()
            if sid == "frozen" and t >= 100:
                v = [0.25, -0.5, 1.0]
            if sid == "quiet" and 150 <= t < 300:
                continue
            if sid == "spiky":
                if t >= 150:
                    continue
                if t >= 140:
                    v = [9.0, 9.0, 9.0]
            out.append({"sensor_id": sid, "ts": NOW + t, "values": v})
    return out


def _model():
    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=50)
    model.health = HealthRule.fit(np.random.default_rng(1).normal(0, 1, (5000, 3)), CH, silent_s=60.0)
    return model


def _stream(payloads, batch):
    from latentwatch.pipeline.runner import Pipeline

    p = Pipeline(Settings(batch={"max_future_s": 10**9}, topics={"input": "in"}), _model())
    p.sink, p.committer, p.state_topic = _Sink(), _Committer(), "changelog"
    for i in range(0, len(payloads), batch):
        p.process(messages(payloads[i:i + batch], first_offset=i), limit=10**6)
    return p.sink.alerts


def test_frozen_and_silent_sensors_give_the_same_health_episodes_in_the_stream_and_in_score():
    payloads = _readings()
    rule = _model().health
    ids = [r["sensor_id"] for r in payloads]
    events = judge(rule, ids, np.array([r["values"] for r in payloads], np.float32),
                   np.array([r["ts"] for r in payloads]))
    offline = [(e.event, e.rule, e.key, iso(e.ts)) for e in events]
    assert offline == [("open", "flatline", "frozen", iso(NOW + 100 + rule.flat_n)),
                       ("open", "silent", "quiet", iso(NOW + 149 + 60)),
                       ("open", "silent", "spiky", iso(NOW + 149 + 60)),
                       ("close", "silent", "quiet", iso(NOW + 300))]
    for batch in (7, 64, 2000):  # live batches and a replay's big ones
        alerts = _stream(payloads, batch)
        health = [(a["event"], a["rule"], a["sensor_id"], a["ts"]) for a in alerts if a["kind"] == "health"]
        assert sorted(health) == sorted(offline), batch
        closes = [a for a in alerts if a["kind"] == "episode" and a["event"] == "close"]
        assert [(a["sensor_id"], a.get("reason"), a["ts"]) for a in closes] == [("spiky", "silent", iso(NOW + 209))]


def test_health_records_carry_rule_evidence_and_their_own_ids():
    alerts = _stream(_readings(), 50)
    flat = next(a for a in alerts if a["kind"] == "health" and a["rule"] == "flatline")
    assert flat["evidence"]["values"] == {"a": 0.25, "b": -0.5, "c": 1.0}
    assert flat["evidence"]["readings"] >= 30 and flat["episode_id"].startswith("flatline:in/0/")
    silent = next(a for a in alerts if a["kind"] == "health" and a["rule"] == "silent")
    assert silent["evidence"]["limit_s"] == 60.0 and silent["started_at"] == iso(NOW + 209)


def _csv(path, payloads):
    with open(path, "w") as f:
        f.write("timestamp,sensor_id,a,b,c\n")
        for r in payloads:
            f.write(f"{r['ts']},{r['sensor_id']}," + ",".join(str(v) for v in r["values"]) + "\n")


def test_score_on_a_trained_model_gives_the_streams_health_and_silent_closes(tmp_path, capsys):
    """`train` keeps each channel's step statistics in model.json; `score --episodes` writes the
    same health episodes as the stream running that model, and the silent close."""
    import csv

    from latentwatch.detectors.checkpoint import load
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.runner import Pipeline

    rng = np.random.default_rng(3)
    train = [{"sensor_id": f"s{i % 4}", "ts": NOW - 10_000 + i, "values": rng.normal(0, 1, 3).round(4).tolist()}
             for i in range(4000)]
    _csv(tmp_path / "train.csv", train)
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m"), "--model", "pca",
                 "--window", "1", "--no-own-models", "--silent-after", "60"]) == 0
    model = load(tmp_path / "m")
    assert model.health is not None and model.health.limit.tolist() == [30, 30, 30] and model.health.silent_s == 60
    payloads = _readings()
    _csv(tmp_path / "live.csv", payloads)
    p = Pipeline(Settings(batch={"max_future_s": 10**9}, topics={"input": "in"}), model)
    p.sink, p.committer, p.state_topic = _Sink(), _Committer(), "changelog"
    for i in range(0, len(payloads), 33):
        p.process(messages(payloads[i:i + 33], first_offset=i), limit=10**6)
    stream = sorted((a["event"], a["rule"], a["sensor_id"]) for a in p.sink.alerts if a["kind"] == "health")
    stream_silent_closes = [a["sensor_id"] for a in p.sink.alerts if a.get("reason") == "silent"]
    assert main(["score", "--model", str(tmp_path / "m"), "--data", str(tmp_path / "live.csv"),
                 "--out", str(tmp_path / "s.csv"), "--episodes", str(tmp_path / "e.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    offline = sorted((r["event"], r["rule"], r["sensor_id"]) for r in rows if r["kind"] == "health")
    assert offline == stream and ("open", "flatline", "frozen") in offline and ("close", "silent", "quiet") in offline
    assert sorted(r["sensor_id"] for r in rows if r["reason"] == "silent") == sorted(stream_silent_closes)
    assert "spiky" in stream_silent_closes
    assert "sensor health:" in capsys.readouterr().out


def test_health_records_are_shown_by_alerts_tail_forwarded_with_their_own_labels_and_counted():
    from latentwatch.pipeline.metrics import PipelineMetrics
    from latentwatch.pipeline.subscribers.alert_reader import format_line, parse_alert
    from latentwatch.pipeline.subscribers.alertmanager import health_to_alertmanager

    from latentwatch.pipeline.runner import Pipeline

    p = Pipeline(Settings(batch={"max_future_s": 10**9}, topics={"input": "in"}), _model())
    p.sink, p.committer, p.state_topic = _Sink(), _Committer(), "changelog"
    seen = []
    p.events.on_batch_committed = lambda done: seen.append(done)  # noqa: E731
    payloads = _readings()
    for i in range(0, len(payloads), 100):
        p.process(messages(payloads[i:i + 100], first_offset=i), limit=10**6)
    health = [a for a in p.sink.alerts if a["kind"] == "health"]
    lines = [format_line(parse_alert(json.dumps(a).encode())) for a in health]
    assert any("frozen health open flatline: every channel unchanged for" in ln for ln in lines)
    assert any("quiet health open silent: no reading since" in ln for ln in lines)
    am = health_to_alertmanager(next(a for a in health if a["rule"] == "silent"))
    assert am[0]["labels"]["alertname"] == "LatentwatchSensorHealth" and am[0]["labels"]["rule"] == "silent"
    m = PipelineMetrics()
    for done in seen:
        m.on_batch_committed(done)
    value = lambda rule, event: m.registry.get_sample_value(
        "latentwatch_health_episode_events_total", {"rule": rule, "event": event})
    assert value("silent", "open") == 2 and value("silent", "close") == 1 and value("flatline", "open") == 1


def test_health_records_get_cloudevents_headers_like_every_alerts_record():
    """The sink adds CloudEvents headers to every alerts-topic record (alerts.cloudevents, on by
    default); a health record has no alert_id (it was a KeyError in the producing sink)."""
    from latentwatch.pipeline import cloudevents
    from latentwatch.pipeline.records import encode

    health = [a for a in _stream(_readings(), 50) if a["kind"] == "health"]
    for a in health:
        h = dict(cloudevents.headers(encode(a), b"/latentwatch/test"))
        assert h["ce_type"] == f"io.latentwatch.health.{a['rule']}.{a['event']}".encode() or \
            h["ce_type"].endswith(f"health.{a['rule']}.{a['event']}".encode())
        assert h["ce_id"] == f"{a['episode_id']}/{a['event']}".encode() and h["ce_subject"] == a["sensor_id"].encode()


def test_a_deployment_overrides_the_models_health_limits_and_sensors_show_prints_them():
    from latentwatch.pipeline.cli.sensors import _block
    from latentwatch.pipeline.runner import Pipeline

    p = Pipeline(Settings(topics={"input": "in"}, sensors={"silent_s": 10, "stuck_n": 40}), _model())
    assert p.model.health.silent_s == 10 and p.model.health.limit.tolist() == [40, 40, 40]
    assert Pipeline(Settings(topics={"input": "in"}), _model()).model.health.silent_s == 60  # the model's own
    assert Pipeline(Settings(topics={"input": "in"}, sensors={"enabled": False}), _model()).scorer.health is None
    text = _block({"sensor_id": "pump-7", "partitions": [{
        "partition": 3, "last_reading": "t1", "baseline": "learned", "health": ["stuck"],
        "open_episode": {"since": "t0", "readings": 4, "peak_margin": 2.5}, "muted_until": "t9", "suppressed": 2,
        "last_applied": {"at": "t0", "by": "alice", "why": "maintenance"}}],
        "last_command": {"command": "mute", "at": "t0", "until": "t9", "by": "alice", "reason": "maintenance"}})
    assert "health: stuck" in text and "muted until t9" in text and "held back by mutes: 2" in text
    assert "last command on the control topic: mute at t0 until t9 by alice: maintenance" in text
