"""Per-sensor state restored from the changelog against the real broker: a model change between
two runs (window, channels) drops the old entries instead of crashing every restart, and the
restore itself reads every sensor back."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from tests.support.harness import RunningPipeline, counter, settings_for
from tests.support.stub_model import stub_model

CH4 = ["a", "b", "c", "d"]


def _produce(producer, topic, sensors, start, n, per_message=5):
    for sensor in sensors:
        for first in range(0, n, per_message):
            readings = [{"ts": start + first + j, "values": {c: 0.1 * (j + 1) for c in CH4}}
                        for j in range(per_message)]
            producer.produce(topic, json.dumps({"sensor_id": sensor, "readings": readings}).encode(),
                             key=sensor.encode())
    producer.flush(30)


@pytest.mark.parametrize("before, after, reason", [
    ((16, CH4[:3]), (8, CH4[:3]), "window"),  # W=16 -> W=8: 15-row tails for 7-row windows
    ((4, CH4[:3]), (4, CH4), "channels"),  # a channel added
], ids=["window", "channels"])
def test_a_restart_with_another_window_or_channels_drops_the_restored_state_and_scores_on(
        kafka_bootstrap, make_topic, producer, before, after, reason):
    topic, sensors, now = make_topic(partitions=1), ["s0", "s1", "s2"], time.time()
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}")
    _produce(producer, topic, sensors, now - 1000, 20)
    first = RunningPipeline(settings, stub_model(before[1], window=before[0]))
    try:
        assert first.wait_for(lambda m: counter(m, "latentwatch_offset_commits_total") >= 1
                              and counter(m, "latentwatch_messages_consumed_total") >= 12)
    finally:
        assert first.stop() == 0
    _produce(producer, topic, sensors, now - 500, 10)
    window = after[0]
    second = RunningPipeline(settings, stub_model(after[1], window=window))
    try:
        assert second.wait_for(lambda m: counter(m, "latentwatch_messages_consumed_total") >= 6
                               and counter(m, "latentwatch_offset_commits_total") >= 1)
        assert second.thread.is_alive()  # was: IndexError / ValueError in the scorer, exit 1, every restart
        m = second.pipeline.metrics
        assert counter(m, "latentwatch_state_dropped_total", reason=reason) == len(sensors)
        assert counter(m, "latentwatch_state_restore_duration_seconds_count") >= 1
        # each sensor warms up like a new one: no score from an old tail
        assert counter(m, "latentwatch_readings_scored_total") == len(sensors) * (10 - (window - 1))
    finally:
        assert second.stop() == 0


def test_a_stop_during_a_restore_from_a_frozen_broker_ends_the_run_within_the_shutdown_timeout(tmp_path, monkeypatch):
    """The broker stops answering (SIGSTOP) right after the restore read its first records; a stop
    (what SIGTERM does) must end the run within shutdown_timeout_s, not after the restore's own
    120 s, and nothing is scored without its state."""
    import os
    import signal

    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    from latentwatch.pipeline.devtools.local_kafka import LocalBroker
    from latentwatch.pipeline.kafka import changelog

    broker = LocalBroker(tmp_path / "broker")
    info = broker.start()
    frozen = []
    try:
        bs = info.bootstrap
        topic = f"frozen-{uuid.uuid4().hex[:6]}"
        settings = settings_for(bs, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}", shutdown_timeout_s=3)
        producer = Producer({"bootstrap.servers": bs})
        admin = AdminClient({"bootstrap.servers": bs})  # held: a destroyed client fails its futures
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        _produce(producer, topic, [f"s{i}" for i in range(50)], time.time() - 1000, 5)
        first = RunningPipeline(settings, stub_model(CH4[:3], window=4))
        try:
            assert first.wait_for(lambda m: counter(m, "latentwatch_messages_consumed_total") >= 50
                                  and counter(m, "latentwatch_offset_commits_total") >= 1)
        finally:
            assert first.stop() == 0

        real = changelog.Consumer

        class FreezingConsumer(real):
            def consume(self, *args, **kwargs):
                got = super().consume(*args, **kwargs)
                if got and not frozen:  # the restore is under way: the broker stops answering
                    os.kill(info.pid, signal.SIGSTOP)
                    frozen.append(time.monotonic())
                return got

        monkeypatch.setattr(changelog, "Consumer", FreezingConsumer)
        second = RunningPipeline(settings, stub_model(CH4[:3], window=4))  # restores inside its first fetch
        deadline = time.monotonic() + 60
        while not frozen and time.monotonic() < deadline:
            time.sleep(0.05)
        assert frozen, "the restore never started"
        time.sleep(1.0)  # inside the frozen restore
        second.pipeline.stop()
        second.thread.join(settings.shutdown_timeout_s + 12)
        assert not second.thread.is_alive(), "still restoring after the stop (was: the restore's own 120 s)"
        assert second.rc == 0
        assert counter(second.pipeline.metrics, "latentwatch_readings_scored_total") == 0
    finally:
        if frozen:
            os.kill(info.pid, signal.SIGCONT)
        broker.stop()
