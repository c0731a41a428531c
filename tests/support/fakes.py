"""In-memory stand-ins for the scorer's input: Kafka messages without a broker."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class FakeMessage:
    _value: bytes | None
    _key: bytes | None = None
    _topic: str = "in"
    _partition: int = 0
    _offset: int = 0
    _ts_ms: int = 0
    _headers: list = field(default_factory=list)

    def value(self):
        return self._value

    def key(self):
        return self._key

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, self._ts_ms)

    def headers(self):
        return self._headers

    def __len__(self):
        return len(self._value or b"")

    def error(self):
        return None


def messages(payloads: list[dict | bytes], partition: int = 0, first_offset: int = 0) -> list[FakeMessage]:
    out = []
    for i, p in enumerate(payloads):
        value = p if isinstance(p, bytes) else json.dumps(p).encode()
        key = None if isinstance(p, bytes) else p.get("sensor_id", "").encode()
        out.append(FakeMessage(value, key, "in", partition, first_offset + i))
    return out
