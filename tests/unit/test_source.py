"""The source without a broker: messages held back by the reading cap never outlive a revoke."""

from __future__ import annotations

import pytest
from confluent_kafka import TopicPartition
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.source import Source
from latentwatch.pipeline.stop import StopBudget

from tests.support.fakes import FakeMessage


class RevokingConsumer:
    """poll() runs the revoke callback first (as librdkafka does inside poll/consume, e.g. an
    incremental revoke under cooperative-sticky), then hands over one message of partition 0."""

    def __init__(self, source, revoke, lost=False):
        self.source, self.revoke, self.lost = source, revoke, lost

    def poll(self, timeout):
        if self.revoke:
            parts, self.revoke = self.revoke, None
            (self.source._lost if self.lost else self.source._revoked_cb)(self, parts)
        return FakeMessage(b"{}", b"k", "in", 0, 100)

    def consume(self, n, timeout):
        return []


@pytest.mark.parametrize("lost", [False, True], ids=["revoked", "lost"])
def test_held_back_messages_of_a_partition_revoked_during_the_next_fetch_are_dropped(lost):
    s = Settings()
    s.batch.max_wait_ms = 0
    src = Source(s, on_assign=lambda p: None, on_revoke=lambda p: None, on_lost=lambda p: None,
                 on_error=None, on_stats=None, on_commit=None)
    src.consumer = RevokingConsumer(src, [TopicPartition("in", 1)], lost)
    src.put_back([FakeMessage(b"{}", b"k", "in", 1, off) for off in range(3)]
                 + [FakeMessage(b"{}", b"k", "in", 0, 99)])
    got = src.next_batch(10, StopBudget.never())  # room for 10 messages a batch
    assert [(m.partition(), m.offset()) for m in got] == [(0, 99), (0, 100)]
