"""bench --ab (bench/ab.py): variants parsed from the command line, run alternated, and the
ratios per round and of the medians computed from the runs as they came."""

from __future__ import annotations

import pytest
from latentwatch.bench import ab


def test_health_is_sensors_enabled_on_then_off():
    assert ab.parse("health") == {"on": {}, "off": {"LATENTWATCH_SENSORS__ENABLED": "false"}}


def test_variants_keep_their_order_and_environment():
    v = ab.parse("new:; old:PYTHONPATH=/tmp/old-tree,OMP_NUM_THREADS=1")
    assert list(v) == ["new", "old"]
    assert v["old"] == {"PYTHONPATH": "/tmp/old-tree", "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("spec", ["on:", "on:;on:", "on:X;off:", "noname;off:", ":X=1;off:"])
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(SystemExit) as e:
        ab.parse(spec)
    assert "--ab" in str(e.value)


def test_runs_alternate_a_b_a_b():
    assert ab.order(ab.parse("health"), 2) == [(0, "on"), (0, "off"), (1, "on"), (1, "off")]


def test_ratios_per_round_and_of_the_medians():
    runs = [{"round": 0, "variant": "on", "x": 100.0}, {"round": 0, "variant": "off", "x": 110.0},
            {"round": 1, "variant": "on", "x": 80.0}, {"round": 1, "variant": "off", "x": 60.0},
            {"round": 2, "variant": "on", "x": 90.0}, {"round": 2, "variant": "off", "x": None}]
    s = ab.summarise(runs, ab.parse("health"), "x")
    assert s["values"] == {"on": [100.0, 80.0, 90.0], "off": [110.0, 60.0]}
    assert s["median"] == {"on": 90.0, "off": 85.0}
    r = s["ratio_to_on"]["off"]
    assert r["per_round"] == [1.1, 0.75, None]  # a run without the figure gives no ratio
    assert r["of_medians"] == round(85 / 90, 3)
