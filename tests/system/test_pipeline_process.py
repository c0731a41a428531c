"""`latentwatch run` as a real process: SIGTERM, SIGKILL and restart, two processes in a group."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid

import numpy as np
import pytest

from tests.support.harness import read_topic
from tests.support.ledger import committed_lag
from tests.support.streams import CH, Stream, metrics_url, normal_values, scrape, start_run, wait_metric  # noqa: F401

def test_sigterm_finishes_commits_and_exits_zero(kafka_bootstrap, make_topic, producer, model_dir):
    s = Stream(make_topic)
    s.produce(producer, 3000)
    proc = start_run(kafka_bootstrap, s, model_dir)
    url = metrics_url(proc)
    wait_metric(url, "latentwatch_readings_scored_total", 3000)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0
    led = s.ledger(kafka_bootstrap)
    assert not led.uncommitted and not led.lost and led.duplicates == 0
    assert not led.missing_alerts(s.anomalies)
    false_alarms = sum(led.alerts.values()) - len(s.anomalies)
    assert false_alarms <= 0.01 * 3000  # normal readings raise (almost) no alerts


def test_missing_model_is_one_clear_line(kafka_bootstrap, tmp_path):
    r = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "run", "--model", str(tmp_path / "nope"),
                        "--bootstrap", kafka_bootstrap], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_unknown_topic_without_auto_creation_is_one_clear_line(kafka_bootstrap, model_dir):
    r = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "run", "--model", model_dir, "--bootstrap",
                        kafka_bootstrap, "--input-topic", f"missing-{uuid.uuid4().hex[:6]}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "do not exist" in r.stderr and "--create-topics" in r.stderr
    assert "Traceback" not in r.stderr


def test_unreachable_broker_at_start_gives_up_clearly(model_dir):
    from latentwatch.pipeline.devtools.local_kafka import free_port

    env = dict(os.environ, LATENTWATCH_STARTUP_TIMEOUT_S="3")
    r = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "run", "--model", model_dir, "--bootstrap",
                        f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 2
    assert "cannot reach Kafka" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_sigkill_mid_stream_loses_nothing(kafka_bootstrap, make_topic, producer, model_dir, delivery):
    """Kill -9 the pipeline at random points while traffic flows; restart; audit every reading."""
    s = Stream(make_topic)
    kills = int(os.environ.get("LATENTWATCH_SOAK_ROUNDS", "3"))
    n = 1_000_000
    feeding = threading.Event()
    feeder = threading.Thread(target=s.produce, args=(producer, n),
                              kwargs={"bad_every": 500, "rate": 1500, "stop": feeding})
    feeder.start()  # traffic flows through every round, so each kill lands mid-stream
    rng = np.random.default_rng(7)
    for _ in range(kills):
        proc = start_run(kafka_bootstrap, s, model_dir, "--delivery", delivery)
        url = metrics_url(proc)
        wait_metric(url, "latentwatch_assigned_partitions", 1)
        wait_metric(url, "latentwatch_batches_total", 1)
        time.sleep(float(rng.uniform(0.0, 1.5)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    feeding.set()
    feeder.join()
    n = len(s.refs)
    proc = start_run(kafka_bootstrap, s, model_dir, "--delivery", delivery)
    url = metrics_url(proc)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and committed_lag(kafka_bootstrap, s.input, s.group, s.partitions) > 0:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=40) == 0

    led = s.ledger(kafka_bootstrap, read_committed=True)
    assert len(led.inputs) == n
    assert not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    assert not led.lost, f"lost {len(led.lost)} readings"
    assert len(led.dead) == len(range(3, n, 500))
    assert not led.missing_alerts(s.anomalies)
    if delivery == "exactly-once":
        assert led.duplicates == 0
    else:
        assert led.duplicates <= kills * 200  # at most one batch (200 messages) per kill


def test_two_processes_share_partitions_and_process_each_reading_once(kafka_bootstrap, make_topic, producer,
                                                                       model_dir):
    s = Stream(make_topic, partitions=4)
    a = start_run(kafka_bootstrap, s, model_dir)
    b = start_run(kafka_bootstrap, s, model_dir)
    url_a, url_b = metrics_url(a), metrics_url(b)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pa, pb = scrape(url_a, "latentwatch_assigned_partitions"), scrape(url_b, "latentwatch_assigned_partitions")
        if pa > 0 and pb > 0 and pa + pb == 4:
            break
        time.sleep(0.3)
    else:
        raise AssertionError(f"partitions not shared: {pa} + {pb}")
    s.produce(producer, 4000)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        done = scrape(url_a, "latentwatch_readings_scored_total") + scrape(url_b, "latentwatch_readings_scored_total")
        if done >= 4000:
            break
        time.sleep(0.3)
    scored_a = scrape(url_a, "latentwatch_readings_scored_total")
    scored_b = scrape(url_b, "latentwatch_readings_scored_total")
    for p in (a, b):
        p.send_signal(signal.SIGTERM)
    assert a.wait(timeout=40) == 0 and b.wait(timeout=40) == 0
    assert scored_a > 0 and scored_b > 0 and scored_a + scored_b == 4000
    led = s.ledger(kafka_bootstrap)
    assert len(led.scored) == 4000 and led.duplicates == 0 and not led.lost and not led.uncommitted
    assert len(read_topic(kafka_bootstrap, s.alerts)) >= len(s.anomalies)
