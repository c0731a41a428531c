"""A long schema-registry outage must not cost the group membership (issue 31): while the held
batch waits, the consumer's partitions are paused and poll() keeps being called (librdkafka
counts max.poll.interval.ms from the last poll; without it the member left the group), and
they are resumed once the registry answers."""

from __future__ import annotations

from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.health import Health
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.runner import Pipeline
from latentwatch.pipeline.source import Source
from latentwatch.pipeline.stop import StopBudget


class FakeMessage:
    def __init__(self, partition, offset):
        self._p, self._o = partition, offset

    def topic(self):
        return "in"

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def error(self):
        return None


class FakeConsumer:
    def __init__(self, arrive=()):
        self.calls, self.paused, self._arrive = [], set(), list(arrive)

    def assignment(self):
        return [("in", 0), ("in", 1)]

    def pause(self, parts):
        self.calls.append("pause")
        self.paused |= set(parts)

    def resume(self, parts):
        self.calls.append("resume")
        self.paused -= set(parts)

    def poll(self, timeout):
        self.calls.append("poll")
        return self._arrive.pop(0) if self._arrive else None


def source_with(consumer) -> Source:
    s = Source(load_settings(None, {}), on_assign=None, on_revoke=None, on_lost=None, on_error=None,
               on_stats=None, on_commit=None)
    s.consumer = consumer
    return s


def test_the_outage_wait_pauses_the_partitions_and_keeps_polling_then_resumes():
    consumer = FakeConsumer()
    p = Pipeline.__new__(Pipeline)
    p.settings = load_settings(None, {"schema_registry.backoff_max_s": 0.2})
    p.metrics, p.health, p.stop_budget, p._registry_wait = PipelineMetrics(), Health(), StopBudget(5), None
    p.source = source_with(consumer)
    held = [FakeMessage(0, 7), FakeMessage(1, 3)]
    p._registry_down(held, "the schema registry cannot be reached")
    assert consumer.calls[0] == "pause" and consumer.paused == {("in", 0), ("in", 1)}
    assert consumer.calls.count("poll") >= 1  # the member stays in the group while it waits
    p._registry_down(held, "the schema registry cannot be reached")  # a second try: paused once only
    assert consumer.calls.count("pause") == 1
    assert p.source.next_batch(2, StopBudget(5)) == held  # the batch goes back whole, in order
    p._registry_back()
    assert consumer.calls[-1] == "resume" and consumer.paused == set()


def test_a_message_polled_while_paused_is_kept_after_the_held_ones():
    """A partition assigned during the wait is not paused: what poll() returns of it is kept."""
    late = FakeMessage(2, 0)
    s = source_with(FakeConsumer([late]))
    s.put_back([FakeMessage(0, 7)])
    s.pause_all()
    s.idle(0.01)
    s.idle(0.01)
    assert [(m.partition(), m.offset()) for m in s._held] == [(0, 7), (2, 0)]
