"""What the sink produces, in which order, without a broker (a recording producer)."""

from __future__ import annotations

import numpy as np
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.scorer import ScoredBatch
from latentwatch.pipeline.sink import Sink
from latentwatch.pipeline.stop import StopBudget


class Recorder:
    def __init__(self):
        self.produced = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, partition=None):
        self.produced.append((topic, partition, key, value))
        self.headers = headers


def _sink():
    sink = Sink(Settings(), on_error=lambda err: None, stop=StopBudget.never())
    sink.producer = Recorder()
    return sink


def test_an_evicted_sensor_back_in_the_next_batch_keeps_its_new_record_after_no_tombstone():
    sink = _sink()
    batch = ScoredBatch([], [], [], [], [], np.empty(0), 1, changelog=[(0, b"back", b"LWS1new"), (0, b"x", b"LWS1x")])
    sink.produce_batch(batch, "st", tombstones=[(0, "back"), (1, "gone")])
    order = [(key, value) for topic, _, key, value in sink.producer.produced if topic == "st"]
    # A restore keeps a sensor's last record: a tombstone after "back"'s new record would delete it.
    last = {}
    for key, value in order:
        last[key] = value
    assert last == {b"back": b"LWS1new", b"x": b"LWS1x", b"gone": None}


def test_a_dead_letter_with_a_600000_byte_key_fits_the_producer_limit():
    from latentwatch.pipeline.kafka import clients

    from tests.support.fakes import FakeMessage

    sink = _sink()
    limit = int(clients.producer_config(Settings()).get("message.max.bytes", 1_000_000))
    msg = FakeMessage(b"{" + b" " * 620_000 + b"}", b"x" * 600_000, "in", 0, 7)
    batch = ScoredBatch([msg], [(0, "bad_sensor_id", "sensor_id is 600000 bytes")], [], [], [], np.empty(0), 0)
    sink.produce_batch(batch, None)
    (topic, _, key, value), = sink.producer.produced
    assert topic == Settings().topics.dead_letter
    headers = dict(sink.producer.headers)
    size = len(key) + len(value) + sum(len(k) + len(v) for k, v in sink.producer.headers)
    assert size <= limit - 1024  # room for the record's framing
    assert headers["lw-dlq-key-truncated"] == b"true" and headers["lw-dlq-original-key-bytes"] == b"600000"
    assert key == b"x" * len(key)
