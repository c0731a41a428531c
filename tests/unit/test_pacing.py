"""batch.max_latency_ms: batches sized by the measured cost per reading (pipeline/pacing.py)."""

from __future__ import annotations

from latentwatch.pipeline import pacing
from latentwatch.pipeline.pacing import BatchBudget
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.source import Source


def test_off_by_default_the_cap_is_max_readings():
    b = BatchBudget.for_settings(Settings().batch)
    b.observe(10_000, 5.0)
    assert b.limit() == 32768


def test_the_next_batch_fits_the_budget_at_the_measured_cost():
    b = BatchBudget(50.0, 32768)
    assert b.limit() == 4 * pacing.MIN_READINGS  # nothing measured: a small first batch
    b.observe(10_000, 0.1)  # 10 us a reading
    assert b.limit() == 5000
    b.observe(10_000, 0.1)
    assert b.limit() == 5000


def test_the_cost_follows_the_model_and_is_clamped():
    b = BatchBudget(50.0, 32768)
    b.observe(10_000, 0.001)  # 0.1 us a reading: the cap, not the budget, limits
    assert b.limit() == 32768
    for _ in range(30):  # a slower model swapped in: the estimate moves to it
        b.observe(1000, 1.0)  # 1 ms a reading
    assert b.limit() == pacing.MIN_READINGS
    b.observe(10, 100.0)  # too few readings to time: ignored
    assert b.limit() == pacing.MIN_READINGS


def test_the_source_gathers_no_more_than_the_budget_allows():
    s = Settings.model_validate({"batch": {"max_latency_ms": 20}})
    src = Source(s, on_assign=None, on_revoke=None, on_lost=None, on_error=None, on_stats=None, on_commit=None)
    b = BatchBudget.for_settings(s.batch)
    b.observe(1000, 0.01)  # 10 us a reading: 2,000 readings fit 20 ms
    src.readings_per_message = 100.0
    src.put_back(list(range(100)))  # held messages of ~100 readings each
    b.size(src)
    assert src.max_readings == 2000
    assert len(src.next_batch(lambda: False)) == 20  # not all 100 held: they are not decoded twice
