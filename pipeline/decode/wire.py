"""Schema'd input: Avro, JSON Schema and Protobuf records in the Confluent wire format, decoded
through a Schema Registry.

On the wire: byte 0 is 0 (the magic byte; JSON starts with `{`, frames with `FF FF FF FF`),
bytes 1-4 the schema id (big-endian), then the Avro binary, the JSON text, or the Protobuf
message indexes and payload. The registry is reached through a `SchemaLookup`
(pipeline/kafka/registry.py: confluent-kafka's SchemaRegistryClient), asked once per schema id: an
id seen once is never asked again.

`Mapping` says which fields give a reading: the sensor id (else the message key), the event time
(Avro `timestamp-millis`/`-micros`, a Protobuf `Timestamp`, an ISO-8601 string, or a number in
`time_unit`), and the channels, one of:
- a field holding a map (by channel name), an array (in the model's channel order) or a record /
  nested message (fields named like the channels): `channels: values`, the default, as in our
  JSON contract;
- top-level fields named like the model's channels (`channels: null`, or no such field);
`rename` maps a model channel to another field name. A record with a `readings` array of
{ts, values} records carries several readings, as the JSON contract's batch form.

What goes wrong, and what follows:
- the registry does not answer (connection refused, timeout, 5xx): `RegistryUnavailable`, raised
  out of `decode_many` before anything is decided. The data is fine: the run loop backs off and
  redoes the batch (pipeline/runner.py); nothing is dead-lettered, nothing committed;
- the registry has no such id: dead letter `unknown_schema`;
- a payload its schema does not read (truncated, bytes left over, bad JSON): `undecodable`;
- a schema that cannot give the model's channels (or a sensor id, or an event time):
  `schema_mapping`, naming the field, at the first message of that schema id;
- a Protobuf schema that cannot be read (protoc's error, or the `protobuf` extra not installed):
  `schema_mapping` saying so. Protobuf payloads carry message indexes (decode/protobuf.py): each
  message type of a schema is checked, and read, on its own.
Values and times then follow the JSON contract's checks (non_finite, bad_timestamp, late ...).
"""

from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import numpy as np
import orjson
from latentwatch.pipeline.decode.batch import (
    FLOAT32_MAX,
    TS_MIN,
    ContractError,
    DecodedBatch,
    check_sensor_id,
)
from latentwatch.pipeline.decode.protobuf import Instant
from latentwatch.pipeline.times import parse_time

MAGIC = 0
HEADER = struct.Struct(">bI")  # magic byte, schema id
TIME_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


class RegistryUnavailable(Exception):
    """The schema registry could not be asked (a transient fault: the data is fine)."""


class SchemaNotFound(Exception):
    """The registry answered: no schema has this id."""


class SchemaLookup(Protocol):
    def get(self, schema_id: int) -> tuple[str, str]:
        """(schema type: AVRO, JSON or PROTOBUF, schema text); raises SchemaNotFound or RegistryUnavailable.
        A lookup may also have `imports(schema_id) -> {import name: schema text}` (Protobuf references)."""


@dataclass(frozen=True)
class Mapping:
    """Which fields of a schema'd record give a reading (module docstring)."""

    sensor_id: str = "sensor_id"
    time: str = "ts"
    time_unit: str = "s"
    channels: str | None = "values"
    rename: dict[str, str] = field(default_factory=dict)


def is_wire(value: bytes | None) -> bool:
    return value is not None and len(value) > 0 and value[0] == MAGIC


@dataclass
class _Reader:
    """What is known of one schema id: how to read its payloads and how to get a reading of them."""

    read: Callable[[bytes], Any] | None  # payload -> record; None: refused (`refusal`)
    refusal: ContractError | None = None
    fields: frozenset = frozenset()  # top-level field names, when the schema says them


