"""Schema'd input (decode/wire.py) without a broker: confluent-kafka's AvroSerializer and
JSONSerializer write the Confluent wire format against its in-process MockSchemaRegistryClient
(no compatibility checks: the real registry's tests are in tests/integration/test_avro.py)."""

from __future__ import annotations

import json
import struct
from datetime import UTC, datetime

import numpy as np
import pytest
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from latentwatch.pipeline.decode import Decoder, Mapping, RegistryUnavailable
from latentwatch.pipeline.devtools.avro_readings import READING_V1, reading_v2

from tests.support.registry import counting_decoder

CHANNELS = ["temp", "pressure"]
T0 = 1_780_000_000.0
CTX = SerializationContext("readings", MessageField.VALUE)


def avro(mock_sr, schema=READING_V1):
    ser = AvroSerializer(mock_sr, json.dumps(schema))
    return lambda sid, ts, values, **extra: ser({"sensor_id": sid, "ts": datetime.fromtimestamp(ts, UTC),
                                                 "values": values, **extra}, CTX)


def wire_decoder(client, mapping=None, channels=CHANNELS):
    return counting_decoder(client, channels, mapping)


def test_avro_records_decode_like_the_json_contract_and_each_schema_is_fetched_once(mock_sr):
    enc = avro(mock_sr)
    msgs = [(enc(f"s{i % 3}", T0 + i, {"temp": 20.0 + i, "pressure": 1.0 + i, "extra": 9.0}), None) for i in range(50)]
    dec, lookup = wire_decoder(mock_sr)
    got = dec.decode_many(msgs, now=T0 + 100)
    assert got.errors == []
    assert got.sensor_ids == [f"s{i % 3}" for i in range(50)]
    np.testing.assert_allclose(got.values, [[20.0 + i, 1.0 + i] for i in range(50)])
    np.testing.assert_allclose(got.ts, [T0 + i for i in range(50)])  # timestamp-millis -> epoch seconds
    dec.decode_many(msgs, now=T0 + 100)
    assert len(lookup.asked) == 1  # one schema id, asked once over two batches


def test_json_messages_frames_and_avro_in_one_batch_keep_input_order(mock_sr):
    enc = avro(mock_sr)
    items = [(enc("a", T0, {"temp": 1.0, "pressure": 2.0}), None),
             (json.dumps({"sensor_id": "b", "ts": T0, "values": {"temp": 3.0, "pressure": 4.0}}).encode(), None),
             (enc("c", T0, {"temp": 5.0, "pressure": 6.0}), None)]
    got = wire_decoder(mock_sr)[0].decode_many(items, now=T0 + 1)
    assert got.sensor_ids == ["a", "b", "c"] and got.index == [0, 1, 2]
    np.testing.assert_allclose(got.values[:, 0], [1.0, 3.0, 5.0])


def test_schema_evolution_old_and_new_messages_in_one_batch(mock_sr):
    v1, v2 = avro(mock_sr), avro(mock_sr, reading_v2())
    items = [(v1("a", T0, {"temp": 1.0, "pressure": 2.0}), None), (v2("a", T0 + 1, {"temp": 3.0, "pressure": 4.0},
                                                                     site="north"), None)]
    dec, lookup = wire_decoder(mock_sr)
    got = dec.decode_many(items, now=T0 + 10)
    assert got.errors == [] and len(set(lookup.asked)) == 2


def test_unknown_schema_id_and_undecodable_payload_are_dead_letters_with_their_own_reasons(mock_sr):
    good = avro(mock_sr)("a", T0, {"temp": 1.0, "pressure": 2.0})
    unknown = struct.pack(">bI", 0, 4242) + good[5:]
    items = [(unknown, None), (good[:-3], None), (good + b"\x00\x01", None), (b"\x00\x00", None), (good, None)]
    got = wire_decoder(mock_sr)[0].decode_many(items, now=T0 + 1)
    reasons = {i: e.reason for i, e in got.errors}
    assert reasons == {0: "unknown_schema", 1: "undecodable", 2: "undecodable", 3: "undecodable"}
    assert got.index == [4]


def test_wire_format_without_a_registry_configured_is_a_dead_letter_saying_so(mock_sr):
    good = avro(mock_sr)("a", T0, {"temp": 1.0, "pressure": 2.0})
    got = Decoder(CHANNELS).decode_many([(good, None)], now=T0 + 1)
    assert got.errors[0][1].reason == "unknown_schema" and "schema_registry.url" in got.errors[0][1].detail


