"""The fleet simulator (assets of one kind at their own operating points, issue 28) and the fleet
harness's pure parts: event counting and the CSV it writes. Small and fast; no timing."""

from __future__ import annotations

import csv
import io
import itertools

import numpy as np
import pytest

from latentwatch.bench.fleet import assign_kinds, count_detections, false_alarm_rates, write_fleet_csv
from latentwatch.pipeline.devtools.simulate import (
    FLEET_KINDS,
    FLEET_LABELLED,
    NORMAL,
    FleetSimulator,
)


def _standardised(sim: FleetSimulator, values: np.ndarray) -> np.ndarray:
    return values / sim.unit  # engineering units -> simulator units (1 unit = a channel's std over time)


def test_fleet_is_deterministic_per_seed_and_differs_between_seeds():
    a, b, c = (FleetSimulator(6, 8, seed=s, anomaly_rate=0.05) for s in (3, 3, 4))
    va, ka = a.next_readings(400)
    vb, kb = b.next_readings(400)
    vc, _ = c.next_readings(400)
    assert va.shape == (6, 400, 8) and ka.shape == (6, 400)
    assert np.array_equal(va, vb, equal_nan=True) and np.array_equal(ka, kb)
    assert not np.allclose(va, vc, equal_nan=True)
    assert np.array_equal(a.normal_training_data(500), b.normal_training_data(500))


def test_assets_sit_at_their_own_operating_points():
    sim = FleetSimulator(24, 8, seed=1)
    x = _standardised(sim, sim.next_readings(3000)[0])
    within = x.std(axis=1)  # [assets, channels]: how much one asset varies over time
    between = x.mean(axis=1).std(axis=0)  # [channels]: spread of the assets' operating points
    assert np.all((within > 0.7) & (within < 1.4)), within  # "1 unit" is a channel's std over time
    ratio = between / np.median(within)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    # the same 3 factors drive every asset: channels stay strongly correlated within an asset
    corr = np.corrcoef(x[0].T)
    assert np.median(np.abs(corr[np.triu_indices(8, 1)])) > 0.5
    # ... with a slightly different mix per asset
    shared = sim.loadings.mean(axis=0)
    own = (sim.loadings - shared).std()
    assert 0.05 < own < 0.4 and own < 0.5 * np.abs(shared).mean(), own


def _one(kind: str, seed: int = 5, n: int = 1200, start: int = 500, **kw):
    sim = FleetSimulator(4, 8, seed=seed)
    ref = FleetSimulator(4, 8, seed=seed)  # the same fleet, no trouble
    ev = sim.schedule(1, kind, start, **kw)
    v, k = sim.next_readings(n)
    clean, _ = ref.next_readings(n)
    return sim, ev, _standardised(sim, v), k, _standardised(sim, clean)


@pytest.mark.parametrize("kind", [*FLEET_KINDS, "flatline", "silent"])
def test_each_kind_is_labelled_for_its_documented_length_on_its_asset_only(kind):
    _sim, ev, v, k, clean = _one(kind)
    labelled = np.flatnonzero(k[1] == kind)
    assert ev.length == FLEET_LABELLED[kind]
    assert labelled.tolist() == list(range(500, 500 + FLEET_LABELLED[kind]))
    assert (k[[0, 2, 3]] == NORMAL).all() and (k[1, :500] == NORMAL).all()
    assert np.array_equal(v[[0, 2, 3]], clean[[0, 2, 3]])  # other assets untouched
    assert np.array_equal(v[1, :500], clean[1, :500])  # nothing before the event


def test_setpoint_moves_by_one_and_a_half_units_stays_and_only_the_first_60_are_labelled():
    _sim, _ev, v, k, clean = _one("setpoint")
    assert np.flatnonzero(k[1] == "setpoint").tolist() == list(range(500, 560))
    assert (k[1, 560:] == NORMAL).all()
    moved = v[1, 500:] - clean[1, 500:]
    assert np.allclose(moved, moved[0])  # a constant shift from the event on, for good
    assert np.allclose(np.abs(moved[0]), 1.5)


def test_foreign_point_sits_at_another_assets_operating_point_for_80_readings():
    sim, ev, v, _k, clean = _one("foreign_point", other=3)
    assert ev.other == 3
    d = v[1, 500:580] - clean[1, 500:580]
    assert np.allclose(d, sim.operating_points[3] - sim.operating_points[1])
    assert np.array_equal(v[1, 580:], clean[1, 580:])  # back at its own point afterwards


def test_stuck_holds_one_channel_flatline_holds_all():
    _, _ev, v, _, clean = _one("stuck", channel=2)
    seg = v[1, 500:700]
    assert np.all(seg[:, 2] == clean[1, 499, 2])  # its last value, 200 readings
    others = [c for c in range(8) if c != 2]
    assert np.array_equal(seg[:, others], clean[1, 500:700][:, others])
    _, _, v, _, clean = _one("flatline")
    assert np.all(v[1, 500:700] == clean[1, 499])


