"""The combined Shewhart-EWMA alarm rule (detectors/alarms.py) on its own: a far reading alarms
at once whatever came before, a small sustained shift within a bounded delay, a slow ramp, the
budget realised on fresh normal data, and episodes across batches and state round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from latentwatch.detectors import alarms
from latentwatch.detectors.alarms import AlarmRule


def normal_scores(n, seed=0, rho=0.0):
    """Scores like a reconstruction error's: a chi-square(4)/4 transform of an AR(1) Gaussian (rho:
    the autocorrelation a windowed model's consecutive scores have)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(n, 4))
    x = np.empty_like(e)
    x[0] = e[0]
    for t in range(1, n):
        x[t] = rho * x[t - 1] + math.sqrt(1 - rho ** 2) * e[t]
    return (x ** 2).mean(axis=1)


def decide(rule, scores, prior=None, key=0):
    m = len(scores)
    refs = np.stack([np.zeros(m, np.int64), np.arange(m), np.zeros(m, np.int64)], axis=1)
    return rule.step(np.full(m, key), np.asarray(scores, np.float64), np.arange(m, dtype=float), refs, prior or {})


@pytest.fixture(scope="module")
def rule():
    return alarms.calibrate(normal_scores(20_000, seed=1, rho=0.8), 0.01)


@pytest.mark.parametrize("before", ["normal", "high", "alarmed"])
def test_one_reading_ten_times_the_instant_limit_alarms_whatever_came_before(rule, before):
    s = normal_scores(300, seed=2, rho=0.8)
    if before == "high":
        s[:299] = rule.instant * 0.9  # just under the instant limit: an EWMA already high
    elif before == "alarmed":
        s[250:299] = rule.instant * 3  # an episode in progress
    s[299] = 10 * rule.instant
    d, _ = decide(rule, s)
    assert d.alarm[299] and d.rule[299] == 0 and d.statistic[299] == pytest.approx(10 * rule.instant)


def test_a_sustained_shift_of_one_held_out_sd_alarms_within_a_bounded_delay(rule):
    """Measured: the delay for +1 sd (EWMA, not the instant limit) is documented in detectors/README.md."""
    held = normal_scores(20_000, seed=1, rho=0.8)
    delays = []
    for seed in range(20):
        s = normal_scores(2_000, seed=100 + seed, rho=0.8)
        s[1000:] += held.std()
        d, _ = decide(rule, s)
        first = np.flatnonzero(d.alarm[1000:])
        assert len(first), "the shift was never caught"
        delays.append(int(first[0]))
        # caught by the EWMA: the instant limit alone misses most of a 1-sd shift
        assert np.mean(d.rule[1000:] == 1) > np.mean(d.rule[1000:] == 0)
    # measured: median 37, max ~80 readings (lambda 0.1, scores with lag-1 autocorrelation ~0.6)
    assert np.median(delays) <= 60 and max(delays) <= 150, delays


def test_a_slow_ramp_is_caught_before_the_instant_limit_alone_would(rule):
    s = normal_scores(3_000, seed=7, rho=0.8)
    ramp = np.linspace(0, 3 * normal_scores(20_000, seed=1).std(), 1_500)
    s[1500:] += ramp
    d, _ = decide(rule, s)
    # over the ramp's second half the EWMA holds the alarm; the instant limit alone flickers
    assert d.alarm[2250:].mean() > 0.8 and (s[2250:] > rule.instant).mean() < 0.5
    assert (d.rule[2250:] == 1).sum() > (d.rule[2250:] == 0).sum()


@pytest.mark.parametrize("budget,rho,held", [(0.002, 0.0, 100_000), (0.01, 0.0, 20_000), (0.05, 0.0, 20_000),
                                             (0.01, 0.9, 20_000), (0.05, 0.9, 20_000)])
def test_the_realised_false_alarm_rate_on_fresh_normal_data_is_within_half_and_twice_the_budget(budget, rho, held):
    """A small budget needs many held-out readings: the EWMA's false alarms come in excursions, and
    0.2 % of 20,000 is ~40 readings in a handful of them (measured: 0.66-2.1x the budget over seeds)."""
    rule = alarms.calibrate(normal_scores(held, seed=11, rho=rho), budget)
    d, _ = decide(rule, normal_scores(50_000, seed=12, rho=rho))
    assert 0.5 * budget <= d.alarm.mean() <= 2 * budget, (d.alarm.mean(), budget)
    assert rule.measured == pytest.approx(budget, rel=0.05, abs=1e-4)
    assert 0 < np.mean(d.rule == 0) < np.mean(d.alarm)  # both limits spend part of the budget


