"""Per-sensor state stays under its documented bound whatever the number of sensor ids."""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from latentwatch.pipeline.state import Entry, StateStore, approx_entry_bytes


def test_400k_sensor_ids_stay_under_the_documented_bound_and_evictions_are_counted():
    window, channels, max_sensors = 32, 16, 20_000
    store = StateStore(max_sensors=max_sensors, idle_ttl_s=3600)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    evicted = 0
    for start in range(0, 400_000, 1000):
        updates = {(start % 8, f"sensor-{i}"): Entry(1.0, np.zeros((window - 1, channels), np.float32))
                   for i in range(start, start + 1000)}
        evicted += len(store.apply(updates)["capacity"])
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(store) == max_sensors
    assert evicted == 400_000 - max_sensors
    assert used <= max_sensors * approx_entry_bytes(window, channels)
    assert store.get((0, "sensor-0")) is None  # the oldest went first
    assert store.get((399_000 % 8, "sensor-399999")) is not None


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
