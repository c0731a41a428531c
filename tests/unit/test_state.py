"""Per-sensor state: idle eviction, the changelog record, restored state checked against the model
loaded now. Its bound for any number of sensor ids (400k, slow): tests/system/test_state_bound.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from latentwatch.pipeline.state import Entry, StateStore


def test_idle_sensors_are_evicted_after_the_ttl_and_come_back_as_new():
    store = StateStore(max_sensors=100, idle_ttl_s=10)
    t0 = time.monotonic()
    store.apply({(0, "quiet"): Entry(1.0, np.zeros((0, 2), np.float32))}, now=t0)
    store.apply({(0, "busy"): Entry(1.0, np.zeros((0, 2), np.float32))}, now=t0 + 5)
    out = store.apply({(0, "busy"): Entry(2.0, np.zeros((0, 2), np.float32))}, now=t0 + 70)
    assert out["idle"] == [(0, "quiet")] and store.get((0, "quiet")) is None
    assert store.get((0, "busy")).last_ts == 2.0


def test_the_alarm_state_round_trips_through_the_changelog_record_and_old_records_still_read():
    """The alarm rule's EWMA and open episode are in the changelog record (LWS2), exactly; a
    record written before the alarm rule (LWS1, a k-of-n bits field there) still reads, with
    no alarm state (the sensor's EWMA starts at the rule's center)."""
    import struct

    import numpy as np

    from latentwatch.detectors.alarms import Episode, SensorAlarm
    from latentwatch.pipeline import state

    ep = Episode((3, 1842, 7), 1.7e9, 1, 2.5, 12.25, 1.7e9 + 3, 4, 2, 1.7e9 + 1)
    e = state.Entry(1.7e9 + 5, np.arange(6, dtype=np.float32).reshape(2, 3), (1.0, 0.5), 99, SensorAlarm(0.4375, ep))
    before = state.Entry(1.7e9, np.zeros((2, 3), np.float32), None, 90, SensorAlarm(0.1, None))
    got, got_before = state.unpack(state.pack(e, before))
    assert got.alarm == e.alarm and got_before.alarm == before.alarm and got.threshold == (1.0, 0.5)
    assert np.array_equal(got.tail, e.tail) and got.valid_at == 99
    head1 = struct.Struct("<qdBddqII")
    v1 = b"LWS1" + head1.pack(99, 1.7e9, 0, 0.0, 0.0, 0b101, 2, 3) + e.tail.tobytes() + \
        head1.pack(-1, 0.0, 0, 0.0, 0.0, 0, 0xFFFFFFFF, 0)
    old, none = state.unpack(v1)
    assert old.alarm is None and none is None and np.array_equal(old.tail, e.tail)
    with pytest.raises(ValueError):
        state.unpack(state.pack(e, None)[:-10])  # truncated: refused, not misread


# -- restored state is checked against the model loaded now (issue 22, item 1) -------------------

def _w16_store_entries(channels=3, rows=15):
    return {(0, f"s{i}"): Entry(1000.0 + i, np.arange(rows * channels, dtype=np.float32).reshape(rows, channels))
            for i in range(4)}


def test_a_w16_tail_restored_for_a_w8_model_is_dropped_and_counted_and_the_scorer_does_not_crash():
    from tests.support.fakes import messages
    from tests.support.scoring import reading, scorer_for
    from tests.support.stub_model import stub_model

    model = stub_model(window=8)
    store = StateStore()
    store.expect(window=8, channels=3)
    outcome = store.load(_w16_store_entries())
    assert outcome.dropped == {"window": 4} and len(store) == 0
    sc = scorer_for(model)
    batch = sc.score(messages([reading(f"s{i % 4}", 1_799_999_000.0 + i, i) for i in range(40)]), store, 1_800_000_000.0)
    assert batch.n_scored == 40 - 4 * 7  # each sensor warms up like a new one
    assert len(batch.scores) == batch.n_scored


def test_a_restored_tail_of_another_channel_count_is_dropped():
    store = StateStore()
    store.expect(window=16, channels=4)
    outcome = store.load(_w16_store_entries(channels=3))
    assert outcome.dropped == {"channels": 4} and len(store) == 0


def test_restored_entries_that_fit_are_kept_and_bad_values_are_dropped_by_reason():
    store = StateStore()
    store.expect(window=16, channels=3)
    good = _w16_store_entries()
    nan_tail = np.full((15, 3), np.nan, np.float32)
    bad = {(1, "nan"): Entry(1.0, nan_tail), (1, "f64"): Entry(1.0, np.zeros((15, 3), np.float64)),
           (1, "thr"): Entry(1.0, np.zeros((15, 3), np.float32), threshold=(float("inf"), 1.0))}
    outcome = store.load({**good, **bad})
    assert outcome.dropped == {"non_finite": 1, "dtype": 1, "threshold": 1}
    assert len(store) == 4 and store.get((0, "s0")).tail.shape == (15, 3)


def test_an_empty_tail_fits_any_model():
    store = StateStore()
    store.expect(window=8, channels=5)
    outcome = store.load({(0, "w1"): Entry(5.0, np.zeros((0, 0), np.float32))})
    assert outcome.dropped == {} and store.get((0, "w1")).last_ts == 5.0


# -- a restore keeps the idle clock and the recency order (issue 22, item 6) ---------------------

def test_a_record_carries_the_wall_time_it_was_written_and_old_records_still_read():
    from latentwatch.pipeline import state

    e = Entry(5.0, np.zeros((2, 3), np.float32), valid_at=3)
    value = state.pack(e, None, written_at=1_800_000_000.5)
    assert state.written_at(value) == 1_800_000_000.5 and state.unpack(value)[0].valid_at == 3
    old = value[:-8]  # a record of the previous version: no time at its end
    assert state.written_at(old) is None and state.unpack(old)[0].valid_at == 3


def test_a_restore_keeps_each_sensors_idle_clock_and_evicts_the_long_idle_with_a_count():
    store = StateStore(max_sensors=10, idle_ttl_s=100)
    store.expect(window=3, channels=3)
    wall, now = time.time(), time.monotonic()
    entries = {(0, k): Entry(1.0, np.zeros((2, 3), np.float32)) for k in ("fresh", "stale", "older")}
    seen = {(0, "fresh"): wall - 10, (0, "stale"): wall - 1000, (0, "older"): wall - 50}
    outcome = store.load(entries, now=now, seen=seen)
    assert outcome.evicted["idle"] == [(0, "stale")]  # idle past the TTL before the restart
    assert store.get((0, "stale")) is None
    # still idle 50 s and 10 s: gone after 50 and 90 more seconds, not a full TTL after the restore
    later = store.apply({}, now=now + 60)
    assert later["idle"] == [(0, "older")] and store.get((0, "fresh")) is not None


def test_after_a_hot_swap_a_restore_of_tails_the_changelog_still_holds_for_the_old_model_drops_them():
    # The swap trims the tails in memory; the changelog keeps the old ones of sensors not seen
    # since, and a rebalance then restores them on a member that runs the new model.
    store = StateStore()
    store.expect(window=16, channels=3)
    store.apply({(0, "seen"): Entry(1.0, np.zeros((15, 3), np.float32))})
    store.for_model(window=8, channels=3)
    assert store.get((0, "seen")).tail.shape == (7, 3)
    outcome = store.load(_w16_store_entries())
    assert outcome.dropped == {"window": 4} and len(store) == 1


def test_restored_alarm_state_that_makes_no_sense_is_dropped_and_a_nan_ewma_is_kept():
    from latentwatch.detectors.alarms import Episode, SensorAlarm
    from latentwatch.pipeline import state

    fit = state.Fit(window=1, channels=3)
    tail = np.zeros((0, 3), np.float32)
    good = Episode((0, 5, 0), 1.0, 0, 2.0, 3.0, 1.0, 1, 0, 1.0)
    assert state.check(Entry(1.0, tail, alarm=SensorAlarm(float("nan"), good)), fit) is None  # z restarts at the center
    for bad in (Episode((0, 5, 0), 1.0, 0, 2.0, 3.0, 1.0, 0, 0, 1.0),  # no alarmed reading
                Episode((0, 5, 0), float("inf"), 0, 2.0, 3.0, 1.0, 1, 0, 1.0),
                Episode((0, -5, 0), 1.0, 0, 2.0, 3.0, 1.0, 1, 0, 1.0)):
        assert state.check(Entry(1.0, tail, alarm=SensorAlarm(0.0, bad)), fit) == "alarm"


@pytest.mark.parametrize("last_ts, ok", [(float("inf"), False), (float("nan"), False), (-float("inf"), False),
                                         ("10 days ahead", False), ("now", True), ("an hour ago", True)])
def test_a_restored_last_event_time_that_is_not_finite_or_past_max_future_is_dropped(last_ts, ok):
    """Issue 29.7: a changelog record with last_ts = inf, or 10 days ahead, made every later reading
    of its sensor `late`. No reading the scorer accepted can be later than now + batch.max_future_s."""
    from latentwatch.pipeline import state

    now = time.time()
    last_ts = {"10 days ahead": now + 10 * 86_400, "now": now, "an hour ago": now - 3600}.get(last_ts, last_ts)
    store = StateStore()
    store.max_future_s = 300.0
    store.expect(1, 3)
    loaded = store.load({(0, "s"): Entry(last_ts, np.zeros((0, 3), np.float32))})
    assert (loaded.dropped == {}) is ok and (loaded.dropped == {"last_ts": 1}) is not ok
    assert "last_ts" in state.DROP_REASONS