def test_ramp_reaches_plus_one_unit_over_300_readings_and_spike_is_one_reading():
    _, _, v, _, clean = _one("ramp", channel=4)
    d = v[1, 500:800, 4] - clean[1, 500:800, 4]
    assert np.all(np.diff(d) > 0) and np.isclose(d[-1], 1.0) and d[0] < 0.01
    assert np.allclose(v[1, 800:], clean[1, 800:])
    _, _ev, v, _k, clean = _one("spike", channel=6)
    d = v[1] - clean[1]
    assert np.isclose(abs(d[500, 6]), 1.5) and np.count_nonzero(d) == 1


def test_silent_readings_are_missing():
    _, _ev, v, k, _ = _one("silent")
    gap = k[1] == "silent"
    assert np.isnan(v[1][gap]).all() and not np.isnan(v[1][~gap]).any()


def test_events_do_not_overlap():
    sim = FleetSimulator(3, 8, seed=2)
    sim.schedule(0, "stuck", 100)
    with pytest.raises(ValueError, match="overlap"):
        sim.schedule(0, "spike", 250)
    sim.schedule(0, "spike", 300)  # right after is fine
    sim.schedule(1, "spike", 250)  # another asset is fine


def test_random_events_in_a_stream_are_labelled_and_do_not_overlap():
    sim = FleetSimulator(10, 8, seed=9, anomaly_rate=0.05)
    k = np.concatenate([sim.next_readings(700)[1] for _ in range(6)], axis=1)  # across chunk borders
    assert set(np.unique(k)) <= {NORMAL, *FLEET_KINDS}
    assert len(set(np.unique(k)) - {NORMAL}) >= 4
    by_asset: dict[int, list] = {}
    for e in sim.events:
        by_asset.setdefault(e.asset, []).append((e.start, e.start + e.span))
    for spans in by_asset.values():
        spans.sort()
        assert all(b[0] >= a[1] for a, b in itertools.pairwise(spans))


# ---- the harness's pure parts ------------------------------------------------------------------
def test_assign_kinds_spreads_every_kind_and_keeps_clean_assets():
    plan = assign_kinds(32, [*FLEET_KINDS, "flatline", "silent"], per_kind=4, clean=4)
    assert len(plan) == 32
    assert plan.count("clean") == 4 and all(plan.count(k) == 4 for k in FLEET_KINDS)
    small = assign_kinds(8, list(FLEET_KINDS), per_kind=4, clean=4)
    assert "clean" in small and all(k in small for k in FLEET_KINDS)


def test_an_event_is_detected_iff_one_of_its_labelled_readings_is_flagged():
    # two assets x 10 readings; events: 0 = stuck on asset 0 rows 2-4, 1 = spike asset 1 row 7,
    # 2 = spike asset 1 row 9
    event_of = np.full((2, 10), -1)
    event_of[0, 2:5] = 0
    event_of[1, 7] = 1
    event_of[1, 9] = 2
    kinds = ["stuck", "spike", "spike"]
    flags = np.zeros((2, 10), dtype=bool)
    flags[0, 5] = True  # just after the stuck event: not a detection
    flags[1, 9] = True  # on the second spike
    flags[0, 0] = True  # a false alarm
    assert count_detections(event_of, kinds, flags) == {"stuck": [1, 0], "spike": [2, 1]}
    flags[0, 4] = True
    assert count_detections(event_of, kinds, flags) == {"stuck": [1, 1], "spike": [2, 1]}
    normal = event_of < 0
    rates = false_alarm_rates(normal, flags)
    # asset 0: 7 normal readings, 2 flagged (rows 0, 5); asset 1: 8 normal, none flagged
    assert rates["all_pct"] == pytest.approx(100 * 2 / 15)
    assert rates["worst_pct"] == pytest.approx(100 * 2 / 7) and rates["worst_asset"] == 0


def test_fleet_csv_has_the_documented_columns_and_leaves_silent_readings_out():
    values = np.arange(2 * 3 * 8, dtype=float).reshape(2, 3, 8)
    values[1, 1] = np.nan  # silent
    buf = io.StringIO()
    rows = write_fleet_csv(buf, ["asset-000", "asset-001"], values, [f"c{i}" for i in range(8)],
                           start_ts=1_700_000_000.0, interval=1.0)
    table = list(csv.reader(io.StringIO(buf.getvalue())))
    assert table[0] == ["timestamp", "sensor_id", *[f"c{i}" for i in range(8)]]
    assert len(table) == 1 + 5
    assert [r[1] for r in table[1:]] == ["asset-000"] * 3 + ["asset-001"] * 2
    assert rows.tolist() == [[0, 1, 2], [3, -1, 4]]  # data row of each reading, -1 = not written
    assert float(table[5][2]) == values[1, 2, 0] and table[1][0].startswith("2023-11-14T22:13:20")
    buf2 = io.StringIO()
    write_fleet_csv(buf2, ["a", "b"], values, [f"c{i}" for i in range(8)], start_ts=0.0, sensor_column=False)
    assert buf2.getvalue().splitlines()[0] == "timestamp," + ",".join(f"c{i}" for i in range(8))


