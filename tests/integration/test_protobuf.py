"""Protobuf input against a real Apicurio Registry and the real broker (issue 31): confluent-kafka's
own ProtobufSerializer as the producer nobody here wrote, with message classes made at test time
from a FileDescriptorProto (no generated _pb2 module), and the dead letters of bad input."""

from __future__ import annotations

import struct

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2
from latentwatch.pipeline.devtools.protobuf_readings import ProtobufReadings

from tests.support.harness import counter, read_topic
from tests.support.schema_streams import produce, readings, run_until_scored, same_alerts_as_json


def test_protobuf_serializer_producer_gives_the_same_alerts_as_the_same_readings_in_json(
        kafka_bootstrap, make_topic, registry_url):
    # ProtobufSerializer registers the schema as a base64 FileDescriptorProto; message indexes [0]
    same_alerts_as_json(kafka_bootstrap, make_topic, registry_url, lambda topic: ProtobufReadings(registry_url, topic).encode)


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


TEXT_SCHEMA = """syntax = "proto3";
package acme.text;
import "google/protobuf/timestamp.proto";
// registered as text, as a Java producer or the registry's UI would: Apicurio hands it back verbatim
message Reading {
  string sensor_id = 1;
  google.protobuf.Timestamp ts = 2;
  map<string, double> values = 3;
  enum Quality { GOOD = 0; BAD = 1; }
  Quality quality = 4;
}
"""


def test_bad_protobuf_input_is_dead_lettered_with_its_reasons_and_the_rest_scores_text_schemas_too(
        kafka_bootstrap, make_topic, registry_url):
    topic, flat_topic, text_topic = make_topic(), make_topic(), make_topic()
    rs = readings(12)
    enc = ProtobufReadings(registry_url, topic)
    good = [enc.encode(s, ts, v) for s, ts, v in rs]
    # one more reading under a schema the registry holds as .proto text (compiled with protoc)
    text_id = SchemaRegistryClient({"url": registry_url}).register_schema(f"{text_topic}-value",
                                                                          Schema(TEXT_SCHEMA, "PROTOBUF"))
    same_fields = enc.cls(sensor_id="s9", values={"a": 1.0, "b": 2.0, "c": 3.0})  # fields 1-3 as acme.text.Reading
    same_fields.ts.FromMilliseconds(round(rs[0][1] * 1000))
    good.append(struct.pack(">bI", 0, text_id) + b"\x00" + same_fields.SerializeToString())
    rs.append(("s9", rs[0][1], {}))
    Flat = _flat_class()
    flat = ProtobufSerializer(Flat, SchemaRegistryClient({"url": registry_url}), {"use.deprecated.format": False})(
        Flat(sensor_id="s0", ts=rs[0][1], a=1.0), SerializationContext(flat_topic, MessageField.VALUE))
    bad = [struct.pack(">bI", 0, 987_654) + good[0][5:],  # an id the registry does not have
           good[1][:-4],  # cut inside the values map
           flat]
    produce(kafka_bootstrap, topic, [(b"s0", v) for v in bad] + [(s.encode(), v) for (s, _, _), v in zip(rs, good)])
    # unknown id, corrupt payload, a schema lacking channels: dead letters; the 13 good ones (the
    # text-schema reading among them) all scored
    settings, m = run_until_scored(kafka_bootstrap, topic, len(rs), **{"schema_registry.url": registry_url})
    dlq = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=3)
    reasons = [dict(d.headers())["lw-dlq-reason"].decode() for d in dlq]
    assert sorted(reasons) == ["schema_mapping", "undecodable", "unknown_schema"]
    detail = dict(dlq[reasons.index("schema_mapping")].headers())["lw-dlq-detail"].decode()
    assert "no field 'b' for channel b" in detail and "acme.Flat" in detail, detail  # names the field
    for r in ("schema_mapping", "undecodable", "unknown_schema"):
        assert counter(m, "latentwatch_dead_letters_total", reason=r) == 1