def test_batches_and_a_state_round_trip_decide_as_one_pass(rule):
    """The stream's view: batches of any size, the state applied between them, give the flags,
    EWMA and episodes of one pass over the series (a redone batch is the same call again)."""
    s = normal_scores(2_000, seed=5, rho=0.8)
    s[500:700] *= 3
    s[1200] = 50 * rule.instant
    whole, _ = decide(rule, s)
    flags, ewma, events, prior = [], [], [], {}
    rng = np.random.default_rng(0)
    pos = 0
    while pos < len(s):
        n = int(rng.integers(1, 90))
        part = s[pos:pos + n]
        refs = np.stack([np.zeros(len(part), np.int64), np.arange(pos, pos + len(part)), np.zeros(len(part), np.int64)], 1)
        d, post = rule.step(np.zeros(len(part), np.int64), part, np.arange(pos, pos + len(part), dtype=float), refs, prior)
        again, _ = rule.step(np.zeros(len(part), np.int64), part, np.arange(pos, pos + len(part), dtype=float), refs, prior)
        assert np.array_equal(d.alarm, again.alarm)  # pure: a redo changes nothing
        flags.append(d.alarm)
        ewma.append(d.ewma)
        events += [(e, p + pos, ep.ref) for e, p, _k, ep in d.events]
        prior = post
        pos += len(part)
    assert np.array_equal(np.concatenate(flags), whole.alarm)
    np.testing.assert_allclose(np.concatenate(ewma), whole.ewma, rtol=1e-12)
    assert events == [(e, p, ep.ref) for e, p, _k, ep in whole.events]
    opens = [e for e in events if e[0] == "open"]
    closes = [e for e in events if e[0] == "close"]
    assert len(opens) >= 2 and len(closes) in (len(opens), len(opens) - 1)


def test_episodes_close_only_after_close_after_quiet_readings_and_updates_are_rate_limited():
    rule = AlarmRule(instant=10.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=4, update_s=5.0)
    s = np.zeros(60)
    s[[10, 12, 14, 16]] = 20  # gaps of 1 reading: one episode (hysteresis), not four
    s[30:50] = 20  # 20 readings in a row: updates at most every 5 s of event time
    d, post = decide(rule, s)
    ev = [(e, p) for e, p, _k, _ep in d.events]
    assert ev[:3] == [("open", 10), ("update", 16), ("close", 20)]
    updates = [p for e, p in ev if e == "update"]
    assert updates == [16, 35, 40, 45] and ev[-1] == ("close", 53)
    assert post[0].episode is None


def test_streams_of_many_sensors_interleaved_keep_their_own_state():
    rule = AlarmRule(instant=10.0, ewma_limit=math.log(3), floor=0.0, center=0.0, lam=0.3, close_after=3)
    a = np.r_[np.ones(20), np.full(20, 5.0)]
    b = np.ones(40)
    keys = np.array(["a", "b"] * 40, dtype=object)
    both = np.empty(80)
    both[0::2], both[1::2] = a, b
    refs = np.stack([np.zeros(80, np.int64), np.arange(80), np.zeros(80, np.int64)], 1)
    d, post = rule.step(keys, both, np.arange(80, dtype=float), refs, {})
    alone, _ = decide(rule, a, key="a")
    assert np.array_equal(d.alarm[0::2], alone.alarm) and not d.alarm[1::2].any()
    assert set(post) == {"a", "b"} and post["a"].episode is not None and post["b"].episode is None


def test_a_rule_round_trips_and_bad_ones_are_refused(rule):
    again = AlarmRule.from_dict(rule.to_dict())
    assert again.to_dict() == rule.to_dict()
    for bad in ({**rule.to_dict(), "kind": "k-of-n"}, {**rule.to_dict(), "instant": float("nan")}):
        with pytest.raises(ValueError):
            AlarmRule.from_dict(bad)
    with pytest.raises(ValueError, match="too few"):
        alarms.calibrate(np.ones(5), 0.01)


