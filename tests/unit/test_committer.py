"""The at-least-once committer without a broker: the previous batch's commit may still be
travelling while the next batch is produced (waiting for it cost a round trip per batch), but
never two; a commit that failed is redone synchronously before anything else is produced."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from latentwatch.pipeline.committer import AtLeastOnce
from latentwatch.pipeline.stop import StopBudget
from latentwatch.pipeline.errors import BatchFailed, UserError


class FakeConsumer:
    def __init__(self):
        self.calls: list[tuple[bool, dict]] = []  # (asynchronous, {(topic, partition): offset})
        self.refuse_sync = False

    def commit(self, offsets, asynchronous):
        self.calls.append((asynchronous, {(tp.topic, tp.partition): tp.offset for tp in offsets}))
        if not asynchronous and self.refuse_sync:
            raise KafkaException(KafkaError(KafkaError.REBALANCE_IN_PROGRESS))


class Parts:
    def __init__(self, consumer):
        self.consumer = consumer
        self.waits = 0

    def wait(self):  # the sink: everything produced is acknowledged
        self.waits += 1


def committer(travel_ok=True):
    consumer = FakeConsumer()
    parts = Parts(consumer)
    confirmed = []
    c = AtLeastOnce(parts, parts, lambda: confirmed.append(1), StopBudget.never(), travel_ok=travel_ok)
    return c, consumer, confirmed


def ack(c, offsets, err=None):
    """librdkafka's on_commit for one commit (served inside consume())."""
    c.on_commit(err, [TopicPartition(t, p, o) for (t, p), o in offsets.items()])


def test_the_previous_commit_may_travel_while_the_next_batch_is_produced():
    c, consumer, confirmed = committer()
    c.begin()
    c.commit({("in", 0): 10})
    c.begin()  # its on_commit has not come yet: no synchronous round trip for it
    assert consumer.calls == [(True, {("in", 0): 10})]
    c.commit({("in", 0): 20, ("in", 1): 5})
    ack(c, {("in", 0): 10})
    ack(c, {("in", 0): 20, ("in", 1): 5})
    c.begin()
    assert all(asynchronous for asynchronous, _ in consumer.calls)
    assert len(confirmed) == 2
    c.settle()  # nothing left to settle
    assert len(consumer.calls) == 2


def test_never_two_commits_travelling_the_older_is_settled_with_the_newest_offsets():
    c, consumer, confirmed = committer()
    c.begin()
    c.commit({("in", 0): 10, ("in", 1): 3})
    c.begin()
    c.commit({("in", 0): 20})
    c.begin()  # two unconfirmed: settled synchronously, each partition at its newest offset
    assert consumer.calls[-1] == (False, {("in", 0): 20, ("in", 1): 3})
    assert len(confirmed) == 1
    ack(c, {("in", 0): 10, ("in", 1): 3})  # late callbacks of settled commits change nothing
    ack(c, {("in", 0): 20})
    assert len(confirmed) == 1


def test_a_failed_commit_is_redone_synchronously_before_the_next_batch_and_raises_if_refused():
    c, consumer, confirmed = committer()
    c.begin()
    c.commit({("in", 0): 10})
    ack(c, {("in", 0): 10}, err=KafkaError(KafkaError.REQUEST_TIMED_OUT))
    c.begin()
    assert consumer.calls[-1] == (False, {("in", 0): 10}) and len(confirmed) == 1
    c.commit({("in", 0): 20})
    ack(c, {("in", 0): 20}, err=KafkaError(KafkaError.REBALANCE_IN_PROGRESS))
    consumer.refuse_sync = True
    with pytest.raises(BatchFailed):
        c.begin()


def test_settle_on_revoke_commits_what_travels_and_forget_drops_it():
    c, consumer, _ = committer()
    c.commit({("in", 0): 10})
    c.commit({("in", 0): 12})
    c.settle(in_callback=True)
    assert consumer.calls[-1] == (False, {("in", 0): 12})
    c.commit({("in", 0): 14})
    c.forget()
    c.settle()
    assert consumer.calls[-1] == (True, {("in", 0): 14})


def test_with_a_state_changelog_each_commit_is_settled_before_the_next_batch():
    # the changelog's restore relies on at most one batch having written state without its
    # offsets committed (pipeline/state.py)
    c, consumer, confirmed = committer(travel_ok=False)
    c.begin()
    c.commit({("in", 0): 10})
    c.begin()
    assert consumer.calls == [(True, {("in", 0): 10}), (False, {("in", 0): 10})] and len(confirmed) == 1


class FlakyTxnProducer:
    """init_transactions refused with `errors` (one per call) before it works."""

    def __init__(self, errors):
        self.errors, self.calls = list(errors), 0

    def init_transactions(self, timeout):
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))


