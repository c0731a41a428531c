"""The binary frame contract: many readings of one sensor in one Apache Arrow IPC stream.

A frame is an Arrow IPC *stream* (the format of `pyarrow.ipc.new_stream` and Java's
`ArrowStreamWriter`): a Schema message, exactly one RecordBatch message, then optionally the
end-of-stream marker. Columns:
- `ts`: the event times, `timestamp[s|ms|us|ns]` (any or no time zone: Arrow stores UTC epoch
  values) or `float64` epoch seconds; strictly increasing.
- one `float32` (or `float64`) column per model channel, named by channel; extra columns of any
  fixed-width type are ignored. No nulls, no dictionary encoding, no IPC buffer compression
  (Kafka's own compression.type does that better, and an uncompressed frame can be read in
  place: its memory is bounded by the message size).
- schema metadata: `sensor_id` (else the message key is the sensor id) and, optionally,
  `latentwatch.frame` = "1", the version of this contract (an unknown one is dead-lettered).

Frames are told from JSON by their first four bytes, Arrow's continuation marker 0xFFFFFFFF:
0xFF never occurs in UTF-8, so no JSON message starts with it and no header is needed.

Decoding reads the RecordBatch's flatbuffer (a few fields) in place and takes the channel
columns as numpy views of the message bytes; the schema is parsed by pyarrow once per distinct
schema message and cached. No Python object is made per reading.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
from latentwatch.pipeline.decode.arrow_ipc import MAGIC, RECORD_BATCH, SCHEMA, read_message
from latentwatch.pipeline.decode.batch import (
    FLOAT32_MAX,
    TS_MIN,
    ContractError,
    DecodedBatch,
    check_sensor_id,
    key_sensor_id,
)

FRAME_MAGIC = MAGIC  # the first bytes of a binary frame (never of UTF-8 JSON)
CONTENT_TYPE = "application/vnd.apache.arrow.stream"  # the IANA media type; informative only
FRAME_VERSION = "1"
VERSION_KEY = b"latentwatch.frame"
SENSOR_KEY = b"sensor_id"
TS_COLUMN = "ts"
# Frame headers (and schema messages) read, by their bytes: one per shape of frame and, when the
# sensor id is in the schema, per sensor (~1.3 kB each at 16 channels). Bounded in bytes, so
# frames with huge or ever-changing headers cannot grow memory.
CACHE_BYTES = 16 * 2**20


class _Cache(dict):
    """A dict bounded by the total length of its keys; the oldest entries go first."""

    def __init__(self, max_bytes: int):
        super().__init__()
        self.max_bytes, self.bytes = max_bytes, 0
        self._cost: dict[bytes, int] = {}

    def _key(self, key: bytes) -> bytes:
        # A header over 1/64 of the bound (a schema of thousands of ignored columns: 12 ms to
        # parse at 4,000) is kept by its digest, so it is parsed once, not on every frame.
        return key if len(key) <= self.max_bytes // 64 else hashlib.blake2b(key, digest_size=32).digest()

    def get(self, key: bytes, default=None):
        return super().get(self._key(key), default)

    def put(self, key: bytes, value) -> None:
        cost = len(key) if len(key) <= self.max_bytes // 64 else 1024  # a digest and its (small) value
        key = self._key(key)
        if key in self:
            return
        self[key] = value
        self._cost[key] = cost
        self.bytes += cost
        while self.bytes > self.max_bytes:
            oldest = next(iter(self))
            self.bytes -= self._cost.pop(oldest)
            del self[oldest]


@dataclass(frozen=True)
class _Plan:
    """What a schema says about where things are: from pyarrow, cached per schema message."""

    n_fields: int
    sensor_id: str | None
    ts_field: int
    ts_scale: float  # seconds per unit
    ts_dtype: np.dtype
    fields: tuple[int, ...]  # per model channel, its field index
    dtypes: tuple[np.dtype, ...]
    uniform: bool  # all channel columns of one type


@dataclass(frozen=True)
class _Layout:
    """Where a frame's columns are, from its header (schema and record batch flatbuffers)."""

    plan: _Plan
    n: int  # readings
    body_len: int
    ts_offset: int  # from the body's start
    offsets: tuple[int, ...]  # per model channel
    step: int  # bytes from one channel column to the next when evenly spaced, else 0


_EOS = (MAGIC + b"\0\0\0\0", b"\0\0\0\0")


def _another_message(value: bytes, pos: int) -> bool:
    """Whether a whole Arrow IPC message (not junk, not an end-of-stream) starts at `pos`."""
    try:
        b, _, header_type, _, body_len = read_message(value, pos)
    except Exception:  # noqa: BLE001 - untrusted bytes: anything unreadable is not a message
        return False
    return header_type != 0 and b.end + body_len <= len(value)