class WireDecoder:
    """Confluent wire-format values -> readings arrays for a model with `channels`."""

    def __init__(self, channels: list[str], lookup: SchemaLookup, mapping: Mapping | None = None,
                 max_message_bytes: int = 1_000_000, max_future_s: float = 86_400.0):
        self.channels = list(channels)
        self.lookup = lookup
        self.mapping = mapping or Mapping()
        self.max_message_bytes = max_message_bytes
        self.max_future_s = max_future_s
        self._readers: dict[int, _Reader] = {}
        self._unit = TIME_UNITS[self.mapping.time_unit]
        self._names = [self.mapping.rename.get(c, c) for c in self.channels]

    # -- schemas ---------------------------------------------------------------------------
    def _reader(self, schema_id: int) -> _Reader:
        reader = self._readers.get(schema_id)
        if reader is not None:
            return reader
        try:
            kind, text = self.lookup.get(schema_id)  # RegistryUnavailable passes through
        except SchemaNotFound:
            return _Reader(None, ContractError("unknown_schema", f"schema id {schema_id} is not in the registry"))
        reader = self._build(schema_id, kind, text)
        self._readers[schema_id] = reader
        return reader

    def _build(self, schema_id: int, kind: str, text: str) -> _Reader:
        where = f"schema id {schema_id}"
        if kind == "AVRO":
            import fastavro

            try:
                schema = fastavro.parse_schema(orjson.loads(text))
            except Exception as exc:  # noqa: BLE001 - a schema fastavro cannot read
                return _Reader(None, ContractError("schema_mapping", f"{where}: Avro schema not readable: {exc}"[:300]))
            if not isinstance(schema, dict) or schema.get("type") != "record":
                return _Reader(None, ContractError("schema_mapping", f"{where}: the Avro schema is not a record"))
            fields = {f["name"]: f["type"] for f in schema["fields"]}
            refusal = self._check(where, fields)
            reader = fastavro.schemaless_reader

            def read(payload: bytes, _schema=schema):
                buf = io.BytesIO(payload)
                record = reader(buf, _schema, None)
                if buf.tell() != len(payload):
                    raise ValueError(f"{len(payload) - buf.tell()} bytes left over after the record")
                return record

            return _Reader(None if refusal else read, refusal, frozenset(fields))
        if kind == "JSON":
            try:
                schema = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                return _Reader(None, ContractError("schema_mapping", f"{where}: JSON Schema not readable: {exc}"))
            props = schema.get("properties") if isinstance(schema, dict) else None
            refusal = self._check(where, props) if isinstance(props, dict) else None
            return _Reader(None if refusal else orjson.loads, refusal, frozenset(props or ()))
        if kind == "PROTOBUF":
            return self._protobuf(schema_id, where, text)
        return _Reader(None, ContractError("schema_mapping", f"{where}: {kind} input is not supported "
                                           "(Avro, JSON Schema and Protobuf are)"))

    def _protobuf(self, schema_id: int, where: str, text: str) -> _Reader:
        """A Protobuf schema (with the schemas it imports: its references, RegistryUnavailable passes
        through): its message types are looked up, checked and given a reader at the first payload
        naming each (message indexes); a message type that cannot give a reading is refused."""
        from latentwatch.pipeline.decode import protobuf as pb

        imports = getattr(self.lookup, "imports", None)
        try:
            schema = pb.ProtoSchema(text, imports(schema_id) if imports else None)
        except SchemaNotFound as exc:
            return _Reader(None, ContractError("schema_mapping", f"{where}: a schema it references is not in the "
                                               f"registry: {exc}"[:300]))
        except pb.SchemaError as exc:
            return _Reader(None, ContractError("schema_mapping", f"{where}: {exc}"[:300]))
        m = self.mapping
        wanted = {m.sensor_id, m.time, m.channels, "readings", *self._names}
        by_path: dict[tuple, tuple | ContractError] = {}

        def message(indexes: list[int]):
            got = by_path.get(tuple(indexes))
            if got is None:
                desc = schema.message(indexes)  # ValueError: undecodable
                got = self._check(f"{where} (message {desc.full_name})", pb.fields_of(desc), pb.record_fields)
                if got is None:
                    got = (pb.message_class(desc).FromString, pb.record_reader(desc, wanted, m.channels, self._names))
                by_path[tuple(indexes)] = got
            return got

        def read(payload: bytes):
            indexes, start = pb.read_indexes(payload)
            got = message(indexes)
            if isinstance(got, ContractError):
                raise got
            parse, to_record = got
            return to_record(parse(payload[start:]))

        return _Reader(read, None, frozenset(pb.fields_of(schema.first_message())))

    def _check(self, where: str, fields: dict, sub_fields=None) -> ContractError | None:
        """The refusal of a schema whose top-level fields cannot give a reading (None: they can)."""
        m = self.mapping
        if "readings" in fields:
            return None  # the batch form: its item schema is checked reading by reading
        if m.time not in fields:
            return ContractError("schema_mapping", f"{where} has no field '{m.time}' for the event time "
                                 "(input_mapping.time)")
        if m.channels and m.channels in fields:
            sub = (sub_fields or _record_fields)(fields[m.channels])
            if sub is not None:  # a record of channels: every one named
                missing = [n for n in self._names if n not in sub]
                if missing:
                    return ContractError("schema_mapping", f"{where}: field '{m.channels}' has no field "
                                         f"'{missing[0]}' for channel {self.channels[self._names.index(missing[0])]}")
            return None
        missing = [n for n in self._names if n not in fields]
        if missing:
            via = f"no field '{m.channels}' and " if m.channels else ""
            return ContractError("schema_mapping", f"{where} has {via}no field '{missing[0]}' for channel "
                                 f"{self.channels[self._names.index(missing[0])]}")
        return None

    # -- messages --------------------------------------------------------------------------
    def decode_many(self, items: list[tuple[bytes | None, bytes | None]], now: float) -> DecodedBatch:
        """A micro-batch of wire-format (value, key). Schemas of ids not seen yet are fetched first
        (once each); RegistryUnavailable leaves the batch undecided. Numbers and times of all
        messages are then converted and checked in one go (one by one only when that fails)."""
        ids = {}
        for value, _key in items:
            if value is not None and len(value) >= 5:
                ids.setdefault(HEADER.unpack_from(value)[1], None)
        readers = {sid: self._reader(sid) for sid in ids}
        index, sensor_ids, counts, errors, rows_all, ts_all = [], [], [], [], [], []
        for i, (value, key) in enumerate(items):
            try:
                sensor_id, rows, ts = self._one(value, key, readers)
            except ContractError as err:
                errors.append((i, err))
                continue
            index.append(i)
            sensor_ids.append(sensor_id)
            counts.append(len(rows))
            rows_all.extend(rows)
            ts_all.extend(ts)
        if not index:
            return DecodedBatch([], [], np.zeros(0, np.int64), np.empty((0, len(self.channels)), np.float32),
                                np.empty(0), errors)
        values = self._values(rows_all)
        times = np.array(ts_all, dtype=np.float64)
        if values is not None and self._times_ok(times, counts, now):
            return DecodedBatch(index, sensor_ids, np.array(counts, np.int64), values, times, errors)
        return self._one_by_one(index, sensor_ids, counts, rows_all, ts_all, errors, now)

    def _one(self, value, key, readers) -> tuple[str, list, list]:
        if value is None or len(value) < 5:
            raise ContractError("undecodable", "shorter than the wire format's 5-byte header")
        if len(value) > self.max_message_bytes:
            raise ContractError("too_large", f"{len(value)} bytes > limit {self.max_message_bytes}")
        reader = readers[HEADER.unpack_from(value)[1]]
        if reader.read is None:
            raise reader.refusal
        try:
            record = reader.read(value[5:])
        except ContractError:
            raise  # a refusal of the payload's message type (Protobuf)
        except Exception as exc:  # noqa: BLE001 - whatever the payload makes the reader raise
            raise ContractError("undecodable", f"payload does not decode with schema id "
                                f"{HEADER.unpack_from(value)[1]}: {type(exc).__name__}: {exc}"[:300]) from None
        if not isinstance(record, dict):
            raise ContractError("schema", f"expected a record, got {type(record).__name__}")
        return self._reading(record, key)

    def _reading(self, record: dict, key) -> tuple[str, list, list]:
        m = self.mapping
        sensor_id = record.get(m.sensor_id)
        if sensor_id is None and key:
            sensor_id = key.decode("utf-8", "replace")
        if not isinstance(sensor_id, str) or not sensor_id:
            raise ContractError("schema", f"no sensor id: field '{m.sensor_id}' is empty and the message has no key")
        check_sensor_id(sensor_id)
        readings = record.get("readings")
        if readings is None:
            readings = (record,)
        elif not isinstance(readings, list) or not readings:
            raise ContractError("schema", "readings must be a non-empty array")
        rows, ts = [], []
        for r in readings:
            if not isinstance(r, dict):
                raise ContractError("schema", "each reading must be a record")
            rows.append(self._row(r))
            ts.append(self._time(r.get(m.time)))
        return sensor_id, rows, ts

    def _row(self, r: dict) -> list:
        m = self.mapping
        holder = r.get(m.channels) if m.channels else None
        if holder is None:
            holder = r
        if isinstance(holder, list):
            if len(holder) != len(self.channels):
                raise ContractError("missing_channels" if len(holder) < len(self.channels) else "schema",
                                    f"{len(holder)} values, the model has {len(self.channels)} channels")
            return holder
        if not isinstance(holder, dict):
            raise ContractError("schema", f"field '{m.channels}' must be a map, an array or a record")
        try:
            return [holder[n] for n in self._names]
        except KeyError as exc:
            raise ContractError("missing_channels", f"no value for channel field {exc}") from None

    def _time(self, raw) -> float:
        if isinstance(raw, datetime):  # Avro timestamp-millis / -micros (fastavro gives UTC datetimes)
            return raw.timestamp()
        if isinstance(raw, Instant):  # a google.protobuf.Timestamp
            return float(raw)
        if isinstance(raw, bool) or raw is None:
            raise ContractError("schema", f"event time field '{self.mapping.time}' is missing or not a time")
        if isinstance(raw, (int, float)):
            return raw * self._unit
        try:
            return parse_time(raw)
        except TypeError as exc:
            raise ContractError("schema", f"{self.mapping.time} {exc}") from None
        except ValueError as exc:
            raise ContractError("bad_timestamp", f"{self.mapping.time} {exc}") from None

    def _values(self, rows) -> np.ndarray | None:
        """All rows as float32, or None when any breaks the contract (the slow path says which)."""
        try:
            arr = np.array(rows)  # no dtype: strings and nulls stay objects, not numbers
        except (ValueError, TypeError, OverflowError):
            return None
        if arr.dtype.kind not in "iuf" or arr.ndim != 2 or not np.abs(arr).max() <= FLOAT32_MAX:
            return None
        return arr.astype(np.float32)

    def _times_ok(self, ts: np.ndarray, counts: list[int], now: float) -> bool:
        if not (ts.min() >= TS_MIN and ts.max() <= now + self.max_future_s):
            return False
        if len(ts) > len(counts):
            rising = np.diff(ts) > 0
            rising[np.cumsum(counts)[:-1] - 1] = True
            return bool(rising.all())
        return True

    def _one_by_one(self, index, sensor_ids, counts, rows_all, ts_all, errors, now) -> DecodedBatch:
        keep, ids, kept, values, times = [], [], [], [], []
        start = 0
        for i, sid, k in zip(index, sensor_ids, counts):
            rows, ts = rows_all[start:start + k], ts_all[start:start + k]
            start += k
            try:
                if any(type(v) is bool or not isinstance(v, (int, float)) for row in rows for v in row):
                    raise ContractError("schema", "values must all be numbers")
                arr = np.array(rows, dtype=np.float64)
                if not np.abs(arr).max() <= FLOAT32_MAX:
                    raise ContractError("non_finite", "NaN, Inf or a value beyond float32 range")
                latest = now + self.max_future_s
                if not all(TS_MIN <= t <= latest for t in ts) or any(math.isnan(t) for t in ts):
                    raise ContractError("bad_timestamp", "event time before 2000 or too far in the future")
                t = np.array(ts, dtype=np.float64)
                if len(t) > 1 and np.any(np.diff(t) <= 0):
                    raise ContractError("late", "readings of a batch must be in strictly increasing time order")
            except ContractError as err:
                errors.append((i, err))
                continue
            keep.append(i)
            ids.append(sid)
            kept.append(k)
            values.append(arr.astype(np.float32))
            times.append(t)
        errors.sort(key=lambda e: e[0])
        if not keep:
            return DecodedBatch([], [], np.zeros(0, np.int64), np.empty((0, len(self.channels)), np.float32),
                                np.empty(0), errors)
        return DecodedBatch(keep, ids, np.array(kept, np.int64), np.concatenate(values), np.concatenate(times), errors)


def _record_fields(avro_type) -> set | None:
    """The field names of an Avro record type (a union's record branch too); None otherwise."""
    if isinstance(avro_type, list):
        for branch in avro_type:
            got = _record_fields(branch)
            if got is not None:
                return got
        return None
    if isinstance(avro_type, dict) and avro_type.get("type") == "record":
        return {f["name"] for f in avro_type.get("fields", ())}
    return None