def test_exactly_once_start_waits_for_a_transaction_coordinator_that_is_not_ready_yet():
    # seen right after a broker start: init_transactions -> NOT_COORDINATOR (the process exited 1
    # with a traceback); a coordinator still loading or moving is worth waiting for at start
    from latentwatch.pipeline.committer import ExactlyOnce

    c = ExactlyOnce(None, None, lambda: None, 5.0, StopBudget.never(), startup_timeout_s=20, retry_s=0.01)
    producer = FlakyTxnProducer([KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS])
    c.init_producer(producer)
    assert producer.calls == 3
    gives_up = ExactlyOnce(None, None, lambda: None, 5.0, StopBudget.never(), startup_timeout_s=0.05, retry_s=0.01)
    with pytest.raises(KafkaException):
        gives_up.init_producer(FlakyTxnProducer([KafkaError.NOT_COORDINATOR] * 1000))
    with pytest.raises(KafkaException):  # not a coordinator's passing state: no waiting
        c.init_producer(FlakyTxnProducer([KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, None]))
    with pytest.raises(UserError, match="could not start transactions"):  # at start: one line, not a traceback
        c.start(FlakyTxnProducer([KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED]))


def test_both_committers_implement_the_whole_protocol_themselves():
    # The run loop holds a `Committer` and calls all of it (on_commit from librdkafka's
    # callback, forget on a lost partition): a method left to the protocol's stub would do
    # nothing, silently (ExactlyOnce once had no on_commit at all).
    from latentwatch.pipeline.committer import Committer, ExactlyOnce

    methods = {n for n, v in vars(Committer).items() if callable(v) and not n.startswith("_")}
    assert {"begin", "commit", "abort", "settle", "forget", "on_commit", "start", "init_producer"} <= methods
    for cls in (AtLeastOnce, ExactlyOnce):
        assert Committer in cls.__mro__
        assert methods <= set(vars(cls)), (cls.__name__, methods - set(vars(cls)))


def test_a_synchronous_commit_the_broker_never_answers_fails_the_batch_within_the_bound():
    """A broker that died with a commit in flight (its disk full: tests/system/test_faults.py) left
    librdkafka's synchronous commit waiting for the coordinator to come back; with no bound the run
    loop hung inside it, polled nothing, and never said Kafka was unreachable. Now the commit is
    left behind after `timeout_s` and the batch fails (rewound, redone: duplicates, no loss)."""
    import threading
    import time

    release = threading.Event()

    class Hanging(FakeConsumer):
        def commit(self, offsets, asynchronous):
            super().commit(offsets, asynchronous)
            if not asynchronous:
                release.wait(30)

    consumer = Hanging()
    parts = Parts(consumer)
    c = AtLeastOnce(parts, parts, lambda: None, StopBudget.never(), travel_ok=False, timeout_s=0.5)
    c.begin()
    c.commit({("in", 0): 10})
    t0 = time.monotonic()
    try:
        with pytest.raises(BatchFailed, match="no answer from Kafka"):
            c.begin()
        assert time.monotonic() - t0 < 5
    finally:
        release.set()
    c.begin()  # forgotten: nothing travels, nothing to settle
    assert [a for a, _ in consumer.calls] == [True, False]


def test_after_a_rewind_the_state_is_restored_as_of_the_offsets_gone_back_to(monkeypatch):
    """Review finding: a commit left behind (above) may land between the rewind's read of the
    committed offsets and the restore's; the state was then restored as of the newer offsets while
    the consumer re-read from the older ones (batches scored twice on state that had them). The
    restore now takes the offsets the rewind read."""
    from types import SimpleNamespace

    from latentwatch.pipeline.config import Settings
    from latentwatch.pipeline.events import Fanout
    from latentwatch.pipeline.health import Health
    from latentwatch.pipeline.kafka import changelog
    from latentwatch.pipeline.rebalance import Rebalance
    from latentwatch.pipeline.state import StateStore

    landed = [SimpleNamespace(topic="in", partition=0, offset=50)]  # the left-behind commit, landed now
    monkeypatch.setattr(changelog, "partition_count", lambda settings, topic: 1)
    seen = []
    monkeypatch.setattr(changelog, "restore_into",
                        lambda store, s, topic, parts, committed_of, stop, **kw: seen.append(committed_of(parts, stop)))
    rb = Rebalance(store=StateStore(), settings=Settings(), committed_of=lambda p, s: landed, stop=StopBudget(30),
                   events=Fanout(Health()))
    rb.attach(committer=None, state_topic="latentwatch-state")
    sought = [SimpleNamespace(topic="in", partition=0, offset=40)]
    rb.reload([SimpleNamespace(topic="in", partition=0, offset=-1001)], sought)
    assert [tp.offset for tp in seen[0]] == [40]
