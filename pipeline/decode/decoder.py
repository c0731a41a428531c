"""The one decoder the run loop holds: JSON messages and binary frames may share a topic, and
`Decoder` tells them apart by their first four bytes (0xFFFFFFFF, Arrow's continuation marker:
0xFF never occurs in UTF-8, so no JSON message starts with it and no header is needed), decodes
each kind in one go (`jsonmsg.JsonDecoder`, `frames.FrameDecoder`) and merges the two outcomes
back into input order. A first byte 0 is the Confluent wire format (schema'd Avro / JSON Schema
records, `wire.WireDecoder`, given a `schemas` lookup and mapping).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from latentwatch.pipeline.decode.batch import ContractError, Decoded, DecodedBatch, merge, renumber
from latentwatch.pipeline.decode.frames import FRAME_MAGIC, FrameDecoder
from latentwatch.pipeline.decode.jsonmsg import JsonDecoder
from latentwatch.pipeline.decode.wire import HEADER, Mapping, SchemaLookup, WireDecoder, is_wire


@dataclass(frozen=True)
class SchemaInput:
    """How schema'd input is read: the registry lookup and the field mapping (decode/wire.py)."""

    lookup: SchemaLookup
    mapping: Mapping = field(default_factory=Mapping)


@dataclass
class Decoder:
    """Decodes message values for a model with `channels`, enforcing size and time limits."""

    channels: list[str]
    max_message_bytes: int = 1_000_000
    max_future_s: float = 86_400.0
    schemas: SchemaInput | None = None  # None: a wire-format message is a dead letter (unknown_schema)
    _json: JsonDecoder = field(init=False, repr=False)
    _frames: FrameDecoder = field(init=False, repr=False)
    _wire: WireDecoder | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        self._json = JsonDecoder(self.channels, self.max_message_bytes, self.max_future_s)
        self._frames = FrameDecoder(self.channels, self.max_message_bytes, self.max_future_s)
        if self.schemas is not None:
            self._wire = WireDecoder(self.channels, self.schemas.lookup, self.schemas.mapping,
                                     self.max_message_bytes, self.max_future_s)

    def decode(self, value: bytes | None, key: bytes | None, now: float) -> Decoded:
        """One message. The run loop decodes whole batches with `decode_many` (same outcome)."""
        if value is not None and value[:4] == FRAME_MAGIC:
            return Decoded(*self._frames.decode(value, key, now))
        if is_wire(value):
            got = self.decode_many([(value, key)], now)
            if got.errors:
                raise got.errors[0][1]
            return Decoded(got.sensor_ids[0], got.values, got.ts)
        return self._json.decode(value, key, now)

    def decode_many(self, items: Iterable[tuple[bytes | None, bytes | None]], now: float,
                    max_readings: int | None = None) -> DecodedBatch:
        """Decode a micro-batch of (value, key): JSON messages and binary frames, each kind in
        one go, merged back into input order. With `max_readings`, only the longest prefix of
        the input holding at most that many readings (at least one item) is decoded; `taken`
        says how long it is. JSON, the costly kind, stops being parsed at the item that crosses
        the cap (the items after it are never looked at)."""
        json_items, frames, wire = [], [], []
        for i, (value, key) in enumerate(items):
            if value is not None and value[:4] == FRAME_MAGIC:
                frames.append((i, value, key))
            elif value and value[0] == 0:
                wire.append((i, value, key))
            else:
                json_items.append((i, value, key))
        if not frames and not wire:
            return self._json.decode_many([(v, k) for _, v, k in json_items], now, max_readings)
        got = None
        if wire:  # first: RegistryUnavailable (the registry down) leaves the whole batch undecided
            got = renumber(self._decode_wire([(v, k) for _, v, k in wire], now), [i for i, _, _ in wire])
        if frames:
            f = self._frames.decode_many(frames, now)
            got = f if got is None else merge(got, f)
        if json_items:
            got = merge(got, renumber(self._json.decode_many([(v, k) for _, v, k in json_items], now),
                                      [i for i, _, _ in json_items]))
        return got if max_readings is None else got.capped(len(json_items) + len(frames) + len(wire), max_readings)

    def _decode_wire(self, items: list, now: float) -> DecodedBatch:
        if self._wire is not None:
            return self._wire.decode_many(items, now)
        errors = [(i, ContractError("unknown_schema", (
            f"Confluent wire format (schema id {HEADER.unpack_from(v)[1]}) but no schema registry is configured "
            "(schema_registry.url)") if len(v) >= 5 else "Confluent wire format but no schema registry is configured"))
            for i, (v, _k) in enumerate(items)]
        return DecodedBatch([], [], np.zeros(0, np.int64), np.empty((0, len(self.channels)), np.float32),
                            np.empty(0), errors)
