"""The changelog restore without a broker (a scripted consumer): it honours the stop flag, and a
retry goes on from where the last try stopped instead of reading the changelog from 0 again."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition
from latentwatch.pipeline import state
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.kafka import changelog
from latentwatch.pipeline.stop import StopBudget

from tests.support.fakes import FakeMessage


class _Eof:
    def __init__(self, partition):
        self._partition = partition

    def error(self):
        return KafkaError(KafkaError._PARTITION_EOF)

    def partition(self):
        return self._partition


def _record(partition, offset, sensor, valid_at=0):
    entry = state.Entry(float(offset), np.zeros((2, 3), np.float32), valid_at=valid_at)
    return FakeMessage(state.pack(entry, None), sensor.encode(), "lw-state", partition, offset)


class ScriptedConsumer:
    """Each instance plays the next script: a list of consume() results (a list of messages, or
    an exception to raise); after the script, consume() returns nothing (a frozen broker)."""

    scripts: ClassVar[list] = []
    made: ClassVar[list] = []
    watermarks: ClassVar[dict] = {}
    watermark_calls: ClassVar[int] = 0  # partition -> (low, high); a partition not given holds records

    def __init__(self, conf):
        self.script = list(ScriptedConsumer.scripts.pop(0)) if ScriptedConsumer.scripts else []
        self.assigned, self.calls = None, 0
        ScriptedConsumer.made.append(self)

    def get_watermark_offsets(self, tp, timeout=None, cached=False):
        ScriptedConsumer.watermark_calls += 1
        got = ScriptedConsumer.watermarks.get(tp.partition, (0, 100))
        if isinstance(got, Exception):
            raise got
        return got

    def assign(self, tps):
        self.assigned = [(tp.partition, tp.offset) for tp in tps]

    def consume(self, n, timeout):
        self.calls += 1
        if self.calls > 200:
            raise AssertionError("the restore ignored the stop flag")
        if self.script:
            step = self.script.pop(0)
            if isinstance(step, Exception):
                raise step
            return step
        return []

    def close(self):
        pass


@pytest.fixture
def scripted(monkeypatch):
    ScriptedConsumer.scripts, ScriptedConsumer.made, ScriptedConsumer.watermarks = [], [], {}
    ScriptedConsumer.watermark_calls = 0
    monkeypatch.setattr(changelog, "Consumer", ScriptedConsumer)
    monkeypatch.setattr(changelog.time, "sleep", lambda s: None)
    return ScriptedConsumer


def _committed(offsets):
    return lambda partitions, stopping: [TopicPartition("in", p, o) for p, o in offsets.items()]


class StopAfter(StopBudget):
    """A stop asked for after `polls` looks at the flag (SIGTERM arrives mid-restore)."""

    def __init__(self, polls):
        super().__init__(5.0)
        self.polls = polls

    @property
    def stopping(self):
        self.polls -= 1
        return self.polls < 0


def test_a_restore_from_a_frozen_broker_returns_when_a_stop_is_asked_for(scripted):
    store = state.StateStore()
    out = changelog.restore_into(store, Settings(), "lw-state", [TopicPartition("in", 0)], _committed({0: 10}),
                                 StopAfter(5))
    assert out is None and len(store) == 0
    assert scripted.made[0].calls < 10


def test_a_retried_restore_goes_on_from_where_it_stopped_not_from_offset_zero(scripted):
    timeout = KafkaException(KafkaError(KafkaError._TRANSPORT, "broker gone"))
    scripted.scripts = [[[_record(0, 0, "a"), _record(0, 1, "b")], timeout],
                        [[_record(0, 2, "c")], [_Eof(0)]]]
    store = state.StateStore()
    out = changelog.restore_into(store, Settings(), "lw-state", [TopicPartition("in", 0)], _committed({0: 10}),
                                 StopBudget.never())
    assert out is not None
    first, second = scripted.made
    assert first.assigned == [(0, -2)] and second.assigned == [(0, 2)]  # resumed after offset 1
    assert {k[1] for k in [(0, "a"), (0, "b"), (0, "c")] if store.get(k) is not None} == {"a", "b", "c"}
    loaded, seconds = out
    assert loaded.dropped == {} and seconds >= 0


def test_empty_changelog_partitions_are_done_without_waiting_for_their_end(scripted):
    # A changelog partition with nothing in it (a new group, or every sensor evicted and
    # compacted) is known empty from its watermarks: waiting for its end-of-partition event cost
    # 2.0 s here on every assignment (the fetch wait and backoffs before the event arrives), an
    # unscored backlog at every start and rebalance.
    scripted.watermarks = {0: (0, 0), 1: (7, 7)}
    scripted.scripts = [[[_record(2, 0, "c")], [_Eof(2)]]]
    store = state.StateStore()
    out = changelog.restore_into(store, Settings(), "lw-state", [TopicPartition("in", p) for p in (0, 1, 2)],
                                 _committed({0: 10, 1: 10, 2: 10}), StopBudget.never())
    assert out is not None
    (consumer,) = scripted.made
    assert consumer.assigned == [(2, -2)]  # only the partition with records is read
    assert store.get((2, "c")) is not None


def test_a_restore_of_only_empty_partitions_reads_nothing(scripted):
    scripted.watermarks = {0: (0, 0), 1: (0, 0)}
    out = changelog.restore_into(state.StateStore(), Settings(), "lw-state",
                                 [TopicPartition("in", p) for p in (0, 1)], _committed({0: 3, 1: 4}), StopBudget.never())
    assert out is not None
    (consumer,) = scripted.made
    assert consumer.calls == 0


def test_watermarks_that_cannot_be_had_are_not_asked_for_partition_by_partition(scripted):
    # a broker that does not answer: each ask waits up to 2 s, so 16 partitions would hold a
    # SIGTERM for 32 s; after the first failure every partition is read the usual way
    timeout = KafkaException(KafkaError(KafkaError._TIMED_OUT, "no answer"))
    scripted.watermarks = {p: timeout for p in range(16)}
    scripted.scripts = [[[_Eof(p) for p in range(16)]]]
    out = changelog.restore_into(state.StateStore(), Settings(), "lw-state", [TopicPartition("in", p) for p in range(16)],
                                 _committed({p: 1 for p in range(16)}), StopBudget.never())
    assert out is not None
    assert scripted.watermark_calls == 1
    assert sorted(p for p, _ in scripted.made[0].assigned) == list(range(16))
