"""Protobuf input (decode/protobuf.py through decode/wire.py) without a broker: confluent-kafka's
ProtobufSerializer writes the Confluent wire format (message indexes included) against its
in-process MockSchemaRegistryClient; .proto text schemas are compiled with protoc (grpcio-tools).
The real registry's tests are in tests/integration/test_protobuf.py."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from confluent_kafka.schema_registry import Schema
from confluent_kafka.schema_registry.common.serde import SchemaId
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from latentwatch.pipeline.decode import Decoder, Mapping, SchemaInput
from latentwatch.pipeline.decode.protobuf import encode_indexes, read_indexes
from latentwatch.pipeline.devtools.protobuf_readings import PACKAGE, message_classes
from latentwatch.pipeline.kafka.registry import RegistryLookup

from tests.support.registry import counting_decoder

CHANNELS = ["temp", "pressure"]
T0 = 1_780_000_000.0
CTX = SerializationContext("readings", MessageField.VALUE)


def decoder(client, mapping=None, channels=CHANNELS):
    return counting_decoder(client, channels, mapping)


def serializer(mock_sr, cls):
    ser = ProtobufSerializer(cls, mock_sr, {"use.deprecated.format": False})
    return lambda msg: ser(msg, CTX)


def reading(cls, sid, ts, values):
    msg = cls(sensor_id=sid)
    msg.ts.FromMilliseconds(round(ts * 1000))
    msg.values.update(values)
    return msg


# -- message indexes -------------------------------------------------------------------------
@pytest.mark.parametrize("indexes", [[0], [1], [0, 0], [2, 5, 1], [63, 64], [300]])
def test_message_indexes_round_trip_with_confluents_own_encoder(indexes):
    buf = io.BytesIO()
    SchemaId._encode_varints(buf, indexes, zigzag=True)
    theirs = buf.getvalue()
    assert encode_indexes(indexes) == theirs
    assert read_indexes(theirs + b"\x0a\x01x") == (indexes, len(theirs))


def test_message_indexes_zigzag_bytes_and_the_single_zero_shortcut():
    assert encode_indexes([0]) == b"\x00"  # the first message: one byte, no count
    assert encode_indexes([1]) == b"\x02\x02"  # count 1, index 1, both zigzag (1 -> 2)
    assert encode_indexes([64]) == b"\x02\x80\x01"  # 64 -> 128: two varint bytes
    assert read_indexes(b"\x00rest") == ([0], 1)
    assert read_indexes(b"\x04\x02\x00") == ([1, 0], 3)
    for bad in (b"", b"\x04\x02", b"\x80", b"\x01\x00", b"\xff" * 11):  # truncated, negative count, too long
        with pytest.raises(ValueError):
            read_indexes(bad)


# -- decoding ----------------------------------------------------------------------------------
def test_protobuf_serializer_records_decode_like_the_json_contract_and_each_schema_is_fetched_once(mock_sr):
    cls = message_classes()[f"{PACKAGE}.Reading"]
    enc = serializer(mock_sr, cls)
    msgs = [(enc(reading(cls, f"s{i % 3}", T0 + i * 0.25, {"temp": 20.0 + i, "pressure": 1.0 + i, "x": 9.0})), None)
            for i in range(50)]
    assert msgs[0][0][5] == 0  # message indexes [0]: the single byte 0
    dec, lookup = decoder(mock_sr)
    got = dec.decode_many(msgs, now=T0 + 100)
    assert got.errors == []
    assert got.sensor_ids == [f"s{i % 3}" for i in range(50)]
    np.testing.assert_allclose(got.values, [[20.0 + i, 1.0 + i] for i in range(50)])
    np.testing.assert_allclose(got.ts, [T0 + i * 0.25 for i in range(50)])  # Timestamp -> epoch seconds
    dec.decode_many(msgs, now=T0 + 100)
    assert len(lookup.asked) == 1


def test_a_nested_message_named_by_its_indexes_and_the_batch_form(mock_sr):
    cls = message_classes()[f"{PACKAGE}.Readings"]  # the second top-level message: indexes [1]
    msg = cls(sensor_id="b")
    for k in range(3):
        item = msg.readings.add()
        item.ts.FromMilliseconds(round((T0 + k) * 1000))
        item.values.update({"temp": float(k), "pressure": -float(k)})
    data = serializer(mock_sr, cls)(msg)
    assert read_indexes(data[5:])[0] == [1]
    got = decoder(mock_sr)[0].decode_many([(data, None)], now=T0 + 10)
    assert got.errors == [] and got.counts.tolist() == [3]
    np.testing.assert_allclose(got.values, [[0, 0], [1, -1], [2, -2]])


PLANT_PROTO = """
syntax = "proto3";
package acme.plant;
import "google/protobuf/timestamp.proto";

