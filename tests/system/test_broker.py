"""The local broker: a real Apache Kafka process, started and stopped by our own code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict

import pytest

from latentwatch.pipeline.devtools.local_kafka import LocalBroker, _alive
from latentwatch.pipeline.errors import UserError

from tests.support.kafka import consume_all


def test_10k_messages_round_trip_in_order_per_partition(make_topic, producer, make_consumer):
    topic = make_topic(partitions=4)
    n = 10_000
    for i in range(n):
        producer.produce(topic, key=str(i % 7).encode(), value=str(i).encode())
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(30) == 0

    msgs = consume_all(make_consumer(topic), n)
    assert len(msgs) == n
    by_partition: dict[int, list[int]] = defaultdict(list)
    for m in msgs:
        by_partition[m.partition()].append(int(m.value()))
    assert sorted(v for vs in by_partition.values() for v in vs) == list(range(n))
    for values in by_partition.values():
        assert values == sorted(values), "messages of one partition came back out of order"
    assert len(by_partition) > 1


def _cli(*args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", *args], capture_output=True,
                          text=True, timeout=180, env=env)


def test_cli_start_round_trip_stop_leaves_no_java(tmp_path):
    from confluent_kafka import Consumer, Producer

    state = str(tmp_path / "state")
    started = _cli("broker", "start", "--state-dir", state)
    assert started.returncode == 0, started.stderr
    bootstrap = started.stdout.strip().splitlines()[-1]
    assert bootstrap.startswith("127.0.0.1:")
    pid = LocalBroker(state).status().pid
    try:
        again = _cli("broker", "start", "--state-dir", state)
        assert again.returncode == 0 and "already running" in again.stdout
        assert bootstrap in again.stdout
        status = _cli("broker", "status", "--state-dir", state)
        assert status.returncode == 0 and status.stdout.strip() == bootstrap

        p = Producer({"bootstrap.servers": bootstrap})
        p.produce("roundtrip", b"hello")
        assert p.flush(30) == 0
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "g", "auto.offset.reset": "earliest"})
        c.subscribe(["roundtrip"])
        got = consume_all(c, 1)
        c.close()
        assert [m.value() for m in got] == [b"hello"]
    finally:
        stopped = _cli("broker", "stop", "--state-dir", state)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not _alive(pid)
    ours = subprocess.run(["pgrep", "-f", f"{state}/server.properties"], capture_output=True, text=True)
    assert ours.stdout.strip() == "", "a java process of ours is still running"
    assert _cli("broker", "status", "--state-dir", state).returncode == 1


def test_port_in_use_is_one_clear_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = _cli("broker", "start", "--state-dir", str(tmp_path), "--port", str(port))
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert f"port {port}" in r.stderr and "--port" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_java_is_one_clear_line(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path))  # no java, no mvn on PATH
    r = subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", "broker", "start", "--state-dir",
                        str(tmp_path / "s")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2
    assert "Java is not installed" in r.stderr and "Traceback" not in r.stderr


def test_missing_maven_with_empty_cache_is_one_clear_line(tmp_path, monkeypatch):
    from latentwatch.pipeline.devtools import local_kafka

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(local_kafka.shutil, "which", lambda name: None if name == "mvn" else "/usr/bin/" + name)
    with pytest.raises(UserError, match="Maven"):
        local_kafka.ensure_kafka_jars()


def test_stop_kills_a_broker_that_ignores_sigterm(tmp_path):
    """The SIGKILL fallback: a process that ignores SIGTERM is still gone after stop()."""
    import json

    proc = subprocess.Popen([sys.executable, "-c",
                             "import signal,time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"],
                            start_new_session=True)
    time.sleep(0.3)
    (tmp_path / "broker.json").write_text(json.dumps(dict(
        pid=proc.pid, port=1, controller_port=2, bootstrap="127.0.0.1:1", state_dir=str(tmp_path),
        kafka_version="x")))
    b = LocalBroker(tmp_path)
    t0 = time.monotonic()
    assert b.stop(timeout=1.0)
    proc.wait(timeout=5)
    assert time.monotonic() - t0 < 10
    assert b.status() is None