def test_simulate_fleet_flag_errors_are_one_line(capsys):
    from latentwatch.pipeline.cli.main import main

    assert main(["simulate", "--fleet", "--topic", "t", "--operating-point-change", "60", "--count", "1"]) == 2
    assert "--operating-point-change is for the classic simulator" in capsys.readouterr().err
    assert main(["simulate", "--fleet", "--topic", "t", "--kinds", "spike,level_shift", "--count", "1"]) == 2
    assert "unknown fleet trouble kinds ['level_shift']" in capsys.readouterr().err
    assert main(["simulate", "--fleet", "--topic", "t", "--health-faults", "stuck,spike", "--count", "1"]) == 2
    assert "--health-faults 'stuck,spike': give some of stuck, flatline, silent" in capsys.readouterr().err


def test_the_demo_simulates_a_fleet_by_default_and_the_classic_one_on_request(monkeypatch):
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.devtools import live_demo

    seen: list = []
    monkeypatch.setattr(live_demo, "main_demo", lambda opts, scenario=None: seen.append(opts) or 0)
    assert main(["demo", "--duration", "1"]) == 0
    assert seen[-1].fleet and seen[-1].fleet_kinds == live_demo.DEFAULT_FLEET_KINDS and seen[-1].anomaly_rate == 0.1
    # issue 30: the health rules see stuck, flatlined and silent sensors, so the demo has them
    assert seen[-1].fleet_kinds == FLEET_KINDS and {"stuck", "flatline", "silent"} <= set(FLEET_KINDS)
    assert seen[-1].health_faults == ("stuck", "flatline", "silent")
    assert main(["demo", "--duration", "1", "--classic"]) == 0
    assert not seen[-1].fleet and seen[-1].kinds == live_demo.DEFAULT_KINDS
    assert seen[-1].health_faults == ("stuck", "flatline", "silent")  # the classic demo has them too
    assert main(["demo", "--duration", "1", "--health-faults", "none"]) == 0
    assert seen[-1].health_faults == ()
    assert main(["demo", "--duration", "1", "--kinds", "all"]) == 0
    assert "silent" in seen[-1].fleet_kinds and "stuck" in seen[-1].fleet_kinds
    assert main(["demo", "--duration", "1", "--scenario", "drift"]) == 0
    assert not seen[-1].fleet  # the drift scenario moves the classic simulator's operating point
    assert main(["demo", "--duration", "1", "--health-faults", "stuck,spike"]) == 2


def test_the_training_scale_csv_has_exactly_n_rows_time_major(tmp_path):
    from latentwatch.bench.fleet import write_scale_csv

    path = tmp_path / "scale.csv"
    assert write_scale_csv(path, 1000, assets=32, chunk_steps=7) == 1000
    lines = path.read_text().splitlines()
    assert lines[0] == "timestamp,sensor_id," + ",".join(f"c{i}" for i in range(8)) and len(lines) == 1001
    ids = [line.split(",")[1] for line in lines[1:]]
    assert ids[:3] == ["asset-000", "asset-001", "asset-002"] and ids[32] == "asset-000"
    assert ids[-1] == "asset-007"  # 31 full steps of 32 assets, then 8 readings


def test_the_harness_counts_health_episodes_per_injected_fault_and_false_ones_by_asset(tmp_path):
    """bench/fleet.py's health figures (issue 30): a stuck / flatline event is caught by an episode
    of its rule opened at one of its readings; a silence by one at its asset's first reading after
    it; anything else is false, counted on clean assets and on the others."""
    from types import SimpleNamespace

    from latentwatch.bench.fleet import build_fleet, count_health

    args = SimpleNamespace(assets=5, channels=8, seed=0, mix=0.2, spread=1.0, kinds="stuck,flatline,silent",
                           per_kind=1, clean=2, train_per_asset=200, test_per_asset=1200, spikes_per_asset=1)
    (tmp_path / "data").mkdir()
    fleet = build_fleet(args, tmp_path / "data")
    assert fleet["plan"] == ["clean", "stuck", "flatline", "silent", "clean"]
    ev = {e.kind: e for e in fleet["sim"].events}
    s = {k: e.start - 200 for k, e in ev.items()}
    opens = [("stuck", 1, s["stuck"] + 29), ("flatline", 2, s["flatline"] + 29),
             ("silent", 3, s["silent"] + FLEET_LABELLED["silent"]),  # at its first reading after the silence
             ("stuck", 0, 50), ("silent", 2, 10), ("flatline", 1, s["stuck"] + 40)]  # false: clean, other, wrong rule
    got = count_health(fleet, opens)
    assert got["caught"] == {"stuck": [1, 1], "flatline": [1, 1], "silent": [1, 1]}
    assert got["false"] == {"clean": {"stuck": 1, "flatline": 0, "silent": 0},
                            "other": {"stuck": 0, "flatline": 1, "silent": 1}}
    assert count_health(fleet, [("stuck", 1, s["stuck"] + 200)])["caught"]["stuck"] == [1, 0]  # after it: not caught
