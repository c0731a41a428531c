"""The JSON input contract: decode JSON message values into arrays, or say why a message breaks it.

One JSON object per message (UTF-8); the key, when present, is the sensor id.
- one reading:  {"sensor_id": "pump-7", "ts": "2026-11-21T10:00:00.250Z", "values": {"temp": 71.2}}
- a batch:      {"sensor_id": "pump-7", "readings": [{"ts": ..., "values": ...}, ...]}
`ts` is ISO-8601 or epoch seconds; `values` is an object by channel name (must cover the model's
channels; extra channels are ignored) or a list in the model's channel order. Readings of a batch
are in event order. `latentwatch schema` prints this as JSON Schema (`json_schemas`).

A message may instead be a binary frame (decode/frames.py); `decode.Decoder` tells the two
apart and hands the JSON ones to `JsonDecoder` here.
"""

from __future__ import annotations

import json
import operator
from datetime import UTC, datetime

import numpy as np
import orjson
from latentwatch.pipeline.decode.arrow_ipc import legacy_stream
from latentwatch.pipeline.decode.batch import (
    FLOAT32_MAX,
    TS_MIN,
    ContractError,
    Decoded,
    DecodedBatch,
    check_sensor_id,
    key_sensor_id,
)
from latentwatch.pipeline.times import parse_time


def loads(value: bytes):
    """Parse JSON bytes: orjson (3-4x the stdlib's speed) on the fast path; what orjson refuses
    (invalid UTF-8, NaN/Infinity literals, lone surrogates, numbers beyond float range) goes
    through the stdlib, so the reasons stay the stdlib's: invalid_utf8, not_json, non_finite."""
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        pass
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("invalid_utf8", f"byte {exc.start} is not UTF-8") from None
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ContractError("not_json", str(exc)[:200]) from None


def parse_ts(raw) -> float:
    """parse_time for the `ts` of a reading: failures are contract errors (schema, bad_timestamp)."""
    try:
        return parse_time(raw)
    except TypeError as exc:
        raise ContractError("schema", f"ts {exc}") from None
    except ValueError as exc:
        raise ContractError("bad_timestamp", f"ts {exc}") from None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_times(raw: list) -> list[float]:
    """parse_ts over the readings of a message, with a fast path for the common case (ISO-8601
    with a zone: half the time of parse_ts). Subtracting the epoch is what timestamp() does for
    an aware time, and it refuses a naive one (TypeError), which parse_ts takes as UTC."""
    fromiso = datetime.fromisoformat
    try:
        return [(fromiso(t) - _EPOCH).total_seconds() for t in raw]
    except (TypeError, ValueError, OverflowError):  # numbers, naive times, anything odd
        return [parse_ts(t) for t in raw]


