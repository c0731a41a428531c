"""`latentwatch alerts tail` as a user runs it (a subprocess on a real topic): one line per alert
or JSON lines, severity and sensor filters, only committed alerts (read_committed), only new
alerts without --from-beginning, bounded by --max-messages / --timeout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

import pytest

from tests.support.records import alert_record

pytestmark = pytest.mark.broker


@pytest.fixture
def alerts_topic(kafka_bootstrap, make_topic, producer):
    """A topic with, in order: w1 (s1 warning), c1 (s2 critical), an aborted transaction's
    alert, junk, w2 (s3 warning), c2 (s1 critical)."""
    from confluent_kafka import Producer

    topic = make_topic(prefix="alerts")

    def put(p, rec):
        p.produce(topic, key=rec["sensor_id"].encode(), value=json.dumps(rec).encode())

    put(producer, alert_record("s1", "warning", "temp", n=1))
    put(producer, alert_record("s2", "critical", "pressure", score=40.0, n=2))
    assert producer.flush(30) == 0
    tx = Producer({"bootstrap.servers": kafka_bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex[:8]}"})
    tx.init_transactions(30)
    tx.begin_transaction()
    put(tx, alert_record("aborted", "critical", n=3))
    tx.flush(30)
    tx.abort_transaction(30)
    producer.produce(topic, key=b"junk", value=b"{not json")
    put(producer, alert_record("s3", "warning", "flow", n=4))
    put(producer, alert_record("s1", "critical", "rpm", score=50.0, n=5))
    assert producer.flush(30) == 0
    return topic


def tail(kafka_bootstrap, *args: str, timeout: float = 90):
    return subprocess.run(
        [sys.executable, "-m", "latentwatch.pipeline.cli", "alerts", "tail", "--bootstrap", kafka_bootstrap, *args],
        check=False, capture_output=True, text=True, timeout=timeout,
    )


def test_tail_pretty_lines_from_beginning(kafka_bootstrap, alerts_topic):
    # --timeout bounds the run: all 4 committed alerts, and nothing else, within it
    res = tail(kafka_bootstrap, "--topic", alerts_topic, "--from-beginning", "--timeout", "8")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert [line.split()[2] for line in lines] == ["s1", "s2", "s3", "s1"]
    assert [line.split()[1] for line in lines] == ["WARNING", "CRITICAL", "WARNING", "CRITICAL"]
    assert "score 40 > 4.5 (x8.9) top: pressure 71%, flow 20%, rpm 9%" in lines[1]
    assert lines[1].endswith("[sensor-readings/0/102/0]")
    assert "aborted" not in res.stdout  # read_committed
    assert "skipped" in res.stderr and "not JSON" in res.stderr


def test_tail_json_min_severity(kafka_bootstrap, alerts_topic):
    res = tail(kafka_bootstrap, "--topic", alerts_topic, "--from-beginning", "--json",
               "--min-severity", "critical", "--max-messages", "2", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    alerts = [json.loads(line) for line in res.stdout.splitlines()]
    assert [(a["sensor_id"], a["severity"]) for a in alerts] == [("s2", "critical"), ("s1", "critical")]
    assert alerts[0]["top_channels"][0] == {"channel": "pressure", "share": 0.71}


def test_tail_sensor_filter_and_max_messages(kafka_bootstrap, alerts_topic):
    res = tail(kafka_bootstrap, "--topic", alerts_topic, "--from-beginning", "--json",
               "--sensor", "s1", "--sensor", "s3", "--max-messages", "2", "--timeout", "60")
    assert res.returncode == 0, res.stderr
    got = [(a["sensor_id"], a["severity"]) for a in map(json.loads, res.stdout.splitlines())]
    assert got == [("s1", "warning"), ("s3", "warning")]  # stopped after 2 of the 3 matching


def test_tail_without_from_beginning_shows_only_new_alerts(kafka_bootstrap, alerts_topic, producer):
    env = {**os.environ, "LATENTWATCH_BOOTSTRAP": kafka_bootstrap}  # no --bootstrap: env fallback
    proc = subprocess.Popen(
        [sys.executable, "-m", "latentwatch.pipeline.cli", "alerts", "tail", "--topic", alerts_topic, "--json",
         "--max-messages", "1", "--timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # it may not be reading yet: keep adding new alerts until one shows up (bounded)
        deadline = time.monotonic() + 60
        i = 0
        while proc.poll() is None and time.monotonic() < deadline:
            producer.produce(alerts_topic, key=b"new", value=json.dumps(alert_record("new", n=100 + i)).encode())
            producer.flush(10)
            i += 1
            try:
                proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 0, err
    (alert,) = [json.loads(line) for line in out.splitlines()]
    assert alert["sensor_id"] == "new"


def test_tail_missing_topic_is_one_line_error(kafka_bootstrap):
    res = tail(kafka_bootstrap, "--topic", f"nope-{uuid.uuid4().hex[:8]}", "--timeout", "5")
    assert res.returncode == 2
    assert res.stderr.startswith("latentwatch: error: topic") and "does not exist" in res.stderr
    assert "Traceback" not in res.stderr
