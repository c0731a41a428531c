"""Protobuf input against a real Apicurio Registry and the real broker (issue 31): confluent-kafka's
own ProtobufSerializer as the producer nobody here wrote, with message classes made at test time
from a FileDescriptorProto (no generated _pb2 module), and the dead letters of bad input."""

from __future__ import annotations

import struct

from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2
from latentwatch.pipeline.devtools.protobuf_readings import ProtobufReadings

from tests.support.harness import counter, read_topic
from tests.support.schema_streams import as_json, outcome, produce, readings, run_until_scored


def test_protobuf_serializer_producer_gives_the_same_alerts_as_the_same_readings_in_json(
        kafka_bootstrap, make_topic, registry_url):
    rs = readings(120)
    json_topic, pb_topic = make_topic(), make_topic()
    produce(kafka_bootstrap, json_topic, as_json(rs))
    enc = ProtobufReadings(registry_url, pb_topic)  # registers the schema (base64 FileDescriptorProto)
    produce(kafka_bootstrap, pb_topic, [(s.encode(), enc.encode(s, ts, v)) for s, ts, v in rs])

    s_json, _ = run_until_scored(kafka_bootstrap, json_topic, len(rs))
    s_pb, m_pb = run_until_scored(kafka_bootstrap, pb_topic, len(rs), **{"schema_registry.url": registry_url})
    alerts_json = read_topic(kafka_bootstrap, s_json.topics.alerts)
    alerts_pb = read_topic(kafka_bootstrap, s_pb.topics.alerts)
    assert len(alerts_pb) >= 7  # 120 // 17 anomalies, plus episode events
    assert outcome(alerts_pb) == outcome(alerts_json)
    assert sum(counter(m_pb, "latentwatch_dead_letters_total", reason=r) for r in
               ("unknown_schema", "undecodable", "schema_mapping", "schema")) == 0


def _flat_class():
    """A message with no `values` and only channel `a`: it cannot give channels b and c."""
    from google.protobuf import descriptor_pool
    from google.protobuf.message_factory import GetMessageClass

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="acme/flat.proto", package="acme", syntax="proto3")
    m = fdp.message_type.add(name="Flat")
    m.field.add(name="sensor_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    m.field.add(name="ts", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    m.field.add(name="a", number=3, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return GetMessageClass(pool.FindMessageTypeByName("acme.Flat"))


def test_unknown_schema_id_corrupt_payload_and_a_schema_lacking_a_channel_are_dead_letters_and_the_rest_score(
        kafka_bootstrap, make_topic, registry_url):
    topic, flat_topic = make_topic(), make_topic()
    rs = readings(12)
    enc = ProtobufReadings(registry_url, topic)
    good = [enc.encode(s, ts, v) for s, ts, v in rs]
    Flat = _flat_class()
    flat = ProtobufSerializer(Flat, SchemaRegistryClient({"url": registry_url}), {"use.deprecated.format": False})(
        Flat(sensor_id="s0", ts=rs[0][1], a=1.0), SerializationContext(flat_topic, MessageField.VALUE))
    bad = [struct.pack(">bI", 0, 987_654) + good[0][5:],  # an id the registry does not have
           good[1][:-4],  # cut inside the values map
           flat]
    produce(kafka_bootstrap, topic, [(b"s0", v) for v in bad] + [(s.encode(), v) for (s, _, _), v in zip(rs, good)])
    settings, m = run_until_scored(kafka_bootstrap, topic, len(rs), **{"schema_registry.url": registry_url})
    dlq = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=3)
    reasons = [dict(d.headers())["lw-dlq-reason"].decode() for d in dlq]
    assert sorted(reasons) == ["schema_mapping", "undecodable", "unknown_schema"]
    detail = dict(dlq[reasons.index("schema_mapping")].headers())["lw-dlq-detail"].decode()
    assert "no field 'b' for channel b" in detail and "acme.Flat" in detail, detail  # names the field
    for r in ("schema_mapping", "undecodable", "unknown_schema"):
        assert counter(m, "latentwatch_dead_letters_total", reason=r) == 1

