"""The one decoder the run loop holds: JSON messages and binary frames may share a topic, and
`Decoder` tells them apart by their first four bytes (0xFFFFFFFF, Arrow's continuation marker:
0xFF never occurs in UTF-8, so no JSON message starts with it and no header is needed), decodes
each kind in one go (`jsonmsg.JsonDecoder`, `frames.FrameDecoder`) and merges the two outcomes
back into input order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from latentwatch.pipeline.decode.batch import Decoded, DecodedBatch, merge, renumber
from latentwatch.pipeline.decode.frames import FRAME_MAGIC, FrameDecoder
from latentwatch.pipeline.decode.jsonmsg import JsonDecoder


@dataclass
class Decoder:
    """Decodes message values for a model with `channels`, enforcing size and time limits."""

    channels: list[str]
    max_message_bytes: int = 1_000_000
    max_future_s: float = 86_400.0
    _json: JsonDecoder = field(init=False, repr=False)
    _frames: FrameDecoder = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._json = JsonDecoder(self.channels, self.max_message_bytes, self.max_future_s)
        self._frames = FrameDecoder(self.channels, self.max_message_bytes, self.max_future_s)

    def decode(self, value: bytes | None, key: bytes | None, now: float) -> Decoded:
        """One message. The run loop decodes whole batches with `decode_many` (same outcome)."""
        if value is not None and value[:4] == FRAME_MAGIC:
            return Decoded(*self._frames.decode(value, key, now))
        return self._json.decode(value, key, now)

    def decode_many(self, items: Iterable[tuple[bytes | None, bytes | None]], now: float,
                    max_readings: int | None = None) -> DecodedBatch:
        """Decode a micro-batch of (value, key): JSON messages and binary frames, each kind in
        one go, merged back into input order. With `max_readings`, only the longest prefix of
        the input holding at most that many readings (at least one item) is decoded; `taken`
        says how long it is. JSON, the costly kind, stops being parsed at the item that crosses
        the cap (the items after it are never looked at)."""
        json_items, frames = [], []
        for i, (value, key) in enumerate(items):
            if value is not None and value[:4] == FRAME_MAGIC:
                frames.append((i, value, key))
            else:
                json_items.append((i, value, key))
        if not frames:
            return self._json.decode_many([(v, k) for _, v, k in json_items], now, max_readings)
        got = self._frames.decode_many(frames, now)
        if json_items:
            got = merge(got, renumber(self._json.decode_many([(v, k) for _, v, k in json_items], now),
                                      [i for i, _, _ in json_items]))
        return got if max_readings is None else got.capped(len(json_items) + len(frames), max_readings)