def test_an_isolated_spike_alarms_itself_and_the_ewma_does_not_carry_the_alarm_on(rule):
    """Issue 28: a stream with 1 % isolated spikes alarmed on 2.45 % of its normal readings at a 1 %
    budget: each spike (clipped only at the instant limit) lifted the EWMA over its limit for the
    next few readings. Counted here: alarms in the 5 readings after each spike that the same
    stream without the spikes did not raise (before the fix: 5-12 % of the spikes, 0.03-0.26
    points on the normal readings' rate)."""
    rng = np.random.default_rng(5)
    carried, spikes_total = 0, 0
    for seed in range(5):
        s = normal_scores(20_000, seed=200 + seed, rho=0.8)
        quiet, _ = decide(rule, s)
        spikes = np.sort(rng.choice(np.arange(100, 19_900), 200, replace=False))
        spikes = spikes[np.diff(np.r_[0, spikes]) > 20]  # isolated
        s[spikes] = rule.instant * rng.uniform(1.5, 20, len(spikes))
        d, _ = decide(rule, s)
        assert d.alarm[spikes].all()
        after = (spikes[:, None] + np.arange(1, 6)).ravel()
        carried += int((d.alarm[after] & ~quiet.alarm[after]).sum())
        spikes_total += len(spikes)
    assert carried <= 0.03 * spikes_total, (carried, spikes_total)


@pytest.mark.parametrize("level", [0.95, 3.0])
def test_a_few_high_readings_in_a_row_lift_the_ewma_over_its_limit(rule, level):
    """Under the instant limit (0.95) or over it (3): a run is not a spike, and the EWMA carries it
    (only an isolated reading over the instant limit enters the EWMA capped)."""
    s = normal_scores(400, seed=9, rho=0.8)
    s[200:206] = rule.instant * level
    d, _ = decide(rule, s)
    assert (d.rule[200:215] == 1).any()


def test_whether_the_last_reading_was_over_the_instant_limit_carries_across_batches(rule):
    s = normal_scores(400, seed=9, rho=0.8)
    s[200:206] = rule.instant * 3
    whole, _ = decide(rule, s)
    d1, post = decide(rule, s[:203])
    assert post[0].hot
    d2, _ = decide(rule, s[203:], post)
    assert np.array_equal(np.r_[d1.alarm, d2.alarm], whole.alarm)
@pytest.mark.parametrize("below", [9, 10, 30, 49])
def test_a_restored_episode_already_quiet_for_the_new_close_after_closes_at_its_sensors_first_reading(below):
    """Issue 29.1: v1 (close after 50) saw `below` quiet readings; v2 closes after 10. The close
    used to land at pos + 10 - below - 1: before the sensor's readings (IndexError at a restart,
    another sensor's key, id and time at a hot swap). It closes at the sensor's first reading now
    (or where v2's count ends, when that is later)."""
    rule = AlarmRule(instant=10.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=10)
    ep = alarms.Episode((0, 7, 0), 0.0, 0, 2.0, 20.0, 0.0, 3, below, 0.0)
    m = 6
    # "b" sorts first, so a negative close position wraps into "other"'s readings (the hot-swap symptom)
    keys = np.array(["other", "b", "other", "b", "b", "other"], dtype=object)
    refs = np.stack([np.zeros(m, np.int64), np.arange(m), np.zeros(m, np.int64)], 1)
    ts = np.arange(m, dtype=float) + 100
    d, post = rule.step(keys, np.zeros(m), ts, refs, {"b": alarms.SensorAlarm(0.0, ep)})
    closes = [(p, k) for e, p, k, _ in d.events if e == "close"]
    assert closes == [(1, "b")] and post["b"].episode is None  # b's first reading is at position 1


def test_a_restored_episode_past_close_after_closes_before_a_new_one_opens_at_the_same_reading():
    rule = AlarmRule(instant=10.0, ewma_limit=math.inf, floor=0.0, center=0.0, close_after=10)
    ep = alarms.Episode((0, 7, 0), 0.0, 0, 2.0, 20.0, 0.0, 3, 30, 0.0)
    d, post = decide(rule, [20.0, 0.0], prior={0: alarms.SensorAlarm(0.0, ep)})
    assert [(e, p, x.ref) for e, p, _k, x in d.events] == [("close", 0, (0, 7, 0)), ("open", 0, (0, 0, 0))]
    assert post[0].episode is not None and post[0].episode.ref == (0, 0, 0)
