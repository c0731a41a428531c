"""Streams of readings for the schema'd input/output tests (tests/integration/test_avro*.py,
test_java_producer.py): the same readings as JSON or any encoding, a pipeline run until it
scored them, and what its alerts topic said."""

from __future__ import annotations

import json
import time

from confluent_kafka import Producer

from tests.support.harness import RunningPipeline, counter, read_topic, settings_for
from tests.support.stub_model import stub_model

CH = ["a", "b", "c"]
SCORED = "latentwatch_readings_scored_total"


def readings(n: int, sensors: int = 3, t0: float | None = None) -> list[tuple[str, float, dict]]:
    """(sensor, ts, values): quiet readings with an anomaly every 17th (z^2 far above 9)."""
    t0 = round(time.time() - 3600) if t0 is None else t0
    out = []
    for i in range(n):
        v = 50.0 if i % 17 == 5 else 0.1 * ((i % 5) - 2)
        out.append((f"s{i % sensors}", t0 + i * 0.25, {"a": v, "b": -v, "c": 0.5 * v}))  # whole ms: Avro millis
    return out


def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for key, value in values:
        p.produce(topic, value, key=key)
    assert p.flush(30) == 0


def as_json(rs) -> list[tuple[bytes, bytes]]:
    return [(s.encode(), json.dumps({"sensor_id": s, "ts": ts, "values": v}).encode()) for s, ts, v in rs]


def run_until_scored(bootstrap, topic, n, **overrides):
    settings = settings_for(bootstrap, topic, **overrides)
    run = RunningPipeline(settings, stub_model(CH))
    try:
        assert run.wait_for(lambda m: counter(m, SCORED) >= n, timeout=90)
    finally:
        assert run.stop() == 0
    return settings, run.pipeline.metrics


def outcome(messages) -> list[tuple]:
    """What the alerts topic said, independent of ids (which name the input topic)."""
    out = []
    for m in messages:
        r = json.loads(m.value())
        out.append((r["kind"], r.get("event"), r["sensor_id"], r["ts"], r.get("score", r.get("peak_score")),
                    r["severity"]))
    return sorted(out)


def same_alerts_as_json(bootstrap, make_topic, registry_url, encoder_for, n: int = 120) -> list:
    """`n` readings as JSON on one topic and as `encoder_for(topic)(sensor, ts, values)` on another, each
    scored by its own pipeline: the alerts must be the same, nothing dead-lettered. Returns the
    schema'd run's alert records."""
    rs = readings(n)
    json_topic, topic = make_topic(), make_topic()
    produce(bootstrap, json_topic, as_json(rs))
    encode = encoder_for(topic)
    produce(bootstrap, topic, [(s.encode(), encode(s, ts, v)) for s, ts, v in rs])
    s_json, _ = run_until_scored(bootstrap, json_topic, len(rs))
    s_reg, m_reg = run_until_scored(bootstrap, topic, len(rs), **{"schema_registry.url": registry_url})
    alerts_json = read_topic(bootstrap, s_json.topics.alerts)
    alerts = read_topic(bootstrap, s_reg.topics.alerts)
    assert len(alerts) >= n // 17  # an anomaly every 17th reading, plus episode events
    assert outcome(alerts) == outcome(alerts_json)
    assert sum(counter(m_reg, "latentwatch_dead_letters_total", reason=r) for r in
               ("unknown_schema", "undecodable", "schema_mapping", "schema")) == 0
    return alerts