class FrameDecoder:
    """Frames -> readings arrays for a model with `channels`, with the contract's reasons."""

    def __init__(self, channels: list[str], max_message_bytes: int = 1_000_000, max_future_s: float = 86_400.0):
        self.channels = list(channels)
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        self._plans = _Cache(CACHE_BYTES // 4)  # by schema message
        self._layouts = _Cache(CACHE_BYTES)  # by header: schema and record batch messages

    def decode(self, value: bytes, key: bytes | None, now: float) -> tuple[str, np.ndarray, np.ndarray]:
        """One frame -> (sensor id, values [n, channels] float32, ts [n] float64), every rule checked."""
        sensor_id, block, ts = self.parse(value, key)
        if not np.abs(block).max() <= FLOAT32_MAX:  # in the column's own type; NaN fails too
            raise ContractError("non_finite", "NaN, Inf or a value beyond float32 range")
        check_times(ts, now + self.max_future_s)
        return sensor_id, block.astype(np.float32), ts

    def decode_many(self, items: list[tuple[int, bytes, bytes | None]], now: float):
        """Frames (position, value, key) -> DecodedBatch (positions as given). Structure is read
        per frame; numbers and times of all frames are gathered and checked in one go (one
        copy: a frame's columns are views of its message), and frame by frame only when that
        check fails, to find the culprits."""
        index, sensor_ids, blocks, times, errors = [], [], [], [], []
        for i, value, key in items:
            try:
                sensor_id, block, ts = self.parse(value, key)
            except ContractError as err:
                errors.append((i, err))
                continue
            index.append(i)
            sensor_ids.append(sensor_id)
            blocks.append(block)
            times.append(ts)
        if not index:
            return DecodedBatch([], [], np.zeros(0, np.int64), np.empty((0, len(self.channels)), np.float32),
                                np.empty(0), errors)
        counts = np.fromiter(map(len, times), np.int64, len(times))
        with np.errstate(over="ignore", invalid="ignore"):  # float64 beyond float32: inf, caught below
            values = np.concatenate(blocks, dtype=np.float32, casting="same_kind")
        ts = np.concatenate(times)
        if self._all_good(values, ts, counts, now):
            return DecodedBatch(index, sensor_ids, counts, values, ts, errors)
        keep = []
        for j, (i, block, t) in enumerate(zip(index, blocks, times)):
            try:
                if not np.abs(block).max() <= FLOAT32_MAX:
                    raise ContractError("non_finite", "NaN, Inf or a value beyond float32 range")
                check_times(t, now + self.max_future_s)
            except ContractError as err:
                errors.append((i, err))
            else:
                keep.append(j)
        errors.sort(key=lambda e: e[0])
        rows = np.repeat(np.isin(np.arange(len(index)), keep), counts)
        return DecodedBatch([index[j] for j in keep], [sensor_ids[j] for j in keep], counts[keep],
                            values[rows], ts[rows], errors)

    def _all_good(self, values: np.ndarray, ts: np.ndarray, counts: np.ndarray, now: float) -> bool:
        if not (np.abs(values).max() <= FLOAT32_MAX and ts.min() >= TS_MIN and ts.max() <= now + self.max_future_s):
            return False
        rising = np.diff(ts) > 0
        if len(rising):
            rising[np.cumsum(counts)[:-1] - 1] = True  # from one frame to the next: no rule
        return bool(rising.all())

    def parse(self, value: bytes, key: bytes | None) -> tuple[str, np.ndarray, np.ndarray]:
        """Structure only: (sensor id, values [n, channels] in the frame's column type, ts [n]
        epoch seconds). `values` is a view of the message when the channel columns are evenly
        spaced in it (pyarrow's and Java's writers do so), else a copy. The numbers and times
        are checked by the caller (in bulk for a batch).

        Everything but the body is a function of the frame's header (its two flatbuffers): the
        header is read once and its layout cached, so a frame like the last costs two length
        reads, a dictionary look-up and the views."""
        if len(value) > self.max_message_bytes:
            raise ContractError("too_large", f"{len(value)} bytes > limit {self.max_message_bytes}")
        first = 8 + struct.unpack_from("<i", value, 4)[0] if len(value) >= 8 else -1
        second = struct.unpack_from("<i", value, first + 4)[0] if 8 < first <= len(value) - 8 else -1
        header_end = first + 8 + second
        if second <= 0 or header_end > len(value):
            raise ContractError("corrupt_frame", "frame truncated in its header (or bad message lengths)")
        header = value[:header_end]
        lay = self._layouts.get(header)
        if lay is None:
            try:
                lay = self._layout(header)
            except ContractError as err:  # cached as (reason, detail): no traceback kept alive
                lay = (err.reason, err.detail)
            except UnicodeDecodeError:  # a column name (pyarrow decodes them) that is not UTF-8
                lay = ("invalid_utf8", "a column name is not UTF-8")
            except Exception as exc:  # noqa: BLE001 - untrusted bytes in third-party code: never crash the loop
                lay = ("corrupt_frame", f"unreadable frame header ({type(exc).__name__})")
            self._layouts.put(header, lay)
        if type(lay) is tuple:
            raise ContractError(*lay)  # a new one each time: re-raising one object grows its traceback
        end = header_end + lay.body_len
        if len(value) != end and value[end:] not in _EOS:
            if _another_message(value, end):
                raise ContractError("schema", "a frame holds one record batch (then, optionally, end-of-stream)")
            raise ContractError("corrupt_frame", "frame truncated, or bytes after its record batch")
        plan, n = lay.plan, lay.n
        ts = np.frombuffer(value, plan.ts_dtype, n, header_end + lay.ts_offset)
        ts = ts * plan.ts_scale if plan.ts_scale != 1.0 else ts.astype(np.float64)
        if lay.step:
            values = np.ndarray((n, len(self.channels)), plan.dtypes[0], buffer=value,
                                offset=header_end + lay.offsets[0], strides=(plan.dtypes[0].itemsize, lay.step))
        else:
            values = np.stack([np.frombuffer(value, d, n, header_end + o) for d, o in zip(plan.dtypes, lay.offsets)],
                              axis=1)
        sensor_id = plan.sensor_id
        if sensor_id is None:
            if not key:
                raise ContractError("schema", "sensor_id missing (in the schema metadata or as the message key)")
            sensor_id = key_sensor_id(key)
        return sensor_id, values, ts

    def _layout(self, value: bytes) -> _Layout:
        """Read a frame's header (its two flatbuffers, nothing after them): where its columns
        are, relative to its body."""
        b, _, header_type, _, body_len = read_message(value, 0)
        if header_type != SCHEMA or body_len:
            raise ContractError("schema", "an Arrow stream starts with its Schema message")
        plan = self._plan(value[:b.end])
        b, _, header_type, rb, body_len = read_message(value, b.end)
        if header_type != RECORD_BATCH:
            raise ContractError("schema", "the frame's second message must be a RecordBatch "
                                          "(dictionary encoding is not part of the contract)")
        rb = b.table(rb)
        length_at = b.field(rb, 0)
        n = b.read("<q", length_at) if length_at else 0
        if b.field(rb, 3):
            raise ContractError("schema", "IPC buffer compression is not part of the contract "
                                          "(use the producer's compression.type)")
        if n <= 0:
            raise ContractError("schema", "a frame holds at least one reading")
        # Bounds first, so that no product or sum below can overflow int64.
        if body_len > self.max_message_bytes or n > body_len:
            raise ContractError("corrupt_frame", f"{n} readings in a body of {body_len} bytes")
        nodes_at, buffers_at = b.field(rb, 1), b.field(rb, 2)
        if not nodes_at or not buffers_at:
            raise ContractError("corrupt_frame", "record batch without nodes or buffers")
        nodes_pos, n_nodes = b.vector(nodes_at, 16)
        bufs_pos, n_bufs = b.vector(buffers_at, 16)
        if n_nodes != plan.n_fields or n_bufs != 2 * plan.n_fields:
            raise ContractError("corrupt_frame", "record batch does not match its schema")
        nodes = np.frombuffer(value, "<i8", 2 * n_nodes, nodes_pos).reshape(-1, 2)  # (length, null_count)
        bufs = np.frombuffer(value, "<i8", 2 * n_bufs, bufs_pos).reshape(-1, 2, 2)  # [field][validity, data]
        used = (plan.ts_field, *plan.fields)
        if (nodes[used, 0] != n).any():
            raise ContractError("corrupt_frame", "a column's length differs from the batch's")
        if nodes[used, 1].any():
            raise ContractError("schema", "null values (every reading needs a number for every channel)")
        data = bufs[used, 1]
        need = n * np.array([plan.ts_dtype.itemsize, *(d.itemsize for d in plan.dtypes)])
        if ((data[:, 0] < 0) | (data[:, 1] < need) | (data[:, 0] > body_len - need)
                | (data[:, 1] > body_len - data[:, 0])).any():
            raise ContractError("corrupt_frame", "a column's buffer lies outside the message body")
        offsets = data[1:, 0].tolist()
        step = offsets[1] - offsets[0] if len(offsets) > 1 else plan.dtypes[0].itemsize * n
        regular = plan.uniform and step > 0 and offsets == list(range(offsets[0], offsets[0] + step * len(offsets), step))
        return _Layout(plan, int(n), int(body_len), int(data[0, 0]), tuple(offsets), step if regular else 0)

    def _plan(self, schema_msg: bytes) -> _Plan:
        plan = self._plans.get(schema_msg)
        if plan is None:
            try:
                plan = self._make_plan(schema_msg)
            except ContractError as err:
                plan = (err.reason, err.detail)
            self._plans.put(schema_msg, plan)
        if type(plan) is tuple:
            raise ContractError(*plan)
        return plan

    def _make_plan(self, schema_msg: bytes) -> _Plan:
        import pyarrow as pa

        try:
            schema = pa.ipc.read_schema(pa.py_buffer(schema_msg))
        except (pa.ArrowException, ValueError, OSError) as exc:
            raise ContractError("corrupt_frame", f"unreadable Arrow schema: {str(exc)[:160]}") from None
        meta = schema.metadata or {}
        version = meta.get(VERSION_KEY, FRAME_VERSION.encode())
        if version != FRAME_VERSION.encode():
            raise ContractError("unsupported_version", f"latentwatch.frame {version[:20]!r}; this "
                                                       f"pipeline reads version {FRAME_VERSION}")
        sensor_id = meta.get(SENSOR_KEY)
        if sensor_id is not None:
            try:
                sensor_id = sensor_id.decode("utf-8")
            except UnicodeDecodeError:
                raise ContractError("invalid_utf8", "sensor_id in the schema metadata is not UTF-8") from None
            if not sensor_id:
                raise ContractError("schema", "sensor_id in the schema metadata is empty")
            check_sensor_id(sensor_id, "sensor_id in the schema metadata")
        names = schema.names
        if len(set(names)) != len(names):
            raise ContractError("schema", "duplicate column names")
        for f in schema:
            if not pa.types.is_primitive(f.type):  # one node and two buffers per field
                raise ContractError("schema", f"column {f.name[:40]!r} is {f.type}: columns are numbers or times")
        if TS_COLUMN not in names:
            raise ContractError("schema", "no 'ts' column")
        ts_field = names.index(TS_COLUMN)
        ts_type = schema.field(ts_field).type
        if pa.types.is_timestamp(ts_type):
            ts_scale, ts_dtype = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9}[ts_type.unit], np.dtype("<i8")
        elif ts_type == pa.float64():
            ts_scale, ts_dtype = 1.0, np.dtype("<f8")
        else:
            raise ContractError("schema", f"ts is {ts_type}: a timestamp or float64 epoch seconds")
        missing = [c for c in self.channels if c not in names]
        if missing:
            raise ContractError("missing_channels", f"no column for channel(s) {missing[:5]}")
        fields = tuple(names.index(c) for c in self.channels)
        dtypes = []
        for i in fields:
            t = schema.field(i).type
            if t not in (pa.float32(), pa.float64()):
                raise ContractError("schema", f"channel {names[i][:40]!r} is {t}, not float32 or float64")
            dtypes.append(np.dtype("<f4") if t == pa.float32() else np.dtype("<f8"))
        return _Plan(len(names), sensor_id, ts_field, ts_scale, ts_dtype, fields, tuple(dtypes), len(set(dtypes)) == 1)


