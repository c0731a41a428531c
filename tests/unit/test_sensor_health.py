"""Issue 30.1: stuck, flatline and silent sensors as health episodes (detectors/health.py), the
rules on their own; the stream and `score` are in test_sensor_health_stream.py."""

from __future__ import annotations

import numpy as np
from latentwatch.detectors.health import HealthRule, step_stats

C = 4
CH = [f"c{i}" for i in range(C)]


def _normal(n, seed=0, quantise=None):
    rng = np.random.default_rng(seed)
    X = np.cumsum(rng.normal(0, 0.05, (n, C)), axis=0) * 0.1 + rng.normal(0, 1, (n, C))
    if quantise is not None:  # channel 0 quantised to its resolution
        X[:, 0] = np.round(X[:, 0] / quantise) * quantise
    return X.astype(np.float32)


def _run(rule, X, ts=None, key="s", chunks=1):
    """One sensor's readings through `step` in `chunks` calls (state carried as the stream does)."""
    n = len(X)
    ts = np.arange(n, dtype=np.float64) if ts is None else ts
    refs = np.stack([np.zeros(n, np.int64), np.arange(n), np.zeros(n, np.int64)], 1)
    events, h, last, wm = [], None, None, -np.inf
    for idx in np.array_split(np.arange(n), chunks):
        if not len(idx):
            continue
        ev, post, _marks, _ = rule.step(np.zeros(len(idx), np.int64), [key], X[idx], ts[idx], refs[idx],
                                        {0: h} if h is not None else {}, {0: last} if last is not None else {}, wm)
        events += ev
        h, last, wm = post[0], float(ts[idx[-1]]), max(wm, float(ts[idx].max()))
    return events


def test_a_stuck_channel_opens_within_its_limit_and_closes_when_it_moves_again():
    train = _normal(20_000)
    rule = HealthRule.fit(train, CH)
    X = _normal(2_000, seed=1)
    X[500:700, 2] = X[500, 2]  # channel 2 frozen for 200 readings
    for chunks in (1, 7):  # batching does not matter
        ev = [(e.event, e.rule, int(e.ts)) for e in _run(rule, X, chunks=chunks)]  # ts = row
        assert ev == [("open", "stuck", 500 + int(rule.limit[2])), ("close", "stuck", 700)]
    assert rule.limit[2] == 30  # a noisy channel: the documented default N


def test_a_flatlined_sensor_opens_a_flatline_not_a_stuck_episode():
    rule = HealthRule.fit(_normal(20_000), CH)
    X = _normal(1_000, seed=2)
    X[300:500] = X[300]  # the gateway repeats its last message for 200 readings
    events = _run(rule, X, chunks=5)
    assert [(e.event, e.rule, int(e.ts)) for e in events] == [("open", "flatline", 300 + rule.flat_n),
                                                         ("close", "flatline", 500)]
    assert events[0].evidence["readings"] == rule.flat_n


def test_a_quantised_channel_gets_a_longer_limit_and_no_false_stuck_episode():
    train = _normal(50_000, quantise=3.0)  # channel 0 repeats its value often in normal data
    s = step_stats(train)
    assert s.repeat[0] > 0.2 and s.repeat[1] < 0.01
    rule = HealthRule.fit(train, CH)
    assert rule.limit[0] > rule.limit[1] == 30
    X = _normal(1_000_000, seed=3, quantise=3.0)
    assert _run(rule, X, chunks=20) == []
    naive = HealthRule(CH, step_stats(_normal(1000)))  # step statistics of an unquantised channel
    assert any(e.rule == "stuck" for e in _run(naive, X, chunks=20))  # would have alarmed


