"""Schema'd output against a real Apicurio Registry and the real broker (issue 31 item 2): with
`alerts.format: avro`, the alerts and latent topics carry Avro records registered under
`<topic>-value`, equal to the JSON records of the same readings; the repo's schemas evolve
BACKWARD compatibly (checked by the registry against every published version in
pipeline/schemas/history/)."""

from __future__ import annotations

import json
import uuid

import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from latentwatch.pipeline.avro_out import SCHEMA_DIR, schema_text
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.runner import Pipeline

from tests.support.cloudevents import check_binding
from tests.support.harness import read_topic, settings_for
from tests.support.schema_streams import CH, as_json, produce, readings, run_until_scored
from tests.support.stub_model import stub_model


def _without_nulls(r: dict) -> dict:
    """The JSON record: the schema's optional fields (null when absent), left out at every level."""
    return {k: (_without_nulls(v) if isinstance(v, dict) else v) for k, v in r.items() if v is not None}


def _comparable(r: dict) -> dict:
    return {k: v for k, v in r.items() if k != "detected_at"}  # wall-clock time of each run


def test_avro_alerts_and_latents_read_back_with_avro_deserializer_equal_the_json_records(
        kafka_bootstrap, make_topic, registry_url):
    topic = make_topic()
    rs = readings(120)
    produce(kafka_bootstrap, topic, as_json(rs))
    s_json, _ = run_until_scored(kafka_bootstrap, topic, len(rs), **{"topics.alerts": f"{topic}.aj",
                                                                     "topics.latent": f"{topic}.lj"})
    s_avro, _ = run_until_scored(kafka_bootstrap, topic, len(rs), **{
        "topics.alerts": f"{topic}.aa", "topics.latent": f"{topic}.la", "alerts.format": "avro",
        "schema_registry.url": registry_url})
    client = SchemaRegistryClient({"url": registry_url})
    alerts_json = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, s_json.topics.alerts)]
    raw = read_topic(kafka_bootstrap, s_avro.topics.alerts)
    deser = AvroDeserializer(client)
    ctx = SerializationContext(s_avro.topics.alerts, MessageField.VALUE)
    alerts_avro = [_without_nulls(deser(m.value(), ctx)) for m in raw]
    assert len(alerts_avro) >= 7 and all(m.value()[0] == 0 for m in raw)
    assert {r["kind"] for r in alerts_avro} == {"reading", "episode"}
    key = lambda r: (r.get("alert_id") or r["episode_id"], r.get("event") or "", r.get("readings") or 0)  # noqa: E731
    assert sorted(map(_comparable, alerts_avro), key=key) == sorted(map(_comparable, alerts_json), key=key)
    for m, r in zip(raw, alerts_avro):  # CloudEvents on every record, content-type the Avro one
        check_binding(m.headers(), r, content_type="application/avro")
    # registered under <topic>-value: the repo's current schema, the id each record carries
    latest = client.get_latest_version(f"{s_avro.topics.alerts}-value")
    assert json.loads(latest.schema.schema_str) == json.loads(schema_text("alert"))
    assert {int.from_bytes(m.value()[1:5], "big") for m in raw} == {latest.schema_id}
    # the latent topic: one record per reading, equal to the JSON one
    lat_ctx = SerializationContext(s_avro.topics.latent, MessageField.VALUE)
    lat_avro = [_without_nulls(deser(m.value(), lat_ctx)) for m in read_topic(kafka_bootstrap, s_avro.topics.latent)]
    lat_json = [json.loads(m.value()) for m in read_topic(kafka_bootstrap, s_json.topics.latent)]
    src = lambda r: tuple(r["source"].values())  # noqa: E731
    assert len(lat_avro) == len(rs) and sorted(lat_avro, key=src) == sorted(lat_json, key=src)


def _history(name: str) -> list[str]:
    files = sorted((SCHEMA_DIR / "history").glob(f"{name}-v*.avsc"), key=lambda p: int(p.stem.split("-v")[1]))
    assert files, f"no published version of {name}.avsc in pipeline/schemas/history/"
    return [p.read_text() for p in files]


@pytest.mark.parametrize("name", ["alert", "latent"])
def test_the_repo_schema_is_backward_compatible_with_every_published_version(sr_client, subject, name):
    for text in _history(name):
        sr_client.register_schema(subject, Schema(text, "AVRO"))
    sr_client.set_compatibility(subject, "BACKWARD")
    assert sr_client.test_compatibility(subject, Schema(schema_text(name), "AVRO")) is True
    sr_client.register_schema(subject, Schema(schema_text(name), "AVRO"))  # and the registry takes it


def test_the_compatibility_check_refuses_a_breaking_change(sr_client, subject):
    """The check above can fail: a required field added (no default) is not BACKWARD compatible."""
    sr_client.register_schema(subject, Schema(schema_text("alert"), "AVRO"))
    sr_client.set_compatibility(subject, "BACKWARD")
    broken = json.loads(schema_text("alert"))
    broken["fields"].append({"name": "site", "type": "string"})
    assert sr_client.test_compatibility(subject, Schema(json.dumps(broken), "AVRO")) is False
    with pytest.raises(SchemaRegistryError) as refused:
        sr_client.register_schema(subject, Schema(json.dumps(broken), "AVRO"))
    assert refused.value.http_status_code == 409


def test_an_alerts_subject_of_another_shape_is_refused_at_start_in_one_line(kafka_bootstrap, make_topic, sr_client,
                                                                           registry_url):
    topic = make_topic()
    alerts = f"{topic}.alerts-{uuid.uuid4().hex[:6]}"
    other = {"type": "record", "name": "Theirs", "fields": [{"name": "x", "type": "int"}]}
    sr_client.register_schema(f"{alerts}-value", Schema(json.dumps(other), "AVRO"))
    settings = settings_for(kafka_bootstrap, topic, **{"topics.alerts": alerts, "alerts.format": "avro",
                                                       "schema_registry.url": registry_url})
    pipeline = Pipeline(settings, stub_model(CH))
    try:
        with pytest.raises(UserError) as err:
            pipeline.start()
    finally:
        pipeline.close()
    msg = str(err.value)
    assert "\n" not in msg and f"{alerts}-value" in msg and "409" in msg
