"""Schema'd input against a real Apicurio Registry and the real broker (issue 31): confluent-kafka's
own AvroSerializer as the producer nobody here wrote, schema evolution mid-stream, a registry
outage, and CloudEvents headers on every alert and episode record."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from latentwatch.pipeline.devtools.avro_readings import READING_V1, AvroReadings, reading_v2

from tests.support.cloudevents import check_binding
from tests.support.harness import RunningPipeline, counter, read_topic, settings_for
from tests.support.schema_streams import (
    CH,
    SCORED,
    as_json,
    produce,
    readings,
    run_until_scored,
    same_alerts_as_json,
)
from tests.support.stub_model import stub_model


def test_avro_serializer_producer_gives_the_same_alerts_as_the_same_readings_in_json(
        kafka_bootstrap, make_topic, registry_url):
    # AvroReadings auto-registers READING_V1 under <topic>-value
    alerts_avro = same_alerts_as_json(kafka_bootstrap, make_topic, registry_url,
                                      lambda topic: AvroReadings(registry_url, topic).encode)
    kinds = set()
    for m in alerts_avro:  # CloudEvents on every alert and episode record
        h = check_binding(m.headers(), json.loads(m.value()))
        kinds.add(h["ce_type"])
    assert {"io.latentwatch.alert.reading", "io.latentwatch.episode.open"} <= kinds


def test_schema_evolution_mid_stream_scores_on_without_restart_and_an_incompatible_v3_is_rejected(
        kafka_bootstrap, make_topic, registry_url):
    topic = make_topic()
    client = SchemaRegistryClient({"url": registry_url})
    v1, v2 = AvroReadings(registry_url, topic, client=client), AvroReadings(registry_url, topic, reading_v2(), client)
    first, second = readings(60), readings(60, t0=round(time.time() - 1800))
    produce(kafka_bootstrap, topic, [(s.encode(), v1.encode(s, ts, v)) for s, ts, v in first])
    settings = settings_for(kafka_bootstrap, topic, **{"schema_registry.url": registry_url})
    run = RunningPipeline(settings, stub_model(CH))
    try:
        assert run.wait_for(lambda m: counter(m, SCORED) >= 60, timeout=90)
        # v2 (a field with a default) registered mid-stream; old and new records interleaved
        mixed = [(s.encode(), (v2.encode(s, ts, v, site="north") if i % 2 else v1.encode(s, ts, v)))
                 for i, (s, ts, v) in enumerate(second)]
        produce(kafka_bootstrap, topic, mixed)
        assert run.wait_for(lambda m: counter(m, SCORED) >= 120, timeout=90)
    finally:
        assert run.stop() == 0
    assert len(client.get_versions(f"{topic}-value")) == 2
    assert read_topic(kafka_bootstrap, settings.topics.dead_letter) == []
    # v3 changes a field's type: the registry (global compatibility BACKWARD) refuses it
    v3 = json.loads(json.dumps(READING_V1))
    v3["fields"][2]["type"] = {"type": "map", "values": "string"}
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(f"{topic}-value", Schema(json.dumps(v3), "AVRO"))
    assert refused.value.http_status_code == 409
    assert len(client.get_versions(f"{topic}-value")) == 2


def committed(bootstrap: str, group: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return c.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
    finally:
        c.close()


@pytest.mark.slow
def test_registry_stopped_for_30_s_mid_stream_no_dead_letters_no_commit_past_all_scored_after(
        kafka_bootstrap, make_topic, own_registry):
    topic = make_topic()
    url = own_registry.status().url
    client = SchemaRegistryClient({"url": url})
    v1, v2 = AvroReadings(url, topic, client=client), AvroReadings(url, topic, reading_v2(), client)
    first, second = readings(40), readings(40, t0=round(time.time() - 1800))
    produce(kafka_bootstrap, topic, [(s.encode(), v1.encode(s, ts, v)) for s, ts, v in first])
    # v2 records made (and v2 registered) now: the pipeline first meets its id during the outage
    later = [(s.encode(), v2.encode(s, ts, v, site="x")) for s, ts, v in second]
    settings = settings_for(kafka_bootstrap, topic, **{"schema_registry.url": url, "schema_registry.timeout_s": 1,
                                                       "schema_registry.backoff_max_s": 2})
    run = RunningPipeline(settings, stub_model(CH))
    try:
        assert run.wait_for(lambda m: counter(m, SCORED) >= 40, timeout=90)
        own_registry.stop()
        produce(kafka_bootstrap, topic, later)
        assert run.wait_for(lambda m: counter(m, "latentwatch_schema_registry_failures_total") >= 2, timeout=30)
        time.sleep(30)  # the outage: the pipeline keeps retrying
        m = run.pipeline.metrics
        assert counter(m, "latentwatch_schema_registry_up") == 0
        assert counter(m, SCORED) == 40
        assert committed(kafka_bootstrap, settings.group_id, topic) <= 40  # nothing past the unscored
        ok, why = run.pipeline.health.readiness()
        assert ok and "schema registry unreachable" in why
        assert run.pipeline.health.liveness()[0]
        own_registry.start()  # same state folder and port: the ids are kept
        assert run.wait_for(lambda m: counter(m, SCORED) >= 80, timeout=90)
        assert counter(run.pipeline.metrics, "latentwatch_schema_registry_up") == 1
    finally:
        assert run.stop() == 0
    assert read_topic(kafka_bootstrap, settings.topics.dead_letter) == []
    assert committed(kafka_bootstrap, settings.group_id, topic) == 80
    assert sum(counter(run.pipeline.metrics, "latentwatch_dead_letters_total", reason=r)
               for r in ("unknown_schema", "undecodable", "schema_mapping")) == 0


def test_a_wire_format_message_without_a_registry_is_a_dead_letter_and_the_rest_score(
        kafka_bootstrap, make_topic, registry_url):
    topic = make_topic()
    rs = readings(10)
    enc = AvroReadings(registry_url, topic)
    produce(kafka_bootstrap, topic, [(b"s0", enc.encode(*rs[0]))] + as_json(rs[1:]))
    settings, m = run_until_scored(kafka_bootstrap, topic, 9)
    assert counter(m, "latentwatch_dead_letters_total", reason="unknown_schema") == 1
    dlq = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=1)
    assert dict(dlq[0].headers())["lw-dlq-reason"] == b"unknown_schema"


@pytest.mark.parametrize("fmt,batch_size", [("avro", 1), ("avro", 4), ("protobuf", 1), ("protobuf", 4)])
def test_simulate_format_avro_or_protobuf_writes_wire_format_records_the_pipeline_decodes(
        kafka_bootstrap, make_topic, registry_url, fmt, batch_size):
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.decode import Decoder, Mapping, SchemaInput
    from latentwatch.pipeline.kafka.registry import RegistryLookup

    topic = make_topic()
    rc = main(["simulate", "--topic", topic, "--bootstrap", kafka_bootstrap, "--format", fmt,
               "--schema-registry", registry_url, "--count", "40", "--sensors", "2", "--channels", "3",
               "--rate", "0", "--seed", "1", "--batch-size", str(batch_size)])
    assert rc == 0
    msgs = read_topic(kafka_bootstrap, topic)
    assert msgs and all(m.value()[0] == 0 for m in msgs)
    lookup = RegistryLookup(SchemaRegistryClient({"url": registry_url}))
    dec = Decoder(["ch0", "ch1", "ch2"], schemas=SchemaInput(lookup, Mapping()))
    got = dec.decode_many([(m.value(), m.key()) for m in msgs], time.time())
    assert got.errors == [] and int(got.counts.sum()) == 40 and set(got.sensor_ids) == {m.key().decode() for m in msgs}
    assert lookup.get(int.from_bytes(msgs[0].value()[1:5], "big"))[0] == fmt.upper()


def test_simulate_format_avro_without_a_registry_says_so_in_one_line(capsys, monkeypatch):
    from latentwatch.pipeline.cli.main import main

    monkeypatch.delenv("LATENTWATCH_SCHEMA_REGISTRY__URL", raising=False)
    assert main(["simulate", "--topic", "t", "--bootstrap", "127.0.0.1:1", "--format", "avro", "--count", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--schema-registry" in err[0] and "Traceback" not in err[0]