// what a plant's own schema may hold besides readings: enums, oneofs, options, nesting
message Envelope {
  message Sample {
    string asset = 1;
    int64 time_ms = 2;
    double t_c = 3 [deprecated = true];
    double pressure = 4;
    enum Quality { GOOD = 0; BAD = 1; }
    Quality quality = 5;
    oneof note { string text = 6; int32 code = 7; }
  }
}
message Array { string sensor_id = 1; google.protobuf.Timestamp ts = 2; repeated double values = 3; }
message Flat { string sensor_id = 1; google.protobuf.Timestamp ts = 2; double temp = 3; }
"""


def _compiled(text):
    from latentwatch.pipeline.decode.protobuf import ProtoSchema, message_class

    schema = ProtoSchema(text)
    return lambda *indexes: message_class(schema.message(list(indexes)))


def _wire(schema_id, indexes, msg):
    return struct.pack(">bI", 0, schema_id) + encode_indexes(indexes) + msg.SerializeToString()


def test_proto_text_schemas_compile_with_protoc_named_fields_int64_millis_and_the_key_as_sensor_id(mock_sr):
    sid = mock_sr.register_schema("plant-value", Schema(PLANT_PROTO, "PROTOBUF"))
    Sample = _compiled(PLANT_PROTO)(0, 0)  # Envelope.Sample: indexes [0, 0]
    msg = Sample(time_ms=int(T0 * 1000) + 250, t_c=21.5, pressure=3.0, quality=1, code=7)
    mapping = Mapping(sensor_id="asset", time="time_ms", time_unit="ms", channels=None, rename={"temp": "t_c"})
    got = decoder(mock_sr, mapping)[0].decode_many([(_wire(sid, [0, 0], msg), b"pump-7")], now=T0 + 1)
    assert got.errors == [] and got.sensor_ids == ["pump-7"]  # asset "" (proto3 unset): the key
    np.testing.assert_allclose(got.values, [[21.5, 3.0]])
    assert got.ts[0] == pytest.approx(T0 + 0.25)


def test_channels_as_repeated_double_in_model_order(mock_sr):
    sid = mock_sr.register_schema("arr-value", Schema(PLANT_PROTO, "PROTOBUF"))
    Array = _compiled(PLANT_PROTO)(1)
    ok, short = Array(sensor_id="a", values=[1.0, 2.0]), Array(sensor_id="a", values=[1.0])
    ok.ts.FromMilliseconds(int(T0 * 1000))
    short.ts.FromMilliseconds(int(T0 * 1000) + 1000)
    got = decoder(mock_sr)[0].decode_many([(_wire(sid, [1], ok), None), (_wire(sid, [1], short), None)], now=T0 + 10)
    np.testing.assert_allclose(got.values, [[1.0, 2.0]])
    assert [(i, e.reason) for i, e in got.errors] == [(1, "missing_channels")]


def test_a_message_type_lacking_a_channel_is_a_dead_letter_naming_the_field(mock_sr):
    sid = mock_sr.register_schema("flat-value", Schema(PLANT_PROTO, "PROTOBUF"))
    Flat = _compiled(PLANT_PROTO)(2)
    msg = Flat(sensor_id="a", temp=1.0)
    msg.ts.FromMilliseconds(int(T0 * 1000))
    got = decoder(mock_sr)[0].decode_many([(_wire(sid, [2], msg), None)] * 2, now=T0 + 1)
    assert [e.reason for _, e in got.errors] == ["schema_mapping"] * 2
    assert "'pressure'" in got.errors[0][1].detail and "acme.plant.Flat" in got.errors[0][1].detail


def test_unknown_id_corrupt_payload_bad_indexes_and_unreadable_schema_have_their_own_reasons(mock_sr):
    cls = message_classes()[f"{PACKAGE}.Reading"]
    good = serializer(mock_sr, cls)(reading(cls, "a", T0, {"temp": 1.0, "pressure": 2.0}))
    bad_text = mock_sr.register_schema("bad-value", Schema('syntax = "proto3"; message R { strin x = 1; }', "PROTOBUF"))
    items = [(struct.pack(">bI", 0, 4242) + good[5:], None),  # no such id
             (good[:-4], None),  # truncated inside a field
             (good[:5] + b"\x02\x0a" + good[6:], None),  # indexes [5]: no such message
             (good[:5], None),  # no indexes at all
             (struct.pack(">bI", 0, bad_text) + b"\x00", None),
             (good, None)]
    got = decoder(mock_sr)[0].decode_many(items, now=T0 + 1)
    reasons = {i: e.reason for i, e in got.errors}
    assert reasons == {0: "unknown_schema", 1: "undecodable", 2: "undecodable", 3: "undecodable", 4: "schema_mapping"}
    assert "strin" in dict(got.errors)[4].detail  # protoc's own line
    assert got.index == [5]


def test_a_timestamp_not_set_is_no_time_not_1970(mock_sr):
    cls = message_classes()[f"{PACKAGE}.Reading"]
    msg = cls(sensor_id="a")
    msg.values.update({"temp": 1.0, "pressure": 2.0})
    got = decoder(mock_sr)[0].decode_many([(serializer(mock_sr, cls)(msg), None)], now=T0 + 1)
    assert [e.reason for _, e in got.errors] == ["schema"] and "ts" in got.errors[0][1].detail


def test_registry_unreachable_is_the_same_transient_fault_as_for_avro(mock_sr):
    from latentwatch.pipeline.decode import RegistryUnavailable

    cls = message_classes()[f"{PACKAGE}.Reading"]
    msg = serializer(mock_sr, cls)(reading(cls, "a", T0, {"temp": 1.0, "pressure": 2.0}))
    dec, lookup = decoder(mock_sr)
    lookup.down = True
    with pytest.raises(RegistryUnavailable):
        dec.decode_many([(msg, None)], now=T0 + 1)
    lookup.down = False  # back: the same message decodes
    assert dec.decode_many([(msg, None)], now=T0 + 1).errors == []


COMMON_PROTO = """syntax = "proto3";
package acme.common;
message Channels { double temp = 1; double pressure = 2; string unit = 3; }
"""
MAIN_PROTO = """syntax = "proto3";
package acme.main;
import "acme/common.proto";
import "google/protobuf/timestamp.proto";
message Reading { string sensor_id = 1; google.protobuf.Timestamp ts = 2; acme.common.Channels values = 3; }
"""


def test_a_text_schema_importing_another_registered_schema_by_reference_channels_in_a_nested_message(mock_sr):
    from confluent_kafka.schema_registry import SchemaReference

    mock_sr.register_schema("acme-common", Schema(COMMON_PROTO, "PROTOBUF"))
    sid = mock_sr.register_schema("main-value", Schema(MAIN_PROTO, "PROTOBUF", [
        SchemaReference("acme/common.proto", "acme-common", 1)]))
    from latentwatch.pipeline.decode.protobuf import ProtoSchema, message_class

    Reading = message_class(ProtoSchema(MAIN_PROTO, {"acme/common.proto": COMMON_PROTO}).message([0]))
    msg = Reading(sensor_id="r")
    msg.ts.FromMilliseconds(int(T0 * 1000))
    msg.values.temp, msg.values.pressure = 4.0, 5.0
    got = Decoder(CHANNELS, schemas=SchemaInput(RegistryLookup(mock_sr), Mapping())).decode_many(
        [(_wire(sid, [0], msg), None)], now=T0 + 1)
    assert got.errors == []
    np.testing.assert_allclose(got.values, [[4.0, 5.0]])


def test_protobuf_serializer_registers_an_imported_file_as_a_reference_and_it_is_read_back(mock_sr):
    from google.protobuf import descriptor_pb2, descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    F = descriptor_pb2.FieldDescriptorProto
    dep = descriptor_pb2.FileDescriptorProto(name="acme/ch.proto", package="acme.ch", syntax="proto3")
    ch = dep.message_type.add(name="Channels")
    ch.field.add(name="temp", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    ch.field.add(name="pressure", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    main = descriptor_pb2.FileDescriptorProto(name="acme/r.proto", package="acme.r", syntax="proto3",
                                              dependency=["acme/ch.proto", "google/protobuf/timestamp.proto"])
    r = main.message_type.add(name="R")
    r.field.add(name="sensor_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    r.field.add(name="ts", number=2, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp", label=F.LABEL_OPTIONAL)
    r.field.add(name="values", number=3, type=F.TYPE_MESSAGE, type_name=".acme.ch.Channels", label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(dep)
    pool.Add(main)
    R = GetMessageClass(pool.FindMessageTypeByName("acme.r.R"))
    msg = R(sensor_id="x")
    msg.ts.FromMilliseconds(int(T0 * 1000))
    msg.values.temp, msg.values.pressure = 6.0, 7.0
    data = serializer(mock_sr, R)(msg)
    sid = int.from_bytes(data[1:5], "big")
    assert [ref.name for ref in mock_sr.get_schema(sid).references] == ["acme/ch.proto"]
    got = Decoder(CHANNELS, schemas=SchemaInput(RegistryLookup(mock_sr), Mapping())).decode_many([(data, None)], now=T0 + 1)
    assert got.errors == []
    np.testing.assert_allclose(got.values, [[6.0, 7.0]])


def test_a_text_schema_importing_what_nobody_gives_is_refused_naming_the_import(mock_sr):
    sid = mock_sr.register_schema("lonely-value", Schema(MAIN_PROTO, "PROTOBUF"))
    got = decoder(mock_sr)[0].decode_many([(struct.pack(">bI", 0, sid) + b"\x00", None)], now=T0 + 1)
    assert got.errors[0][1].reason == "schema_mapping" and "acme/common.proto" in got.errors[0][1].detail
