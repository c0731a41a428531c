"""Helpers for tests that run `latentwatch run` as a real process, possibly against a broker of
their own (fault and security tests): output captured to a file, topics made on any bootstrap,
a private broker that can be killed and restarted on the same port and data dir."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
from confluent_kafka.admin import AdminClient

from latentwatch.pipeline.devtools.local_kafka import LocalBroker, free_port
from latentwatch.pipeline.kafka.clients import create_topics

from tests.support.ledger import committed_lag
from tests.support.streams import Stream, normal_values

FAST_GROUP = '{"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}'
# LATENTWATCH_TEST_KAFKA_DEBUG=cgrp,fetch,topic: librdkafka debug output of the pipelines' consumers
# in their logs (with -v), to see what a stuck one is waiting for.
KAFKA_DEBUG = os.environ.get("LATENTWATCH_TEST_KAFKA_DEBUG", "")


def topic_maker(bootstrap: str, conf: dict | None = None):
    """A `make_topic(partitions=1, prefix="t")` for any broker (what conftest's fixture does)."""
    admin = AdminClient({"bootstrap.servers": bootstrap, **(conf or {})})

    def make(partitions: int = 1, prefix: str = "t", config: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(admin, {name: (partitions, config or {})}, exist_ok=False)
        return name

    return make


def start_pipeline(bootstrap: str, stream, model_dir: str, log_path: Path, *extra: str,
                   env: dict | None = None, verbose: bool = False) -> subprocess.Popen:
    """`latentwatch run` on `stream`'s topics; stdout and stderr go to `log_path` (appended)."""
    verbose = verbose or bool(KAFKA_DEBUG)
    cmd = [sys.executable, "-m", "latentwatch.pipeline.cli", *(["-v"] if verbose else []), "run", "--model", model_dir,
           "--bootstrap", bootstrap, "--input-topic", stream.input, "--alerts-topic", stream.alerts,
           "--dead-letter-topic", stream.dead, "--latent-topic", stream.latent, "--group-id", stream.group,
           "--metrics-port", "0", "--batch-size", "200", "--device", "cpu", *extra]
    consumer = json.loads(FAST_GROUP) | ({"debug": KAFKA_DEBUG} if KAFKA_DEBUG else {})
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", LATENTWATCH_KAFKA__CONSUMER=json.dumps(consumer))
    full_env.update(env or {})
    with open(log_path, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env)


def wait_url(proc: subprocess.Popen, log_path: Path, timeout: float = 90, since: int | None = None) -> str:
    """The metrics URL the process prints once started (the last one in the log), written after
    byte `since` of the log (default: its size now, so an earlier start in the same log is not
    taken; 0 for a log of this start alone, which the process may have written to already)."""
    deadline = time.monotonic() + timeout
    start = since if since is not None else (log_path.stat().st_size if log_path.exists() else 0)
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        found = re.findall(r"metrics: (http://\S+)", text[start:])
        if found:
            return found[-1]
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise AssertionError(f"pipeline did not start (rc {proc.poll()}):\n{log_path.read_text()[-4000:]}")


def stop_process(proc: subprocess.Popen, timeout: float = 40) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout`; returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=30)


def wait_drained(bootstrap: str, stream, timeout: float = 180, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    lag = -1
    while time.monotonic() < deadline:
        lag = committed_lag(bootstrap, stream.input, stream.group, stream.partitions)
        if lag == 0:
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"pipeline exited with {proc.returncode} while {lag} messages were left")
        time.sleep(0.5)
    raise AssertionError(f"{lag} input messages still uncommitted after {timeout} s")


class PrivateBroker(LocalBroker):
    """A LocalBroker on a fixed port of its own, for tests that kill or reconfigure it."""

    def __init__(self, state_dir: Path, **kwargs):
        super().__init__(state_dir, port=kwargs.pop("port", None) or free_port(), **kwargs)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


class TimelineStream(Stream):
    """A Stream whose successive `produce` calls continue one timeline (event times keep
    increasing per sensor, so nothing is 'late'), optionally paced to spread traffic over time."""

    def __init__(self, make_topic, partitions=4):
        super().__init__(make_topic, partitions)
        self.sent = 0
        self.t0 = time.time() - 86_000  # a day's room before "now"
        self.bad: set = set()
        self.values: dict = {}  # ref -> values sent (what `score` would read), for Ledger.score_faults

    def produce(self, producer, n, seed=0, anomaly_every=97, bad_every=0, per_second: float | None = None,
                body_for=None, per_message: int = 1, sensor_ids=None):
        """`n` readings; with `per_message` > 1, that many consecutive readings of one sensor go
        in one message (the contract's "readings" batch; refs (partition, offset, index)), which
        lets one Python feeder send thousands of readings a second on a busy machine.
        `sensor_ids`: the sensors to send for, in turn (default s0..s15)."""
        ids = list(sensor_ids) if sensor_ids is not None else [f"s{j}" for j in range(16)]
        rng = np.random.default_rng(seed)
        values = normal_values(rng, n)
        first = self.sent
        self.sent += n
        started = time.monotonic()

        def on_delivery(err, msg, anomalous=(), bad=False, sent=()):
            assert err is None, err
            with self._lock:
                for j in range(per_message):
                    ref = (msg.partition(), msg.offset(), j)
                    if j < len(sent):
                        self.values[ref] = sent[j]
                    self.refs.add(ref)
                    self.sensors[ref] = msg.key().decode()
                    if j in anomalous:
                        self.anomalies.add(ref)
                if bad:
                    self.bad.add((msg.partition(), msg.offset(), 0))

        for i in range(0, n, per_message):
            sensor = ids[(first + i) // per_message % len(ids)]
            readings, anomalous = [], []
            for j in range(per_message):
                k = first + i + j
                v = values[i + j].copy()
                if anomaly_every and k % anomaly_every == 5:
                    v[k % 4] += 12.0
                    anomalous.append(j)
                readings.append({"ts": self.t0 + k * 0.01, "values": v.tolist()})
            if per_message == 1:
                body = json.dumps({"sensor_id": sensor, **readings[0]}).encode()
            else:
                body = json.dumps({"sensor_id": sensor, "readings": readings}).encode()
            k = first + i
            bad = bool(bad_every and (k // per_message) % bad_every == 3)  # every `bad_every` messages
            if bad:
                body, anomalous = b"\x00garbage", []
            if body_for is not None:
                body, bad = body_for(k, body, bad)
                anomalous = [] if bad else anomalous
            sent = tuple(r["values"] for r in readings)
            producer.produce(self.input, body, key=sensor.encode(),
                             on_delivery=lambda e, m, a=tuple(anomalous), b=bad, v=sent: on_delivery(e, m, a, b, v))
            producer.poll(0)
            if per_second and (i // per_message) % max(1, 50 // per_message) == 0:  # every ~50 readings
                ahead = started + i / per_second - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        producer.flush(120)


def settled_ledger(stream, bootstrap: str, timeout: float = 60, balanced=None):
    """The ledger, rebuilt until it balances or `timeout` passes. A SIGKILLed exactly-once
    process leaves its open transaction behind; until the coordinator aborts it (transaction
    timeout plus the broker's clean-up interval, ~20 s) read_committed readers stop at it, so
    outputs that are committed already look missing for a while. What is still missing after
    `timeout` is lost. `balanced(led)`: when it balances (default: nothing lost or uncommitted)."""
    deadline = time.monotonic() + timeout
    balanced = balanced or (lambda led: not led.lost and not led.uncommitted)
    while True:
        led = stream.ledger(bootstrap)
        if balanced(led) or time.monotonic() >= deadline:
            return led
        time.sleep(2)
