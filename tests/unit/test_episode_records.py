"""Episode records as the scorer writes them and as the subscribers read them: parsed, printed by
`alerts tail`, mapped to Alertmanager alerts by `alerts forward` (one alert per episode, resolved
at its close), and per-reading records left to Alertmanager only when asked."""

from __future__ import annotations

import json
import math

from latentwatch.detectors.alarms import AlarmRule
from latentwatch.pipeline.scorer import Scorer
from latentwatch.pipeline.state import StateStore
from latentwatch.pipeline.subscribers.alertmanager import Forwarder, episode_to_alertmanager
from latentwatch.pipeline.subscribers.alert_reader import format_line, parse_alert
from tests.support.fakes import messages
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


def _records():
    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=3)
    sc = Scorer(model, max_message_bytes=10**6, max_future_s=86_400, late_policy="dead-letter", critical_ratio=2.0,
                latent_topic=False, changelog=True)
    values = [0.1, 0.1, 9.0, 0.1, 0.1, 0.1, 0.1]  # one reading at score 81 (2.7x the limit), then quiet
    batch = sc.score(messages([{"sensor_id": "pump-7", "ts": NOW - 100 + i, "values": [v] * 3}
                               for i, v in enumerate(values)]), StateStore(), NOW)
    return [json.loads(v) for _, v in batch.alerts], batch


def test_the_scorer_writes_an_episode_open_and_close_beside_the_reading_record():
    records, batch = _records()
    kinds = [(r["kind"], r.get("event")) for r in records]
    assert kinds == [("reading", None), ("episode", "open"), ("episode", "close")]
    reading, opened, closed = records
    assert reading["rule"] == "instant" and reading["statistic"] == 81.0 and reading["limit"] == 30.0
    assert reading["severity"] == "critical"  # 81 >= 2 x 30
    assert opened["episode_id"] == closed["episode_id"] == reading["alert_id"] == "in/0/2/0"
    assert closed["ended_at"] == closed["ts"] and closed["readings"] == 1 and closed["severity"] == "critical"
    assert batch.episodes == ["open", "close"] and batch.severities == ["critical"]


def test_alertmanager_gets_one_alert_per_episode_firing_then_resolved():
    records, _ = _records()
    opened, closed = (parse_alert(json.dumps(r).encode()) for r in records[1:])
    firing = episode_to_alertmanager(opened, resolve_timeout=300)
    assert len(firing) == 1 and firing[0]["labels"] == {
        "alertname": "LatentwatchAnomaly", "sensor": "pump-7", "episode": "in/0/2/0", "severity": "critical"}
    assert firing[0]["endsAt"] > firing[0]["startsAt"]
    resolved = episode_to_alertmanager(closed, resolve_timeout=300)
    assert {a["labels"]["severity"] for a in resolved} == {"warning", "critical"}  # whichever it escalated to
    assert all(a["startsAt"] == firing[0]["startsAt"] and a["endsAt"] < firing[0]["endsAt"] for a in resolved)
    assert "episode open (instant)" in format_line(opened) and "[in/0/2/0]" in format_line(closed)


class _Msg:
    def __init__(self, record):
        self._v = json.dumps(record).encode()

    def value(self):
        return self._v

    def topic(self):
        return "alerts"

    def partition(self):
        return 0

    def offset(self):
        return 0


class _Client:
    def __init__(self):
        self.posted = []

    def post_alerts(self, alerts):
        self.posted += alerts


def test_the_forwarder_sends_episodes_and_per_reading_records_only_when_asked():
    records, _ = _records()
    legacy = {k: v for k, v in records[0].items() if k != "kind"}  # a producer from before episodes
    for readings, expected in ((False, 1 + 1 + 2), (True, 1 + 1 + 1 + 2)):
        client = _Client()
        fw = Forwarder(None, client, "alerts", readings=readings)
        assert fw._deliver([_Msg(r) for r in records] + [_Msg(legacy)])
        assert len(client.posted) == expected  # legacy reading, open, close x2 severities (+ the reading)
