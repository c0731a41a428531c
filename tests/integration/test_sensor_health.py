"""Issue 30.1 on the real broker: a frozen sensor and a silent one give health records on the
alerts topic (with their CloudEvents headers), counted by rule, through the whole run loop."""

from __future__ import annotations

import json
import math
import time
import uuid

import numpy as np
from latentwatch.detectors.alarms import AlarmRule
from latentwatch.detectors.health import HealthRule
from tests.support.harness import RunningPipeline, counter, read_topic, settings_for
from tests.support.stub_model import stub_model


def test_a_frozen_and_a_silent_sensor_on_the_real_broker(kafka_bootstrap, make_topic, producer):
    topic, base = make_topic(partitions=1), time.time() - 3600
    settings = settings_for(kafka_bootstrap, topic, group_id=f"lw-{uuid.uuid4().hex[:8]}")
    model = stub_model(window=1, threshold=1e9)
    model.alarm = AlarmRule(instant=1e9, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=5)
    model.health = HealthRule.fit(np.random.default_rng(0).normal(0, 1, (5000, 3)), ["a", "b", "c"], silent_s=30)
    rng = np.random.default_rng(1)
    for t in range(120):
        for sid in ("ok", "frozen", "quiet"):
            if sid == "quiet" and t >= 40:
                continue  # silent from t=40 on
            v = [0.5, 0.5, 0.5] if sid == "frozen" and t >= 20 else rng.normal(0, 1, 3).round(4).tolist()
            producer.produce(topic, json.dumps({"sensor_id": sid, "ts": base + t, "values": v}).encode(),
                             key=sid.encode())
    producer.flush(30)
    run = RunningPipeline(settings, model)
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 280)
        m = run.pipeline.metrics
        assert counter(m, "latentwatch_health_episode_events_total", rule="flatline", event="open") == 1
        assert counter(m, "latentwatch_health_episode_events_total", rule="silent", event="open") == 1
    finally:
        assert run.stop() == 0
    health = [(json.loads(msg.value()), dict(msg.headers())) for msg in read_topic(kafka_bootstrap,
                                                                                  settings.topics.alerts)]
    opened = sorted((r["rule"], r["sensor_id"]) for r, _h in health if r["kind"] == "health" and r["event"] == "open")
    assert opened == [("flatline", "frozen"), ("silent", "quiet")]
    assert all(h["ce_type"].endswith(b".open") for r, h in health if r["kind"] == "health")