def check_times(ts: np.ndarray, latest: float) -> None:
    """The contract's rules on a frame's event times (NaN fails the range check)."""
    if not (ts.min() >= TS_MIN and ts.max() <= latest):
        raise ContractError("bad_timestamp", "event time before 2000, too far in the future, or not finite")
    if len(ts) > 1 and not (np.diff(ts) > 0).all():
        raise ContractError("late", "readings of a frame must be in strictly increasing time order")


def encode_frame(ts, values, channels: list[str], sensor_id: str | None = None) -> bytes:
    """A frame of one sensor's readings: `ts` [n] epoch seconds, `values` [n, channels]. The
    sensor id goes in the schema metadata when given (else send it as the message key, which
    keeps the schema, and the decoder's cached reading of it, the same for every sensor)."""
    import pyarrow as pa

    values = np.asarray(values, dtype=np.float32)
    micros = np.round(np.asarray(ts, dtype=np.float64) * 1e6).astype(np.int64)
    meta = {VERSION_KEY: FRAME_VERSION.encode()}
    if sensor_id is not None:
        meta[SENSOR_KEY] = sensor_id.encode()
    schema = pa.schema([pa.field(TS_COLUMN, pa.timestamp("us", tz="UTC"), nullable=False)]
                       + [pa.field(c, pa.float32(), nullable=False) for c in channels], metadata=meta)
    columns = [pa.array(micros, pa.int64()).view(schema.field(0).type)]
    columns += [pa.array(values[:, j]) for j in range(values.shape[1])]
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema) as writer:
        writer.write_batch(pa.record_batch(columns, schema=schema))
    return sink.getvalue().to_pybytes()
