"""Episode records as the scorer writes them and as the subscribers read them: parsed, printed by
`alerts tail`, mapped to Alertmanager alerts by `alerts forward` (one alert per episode, resolved
at its close), and per-reading records left to Alertmanager only when asked."""

from __future__ import annotations

import json
import math
import time

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
    from datetime import UTC, datetime, timedelta

    now = datetime.fromtimestamp(NOW, UTC)  # sending right after the readings (times: the test below)
    firing = episode_to_alertmanager(opened, resolve_timeout=300, now=now)
    assert len(firing) == 1 and firing[0]["labels"] == {
        "alertname": "LatentwatchAnomaly", "sensor": "pump-7", "episode": "in/0/2/0", "severity": "critical"}
    assert firing[0]["endsAt"] > firing[0]["startsAt"]
    resolved = episode_to_alertmanager(closed, resolve_timeout=300, now=now + timedelta(seconds=1))
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


def _episode(event, started, ts, ended=None):
    rec = {"kind": "episode", "event": event, "sensor_id": "pump-7", "episode_id": "in/0/2/0", "severity": "critical",
           "started_at": started, "ts": ts, "rule": "instant", "peak_score": 81.0, "peak_margin": 2.7, "readings": 3}
    if ended is not None:
        rec["ended_at"] = ended
    return parse_alert(json.dumps(rec).encode())


def _iso(t):
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_alertmanager_times_are_from_the_time_of_sending_not_the_readings_clock():
    """Issue 29.3: Alertmanager decides "active" by its own clock. An open episode whose readings
    are 10 min old (a backlog) was sent with endsAt already past (never fired); a device clock 1 h
    ahead kept the alert active an hour past its close; a clock stepping back gave endsAt <
    startsAt (HTTP 400, the resolve lost)."""
    from datetime import UTC, datetime

    now = datetime.fromtimestamp(NOW, UTC)
    # a backlog: readings 10 min old, episode still open -> fires now, for resolve_timeout from now
    old = episode_to_alertmanager(_episode("open", NOW - 600, NOW - 600), resolve_timeout=300, now=now)
    assert old[0]["startsAt"] == _iso(NOW - 600) and old[0]["endsAt"] == _iso(NOW + 300)
    # a clock 1 h ahead: starts no later than now; the close resolves now, under both severities
    ahead = episode_to_alertmanager(_episode("open", NOW + 3600, NOW + 3600), resolve_timeout=300, now=now)
    assert ahead[0]["startsAt"] == _iso(NOW) and ahead[0]["endsAt"] == _iso(NOW + 300)
    closed = episode_to_alertmanager(_episode("close", NOW + 3600, NOW + 3700, NOW + 3700), resolve_timeout=300,
                                     now=now)
    assert [a["endsAt"] for a in closed] == [_iso(NOW)] * 2 and all(a["startsAt"] == _iso(NOW) for a in closed)
    # a clock stepping back (late_policy score): ended_at before started_at -> never endsAt < startsAt
    back = episode_to_alertmanager(_episode("close", NOW - 60, NOW - 120, NOW - 120), resolve_timeout=300, now=now)
    assert all(a["startsAt"] <= a["endsAt"] for a in back) and back[0]["endsAt"] == _iso(NOW)
    # the readings' own times stay readable in the annotations
    assert closed[0]["annotations"]["ended_at"] == _iso(NOW + 3700)


def test_a_restored_episode_quiet_past_the_new_close_after_closes_under_its_own_sensor():
    """Issue 29.1 through the scorer: state restored (or kept at a swap) from v1, which closes after
    50, holds an episode 30 readings quiet; v2 closes after 10. The batch used to raise IndexError
    (a restart: every restart) or write the close under the other sensor's key, id and time."""
    from latentwatch.detectors.alarms import Episode, SensorAlarm
    from latentwatch.pipeline.state import Entry

    import numpy as np

    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=10)
    sc = Scorer(model, max_message_bytes=10**6, max_future_s=86_400, late_policy="dead-letter", critical_ratio=2.0,
                latent_topic=False, changelog=True)
    state = StateStore()
    state.expect(1, 3)
    ep = Episode((0, 5, 0), NOW - 500, 0, 2.7, 81.0, NOW - 500, 1, 30, NOW - 500)
    loaded = state.load({(0, "pump-b"): Entry(NOW - 400, np.empty((0, 3), np.float32), None, 5,
                                              SensorAlarm(0.0, ep))})
    assert loaded.dropped == {}  # kept: dropping it would lose the close (issue 29.4)
    batch = sc.score(messages([{"sensor_id": s, "ts": NOW - 100 + i, "values": [0.1] * 3}
                               for i, s in enumerate(["pump-z", "pump-z", "pump-b", "pump-z"])], first_offset=10),
                     state, NOW)
    closes = [json.loads(v) for _, v in batch.alerts if json.loads(v).get("event") == "close"]
    assert len(closes) == 1 and closes[0]["sensor_id"] == "pump-b" and closes[0]["episode_id"] == "in/0/5/0"
    assert alert_time_of(closes[0]["ts"]) == NOW - 98  # pump-b's own (first) reading
    assert batch.updates[(0, "pump-b")].alarm.episode is None


def alert_time_of(value):
    from latentwatch.pipeline.subscribers.alert_reader import alert_time

    return alert_time(value).timestamp()


def test_the_forwarder_posts_times_of_sending_to_a_recording_alertmanager():
    """Issue 29.3 end to end through AlertmanagerClient: a backlog episode 10 min old, still open,
    arrives firing (endsAt after the time it was sent), its close resolves it at the sending time,
    and a close whose readings' clock stepped back is not sent with endsAt < startsAt (HTTP 400)."""
    import threading
    from datetime import UTC, datetime
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from latentwatch.pipeline.subscribers.alertmanager import AlertmanagerClient

    posted = []

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            posted.extend(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        now = time.time()
        backlog = {"kind": "episode", "sensor_id": "pump-7", "episode_id": "in/0/2/0", "severity": "critical",
                   "started_at": now - 600, "ts": now - 600, "rule": "instant", "peak_score": 81.0,
                   "peak_margin": 2.7, "readings": 1}
        fw = Forwarder(None, AlertmanagerClient(f"http://127.0.0.1:{server.server_port}"), "alerts")
        sent = datetime.now(UTC)
        assert fw._deliver([_Msg({**backlog, "event": "open"})])
        assert fw._deliver([_Msg({**backlog, "event": "close", "started_at": now - 60, "ts": now - 120,
                                  "ended_at": now - 120})])
    finally:
        server.shutdown()
        server.server_close()
    when = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    opened, closes = posted[0], posted[1:]
    assert when(opened["endsAt"]) > sent and when(opened["startsAt"]) < sent  # fires now, started 10 min ago
    assert len(closes) == 2 and all(when(a["startsAt"]) <= when(a["endsAt"]) for a in closes)
    assert all(when(a["endsAt"]) >= sent for a in closes)  # resolved at the sending time, not 2 min ago
