"""Per-sensor state stays under its documented bound whatever the number of sensor ids: 400k ids
through a 20k-entry store with tracemalloc on. In the system tier with the other scale checks
since issue 24 (it was tests/unit/test_state.py): 6.8 s of the unit tier's run."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from latentwatch.pipeline.state import Entry, StateStore, approx_entry_bytes

pytestmark = pytest.mark.slow


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
