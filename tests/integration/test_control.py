"""Issue 30.2 against the real broker: `latentwatch sensors mute|accept|show` through the CLI with a
restart in between, a command for a sensor owned by the other member of a two-member group, and a
malformed command dead-lettered (never a crash)."""

from __future__ import annotations

import json
import math
import time
import uuid

import pytest
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.pipeline.cli.main import main
from latentwatch.pipeline.times import iso
from tests.support.harness import RunningPipeline, alerts_of, counter, episodes_of, read_topic, settings_for
from tests.support.stub_model import stub_model


def _model():
    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=5)
    return model


def _send(producer, topic, sensor, t0, seconds, alarm_every=10, partition=None):
    """One reading a second; every `alarm_every`-th one alarms (score 81 > 30)."""
    extra = {} if partition is None else {"partition": partition}
    for t in range(t0, t0 + seconds):
        v = 9.0 if alarm_every and t % alarm_every == 0 else 0.1
        producer.produce(topic, json.dumps({"sensor_id": sensor, "ts": BASE + t, "values": [v] * 3}).encode(),
                         key=sensor.encode(), **extra)
    producer.flush(30)


BASE = time.time() - 3600  # fractional on purpose: a command's times must stay exact (not ISO milliseconds)


def _cli(bootstrap, *argv):
    return main(["sensors", *argv, "--bootstrap", bootstrap])


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_mute_and_accept_through_the_cli_with_a_restart_in_between(kafka_bootstrap, make_topic, producer, capsys,
                                                                    delivery):
    topic = make_topic(partitions=1)
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}", delivery=delivery)
    control = f"{topic}.control"
    assert _cli(kafka_bootstrap, "mute", "pump-1", "--at", str(BASE + 20), "--until", str(BASE + 80),
                "--by", "alice", "--reason", "valve maintenance", "--topic", control) == 0
    _send(producer, topic, "pump-1", 0, 50)
    first = RunningPipeline(settings, _model())
    try:
        assert first.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 50
                              and counter(m, "latentwatch_offset_commits_total") >= 1)
    finally:
        assert first.stop() == 0
    assert counter(first.pipeline.metrics, "latentwatch_alarms_suppressed_total") == 3  # 20, 30, 40
    _send(producer, topic, "pump-1", 50, 50)  # 50..99: 50, 60, 70 muted; 80, 90 not
    second = RunningPipeline(settings, _model())  # restored state: the mute goes on, applied once
    try:
        assert second.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 50)
        assert _cli(kafka_bootstrap, "accept", "pump-1", "--at", str(BASE + 100.5), "--by", "bob",
                    "--reason", "new set-point", "--topic", control) == 0
        time.sleep(1.0)  # (ordering only: the command is read before the next readings arrive)
        _send(producer, topic, "pump-1", 100, 10, alarm_every=1)  # an episode open at 100, accepted from 101
        assert second.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 60)
    finally:
        assert second.stop() == 0
    msgs = read_topic(kafka_bootstrap, settings.topics.alerts)
    alarmed = sorted({a["ts"] for a in alerts_of(msgs) if a["sensor_id"] == "pump-1"} - {iso(BASE + t) for t in
                                                                                        range(100, 110)})
    assert alarmed == [iso(BASE + t) for t in (0, 10, 80, 90)]
    closes = [e for e in episodes_of(msgs) if e.get("reason") == "accepted"]
    assert len(closes) == 1 and closes[0]["ts"] == iso(BASE + 100.5)
    capsys.readouterr()
    assert main(["sensors", "show", "pump-*", "--group-id", settings.group_id, "--topic", control,
                 "--bootstrap", kafka_bootstrap, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[0])
    part = shown["partitions"][0]
    assert part["suppressed"] == 6 and part["last_applied"]["by"] == "bob"
    assert shown["last_command"]["command"] == "accept"


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_a_command_reaches_the_member_that_owns_the_sensor_and_a_malformed_one_is_a_dead_letter(
        kafka_bootstrap, make_topic, producer, delivery):
    topic = make_topic(partitions=2)
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}", delivery=delivery)
    control = f"{topic}.control"
    members = [RunningPipeline(settings, _model()), RunningPipeline(settings, _model())]
    try:
        assert all(m.wait_for(lambda mt: mt.registry.get_sample_value("latentwatch_assigned_partitions") == 1)
                   for m in members)
        producer.produce(control, b'{"command": "mute", "sensor_id": "pump-9"}', key=b"pump-9")  # no by, why
        producer.flush(10)
        for p in (0, 1):  # both sensors muted: each is owned by a different member
            assert _cli(kafka_bootstrap, "mute", f"pump-{p}", "--at", str(BASE), "--for", "1h", "--by", "ops",
                        "--reason", "gateway swap", "--topic", control) == 0
        time.sleep(1.0)
        for p in (0, 1):
            _send(producer, topic, f"pump-{p}", 0, 30, partition=p)
        assert all(m.wait_for(lambda mt: mt.registry.get_sample_value("latentwatch_readings_scored_total") >= 30)
                   for m in members)
        suppressed = sum(counter(m.pipeline.metrics, "latentwatch_alarms_suppressed_total") for m in members)
        assert suppressed == 6  # 0, 10, 20 of each sensor, on the member that owns it
        assert all(m.rc is None and m.thread.is_alive() for m in members)  # the malformed command crashed none
    finally:
        assert [m.stop() for m in members] == [0, 0]
    assert alerts_of(read_topic(kafka_bootstrap, settings.topics.alerts)) == []
    dead = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=1)
    assert len(dead) == 1 and dict(dead[0].headers())["lw-dlq-reason"] == b"control_invalid"
    assert b"'by' is missing" in dict(dead[0].headers())["lw-dlq-detail"]


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_an_accept_is_applied_once_across_a_sigkill(kafka_bootstrap, make_topic, producer, tmp_path, delivery):
    """`latentwatch run` as a process: an accept applied, the process SIGKILLed, restarted on the
    same group. The command is read again at the restart (the compacted topic keeps it) but not
    applied again: the re-learnt baseline has counted every reading since the accept (a second
    application would have restarted it at the restart's first reading)."""
    from types import SimpleNamespace

    import numpy as np
    from latentwatch.pipeline import state
    from tests.support.control_harness import train_small
    from tests.support.processes import start_pipeline, stop_process, wait_drained, wait_url

    rng = np.random.default_rng(3)
    train_small(tmp_path, BASE, rng)
    topic = make_topic(partitions=1)
    stream = SimpleNamespace(input=topic, alerts=f"{topic}.alerts", dead=f"{topic}.dlq", latent=f"{topic}.latent",
                             group=f"lw-{uuid.uuid4().hex[:8]}", partitions=1)

    def send(lo, hi):
        for t in range(lo, hi):
            v = (rng.normal(0, 1, 3) + (6.0 if t >= 100 else 0.0)).round(4).tolist()
            producer.produce(topic, json.dumps({"sensor_id": "s1", "ts": BASE + t, "values": v}).encode(), key=b"s1")
        producer.flush(30)

    assert _cli(kafka_bootstrap, "accept", "s1", "--at", str(BASE + 200), "--by", "carol", "--reason", "new set-point",
                "--topic", f"{topic}.control") == 0
    send(0, 300)
    log = tmp_path / "run.log"
    proc = start_pipeline(kafka_bootstrap, stream, str(tmp_path / "m"), log, "--create-topics", "--delivery", delivery)
    try:
        wait_url(proc, log, since=0)
        wait_drained(kafka_bootstrap, stream, proc=proc)
        proc.kill()  # SIGKILL: no clean shutdown
        proc.wait(30)
        send(300, 600)
        proc = start_pipeline(kafka_bootstrap, stream, str(tmp_path / "m"), log, "--create-topics", "--delivery",
                              delivery)
        wait_url(proc, log)
        wait_drained(kafka_bootstrap, stream, proc=proc)
    finally:
        assert stop_process(proc) == 0
    records = [m for m in read_topic(kafka_bootstrap, f"{stream.group}-state") if m.key() == b"s1" and m.value()]
    entry, _before, _ = state.unpack_record(records[-1].value())
    assert entry.control.applied == BASE + 200 and entry.control.by == "carol"
    assert entry.baseline is not None and entry.baseline.learned and entry.baseline.seen == 400
    closes = {e["episode_id"] for e in episodes_of(read_topic(kafka_bootstrap, stream.alerts))
              if e.get("reason") == "accepted"}
    assert len(closes) == 1


