"""The persistence rule "k of the last n readings above the threshold", per sensor: right against
a brute-force count, pure until committed (a redone batch does not apply twice), the same flags
whether readings come in one call (`score`) or in stream batches, bounded state, a label-free
default from held-out normal scores."""

from __future__ import annotations

import numpy as np
import pytest

from latentwatch.detectors.persistence import PersistenceRule, choose, false_runs


def brute_force(keys, above, k, n):
    seen: dict = {}
    out = []
    for key, a in zip(keys, above):
        hist = seen.setdefault(key, [])
        hist.append(bool(a))
        out.append(sum(hist[-n:]) >= k)
    return np.array(out)


@pytest.mark.parametrize("k,n", [(1, 1), (2, 2), (2, 3), (3, 5), (8, 8)])
def test_flags_match_a_brute_force_count_per_sensor(k, n):
    rng = np.random.default_rng(k * 10 + n)
    keys = rng.choice(["a", "b", "c", "d"], size=500)
    above = rng.random(500) < 0.4
    rule = PersistenceRule(k, n)
    assert np.array_equal(rule.flags(keys, above), brute_force(keys, above, k, n))


def test_flags_are_pure_and_learn_applies_a_batch_once():
    rule = PersistenceRule(3, 3)
    keys, above = ["s1"] * 2, np.array([True, True])
    first = rule.flags(keys, above)
    assert np.array_equal(first, rule.flags(keys, above)) and rule.state == {}  # redone: same answer, no state
    rule.learn(keys, above)
    assert rule.flags(["s1"], np.array([True]))[0]  # third in a row
    assert not rule.flags(["s2"], np.array([True]))[0]  # another sensor has its own history


@pytest.mark.parametrize("batch", [1, 7, 64])
def test_stream_batches_give_the_same_flags_as_one_call(batch):
    """`score` calls the rule once per file; the stream calls step/commit per batch, sensors interleaved."""
    rng = np.random.default_rng(batch)
    n_readings = 600
    keys = rng.choice([f"pump-{i}" for i in range(5)], size=n_readings)
    above = rng.random(n_readings) < 0.5
    whole = PersistenceRule(3, 4).flags(keys, above)
    stream = PersistenceRule(3, 4)
    got = []
    for start in range(0, n_readings, batch):
        flags, posterior = stream.step(keys[start:start + batch], above[start:start + batch], stream.state)
        got.append(flags)
        stream.commit(posterior)
    assert np.array_equal(np.concatenate(got), whole)
    # the functional form with state kept outside (as the stream's state store does) agrees too
    outside: dict = {}
    got = []
    rule = PersistenceRule(3, 4)
    for start in range(0, n_readings, batch):
        flags, posterior = rule.step(keys[start:start + batch], above[start:start + batch], outside)
        got.append(flags)
        outside.update(posterior)
    assert np.array_equal(np.concatenate(got), whole) and rule.state == {}
    # and per sensor, the same as scoring that sensor's readings alone as a file
    for key in set(keys.tolist()):
        mine = keys == key
        alone = PersistenceRule(3, 4).flags(np.zeros(mine.sum(), dtype=np.int64), above[mine])
        assert np.array_equal(whole[mine], alone)


def test_state_is_bounded_and_an_evicted_sensor_starts_again():
    rule = PersistenceRule(2, 2, max_sensors=100)
    for i in range(1000):
        rule.learn([f"id-{i}"], np.array([True]))
    assert len(rule.state) == 100 and rule.evictions == 900
    assert not rule.flags(["id-0"], np.array([True]))[0]  # evicted: like a new sensor
    assert rule.flags(["id-999"], np.array([True]))[0]  # kept: its last reading was above


def test_bad_rules_are_refused():
    for k, n in [(0, 1), (3, 2), (1, 65)]:
        with pytest.raises(ValueError, match="persistence"):
            PersistenceRule(k, n)


def test_default_is_chosen_from_normal_excursions_without_labels():
    rng = np.random.default_rng(0)
    white = rng.normal(size=400)  # independent scores: excursions are single readings
    fast = choose(white, np.quantile(white, 0.95))
    assert fast.n <= 4
    slow = np.convolve(rng.normal(size=420), np.ones(20) / 20, mode="valid")[:400]  # excursions last ~20 readings
    rule = choose(slow, np.quantile(slow, 0.95))
    assert rule.n >= 6 and rule.n > fast.n
    assert false_runs(slow > np.quantile(slow, 0.95), rule.k, rule.n) <= false_runs(slow > np.quantile(slow, 0.95), 1, 1)
    assert choose(np.arange(5.0), 3.0).to_dict() == {"k": 1, "n": 1}  # too few scores: the plain threshold


def test_runs_are_counted_at_the_threshold_the_rule_is_used_with():
    """Excursions to 1 last 8 readings, the one to 3 a single reading: above a threshold of 4 the
    plain threshold raises no false run; above 2, 2 of 2 is the quickest that raises none; above
    0.5, only 8 of 8."""
    held = np.zeros(400)
    for start in range(20, 400, 60):
        held[start:start + 8] = 1.0
    held[50] = 3.0
    assert choose(held, 4.0).to_dict() == {"k": 1, "n": 1}
    assert choose(held, 2.0).to_dict() == {"k": 2, "n": 2}
    assert choose(held, 0.5).to_dict() == {"k": 8, "n": 8}
    assert choose(held, 2.0, level=0.5).to_dict() == {"k": 8, "n": 8}
