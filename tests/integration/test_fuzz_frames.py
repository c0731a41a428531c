"""Bad binary frames, generated: the frame decoder's contract as properties. Whatever a frame is
(truncated, bit-flipped, spliced, oversize, of wrong column types, with absurd lengths and
offsets in its flatbuffers), decoding it raises a ContractError with one of
`DEAD_LETTER_REASONS` or returns finite float32 readings with finite, rising event times; a
batch of frames and JSON fares exactly as its messages one by one. The live pipeline fuzz
(test_fuzz.py) sends frames of these kinds through a running process.
`LATENTWATCH_FUZZ_EXAMPLES` scales the number of examples (default 2000 per property).
"""

from __future__ import annotations

import json
import os
import struct
import time
from datetime import UTC, datetime
from decimal import Decimal

import numpy as np
import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from latentwatch.pipeline.decode import DEAD_LETTER_REASONS, ContractError, Decoder, encode_frame

EXAMPLES = int(os.environ.get("LATENTWATCH_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("LATENTWATCH_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
CH = ["c0", "c1", "c2", "c3"]
NOW = time.time()
MAX_BYTES = 16_384
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()


def check(decoder: Decoder, value: bytes, key: bytes | None = b"k"):
    """Decode; assert the contract's promise either way. Returns the reason or None (valid)."""
    try:
        d = decoder.decode(value, key, NOW)
    except ContractError as err:
        assert err.reason in DEAD_LETTER_REASONS, err.reason
        assert err.detail
        return err.reason
    n = len(decoder.channels)
    assert isinstance(d.sensor_id, str) and d.sensor_id
    assert d.values.dtype == np.float32 and d.values.ndim == 2 and d.values.shape[1] == n
    assert d.ts.shape == (d.values.shape[0],) and d.values.shape[0] >= 1
    assert np.all(np.isfinite(d.values)) and np.all(np.isfinite(d.ts))
    assert np.all(d.ts <= NOW + 86_400) and np.all(d.ts >= TS_MIN) and np.all(np.diff(d.ts) > 0)
    return None


DECODERS = {n: Decoder(CH[:n], MAX_BYTES, 86_400.0) for n in (1, 4)}

finite32 = st.floats(allow_nan=False, allow_infinity=False, width=32)
any_float = st.floats(allow_nan=True, allow_infinity=True)
valid_ts = st.integers(int(TS_MIN * 1000) + 86_400_000, int(NOW * 1000))
arrow_types = st.sampled_from([pa.float32(), pa.float64(), pa.float16(), pa.int8(), pa.int64(), pa.uint32(),
                               pa.bool_(), pa.string(), pa.binary(), pa.timestamp("ms"), pa.date32(),
                               pa.list_(pa.float32()), pa.null(), pa.decimal128(10, 2)])


@st.composite
def valid_frames(draw, n_channels=4):
    """(frame, values, ts): readings as any producer might write them (column order, extras,
    float32 or float64, time unit), in contract."""
    k = draw(st.integers(1, 20))
    ms = sorted(set(draw(st.lists(valid_ts, min_size=k, max_size=k))))
    k = len(ms)
    values = np.array(draw(st.lists(finite32, min_size=k * n_channels, max_size=k * n_channels)),
                      dtype=np.float32).reshape(k, n_channels)
    if draw(st.booleans()):
        return encode_frame(np.array(ms) / 1000, values, CH[:n_channels]), values, np.array(ms) / 1000
    unit = draw(st.sampled_from(["s", "ms", "us", "ns", "float"]))
    if unit == "s":
        secs = sorted(set(m // 1000 for m in ms))
        ms, k, values = [s * 1000 for s in secs], len(secs), values[:len(secs)]
    ts = (pa.array(np.array(ms, dtype=np.float64) / 1000) if unit == "float" else
          pa.array(np.array(ms, dtype=np.int64) * {"s": 1, "ms": 1, "us": 1000, "ns": 1_000_000}[unit]
                   // (1000 if unit == "s" else 1)).view(pa.timestamp(unit)))
    cols = {"ts": ts}
    for j, c in enumerate(CH[:n_channels]):
        cols[c] = pa.array(values[:, j].astype(draw(st.sampled_from([np.float32, np.float64]))))
    if draw(st.booleans()):
        cols["extra"] = pa.array(np.arange(k, dtype=np.int32))
    names = draw(st.permutations(list(cols)))
    table = pa.table({n: cols[n] for n in names})
    ids = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=8)  # no control chars
    meta = {"sensor_id": draw(ids)} if draw(st.booleans()) else {}
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(meta)) as w:
        w.write_table(table.replace_schema_metadata(meta))
    return sink.getvalue().to_pybytes(), values, np.array(ms) / 1000


def mutate(raw: bytes, data) -> bytes:
    """Truncate, flip bits, overwrite a word with an extreme value, splice in or cut out bytes."""
    op = data.draw(st.sampled_from(["truncate", "flip", "word", "insert", "delete", "flips"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if op == "truncate":
        return raw[:i]
    if op == "flip":
        return raw[:i] + bytes([raw[i] ^ (1 << data.draw(st.integers(0, 7)))]) + raw[i + 1:]
    if op == "flips":
        b = bytearray(raw)
        for j in data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=2, max_size=20)):
            b[j] ^= 1 << data.draw(st.integers(0, 7))
        return bytes(b)
    if op == "word":  # a length, offset or count in the flatbuffers turned absurd
        fmt, value = data.draw(st.sampled_from([("<i", -1), ("<i", 2**31 - 1), ("<I", 2**32 - 1), ("<q", -1),
                                                ("<q", 2**62), ("<q", 2**63 - 1), ("<H", 0xFFFF), ("<i", 0)]))
        b = bytearray(raw)
        at = min(i, len(b) - struct.calcsize(fmt))
        struct.pack_into(fmt, b, max(at, 0), value)
        return bytes(b)
    if op == "insert":
        return raw[:i] + data.draw(st.binary(min_size=1, max_size=16)) + raw[i:]
    return raw[:i] + raw[i + data.draw(st.integers(1, 64)):]


@FUZZ
@given(valid_frames(), st.sampled_from([1, 4]))
def test_valid_frames_decode_to_their_readings(case, n):
    raw, values, ts = case
    reason = check(DECODERS[n], raw)
    if len(raw) > MAX_BYTES:
        assert reason == "too_large"
        return
    assert reason is None
    d = DECODERS[n].decode(raw, b"k", NOW)
    np.testing.assert_array_equal(d.values, values[:, :n])
    np.testing.assert_allclose(d.ts, ts, atol=1e-6)


@FUZZ
@given(valid_frames(), st.data())
def test_mutated_frames_are_decoded_or_dead_lettered(case, data):
    raw = mutate(case[0], data)
    check(DECODERS[4], raw)
    check(DECODERS[4], raw, None)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from([1, 4]))
def test_random_bytes_behind_the_frame_prefix(tail, n):
    check(DECODERS[n], b"\xff\xff\xff\xff" + tail)


def column(t: pa.DataType, k: int, nulls: bool) -> pa.Array:
    if nulls or t == pa.null():
        return pa.nulls(k, t)
    if t == pa.float16():
        return pa.array(np.ones(k, np.float16))
    sample = {pa.string(): "a", pa.binary(): b"a", pa.bool_(): True, pa.list_(pa.float32()): [1.0],
              pa.decimal128(10, 2): Decimal("1.00")}.get(t, 1)
    return pa.array([sample] * k, t)


@FUZZ
@given(arrow_types, arrow_types, st.integers(1, 5), st.booleans())
def test_wrong_column_types_are_schema_errors(channel_type, ts_type, k, with_nulls):
    ms = (NOW * 1000 - 10_000 + np.arange(k)).astype(np.int64)
    ts = {pa.float64(): pa.array(ms / 1000), pa.timestamp("ms"): pa.array(ms).view(pa.timestamp("ms"))}.get(
        ts_type) or column(ts_type, k, False)
    table = pa.table({"ts": ts, **{c: column(channel_type, k, with_nulls) for c in CH}})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    reason = check(DECODERS[4], sink.getvalue().to_pybytes())
    ok_ts = ts_type in (pa.float64(), pa.timestamp("ms"))
    if channel_type in (pa.float32(), pa.float64()) and ok_ts and not with_nulls:
        assert reason is None
    else:
        assert reason == "schema"


@FUZZ
@given(st.integers(MAX_BYTES // 72 + 1, 4 * MAX_BYTES // 72))
def test_oversize_frames_are_too_large(k):
    raw = encode_frame(NOW - 1000 + np.arange(k) * 0.001, np.zeros((k, 16)), [f"c{i}" for i in range(16)])
    assert len(raw) > MAX_BYTES and check(DECODERS[4], raw) == "too_large"


message_mix = st.one_of(
    valid_frames().map(lambda t: t[0]), valid_frames().map(lambda t: t[0]),
    st.tuples(valid_frames(), st.data()).map(lambda t: mutate(t[0][0], t[1])),
    st.just(json.dumps({"sensor_id": "j", "ts": NOW - 5, "values": [1, 2, 3, 4]}).encode()),
    st.just(json.dumps({"sensor_id": "j", "ts": NOW - 5, "values": [1, 2]}).encode()),
    st.binary(max_size=40),
)


@settings(FUZZ, max_examples=max(1, EXAMPLES // 4))
@given(st.lists(st.tuples(message_mix, st.sampled_from([None, b"key"])), max_size=10))
def test_decode_many_agrees_with_decoding_one_by_one(items):
    decoder = DECODERS[4]
    expected = []
    for value, key in items:
        try:
            expected.append(decoder.decode(value, key, NOW))
        except ContractError as err:
            expected.append(err.reason)
    got = decoder.decode_many(items, NOW)
    assert [(i, e.reason) for i, e in got.errors] == [(i, r) for i, r in enumerate(expected) if isinstance(r, str)]
    valid = [d for d in expected if not isinstance(d, str)]
    assert got.index == [i for i, r in enumerate(expected) if not isinstance(r, str)]
    assert got.sensor_ids == [d.sensor_id for d in valid]
    assert got.counts.tolist() == [len(d.ts) for d in valid]
    assert got.values.dtype == np.float32 and got.values.shape == (int(got.counts.sum()), 4)
    if valid:
        np.testing.assert_array_equal(got.values, np.concatenate([d.values for d in valid]))
        np.testing.assert_array_equal(got.ts, np.concatenate([d.ts for d in valid]))