def test_a_steady_episode_adapts_at_the_same_reading_across_a_sigkill(kafka_bootstrap, make_topic, producer,
                                                                        tmp_path):
    """`baseline.adapt_after` (issue 30.3) with `latentwatch run` as a process SIGKILLed while the
    episode is open: the episode's span comes back from the changelog, so it adapts at the same
    reading as an uninterrupted run of the same readings (the broker-less pipeline), once."""
    from types import SimpleNamespace

    import numpy as np
    from latentwatch.detectors.checkpoint import load
    from tests.support.control_harness import _feed, _pipeline, train_small
    from tests.support.processes import start_pipeline, stop_process, wait_drained, wait_url

    train_small(tmp_path, BASE, np.random.default_rng(3))
    rng = np.random.default_rng(5)
    readings = [{"sensor_id": "s1", "ts": BASE + t,
                 "values": (rng.normal(0, 1, 3) + (6.0 if t >= 100 else 0.0)).round(4).tolist()} for t in range(500)]
    model = load(tmp_path / "m")
    ref = _pipeline(model)
    ref.settings.baseline.adapt_after = 100
    ref._set_model(model)
    _feed(ref, readings, batch=200)
    expected = [a["ts"] for a in ref.sink.alerts if a["kind"] == "episode" and a.get("reason") == "adapted"]
    assert len(expected) == 1

    topic = make_topic(partitions=1)
    stream = SimpleNamespace(input=topic, alerts=f"{topic}.alerts", dead=f"{topic}.dlq", latent=f"{topic}.latent",
                             group=f"lw-{uuid.uuid4().hex[:8]}", partitions=1)

    def send(lo, hi):
        for r in readings[lo:hi]:
            producer.produce(topic, json.dumps(r).encode(), key=b"s1")
        producer.flush(30)

    env = {"LATENTWATCH_BASELINE__ADAPT_AFTER": "100"}
    log = tmp_path / "run.log"
    send(0, 170)  # the episode opens at ~100: killed ~70 readings into it
    proc = start_pipeline(kafka_bootstrap, stream, str(tmp_path / "m"), log, "--create-topics", env=env)
    try:
        wait_url(proc, log, since=0)
        wait_drained(kafka_bootstrap, stream, proc=proc)
        proc.kill()
        proc.wait(30)
        send(170, 500)
        proc = start_pipeline(kafka_bootstrap, stream, str(tmp_path / "m"), log, "--create-topics", env=env)
        wait_url(proc, log)
        wait_drained(kafka_bootstrap, stream, proc=proc)
    finally:
        assert stop_process(proc) == 0
    got = [e["ts"] for e in episodes_of(read_topic(kafka_bootstrap, stream.alerts)) if e.get("reason") == "adapted"]
    assert got == expected
