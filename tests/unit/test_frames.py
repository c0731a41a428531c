"""The binary frame contract (Arrow IPC stream): what decodes, and the reason for what does not."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pyarrow as pa
import pytest

from latentwatch.pipeline.decode import DEAD_LETTER_REASONS, ContractError, Decoder, FrameDecoder, encode_frame
from latentwatch.pipeline.decode.frames import CACHE_BYTES

CH = ["temp", "pressure", "flow"]
NOW = time.time()
TS = NOW - 100 + np.arange(5) * 0.25
VALUES = np.arange(15, dtype=np.float32).reshape(5, 3) / 7


def arrow_frame(columns: dict, metadata: dict | None = None, batches: int = 1, options=None, eos: bool = True) -> bytes:
    """A frame written by pyarrow from arbitrary columns (as any producer could)."""
    table = pa.table(columns)
    schema = table.schema.with_metadata(metadata or {})
    sink = pa.BufferOutputStream()
    writer = pa.ipc.new_stream(sink, schema, options=options)
    for _ in range(batches):
        writer.write_batch(pa.record_batch([c.combine_chunks() for c in table.columns], schema=schema))
    if eos:
        writer.close()
    return sink.getvalue().to_pybytes()


def ts_us(ts=TS):
    return pa.array(np.round(np.asarray(ts) * 1e6).astype("int64"), pa.int64()).view(pa.timestamp("us", tz="UTC"))


def cols(**over) -> dict:
    c = {"ts": ts_us(), **{name: pa.array(VALUES[:, j]) for j, name in enumerate(CH)}}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def dec(value: bytes, key: bytes | None = b"pump-1", channels=CH):
    return Decoder(channels).decode(value, key, NOW)


def reason(value: bytes, key: bytes | None = b"pump-1", **kw) -> str:
    with pytest.raises(ContractError) as info:
        Decoder(CH, **kw).decode(value, key, NOW)
    assert info.value.reason in DEAD_LETTER_REASONS
    return info.value.reason


def test_encode_frame_round_trips_and_pyarrow_reads_it():
    raw = encode_frame(TS, VALUES, CH)
    d = dec(raw)
    assert d.sensor_id == "pump-1" and d.values.dtype == np.float32 and d.values.shape == (5, 3)
    np.testing.assert_array_equal(d.values, VALUES)
    np.testing.assert_allclose(d.ts, TS, atol=1e-6)
    table = pa.ipc.open_stream(raw).read_all()  # a standard Arrow stream, not our own format
    assert table.column_names == ["ts", *CH] and table.num_rows == 5


def test_sensor_id_from_schema_metadata_wins_over_the_key():
    assert dec(encode_frame(TS, VALUES, CH, sensor_id="pump-9"), key=b"other").sensor_id == "pump-9"


@pytest.mark.parametrize("ts_col", [
    pa.array((TS * 1e3).round().astype("int64")).view(pa.timestamp("ms")),
    pa.array((TS * 1e9).astype("int64")).view(pa.timestamp("ns", tz="Europe/Berlin")),
    pa.array(TS, pa.float64()),
])
def test_time_units_and_float64_channels_in_any_column_order_with_extras(ts_col):
    c = {"flow": pa.array(VALUES[:, 2].astype(np.float64)), "extra": pa.array(np.arange(5, dtype=np.int16)),
         "ts": ts_col, "pressure": pa.array(VALUES[:, 1]), "temp": pa.array(VALUES[:, 0].astype(np.float64))}
    d = dec(arrow_frame(c))
    np.testing.assert_allclose(d.values, VALUES, rtol=1e-6)
    np.testing.assert_allclose(d.ts, TS, atol=1e-3)


def test_mixed_json_and_frames_keep_input_order_and_agree_with_decode():
    good_json = json.dumps({"sensor_id": "j", "ts": NOW - 1, "values": [1, 2, 3]}).encode()
    frame = encode_frame(TS, VALUES, CH)
    items = [(frame, b"a"), (good_json, None), (b"{bad", None), (frame[:-7], b"b"), (frame, b"c"), (good_json, None)]
    got = Decoder(CH).decode_many(items, NOW)
    assert got.index == [0, 1, 4, 5] and got.sensor_ids == ["a", "j", "c", "j"]
    assert got.counts.tolist() == [5, 1, 5, 1]
    assert [(i, e.reason) for i, e in got.errors] == [(2, "not_json"), (3, "corrupt_frame")]
    expect = [Decoder(CH).decode(v, k, NOW) for v, k in (items[0], items[1], items[4], items[5])]
    np.testing.assert_array_equal(got.values, np.concatenate([e.values for e in expect]))
    np.testing.assert_array_equal(got.ts, np.concatenate([e.ts for e in expect]))


def test_decode_many_finds_the_bad_frames_among_good_ones():
    good = encode_frame(TS, VALUES, CH)
    nan = encode_frame(TS, np.where(np.eye(5, 3) > 0, np.nan, VALUES), CH)
    unsorted = encode_frame(TS[::-1], VALUES, CH)
    got = Decoder(CH).decode_many([(good, b"a"), (nan, b"b"), (good, b"c"), (unsorted, b"d")], NOW)
    assert got.index == [0, 2] and len(got.ts) == 10
    assert [(i, e.reason) for i, e in got.errors] == [(1, "non_finite"), (3, "late")]


@pytest.mark.parametrize("over, expected", [
    ({"flow": None}, "missing_channels"),
    ({"flow": pa.array(np.arange(5, dtype=np.int32))}, "schema"),
    ({"flow": pa.array(["a"] * 5)}, "schema"),
    ({"extra": pa.array(["a"] * 5)}, "schema"),  # extras must be fixed-width too
    ({"flow": pa.array([1.0, None, 2.0, 3.0, 4.0], pa.float32())}, "schema"),
    ({"flow": pa.array(["a"] * 5).dictionary_encode()}, "schema"),
    ({"ts": None}, "schema"),
    ({"ts": pa.array((TS * 1e6).astype("int64"))}, "schema"),
    ({"ts": pa.array(TS[::-1], pa.float64())}, "late"),
    ({"ts": pa.array(np.r_[TS[:4], TS[3]], pa.float64())}, "late"),
    ({"ts": pa.array(np.r_[TS[:4], np.nan], pa.float64())}, "bad_timestamp"),
    ({"ts": pa.array(np.r_[TS[:4], np.inf], pa.float64())}, "bad_timestamp"),
    ({"ts": pa.array([12.0, 13, 14, 15, 16], pa.float64())}, "bad_timestamp"),
    ({"ts": ts_us(TS + 10 * 86400)}, "bad_timestamp"),
    ({"temp": pa.array(np.r_[VALUES[:4, 0], np.inf].astype(np.float32))}, "non_finite"),
    ({"temp": pa.array([1e39, 1, 2, 3, 4], pa.float64())}, "non_finite"),
])
def test_out_of_contract_frames_have_a_reason(over, expected):
    assert reason(arrow_frame(cols(**over))) == expected


def test_other_frame_faults():
    frame = arrow_frame(cols())
    assert reason(arrow_frame(cols(), {"latentwatch.frame": "2"})) == "unsupported_version"
    assert reason(arrow_frame(cols(), {"sensor_id": b"\xff"})) == "invalid_utf8"
    assert reason(frame, key=None) == "schema"
    assert reason(arrow_frame(cols(), batches=2)) == "schema"
    assert reason(arrow_frame({k: v[:0] for k, v in cols().items()})) == "schema"
    lz4 = pa.ipc.IpcWriteOptions(compression="lz4")
    assert reason(arrow_frame(cols(), options=lz4)) == "schema"
    assert reason(frame, max_message_bytes=len(frame) - 1) == "too_large"
    assert dec(arrow_frame(cols(), eos=False)).values.shape == (5, 3)
    assert reason(arrow_frame(cols(), eos=False) + b"trailing") == "corrupt_frame"


def test_an_old_arrow_metadata_version_is_unsupported():
    frame = bytearray(encode_frame(TS, VALUES, CH))
    # Message.version is the first field of the root table: find it through the flatbuffer.
    start = 8
    table = start + struct.unpack_from("<I", frame, start)[0]
    vtable = table - struct.unpack_from("<i", frame, table)[0]
    at = table + struct.unpack_from("<H", frame, vtable + 4)[0]
    assert struct.unpack_from("<h", frame, at)[0] == 4  # V5
    struct.pack_into("<h", frame, at, 2)  # V3
    assert reason(bytes(frame)) == "unsupported_version"


def test_every_truncation_is_dead_lettered():
    frame = encode_frame(TS, VALUES, CH)
    eos = len(frame) - 8  # cut just after the record batch: a valid frame without end-of-stream
    for cut in range(4, len(frame)):
        if cut in (eos, eos + 4):
            continue
        assert reason(frame[:cut]) == "corrupt_frame", cut


def test_a_cached_header_does_not_vouch_for_a_shorter_body():
    d = Decoder(CH)
    frame = encode_frame(TS, VALUES, CH)
    assert d.decode(frame, b"a", NOW).values.shape == (5, 3)
    with pytest.raises(ContractError) as info:
        d.decode(frame[:-20], b"a", NOW)
    assert info.value.reason == "corrupt_frame"


def test_header_cache_is_bounded_in_bytes():
    fd = FrameDecoder(CH)
    for i in range(20_000):  # a new schema (sensor id in it) per frame
        fd.decode(encode_frame(TS[:1], VALUES[:1], CH, sensor_id=f"s-{i:06d}-" + "x" * 200), None, NOW)
    assert fd._layouts.bytes <= CACHE_BYTES and fd._plans.bytes <= CACHE_BYTES // 4
    assert len(fd._layouts) < 20_000


def test_a_column_name_that_is_not_utf8_is_dead_lettered():
    """Found by the live fuzz: a bit flip in a field name made pyarrow raise UnicodeDecodeError."""
    frame = encode_frame(TS, VALUES, CH)
    assert frame.count(b"pressure") == 1
    assert reason(frame.replace(b"pressure", b"pre\xaesure")) == "invalid_utf8"


def _record_batch_table(frame: bytes) -> tuple[int, int]:
    """(position of the RecordBatch table, of its vtable) inside a frame from encode_frame."""
    second = 8 + struct.unpack_from("<i", frame, 4)[0]
    start = second + 8
    msg = start + struct.unpack_from("<I", frame, start)[0]
    vt = msg - struct.unpack_from("<i", frame, msg)[0]
    header_at = msg + struct.unpack_from("<H", frame, vt + 4 + 2 * 2)[0]
    rb = header_at + struct.unpack_from("<I", frame, header_at)[0]
    return rb, rb - struct.unpack_from("<i", frame, rb)[0]


@pytest.mark.parametrize("field, value", [
    ("length", 2**62), ("length", 2**63 - 1), ("length", 10**6),
    ("offset", 2**63 - 8), ("offset", 2**62), ("buffer_length", 2**63 - 1),
])
def test_absurd_lengths_and_offsets_are_corrupt_frames(field, value):
    frame = bytearray(encode_frame(TS, VALUES, CH))
    rb, vt = _record_batch_table(frame)
    if field == "length":
        at = rb + struct.unpack_from("<H", frame, vt + 4)[0]
        assert struct.unpack_from("<q", frame, at)[0] == 5
        struct.pack_into("<q", frame, at, value)
    else:
        at = rb + struct.unpack_from("<H", frame, vt + 8)[0]  # buffers vector
        buffers = at + struct.unpack_from("<I", frame, at)[0] + 4
        data = buffers + 16 * 3  # field 1 (a channel), its data buffer: (offset, length)
        struct.pack_into("<q", frame, data + (0 if field == "offset" else 8), value)
    with pytest.raises(ContractError) as info:
        Decoder(CH).decode(bytes(frame), b"k", NOW)
    assert info.value.reason == "corrupt_frame"


def test_a_cached_rejection_is_a_new_error_each_time():
    """The same bad header seen again is answered from the cache, with a fresh exception (one
    object raised again and again would grow its traceback without bound)."""
    d = Decoder(CH)
    bad = arrow_frame(cols(flow=None))
    errors = []
    for _ in range(3):
        with pytest.raises(ContractError) as info:
            d.decode(bad, b"k", NOW)
        errors.append(info.value)
    assert len({id(e) for e in errors}) == 3 and {e.reason for e in errors} == {"missing_channels"}


# -- issue 22, item 9 ----------------------------------------------------------------------------

def _good_frame(n=4, extra_columns=0):
    cols = {"ts": pa.array(NOW - 100 + np.arange(n, dtype=np.float64))}
    cols.update({c: pa.array(np.ones(n, np.float32)) for c in CH})
    cols.update({f"x{i:05d}": pa.array(np.zeros(n, np.float32)) for i in range(extra_columns)})
    return arrow_frame(cols, {"sensor_id": "s"})


@pytest.mark.parametrize("junk", [b"\xff\xff\xff\xff" + bytes(range(40)), bytes(range(7, 60)), b"\x00" * 9])
def test_a_valid_frame_followed_by_junk_bytes_is_corrupt_frame(junk):
    frame = _good_frame()
    with pytest.raises(ContractError) as info:
        FrameDecoder(CH).decode(frame + junk, None, NOW)
    assert info.value.reason == "corrupt_frame"


def test_arrows_legacy_ipc_format_is_unsupported_version_not_invalid_utf8():
    import io

    t = pa.table({"ts": pa.array(NOW - 100 + np.arange(3.0)), **{c: pa.array(np.ones(3, np.float32)) for c in CH}})
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, t.schema, options=pa.ipc.IpcWriteOptions(use_legacy_format=True)) as w:
        w.write_table(t)
    d = Decoder(CH).decode_many([(sink.getvalue(), b"s")], NOW)
    (_, err), = d.errors
    assert err.reason == "unsupported_version" and "legacy" in err.detail


def test_a_schema_over_the_cache_entry_limit_is_parsed_once_not_per_frame(monkeypatch):
    dec = FrameDecoder(CH)
    frame = _good_frame(extra_columns=4000)
    assert len(frame) > CACHE_BYTES // 64  # over the size a cache key may have
    calls = []
    real = dec._make_plan
    monkeypatch.setattr(dec, "_make_plan", lambda msg: calls.append(1) or real(msg))
    for _ in range(5):
        assert dec.decode(frame, None, NOW)[1].shape == (4, 3)
    assert len(calls) == 1
