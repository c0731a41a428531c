"""Issue 29 against the real broker: a model version with a shorter episode close restarted on
restored state (1), keys that are not UTF-8 (6), and input partitions added while running (5)."""

from __future__ import annotations

import json
import math
import time
import uuid

from latentwatch.detectors.alarms import AlarmRule
from tests.support.harness import RunningPipeline, counter, episodes_of, read_topic, settings_for
from tests.support.stub_model import stub_model


def _model(close_after: int):
    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=close_after)
    return model


def _send(producer, topic, sensor, start, values):
    for i, v in enumerate(values):
        producer.produce(topic, json.dumps({"sensor_id": sensor, "ts": start + i, "values": [v] * 3}).encode(),
                         key=sensor.encode())
    producer.flush(30)


def test_a_restart_on_a_version_closing_sooner_closes_the_restored_episode_instead_of_crash_looping(
        kafka_bootstrap, make_topic, producer):
    """v1 closes after 50 quiet readings; pump-b opens an episode, then 30 quiet readings. v2
    closes after 10. Every restart was IndexError (alarms.py), exit 1, the partition stuck."""
    topic, now = make_topic(partitions=1), time.time()
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}")
    _send(producer, topic, "pump-a", now - 1000, [0.1] * 5)  # sorts before pump-b: a wrapped index hit it
    _send(producer, topic, "pump-b", now - 900, [9.0] + [0.1] * 30)  # score 81 > 30: open; then 30 quiet
    first = RunningPipeline(settings, _model(50))
    try:
        assert first.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 36
                              and counter(m, "latentwatch_offset_commits_total") >= 1)
    finally:
        assert first.stop() == 0
    _send(producer, topic, "pump-a", now - 800, [0.1] * 3)
    _send(producer, topic, "pump-b", now - 700, [0.1] * 2)
    second = RunningPipeline(settings, _model(10))
    try:
        assert second.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 5
                               and counter(m, "latentwatch_offset_commits_total") >= 1)
        assert second.thread.is_alive() and second.rc is None
    finally:
        assert second.stop() == 0
    events = [(e["sensor_id"], e["event"]) for e in episodes_of(read_topic(kafka_bootstrap, settings.topics.alerts))]
    assert events == [("pump-b", "open"), ("pump-b", "close")]
    close = episodes_of(read_topic(kafka_bootstrap, settings.topics.alerts))[-1]
    assert close["ts"] == close["ended_at"] and close["episode_id"].startswith(f"{topic}/0/")


def test_latin1_keys_are_dead_lettered_invalid_utf8_not_merged_into_one_sensor(kafka_bootstrap, make_topic, producer):
    topic, now = make_topic(partitions=1), time.time()
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}")
    for i, key in enumerate(("pump-ä".encode("latin-1"), "pump-ö".encode("latin-1"), b"pump-ok")):
        producer.produce(topic, json.dumps({"ts": now - 100 + i, "values": [0.1] * 3}).encode(), key=key)
    producer.flush(30)
    run = RunningPipeline(settings, _model(10))
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_messages_consumed_total") >= 3
                            and counter(m, "latentwatch_offset_commits_total") >= 1)
        assert counter(run.pipeline.metrics, "latentwatch_dead_letters_total", reason="invalid_utf8") == 2
        assert counter(run.pipeline.metrics, "latentwatch_dead_letters_total", reason="late") == 0
        assert counter(run.pipeline.metrics, "latentwatch_readings_scored_total") == 1
    finally:
        assert run.stop() == 0
    dead = read_topic(kafka_bootstrap, settings.topics.dead_letter)
    assert sorted(m.key() for m in dead) == sorted(["pump-ä".encode("latin-1"), "pump-ö".encode("latin-1")])
    assert {dict(m.headers())["lw-dlq-reason"] for m in dead} == {b"invalid_utf8"}


def test_an_input_partition_added_while_running_is_a_clear_failure_not_a_silent_stall(
        kafka_bootstrap, make_topic, producer, admin):
    from confluent_kafka.admin import NewPartitions

    topic, now = make_topic(partitions=1), time.time()
    # metadata refreshed every second, so the new partition is seen soon (default: 5 min)
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}",
                            **{"kafka.consumer": {"topic.metadata.refresh.interval.ms": 1000}})
    _send(producer, topic, "pump-a", now - 100, [0.1] * 3)
    run = RunningPipeline(settings, _model(10))
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_offset_commits_total") >= 1)
        admin.create_partitions([NewPartitions(topic, 2)])[topic].result(30)
        run.thread.join(90)  # was: spinning in the rebalance callback for good, probes green
        assert not run.thread.is_alive() and run.rc == 2
        assert counter(run.pipeline.metrics, "latentwatch_changelog_missing_partitions") == 1
        ready, why = run.pipeline.health.readiness()
        assert not ready and settings.group_id in why  # the state topic, <group_id>-state, named
    finally:
        run.stop()
