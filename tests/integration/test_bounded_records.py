"""Every record the pipeline produces fits the producer's limit, against the real broker: a
600,000-character sensor id is a dead letter, and the traffic after it is committed."""

from __future__ import annotations

import json
import time

from tests.support.harness import RunningPipeline, counter, read_topic, settings_for
from tests.support.stub_model import stub_model

CH = ["a", "b", "c"]


def test_a_600000_character_sensor_id_is_dead_lettered_and_later_traffic_is_committed(
        kafka_bootstrap, make_topic, producer):
    topic, now = make_topic(partitions=1), time.time()
    long_id = "x" * 600_000
    # in contract but for its id: 0.6 MB; with the latent topic on, its record would be 1.2 MB
    producer.produce(topic, json.dumps({"sensor_id": long_id, "ts": now - 100, "values": [1.0, 2.0, 3.0]}).encode())
    for i in range(20):
        producer.produce(topic, json.dumps({"sensor_id": "ok", "ts": now - 99 + i, "values": [1.0, 2.0, 3.0]}).encode(),
                         key=b"ok")
    producer.flush(30)
    settings = settings_for(kafka_bootstrap, topic, **{"topics.latent": f"{topic}.latent"})
    run = RunningPipeline(settings, stub_model(CH))
    try:
        assert run.wait_for(lambda m: counter(m, "latentwatch_readings_scored_total") >= 20
                            and counter(m, "latentwatch_offset_commits_total") >= 1)
        m = run.pipeline.metrics
        assert counter(m, "latentwatch_dead_letters_total", reason="bad_sensor_id") == 1
        assert counter(m, "latentwatch_batch_rewinds_total") == 0  # was: redone forever, nothing committed
    finally:
        assert run.stop() == 0
    (dlq,) = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=1)
    headers = dict(dlq.headers())
    assert headers["lw-dlq-reason"] == b"bad_sensor_id"
    assert len(read_topic(kafka_bootstrap, settings.topics.latent, expected=20)) == 20
