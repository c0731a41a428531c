"""A Kafka message without a broker, for the benches that drive the scorer stage alone
(`baselines_cost`, `health_cost`, `pacing_stage`): what `Scorer.score` reads of a message."""

from __future__ import annotations


class Msg:
    __slots__ = ("_k", "_o", "_p", "_t", "_v")

    def __init__(self, value: bytes, key: bytes | None, partition: int, offset: int, topic: str = "in"):
        self._v, self._k, self._p, self._o, self._t = value, key, partition, offset, topic

    def value(self):
        return self._v

    def key(self):
        return self._k

    def topic(self):
        return self._t

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def timestamp(self):
        return (1, 0)

    def headers(self):
        return []

    def error(self):
        return None
