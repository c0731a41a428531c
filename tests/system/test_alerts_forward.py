"""`latentwatch alerts forward`: anomaly alerts from a real Kafka topic reach a real Alertmanager
(found again through its API with the right labels and annotations), offsets are committed only
after Alertmanager accepted the batch, failures are retried, invalid alerts are isolated."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.subscribers.alertmanager import (
    AlertmanagerClient,
    Forwarder,
    forwarder_consumer_config,
    to_alertmanager,
)
from latentwatch.pipeline.subscribers.alert_reader import parse_alert
from tests.support.prom import free_port
from tests.support.records import alert_record

from tests.support.processes import stop_process

ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")




def produce(producer, topic: str, records: list, raw: list[bytes] = ()) -> None:
    for r in records:
        producer.produce(topic, key=r["sensor_id"].encode(), value=json.dumps(r).encode())
    for value in raw:
        producer.produce(topic, key=b"junk", value=value)
    assert producer.flush(30) == 0


def committed(kafka_bootstrap: str, group: str, topic: str, partitions: int = 1) -> list[int]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return [tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=15)]
    finally:
        c.close()


# ----------------------------------------------------------------------------- Alertmanager process
class Alertmanager:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "alertmanager.yml"
        config.write_text("route:\n  receiver: default\n  group_wait: 1h\nreceivers:\n  - name: default\n")
        self.log_path = workdir / "alertmanager.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"alertmanager exited:\n{self.log_path.read_text()}"
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"alertmanager not ready:\n{self.log_path.read_text()}"
            time.sleep(0.2)

    def alerts(self, **filters: str) -> list[dict]:
        query = urllib.parse.urlencode([("filter", f'{k}="{v}"') for k, v in filters.items()])
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts?{query}", timeout=10) as r:
            return json.load(r)

    def wait_for_alerts(self, n: int, timeout: float = 30.0, **filters: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.alerts(**filters)
            if len(found) >= n or time.monotonic() > deadline:
                return found
            time.sleep(0.3)

    def stop(self) -> None:
        stop_process(self.proc, timeout=15)
        self._log.close()


@pytest.fixture
def alertmanager(tmp_path):
    if ALERTMANAGER is None:
        pytest.skip("prometheus-alertmanager missing: `make system-deps`")
    am = Alertmanager(tmp_path)
    yield am
    am.stop()


class ForwarderThread:
    """A `Forwarder` running in a thread; `stop()` ends it and closes its consumer."""

    def __init__(self, kafka_bootstrap: str, url: str, topic: str, group: str, **kw):
        from confluent_kafka import Consumer

        settings = load_settings(None, {"kafka.bootstrap_servers": kafka_bootstrap})
        self.consumer = Consumer(forwarder_consumer_config(settings, group))
        kw.setdefault("batch_wait", 0.3)
        self.forwarder = Forwarder(self.consumer, AlertmanagerClient(url, timeout=5), topic, **kw)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.forwarder.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def wait(self, cond, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline or not self.thread.is_alive():
                return False
            time.sleep(0.1)
        return True

    def stop(self):
        self.forwarder.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "forwarder did not stop"
        self.consumer.close()
        if self.error:
            raise self.error
        return self.forwarder.stats


@pytest.fixture
def forwarders():
    started: list[ForwarderThread] = []

    def start(*args, **kw) -> ForwarderThread:
        f = ForwarderThread(*args, **kw)
        started.append(f)
        return f

    yield start
    for f in started:
        if f.thread.is_alive():
            f.forwarder.stop.set()
            f.thread.join(30)
            f.consumer.close()


# ----------------------------------------------------------------------------- unit
def test_to_alertmanager_maps_labels_annotations_and_times():
    rec = alert_record("pump-7", "critical", "temp", score=12.3,
                       ts=datetime(2026, 11, 21, 10, 0, 0, 250000, tzinfo=UTC))
    sent = datetime(2026, 11, 21, 10, 0, 10, 250000, tzinfo=UTC)  # 10 s after the reading
    am = to_alertmanager(parse_alert(json.dumps(rec).encode()), resolve_timeout=300, now=sent)
    assert am["labels"] == {"alertname": "LatentwatchAnomaly", "sensor": "pump-7",
                            "severity": "critical", "top_channel": "temp"}
    assert am["annotations"]["score"] == "12.3"
    assert am["annotations"]["threshold"] == "4.5"
    assert am["annotations"]["alert_id"] == rec["alert_id"]
    assert "pump-7" in am["annotations"]["summary"]
    assert am["startsAt"] == "2026-11-21T10:00:00.250Z"
    assert am["endsAt"] == "2026-11-21T10:05:10.250Z"  # from the time of sending (issue 29.3)


@pytest.mark.parametrize("value", [b"not json", b"[]", b'{"sensor_id": "x"}', None,
                                   json.dumps({**alert_record("x"), "severity": "meh"}).encode(),
                                   json.dumps({**alert_record("x"), "ts": "yesterday"}).encode()],
                         # fixed ids: the records hold the time of collection, which differs per xdist worker
                         ids=["not-json", "a-list", "no-fields", "tombstone", "bad-severity", "bad-ts"])
def test_parse_alert_rejects_non_alerts(value):
    from latentwatch.pipeline.subscribers.alert_reader import BadAlert

    with pytest.raises(BadAlert):
        parse_alert(value)


# ----------------------------------------------------------------------------- real Alertmanager
@pytest.mark.broker
def test_forwarder_delivers_alerts_to_alertmanager_and_commits(
        kafka_bootstrap, make_topic, producer, alertmanager, forwarders):
    topic = make_topic(prefix="alerts")
    records = [alert_record("pump-1", "warning", "temp", n=0),
               alert_record("pump-2", "critical", "pressure", score=30.0, n=1),
               alert_record("pump-3", "warning", "flow", n=2)]
    produce(producer, topic, records, raw=[b"\xff not an alert"])
    group = f"fwd-{uuid.uuid4().hex[:8]}"

    f = forwarders(kafka_bootstrap, alertmanager.url, topic, group)
    assert f.wait(lambda: f.forwarder.stats.committed.get((topic, 0)) == 4), f.forwarder.stats
    stats = f.stop()

    found = alertmanager.wait_for_alerts(3, alertname="LatentwatchAnomaly")
    by_sensor = {a["labels"]["sensor"]: a for a in found}
    assert sorted(by_sensor) == ["pump-1", "pump-2", "pump-3"]
    p2 = by_sensor["pump-2"]
    assert p2["labels"] == {"alertname": "LatentwatchAnomaly", "sensor": "pump-2",
                            "severity": "critical", "top_channel": "pressure"}
    assert p2["annotations"]["score"] == "30"
    assert p2["annotations"]["threshold"] == "4.5"
    assert p2["annotations"]["alert_id"] == records[1]["alert_id"]
    assert p2["status"]["state"] == "active"
    starts = datetime.fromisoformat(p2["startsAt"])
    assert abs(starts - datetime.fromisoformat(records[1]["ts"])) < timedelta(milliseconds=2)
    assert stats.forwarded == 3 and stats.skipped == 1
    assert committed(kafka_bootstrap, group, topic) == [4]


@pytest.mark.broker
def test_nothing_is_committed_until_alertmanager_accepts(
        kafka_bootstrap, make_topic, producer, alertmanager, forwarders):
    topic = make_topic(prefix="alerts")
    records = [alert_record(f"valve-{i}", n=i) for i in range(5)]
    produce(producer, topic, records)
    group = f"fwd-{uuid.uuid4().hex[:8]}"
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there

    f = forwarders(kafka_bootstrap, dead, topic, group, backoff_initial=0.05, backoff_max=0.2)
    assert f.wait(lambda: f.forwarder.stats.failed_attempts >= 3), f.forwarder.stats
    stats = f.stop()
    assert stats.consumed == 5 and stats.forwarded == 0 and stats.commits == 0
    assert "cannot reach" in stats.last_error
    assert committed(kafka_bootstrap, group, topic) == [-1001]  # OFFSET_INVALID: no commit
    assert alertmanager.alerts(alertname="LatentwatchAnomaly") == []

    # the same group pointed at a live Alertmanager gets every alert again and delivers them
    f2 = forwarders(kafka_bootstrap, alertmanager.url, topic, group)
    assert f2.wait(lambda: f2.forwarder.stats.committed.get((topic, 0)) == 5), f2.forwarder.stats
    stats2 = f2.stop()
    assert stats2.consumed == 5 and stats2.forwarded == 5
    found = alertmanager.wait_for_alerts(5, alertname="LatentwatchAnomaly")
    assert sorted(a["labels"]["sensor"] for a in found) == [f"valve-{i}" for i in range(5)]
    assert committed(kafka_bootstrap, group, topic) == [5]


class FlakyAlertmanager:
    """A stand-in that answers 503 to the first `failures` POSTs, 400 to any batch holding an
    alert of sensor `reject`, 200 otherwise; it records what it accepted."""

    def __init__(self, failures: int, reject: str | None = None):
        outer = self
        self.failures, self.reject = failures, reject
        self.posts = 0
        self.accepted: list[dict] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.posts += 1
                if outer.posts <= outer.failures:
                    code = 503
                elif outer.reject and any(a["labels"]["sensor"] == outer.reject for a in body):
                    code = 400
                else:
                    code = 200
                    outer.accepted.extend(body)
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flaky():
    made = []

    def make(*args, **kw):
        made.append(FlakyAlertmanager(*args, **kw))
        return made[-1]

    yield make
    for m in made:
        m.close()


@pytest.mark.broker
def test_http_errors_are_retried_and_invalid_alerts_isolated(
        kafka_bootstrap, make_topic, producer, forwarders, flaky):
    topic = make_topic(prefix="alerts")
    records = [alert_record(f"fan-{i}", n=i) for i in range(4)] + [alert_record("bad", n=9)]
    produce(producer, topic, records)
    am = flaky(failures=2, reject="bad")
    group = f"fwd-{uuid.uuid4().hex[:8]}"

    f = forwarders(kafka_bootstrap, am.url, topic, group, backoff_initial=0.05, backoff_max=0.1,
                   batch_size=10, batch_wait=1.0)
    assert f.wait(lambda: f.forwarder.stats.committed.get((topic, 0)) == 5), f.forwarder.stats
    stats = f.stop()
    assert sorted(a["labels"]["sensor"] for a in am.accepted) == [f"fan-{i}" for i in range(4)]
    assert stats.forwarded == 4 and stats.skipped == 1
    assert stats.failed_attempts >= 3  # two 503s, then at least one 400 before splitting
    assert committed(kafka_bootstrap, group, topic) == [5]


@pytest.mark.broker
def test_cli_forward_uses_env_bootstrap(kafka_bootstrap, make_topic, producer, alertmanager, repo_root):
    topic = make_topic(prefix="alerts")
    produce(producer, topic, [alert_record("cli-1", "critical", n=0), alert_record("cli-2", n=1)])
    group = f"fwd-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "LATENTWATCH_BOOTSTRAP": kafka_bootstrap}
    res = subprocess.run(
        [sys.executable, "-m", "latentwatch.pipeline.cli", "alerts", "forward", "--alertmanager", alertmanager.url,
         "--topic", topic, "--group-id", group, "--batch-wait", "0.5", "--max-batches", "1"],
        env=env, cwd=repo_root, check=False, capture_output=True, text=True, timeout=90,
    )
    assert res.returncode == 0, res.stderr
    found = alertmanager.wait_for_alerts(2, alertname="LatentwatchAnomaly")
    assert sorted(a["labels"]["sensor"] for a in found) == ["cli-1", "cli-2"]
    assert committed(kafka_bootstrap, group, topic) == [2]


def test_cli_forward_rejects_a_non_url(repo_root):
    res = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "alerts", "forward", "--alertmanager",
                          "localhost:9093", "--bootstrap", "127.0.0.1:1"],
                         cwd=repo_root, check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("latentwatch: error: --alertmanager must be an http(s) URL")
    assert "Traceback" not in res.stderr