def test_a_silent_sensor_in_event_time_same_episodes_whatever_the_batching():
    rule = HealthRule.fit(_normal(5_000), CH, silent_s=60.0)
    n = 600
    X = np.concatenate([_normal(n, seed=4), _normal(n, seed=5)])
    ts = np.concatenate([np.arange(n), np.arange(n)]).astype(float)
    keys = np.repeat([0, 1], n)
    order = np.argsort(ts, kind="stable")  # both sensors interleaved in time order
    X, ts, keys = X[order], ts[order], keys[order]
    keep = ~((keys == 1) & (ts >= 200) & (ts < 400))  # sensor b stops reporting for 200 s
    X, ts, keys = X[keep], ts[keep], keys[keep]
    refs = np.stack([np.zeros(len(X), np.int64), np.arange(len(X)), np.zeros(len(X), np.int64)], 1)

    def run(chunks):
        out, prior, last, wm = [], {}, {}, -np.inf
        for idx in np.array_split(np.arange(len(X)), chunks):
            present = sorted(set(keys[idx].tolist()))
            ki = np.array([present.index(k) for k in keys[idx]])
            idle = {k: (last[k], prior.get(k)) for k in last if k not in present}
            ev, post, _m, _s = rule.step(ki, present, X[idx], ts[idx], refs[idx],
                                         {i: prior[k] for i, k in enumerate(present) if k in prior},
                                         {i: last[k] for i, k in enumerate(present) if k in last}, wm, idle)
            for i, k in enumerate(present):
                prior[k], last[k] = post[i], float(ts[idx][ki == i].max())
            prior.update({k: v for k, v in post.items() if not isinstance(k, (int, np.integer)) or k not in range(len(present))})
            wm = max(wm, float(ts[idx].max()))
            out += [(e.event, e.rule, e.key, round(e.ts, 3)) for e in ev]
        return out

    expected = [("open", "silent", 1, 259.0), ("close", "silent", 1, 400.0)]
    for chunks in (1, 3, 17, 200):
        assert run(chunks) == expected, chunks


def test_no_false_health_episode_on_a_million_noisy_readings():
    rule = HealthRule.fit(_normal(20_000, seed=10), CH)
    X = _normal(1_000_000, seed=20)
    assert _run(rule, X, chunks=10) == []


def test_the_rule_round_trips_through_model_json():
    rule = HealthRule.fit(_normal(5_000, quantise=0.5), CH, silent_s=90)
    again = HealthRule.from_dict(rule.to_dict(), CH)
    assert (again.limit == rule.limit).all() and again.flat_n == rule.flat_n and again.silent_s == 90


def test_health_and_control_state_survive_the_changelog_record_and_older_records_still_read():
    from latentwatch.detectors.health import HealthEpisode, SensorHealth
    from latentwatch.pipeline import state

    ep = HealthEpisode(0, (3, 17, 0), 1234.5, (1, 2), (0.5, -2.0))
    flat = HealthEpisode(1, (3, 20, 1), 1240.0, (0, 1, 2), (1.0, 2.0, 3.0))
    h = SensorHealth(np.array([1, 2, 3], np.float32), np.array([0, 31, 40], np.int32), ep, flat, None)
    e = state.Entry(1300.0, np.zeros((2, 3), np.float32), None, 9, None, None, h, state.Control(1400.0, 1299.0, 4))
    got, before, _ = state.unpack_record(state.pack(e, None))
    assert before is None and got.control == e.control and got.health.stuck == ep and got.health.flat == flat
    assert got.health.silent is None and got.health.run.tolist() == [0, 31, 40]
    assert state.check(got, state.Fit(3, 3)) is None and state.check(got, state.Fit(3, 4)) == "channels"
    bad = state.Entry(1300.0, np.empty((0, 3), np.float32), health=SensorHealth(np.zeros(4, np.float32),
                                                                                 np.zeros(4, np.int32)))
    assert state.check(bad, state.Fit(1, 3)) == "health"
    # an LWS3 record (written before health): the same bytes less health and control, read without them
    tail = len(state._pack_health(None) + state._pack_control(None))
    v3 = state._MAGIC3 + state._pack_one(state.Entry(1300.0, e.tail, valid_at=9))[:-tail] \
        + state._HEAD.pack(-1, 0.0, 0, 0.0, 0.0, state._NONE, 0)
    entry, _ = state.unpack(v3)
    assert entry.health is None and entry.control is None and entry.valid_at == 9