class JsonDecoder:
    """JSON message values -> readings arrays for a model with `channels`, with the contract's
    reasons (size and time limits enforced)."""

    def __init__(self, channels: list[str], max_message_bytes: int = 1_000_000, max_future_s: float = 86_400.0):
        self.channels = list(channels)
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        getter = operator.itemgetter(*self.channels)
        # itemgetter of one key returns a scalar; keep rows as sequences either way.
        self._by_name = getter if len(self.channels) > 1 else (lambda d: (getter(d),))

    def decode(self, value: bytes | None, key: bytes | None, now: float) -> Decoded:
        """One message. The run loop decodes whole batches with `decode_many` (same outcome)."""
        sensor_id, rows, ts_raw = self._parse(value, key)
        values = self._to_array(rows)  # numbers first, then times: the order decides the reason
        return Decoded(sensor_id, values, self._times(ts_raw, now))

    def decode_many(self, items: list[tuple[bytes | None, bytes | None]], now: float,
                    max_readings: int | None = None) -> DecodedBatch:
        """Decode a micro-batch of JSON (value, key). Each message is parsed and checked on its own;
        the numbers and times of all of them are then converted and checked in one go, which is
        most of the saving on one-reading messages. Should that fail (a bad number or time
        somewhere), the messages are converted one by one to find the culprits. With
        `max_readings`, parsing stops at the item that crosses the cap (`taken` says where)."""
        index, sensor_ids, counts, errors = [], [], [], []
        rows_all: list = []
        ts_all: list[float] = []
        one_by_one = False
        taken, cap = None, max_readings if max_readings is not None else float("inf")
        for i, (value, key) in enumerate(items):
            try:
                sensor_id, rows, ts_list = self._parse(value, key)
            except ContractError as err:
                errors.append((i, err))
                continue
            if i and len(rows_all) + len(rows) > cap:
                taken = i  # this one and the rest wait for the next batch
                break
            try:
                ts_list = parse_times(ts_list)
            except ContractError:  # which reason comes first is for the one-by-one path to say
                one_by_one = True
            # A message of JSON booleans only is out of contract, but in a batch numpy would read
            # them as 0/1 (so would it a boolean among numbers, alone or not: that stays so).
            one_by_one = one_by_one or type(rows[0][0]) is bool
            index.append(i)
            sensor_ids.append(sensor_id)
            counts.append(len(rows))
            rows_all.extend(rows)
            ts_all.extend(ts_list)
        counts_arr = np.array(counts, dtype=np.int64)
        converted = None if one_by_one or not index else self._convert_all(rows_all, ts_all, counts_arr, now)
        if converted is None and index:
            got = self._convert_one_by_one(index, sensor_ids, counts, rows_all, ts_all, errors, now)
            got.taken = taken
            return got
        return DecodedBatch(index, sensor_ids, counts_arr, *(converted or self._no_readings()), errors, taken)

    def _no_readings(self) -> tuple[np.ndarray, np.ndarray]:
        return np.empty((0, len(self.channels)), np.float32), np.empty(0)

    def _convert_all(self, rows, ts_list, counts, now):
        """All readings at once; None when any message breaks the contract."""
        try:
            arr = np.array(rows)
        except (ValueError, OverflowError):
            return None
        if arr.dtype.kind not in "iuf" or arr.ndim != 2 or not np.abs(arr).max() <= FLOAT32_MAX:
            return None
        ts = np.array(ts_list, dtype=np.float64)
        if not (ts.min() >= TS_MIN and ts.max() <= now + self.max_future_s):  # NaN fails too
            return None
        if len(ts) > len(counts):  # some message holds several readings: strictly increasing?
            rising = np.diff(ts) > 0
            rising[np.cumsum(counts)[:-1] - 1] = True  # from one message to the next: no rule
            if not rising.all():
                return None
        return arr.astype(np.float32), ts

    def _convert_one_by_one(self, index, sensor_ids, counts, rows_all, ts_all, errors, now) -> DecodedBatch:
        keep_index, keep_ids, keep_counts, values, times = [], [], [], [], []
        start = 0
        for i, sensor_id, k in zip(index, sensor_ids, counts):
            try:
                v = self._to_array(rows_all[start:start + k])
                t = self._times(ts_all[start:start + k], now)
            except ContractError as err:
                errors.append((i, err))
            else:
                keep_index.append(i)
                keep_ids.append(sensor_id)
                keep_counts.append(k)
                values.append(v)
                times.append(t)
            start += k
        errors.sort(key=lambda e: e[0])
        if not values:
            return DecodedBatch([], [], np.zeros(0, np.int64), *self._no_readings(), errors)
        return DecodedBatch(keep_index, keep_ids, np.array(keep_counts, dtype=np.int64),
                            np.concatenate(values), np.concatenate(times), errors)

    def _parse(self, value: bytes | None, key: bytes | None) -> tuple[str, list, list]:
        """Structure and sensor id of one message: (sensor_id, rows of numbers, raw times)."""
        if value is None:
            raise ContractError("schema", "message has no value (tombstone)")
        if len(value) > self.max_message_bytes:
            raise ContractError("too_large", f"{len(value)} bytes > limit {self.max_message_bytes}")
        try:
            obj = loads(value)
        except ContractError:
            if legacy_stream(value):
                raise ContractError("unsupported_version", "Arrow's legacy IPC format (before 0.15, no FF FF FF FF "
                                    "continuation marker): write it with a current writer") from None
            raise
        if not isinstance(obj, dict):
            raise ContractError("schema", f"expected a JSON object, got {type(obj).__name__}")

        sensor_id = obj.get("sensor_id")
        if sensor_id is None and key:
            sensor_id = key_sensor_id(key)
        if not isinstance(sensor_id, str) or not sensor_id:
            raise ContractError("schema", "sensor_id missing (in the body or as the message key)")
        check_sensor_id(sensor_id)

        if "readings" in obj:
            readings = obj["readings"]
            if not isinstance(readings, list) or not readings:
                raise ContractError("schema", "readings must be a non-empty list")
        elif "values" in obj:
            readings = (obj,)
        else:
            raise ContractError("schema", "neither 'values' nor 'readings' present")

        try:
            try:  # values by channel name, the common form: no per-reading checks in Python
                by_name = self._by_name
                rows = [by_name(r["values"]) for r in readings]
            except TypeError:  # lists (or something wrong, which _row names)
                rows = [self._row(r["values"]) for r in readings]
            ts_raw = [r["ts"] for r in readings]
        except KeyError as exc:
            raise ContractError("missing_channels" if exc.args and exc.args[0] not in ("values", "ts")
                                else "schema", f"missing key {exc}") from None
        except TypeError:
            raise ContractError("schema", "each reading must be an object with 'ts' and 'values'") from None
        # JSON's true/false are not readings (numpy takes them as 1/0, and a frame has no booleans):
        # looked for only when the bytes hold the words, so the usual message pays one scan in C.
        if (b"true" in value or b"false" in value) and any(v is True or v is False for row in rows for v in row):
            raise ContractError("schema", "values must be numbers, not true/false")
        return sensor_id, rows, ts_raw

    def _times(self, ts_raw: list, now: float) -> np.ndarray:
        """Raw event times (or already parsed ones: parse_ts keeps a float as it is) -> array."""
        ts_list = parse_times(ts_raw)
        latest = now + self.max_future_s
        # Plain comparisons, not numpy reductions (cheaper on one-reading messages): NaN fails
        # both, so it is out of contract like +-Inf.
        if not all(TS_MIN <= t <= latest for t in ts_list):
            raise ContractError("bad_timestamp", "event time before 2000 or too far in the future")
        ts = np.array(ts_list, dtype=np.float64)
        if len(ts) > 1 and np.any(np.diff(ts) <= 0):
            raise ContractError("late", "readings of a batch must be in strictly increasing time order")
        return ts

    def _row(self, values):
        if isinstance(values, dict):
            return self._by_name(values)
        if isinstance(values, list):
            if len(values) != len(self.channels):
                raise ContractError("missing_channels" if len(values) < len(self.channels) else "schema",
                                    f"{len(values)} values, the model has {len(self.channels)} channels")
            return values
        raise ContractError("schema", "values must be an object or a list")

    def _to_array(self, rows) -> np.ndarray:
        try:
            arr = np.array(rows)
        except (ValueError, OverflowError):
            raise ContractError("schema", "values are not all numbers") from None
        if arr.dtype.kind not in "iuf" or arr.ndim != 2:
            raise ContractError("schema", "values must all be numbers")
        if not np.abs(arr).max() <= FLOAT32_MAX:  # one reduction; a NaN max compares false
            raise ContractError("non_finite", "NaN, Inf or a value beyond float32 range")
        return arr.astype(np.float32)


def json_schemas() -> dict:
    """The contract as JSON Schemas (draft 2020-12): one reading, and a batch."""
    values = {
        "oneOf": [
            {"type": "object", "additionalProperties": {"type": "number"},
             "description": "by channel name; must cover the model's channels, extras are ignored"},
            {"type": "array", "items": {"type": "number"}, "description": "in the model's channel order"},
        ]
    }
    ts = {"oneOf": [{"type": "string", "format": "date-time"}, {"type": "number", "description": "epoch seconds"}],
          "description": "event time; a time without zone is UTC"}
    reading = {"type": "object", "required": ["ts", "values"], "properties": {"ts": ts, "values": values}}
    sensor = {"type": "string", "minLength": 1, "description": "optional when the Kafka key is the sensor id"}
    return {
        "reading": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "latentwatch reading", "type": "object", "required": ["ts", "values"],
            "properties": {"sensor_id": sensor, "ts": ts, "values": values},
        },
        "batch": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "latentwatch batch of readings from one sensor", "type": "object",
            "required": ["readings"],
            "properties": {"sensor_id": sensor,
                           "readings": {"type": "array", "minItems": 1, "items": reading}},
        },
    }
