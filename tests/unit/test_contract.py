"""The input contract: what decodes, and the reason for everything that does not."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from latentwatch.pipeline.decode import ContractError, Decoder, json_schemas, parse_ts

CH = ["temp", "pressure", "flow"]
NOW = time.time()


def dec(obj, key=None, **kw) -> object:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return Decoder(CH, **kw).decode(raw, key, NOW)


def reason(obj, key=None, **kw) -> str:
    with pytest.raises(ContractError) as info:
        dec(obj, key, **kw)
    return info.value.reason


def test_single_reading_by_name_ignores_extra_channels():
    d = dec({"sensor_id": "p7", "ts": "2026-11-21T10:00:00.250Z",
             "values": {"flow": 3, "temp": 71.5, "pressure": 3.1, "extra": "ignored"}})
    assert d.sensor_id == "p7"
    assert d.values.dtype == np.float32 and d.values.shape == (1, 3)
    np.testing.assert_allclose(d.values[0], [71.5, 3.1, 3.0], rtol=1e-6)
    assert d.ts[0] == pytest.approx(parse_ts("2026-11-21T10:00:00.250+00:00"))


def test_batch_with_list_values_and_epoch_ts_and_key_as_sensor():
    readings = [{"ts": NOW - 2 + i, "values": [i, i + 1, i + 2]} for i in range(3)]
    d = dec({"readings": readings}, key=b"pump-9")
    assert d.sensor_id == "pump-9"
    assert d.values.shape == (3, 3)
    np.testing.assert_allclose(d.ts, [r["ts"] for r in readings])


@pytest.mark.parametrize("obj, expected", [
    (b"\xff\xfe not utf8", "invalid_utf8"),
    (b'{"sensor_id": "a", "ts": 1', "not_json"),
    (b"[" * 100_000 + b"]" * 100_000, "not_json"),
    ([1, 2, 3], "schema"),
    ({"sensor_id": "a", "ts": NOW}, "schema"),
    ({"ts": NOW, "values": [1, 2, 3]}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": {"temp": 1, "pressure": 2}}, "missing_channels"),
    ({"sensor_id": "a", "ts": NOW, "values": [1, 2]}, "missing_channels"),
    ({"sensor_id": "a", "ts": NOW, "values": [1, 2, 3, 4]}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": {"temp": "hot", "pressure": 2, "flow": 1}}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": {"temp": None, "pressure": 2, "flow": 1}}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": [[1], 2, 3]}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": "1,2,3"}, "schema"),
    ({"sensor_id": "a", "ts": NOW, "values": [10 ** 400, 1, 2]}, "schema"),
    (b'{"sensor_id": "a", "ts": 1700000000, "values": [NaN, 1, 2]}', "non_finite"),
    (b'{"sensor_id": "a", "ts": 1700000000, "values": [Infinity, 1, 2]}', "non_finite"),
    ({"sensor_id": "a", "ts": NOW, "values": [1e39, 1, 2]}, "non_finite"),
    ({"sensor_id": "a", "ts": "yesterday", "values": [1, 2, 3]}, "bad_timestamp"),
    ({"sensor_id": "a", "ts": 12.0, "values": [1, 2, 3]}, "bad_timestamp"),
    ({"sensor_id": "a", "ts": NOW + 10 * 86400, "values": [1, 2, 3]}, "bad_timestamp"),
    ({"sensor_id": "a", "ts": [NOW], "values": [1, 2, 3]}, "schema"),
    ({"sensor_id": "a", "readings": []}, "schema"),
    ({"sensor_id": "a", "readings": [1, 2]}, "schema"),
    ({"sensor_id": "a", "readings": [{"ts": NOW, "values": [1, 2, 3]}, {"ts": NOW - 1, "values": [1, 2, 3]}]},
     "late"),
])
def test_out_of_contract_messages_have_a_reason(obj, expected):
    assert reason(obj) == expected


def test_too_large_is_checked_before_parsing():
    big = json.dumps({"sensor_id": "a", "ts": NOW, "values": [1, 2, 3], "pad": "x" * 2000}).encode()
    assert reason(big, max_message_bytes=1000) == "too_large"
    assert dec(big, max_message_bytes=10_000).values.shape == (1, 3)


def test_tombstone_is_schema():
    with pytest.raises(ContractError) as info:
        Decoder(CH).decode(None, b"k", NOW)
    assert info.value.reason == "schema"


def test_single_channel_model():
    d = Decoder(["x"]).decode(json.dumps({"sensor_id": "s", "ts": NOW, "values": {"x": 2}}).encode(), None, NOW)
    assert d.values.tolist() == [[2.0]]


def test_schemas_name_both_shapes():
    s = json_schemas()
    assert s["reading"]["required"] == ["ts", "values"]
    assert s["batch"]["properties"]["readings"]["minItems"] == 1


@pytest.mark.parametrize("raw", [
    ["2026-11-21T10:00:00.250Z", "2026-11-21T10:00:01+02:00", "2026-11-21T12:00:00.000001-05:30"],
    ["2026-11-21T10:00:00.250", "2026-11-21T10:00:01Z"],  # a naive time (UTC) among aware ones
    [1767225600.25, "2026-11-21T10:00:00Z", "1767225601"],  # epoch seconds, as a number and a string
    ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"],
])
def test_parse_times_fast_path_matches_parse_ts(raw):
    from latentwatch.pipeline.decode.jsonmsg import parse_times
    assert parse_times(raw) == [parse_ts(t) for t in raw]


def test_parse_times_gives_parse_ts_reasons():
    from latentwatch.pipeline.decode.jsonmsg import parse_times
    with pytest.raises(ContractError) as info:
        parse_times(["2026-11-21T10:00:00Z", "yesterday"])
    assert info.value.reason == "bad_timestamp"


# -- sensor ids: bounded length, no control characters (issue 22, items 2 and 9) ------------------

def _one(sensor=None):
    obj = {"ts": NOW - 1, "values": [1.0, 2.0, 3.0]}
    if sensor is not None:
        obj["sensor_id"] = sensor
    return obj


@pytest.mark.parametrize("where", ["body", "key"])
def test_a_600000_character_sensor_id_is_a_dead_letter_not_an_alert_key(where):
    from latentwatch.pipeline.decode import MAX_SENSOR_ID_BYTES

    long_id = "x" * 600_000
    got = reason(_one(long_id), max_message_bytes=2_000_000) if where == "body" else \
        reason(_one(), key=long_id.encode(), max_message_bytes=2_000_000)
    assert got == "bad_sensor_id"
    assert dec(_one("y" * MAX_SENSOR_ID_BYTES)).sensor_id == "y" * MAX_SENSOR_ID_BYTES
    assert reason(_one("é" * (MAX_SENSOR_ID_BYTES // 2 + 1))) == "bad_sensor_id"  # bytes, not characters


@pytest.mark.parametrize("sid", ["pump\n7", "pump\x007", "a\x1bb", "del\x7f", "c1\x85"])
def test_control_characters_in_a_sensor_id_are_a_dead_letter(sid):
    assert reason(_one(sid)) == "bad_sensor_id"
    assert reason(_one(), key=sid.encode()) == "bad_sensor_id"


def test_a_frame_with_a_long_key_or_metadata_sensor_id_is_a_dead_letter():
    from latentwatch.pipeline.decode import encode_frame

    ts = NOW - 10 + np.arange(5.0)
    frame = encode_frame(ts, np.ones((5, 3)), CH)
    d = Decoder(CH).decode_many([(frame, b"k" * 100_000), (encode_frame(ts, np.ones((5, 3)), CH, "m\tx"), None),
                                 (frame, b"fine")], NOW)
    assert [(i, e.reason) for i, e in d.errors] == [(0, "bad_sensor_id"), (1, "bad_sensor_id")]
    assert d.sensor_ids == ["fine"]


@pytest.mark.parametrize("key", ["pump-ä".encode("latin-1"), "pump-ö".encode("latin-1"), b"\xff", b"ok\xc3"])
def test_a_key_that_is_not_utf8_is_a_dead_letter_invalid_utf8_in_json_and_frames(key):
    """Issue 29.6: Latin-1 keys pump-ä and pump-ö both became pump-\\ufffd (errors="replace"): two
    devices in one state entry, the second one's readings dead-lettered late."""
    from latentwatch.pipeline.decode import encode_frame

    assert reason(_one(), key=key) == "invalid_utf8"
    frame = encode_frame(NOW - 10 + np.arange(3.0), np.ones((3, 3)), CH)
    d = Decoder(CH).decode_many([(frame, key), (frame, b"fine")], NOW)
    assert [(i, e.reason) for i, e in d.errors] == [(0, "invalid_utf8")] and d.sensor_ids == ["fine"]