def test_a_file_sorted_by_sensor_is_not_silent_but_a_real_gap_in_it_is():
    """`score` judges a file as one partition in row order; `train`'s CSVs (and bench/fleet.py's)
    hold every sensor's readings one after another. The partition's newest event time is then
    far past the second sensor's readings from its first one on, which opened (and closed) a
    "silent" episode starting after the reading that closed it, at every reading of every sensor
    after the first. A silence needs the sensor's own gap to exceed T too; a real gap is found
    in either order."""
    from latentwatch.detectors.health import judge

    rule = HealthRule.fit(_normal(5_000), CH, silent_s=60.0)
    n = 600
    X = np.concatenate([_normal(n, seed=s) for s in range(3)])
    ts = np.tile(np.arange(n, dtype=float), 3)
    ids = np.repeat(["a", "b", "c"], n)
    keep = ~((ids == "c") & (ts >= 200) & (ts < 400))  # c stops reporting for 200 s
    X, ts, ids = X[keep], ts[keep], ids[keep]
    by_sensor = [(e.event, e.rule, e.key, e.ts) for e in judge(rule, ids, X, ts)]
    order = np.argsort(ts, kind="stable")
    by_time = [(e.event, e.rule, e.key, e.ts) for e in judge(rule, ids[order], X[order], ts[order])]
    assert by_time == [("open", "silent", "c", 259.0), ("close", "silent", "c", 400.0)]
    assert by_sensor == by_time


def _stream(run_id: int, sensors: int = 6, n: int = 3_000):
    """Several sensors interleaved in messages of random length, with stuck channels, flatlines,
    a quantised channel, a sensor that goes quiet and one that comes back: everything `step`'s
    shortcut must agree with the full computation on."""
    rng = np.random.default_rng(run_id)
    X = np.stack([_normal(n, seed=100 * run_id + s, quantise=3.0 if s == 0 else None) for s in range(sensors)])
    for s in range(1, sensors):
        for _ in range(rng.integers(0, 4)):
            a = int(rng.integers(0, n - 10))
            b = min(n, a + int(rng.integers(5, 200)))
            if rng.random() < 0.5:
                X[s, a:b, rng.integers(0, C)] = X[s, a, 0]  # one channel stuck
            else:
                X[s, a:b] = X[s, a]  # flatlined
    rows = []  # (sensor, index), messages of 1-300 readings, sensors in turn
    pos = np.zeros(sensors, np.int64)
    while (pos < n).any():
        s = int(rng.choice(np.flatnonzero(pos < n)))
        k = int(min(n - pos[s], rng.integers(1, 300)))
        rows += [(s, int(i)) for i in range(pos[s], pos[s] + k)]
        pos[s] += k
    rows = [(s, i) for s, i in rows if not (s == sensors - 1 and 1000 <= i < 1600)]  # quiet for a while
    keys = np.array([s for s, _ in rows])
    vals = np.stack([X[s, i] for s, i in rows])
    ts = np.array([float(i) for _, i in rows])
    return keys, vals, ts


def test_the_shortcut_without_every_readings_runs_gives_the_same_as_the_full_computation():
    train = _normal(20_000, quantise=3.0)
    opened = set()
    for run_id in range(6):
        keys, vals, ts = _stream(run_id)
        refs = np.stack([np.zeros(len(keys), np.int64), np.arange(len(keys)), np.zeros(len(keys), np.int64)], 1)
        results = []
        for fast in (True, False):
            rule = HealthRule.fit(train, CH, silent_s=120.0, stuck_n=20 + run_id)
            rule.fast = fast
            out, prior, last, wm = [], {}, {}, -np.inf
            cuts = np.sort(np.random.default_rng(run_id).choice(len(keys), 400, replace=False))
            for idx in np.split(np.arange(len(keys)), cuts):
                if not len(idx):
                    continue
                present = sorted(set(keys[idx].tolist()))
                ki = np.searchsorted(present, keys[idx])
                idle = {k: (last[k], prior.get(k)) for k in last if k not in present}
                ev, post, marks, sil = rule.step(ki, present, vals[idx], ts[idx], refs[idx],
                                                 {i: prior[k] for i, k in enumerate(present) if k in prior},
                                                 {i: last[k] for i, k in enumerate(present) if k in last}, wm, idle)
                for i, k in enumerate(present):
                    prior[k], last[k] = post[i], float(ts[idx][ki == i].max())
                    out.append(("state", k, post[i].last.tolist(), post[i].run.tolist(), post[i].open_rules))
                prior.update({k: v for k, v in post.items() if k in idle})
                wm = max(wm, float(ts[idx].max()))
                out += [(e.event, e.rule, e.key, e.row, e.ts, e.episode) for e in ev]
                out += [("marks", marks.tolist()), ("silences", sil)]
            results.append(out)
        assert results[0] == results[1], run_id
        opened |= {e[1] for e in results[0] if e[0] == "open"}
    assert opened == {"stuck", "flatline", "silent"}  # every rule was exercised
