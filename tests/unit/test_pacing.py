"""batch.max_latency_ms: batches sized by the measured cost per reading (pipeline/pacing.py)."""

from __future__ import annotations

from latentwatch.pipeline import pacing
from latentwatch.pipeline.pacing import BatchBudget, BatchSizing
from latentwatch.pipeline.stop import StopBudget
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
    sizing = BatchSizing(s.batch, s.batch.max_readings)
    sizing.time.observe(1000, 0.01)  # 10 us a reading: 2,000 readings fit 20 ms
    sizing.readings_per_message = 100.0
    src.put_back(list(range(100)))  # held messages of ~100 readings each
    assert sizing.limit() == 2000
    assert len(src.next_batch(sizing.messages(sizing.limit()), StopBudget.never())) == 20  # not all 100 held: they are not decoded twice


def test_batch_sizing_takes_the_least_cap_and_learns_readings_per_message():
    s = Settings.model_validate({"batch": {"max_latency_ms": 20}})
    sizing = BatchSizing(s.batch, 5000)  # the output budget's cap for this model
    sizing.time.observe(1000, 0.001)  # 1 us a reading: the time budget allows 20,000
    assert sizing.limit() == 5000
    sizing.for_model(900)  # a model with larger records
    assert sizing.limit() == 900
    for _ in range(40):  # messages of 250 readings, 2 of 10 dead letters
        sizing.observe(8, 2000, 0.002)
    assert abs(sizing.readings_per_message - 250) < 1
    assert sizing.messages(900) == 3