def test_registry_unreachable_raises_before_anything_is_decided(mock_sr):
    dec, lookup = wire_decoder(mock_sr)
    lookup.down = True
    with pytest.raises(RegistryUnavailable):
        dec.decode_many([(avro(mock_sr)("a", T0, {"temp": 1.0, "pressure": 2.0}), None)], now=T0 + 1)
    lookup.down = False  # back: the same messages decode
    assert dec.decode_many([(avro(mock_sr)("a", T0, {"temp": 1.0, "pressure": 2.0}), None)], now=T0 + 1).errors == []


def test_a_schema_without_a_channel_is_refused_naming_the_field(mock_sr):
    schema = {"type": "record", "name": "Flat", "fields": [
        {"name": "sensor_id", "type": "string"}, {"name": "ts", "type": "double"}, {"name": "temp", "type": "double"}]}
    ser = AvroSerializer(mock_sr, json.dumps(schema))
    got = wire_decoder(mock_sr)[0].decode_many([(ser({"sensor_id": "a", "ts": T0, "temp": 1.0}, CTX), None)], now=T0 + 1)
    err = got.errors[0][1]
    assert err.reason == "schema_mapping" and "'pressure'" in err.detail


def test_mapping_named_fields_renamed_epoch_millis_and_the_key_as_sensor_id(mock_sr):
    schema = {"type": "record", "name": "Plant", "fields": [
        {"name": "time_ms", "type": "long"}, {"name": "t_c", "type": "float"}, {"name": "pressure", "type": "double"}]}
    ser = AvroSerializer(mock_sr, json.dumps(schema))
    mapping = Mapping(time="time_ms", time_unit="ms", channels=None, rename={"temp": "t_c"})
    msg = ser({"time_ms": int(T0 * 1000), "t_c": 21.5, "pressure": 3.0}, CTX)
    got = wire_decoder(mock_sr, mapping)[0].decode_many([(msg, b"pump-7")], now=T0 + 1)
    assert got.errors == [] and got.sensor_ids == ["pump-7"]
    np.testing.assert_allclose(got.values, [[21.5, 3.0]])
    assert got.ts[0] == T0


def test_channels_as_an_array_and_micros_timestamps(mock_sr):
    schema = {"type": "record", "name": "Arr", "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "values", "type": {"type": "array", "items": "double"}}]}
    ser = AvroSerializer(mock_sr, json.dumps(schema))
    ok = ser({"sensor_id": "a", "ts": datetime.fromtimestamp(T0 + 0.25, UTC), "values": [1.0, 2.0]}, CTX)
    short = ser({"sensor_id": "a", "ts": datetime.fromtimestamp(T0 + 1, UTC), "values": [1.0]}, CTX)
    got = wire_decoder(mock_sr)[0].decode_many([(ok, None), (short, None)], now=T0 + 10)
    assert got.ts[0] == pytest.approx(T0 + 0.25, abs=1e-6)
    assert [(i, e.reason) for i, e in got.errors] == [(1, "missing_channels")]


def test_bad_values_and_times_keep_the_json_contracts_reasons(mock_sr):
    enc = avro(mock_sr)
    items = [(enc("a", T0, {"temp": float("nan"), "pressure": 1.0}), None),
             (enc("b", 100.0, {"temp": 1.0, "pressure": 1.0}), None),  # 1970: before 2000
             (enc("c", T0, {"pressure": 1.0}), None),
             (enc("d", T0, {"temp": 1.0, "pressure": 1.0}), None)]
    got = wire_decoder(mock_sr)[0].decode_many(items, now=T0 + 1)
    assert [(i, e.reason) for i, e in got.errors] == [(0, "non_finite"), (1, "bad_timestamp"), (2, "missing_channels")]
    assert got.sensor_ids == ["d"]


def test_json_schema_records_decode_through_the_registry(mock_sr):
    schema = {"type": "object", "properties": {"sensor_id": {"type": "string"}, "ts": {"type": "number"},
                                                "values": {"type": "object"}}}
    ser = JSONSerializer(json.dumps(schema), mock_sr)
    msg = ser({"sensor_id": "j", "ts": T0, "values": {"temp": 1.5, "pressure": 2.5}}, CTX)
    assert msg[0] == 0
    got = wire_decoder(mock_sr)[0].decode_many([(msg, None)], now=T0 + 1)
    assert got.errors == [] and got.sensor_ids == ["j"]
    np.testing.assert_allclose(got.values, [[1.5, 2.5]])

