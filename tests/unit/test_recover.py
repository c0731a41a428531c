"""A failed batch is undone before anything else decides the run's fate: a deleted output topic
(TopicsGone, exit 2) must not leave the batch's transaction open. An open transaction holds its
offsets as pending: the group's committed offsets stay unreadable (UNSTABLE_OFFSET_COMMIT) until
the broker times the transaction out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from latentwatch.pipeline.errors import BatchFailed
from latentwatch.pipeline.kafka.monitor import TopicsGone
from latentwatch.pipeline.runner import Pipeline
from latentwatch.pipeline.stop import StopBudget


class _Committer:
    def __init__(self, calls):
        self.calls = calls

    def abort(self):
        self.calls.append("abort")


class _Monitor:
    def __init__(self, calls, gone):
        self.calls, self.gone = calls, gone

    def check(self, client, after_failure=False):
        self.calls.append("check")
        if self.gone:
            raise TopicsGone("topic 'dead' was deleted")

    def after_failure(self):
        self.calls.append("after_failure")


def _pipeline(gone: bool):
    calls: list[str] = []
    p = object.__new__(Pipeline)
    p.monitor, p.committer = _Monitor(calls, gone), _Committer(calls)
    p.metrics = SimpleNamespace(batch_rewinds=SimpleNamespace(inc=lambda: calls.append("count")))
    p.sink = SimpleNamespace(fatal=None, reset=lambda: calls.append("reset"), broken=lambda why: calls.append("broken"),
                             replace=lambda *a: calls.append("replace"))
    p.source = SimpleNamespace(consumer=SimpleNamespace(assignment=lambda: []),
                               rewind=lambda stop: calls.append("rewind"))
    p.rebalance = SimpleNamespace(reload=lambda parts, committed=None: calls.append("reload"))
    p.stop_budget = StopBudget.never()
    return p, calls


def test_a_deleted_topic_still_aborts_the_failed_batch_first():
    p, calls = _pipeline(gone=True)
    with pytest.raises(TopicsGone):
        p._recover(BatchFailed("Broker: Unknown topic or partition"))
    assert "abort" in calls and calls.index("abort") < calls.index("check")


def test_a_passing_failure_aborts_then_rewinds():
    p, calls = _pipeline(gone=False)
    p._recover(BatchFailed("Local: Message timed out"))
    assert calls.index("abort") < calls.index("rewind") and "count" in calls