@pytest.mark.parametrize("sid", ["pump\u202e7", "pump\u20287", "pump\u20297", "a\u2066b\u2069", "x\u200fy"])
def test_bidirectional_overrides_and_line_separators_in_a_sensor_id_are_a_dead_letter(sid):
    """Issue 29.7: they were accepted, and `alerts tail` printed them as they are (a reversed or
    split line, misleading a reader)."""
    assert reason(_one(sid)) == "bad_sensor_id"
    assert reason(_one(), key=sid.encode()) == "bad_sensor_id"
    assert dec(_one("pump-ä")).sensor_id == "pump-ä"  # other non-ASCII stays fine


@pytest.mark.parametrize("values", [[True, 2.0, 3.0], {"temp": 1.0, "pressure": False, "flow": 3.0},
                                    [True, False, True]])
def test_booleans_are_not_numbers(values):
    """Issue 29.7: JSON took true/false as 1/0 (a frame has no booleans to take)."""
    assert reason({"sensor_id": "p", "ts": NOW - 1, "values": values}) == "schema"
    d = Decoder(CH).decode_many([(json.dumps({"sensor_id": "p", "ts": NOW - 1, "values": values}).encode(), None),
                                 (json.dumps({"sensor_id": "true", "ts": NOW - 1, "values": [1, 2, 3]}).encode(), None)],
                                NOW)
    assert [(i, e.reason) for i, e in d.errors] == [(0, "schema")] and d.sensor_ids == ["true"]
