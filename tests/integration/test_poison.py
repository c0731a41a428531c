"""Poison messages against the real broker: none of them stops or crashes the pipeline, each is
dead-lettered with its reason, and the traffic after it is scored (issue #13, defects 1 and 2).

Both fail on the old run loop: the ~1 MB dead letter was refused by the producer
(MSG_SIZE_TOO_LARGE) and the batch was redone forever; 3.4e38 made a NaN score that crashed
`observe_many`."""

from __future__ import annotations

import hashlib
import json
import time

import pytest
from confluent_kafka import Producer

from tests.support.harness import RunningPipeline, counter, read_topic, settings_for
from tests.support.stub_model import stub_model

CH = ["a", "b", "c"]


def _reading(sensor: str, ts: float, v: float) -> bytes:
    return json.dumps({"sensor_id": sensor, "ts": ts, "values": [v, v, v]}).encode()


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_near_1mb_and_too_large_messages_are_dead_lettered_and_later_traffic_scored(
        kafka_bootstrap, make_topic, delivery):
    topic = make_topic(partitions=1)
    big = Producer({"bootstrap.servers": kafka_bootstrap, "message.max.bytes": 2_000_000})
    now = time.time()
    garbage = b"\x01" * 999_900  # valid size, not JSON: its dead letter + headers is over 1 MB
    too_large = b"{" + b" " * 1_040_000 + b"}"  # over batch.max_message_bytes, under the broker's limit
    big.produce(topic, garbage, key=b"p")
    big.produce(topic, too_large, key=b"p")
    for i in range(50):
        big.produce(topic, _reading("after", now - 100 + i, 0.1), key=b"after")
    assert big.flush(30) == 0

    settings = settings_for(kafka_bootstrap, topic, delivery=delivery)
    run = RunningPipeline(settings, stub_model(CH))
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 50, timeout=90)
    finally:
        rc = run.stop()
    m = run.pipeline.metrics
    assert rc == 0
    assert counter(m, "latentwatch_dead_letters_total", reason="not_json") == 1
    assert counter(m, "latentwatch_dead_letters_total", reason="too_large") == 1
    assert counter(m, "latentwatch_dead_letters_truncated_total") >= 1
    dlq = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=2, timeout=60)
    by_reason = {dict(x.headers())["lw-dlq-reason"]: x for x in dlq}
    trunc = dict(by_reason[b"too_large"].headers())
    assert trunc["lw-dlq-truncated"] == b"true"
    assert int(trunc["lw-dlq-original-bytes"]) == len(too_large)
    assert trunc["lw-dlq-original-sha256"] == hashlib.sha256(too_large).hexdigest().encode()
    assert len(by_reason[b"too_large"].value()) < len(too_large)


def test_float32_max_values_neither_crash_nor_give_a_null_score(kafka_bootstrap, make_topic, producer):
    topic = make_topic(partitions=1)
    now = time.time()
    producer.produce(topic, _reading("dead-sensor", now - 10, 3.4e38), key=b"dead-sensor")
    for i in range(20):
        producer.produce(topic, _reading("ok", now - 100 + i, 0.1), key=b"ok")
    producer.flush(30)
    settings = settings_for(kafka_bootstrap, topic)
    run = RunningPipeline(settings, stub_model(CH, threshold=9.0))
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 21, timeout=60)
    finally:
        rc = run.stop()
    assert rc == 0 and run.thread is not None and not run.thread.is_alive()
    alerts = [a for a in (json.loads(x.value()) for x in read_topic(kafka_bootstrap, settings.topics.alerts))
              if a["kind"] == "reading"]
    assert alerts and all(isinstance(a["score"], float) for a in alerts)
    assert counter(run.pipeline.metrics, "latentwatch_reconstruction_score_count") == 21
