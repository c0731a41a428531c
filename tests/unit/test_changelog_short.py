"""Issue 29.5: input partitions added while running, the changelog left with fewer. The restore of
a changelog partition that does not exist used to spin inside the rebalance callback for good
(every partition stalled, /healthz and /readyz 200, one WARNING every 120 s naming nothing).
Decision: a clear failure - /readyz not ready, one ERROR line naming the missing changelog
partitions and the fix, `latentwatch_changelog_missing_partitions`, then exit 2 (a start then
fails fast at `changelog.ensure` with the same fix) - rather than scoring them without state."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.events import Fanout
from latentwatch.pipeline.health import Health
from latentwatch.pipeline.kafka import changelog
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.rebalance import Rebalance
from latentwatch.pipeline.state import StateStore
from latentwatch.pipeline.stop import StopBudget


def _tp(p):
    return SimpleNamespace(topic="sensor-readings", partition=p, offset=-1001)


def test_an_assigned_partition_the_changelog_lacks_is_a_clear_failure_not_a_stall(monkeypatch, caplog):
    restored = []
    monkeypatch.setattr(changelog, "partition_count", lambda settings, topic: 1)
    monkeypatch.setattr(changelog, "restore_into", lambda *a, **kw: restored.append(a) or None)
    health, metrics = Health(), PipelineMetrics()
    health.model_loaded("pump")
    rb = Rebalance(store=StateStore(), settings=Settings(), committed_of=lambda p, s: p, stop=StopBudget(30),
                   events=Fanout(metrics, health))
    rb.attach(committer=None, state_topic="latentwatch-state")
    caplog.set_level(logging.ERROR)
    with pytest.raises(changelog.ChangelogShort) as info:
        rb.assigned([_tp(0), _tp(1)])
    message = str(info.value)
    assert "latentwatch-state" in message and "[1]" in message and "--partitions 2" in message
    assert "\n" not in message and not restored  # nothing restored: no spinning on a partition that is not there
    ready, why = health.readiness()
    assert not ready and "latentwatch-state" in why
    assert metrics.registry.get_sample_value("latentwatch_changelog_missing_partitions") == 1
    assert any("latentwatch-state" in r.getMessage() and "[1]" in r.getMessage() for r in caplog.records)


def test_partitions_the_changelog_has_are_restored_as_before(monkeypatch):
    restored = []
    monkeypatch.setattr(changelog, "partition_count", lambda settings, topic: 2)
    monkeypatch.setattr(changelog, "restore_into", lambda store, s, topic, parts, *a, **kw: restored.append(parts))
    rb = Rebalance(store=StateStore(), settings=Settings(), committed_of=lambda p, s: p, stop=StopBudget(30),
                   events=Fanout(Health()))
    rb.attach(committer=None, state_topic="latentwatch-state")
    rb.assigned([_tp(0), _tp(1)])
    assert len(restored) == 1 and [tp.partition for tp in restored[0]] == [0, 1]
