"""Thresholds: fitted on normal scores only, composable, serialisable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from latentwatch.detectors.thresholds import (AdaptiveThreshold, POTThreshold, QuantileThreshold, fit_gpd,
                                  threshold_from_dict)

rng = np.random.default_rng(0)


def test_quantile_threshold_flags_about_one_percent_of_normal_data():
    normal = rng.normal(size=20_000)
    thr = QuantileThreshold(0.99).fit(normal)
    assert thr.value == pytest.approx(2.326, abs=0.06)
    fresh = rng.normal(size=20_000)
    assert 0.005 < thr.flag(fresh).mean() < 0.015
    assert np.all(thr.thresholds(fresh) == thr.value)


def test_nan_scores_are_never_flagged_and_ignored_when_fitting():
    thr = QuantileThreshold(0.5).fit(np.array([1.0, 2.0, 3.0, np.nan]))
    assert thr.value == 2.0
    assert thr.flag(np.array([np.nan, 5.0, 1.0])).tolist() == [False, True, False]


def test_unfitted_threshold_refuses():
    with pytest.raises(RuntimeError, match="not fitted"):
        QuantileThreshold().thresholds(np.zeros(3))
    with pytest.raises(ValueError, match="no finite scores"):
        QuantileThreshold().fit(np.array([np.nan]))


def test_gpd_fit_recovers_shape_and_scale():
    for xi, sigma in [(0.2, 1.0), (0.0, 2.0), (-0.2, 0.5)]:
        u = rng.random(50_000)
        y = -sigma * np.log(1 - u) if xi == 0 else sigma / xi * ((1 - u) ** (-xi) - 1)
        est_xi, est_sigma = fit_gpd(y)
        assert est_xi == pytest.approx(xi, abs=0.05) and est_sigma == pytest.approx(sigma, rel=0.08)


def test_pot_extrapolates_beyond_the_data():
    """Exponential scores: the 1e-5 tail quantile is ln(1e5) = 11.5; 5,000 samples cannot read it off."""
    normal = rng.exponential(size=5_000)
    pot = POTThreshold(risk=1e-5).fit(normal)
    assert pot.value == pytest.approx(math.log(1e5), rel=0.2)
    assert pot.value > normal.max() * 0.9 and abs(pot.xi) < 0.2


def test_pot_with_too_few_scores_falls_back_to_the_empirical_quantile():
    pot = POTThreshold(risk=0.01).fit(np.arange(30.0))
    assert pot.value == pytest.approx(np.quantile(np.arange(30.0), 0.99))


def test_adaptive_threshold_learns_each_key_separately():
    thr = AdaptiveThreshold(alpha=0.05).fit(rng.normal(size=5_000))
    start = thr.value
    for _ in range(50):  # sensor "hot" runs at a higher normal level, sensor "calm" as trained
        scores = np.concatenate([rng.normal(1.0, 1.0, 20), rng.normal(size=20)])
        keys = np.array(["hot"] * 20 + ["calm"] * 20)
        out = thr.thresholds(scores, keys)
    assert out[0] > start + 0.5  # the bar rose for "hot"
    assert out[-1] == pytest.approx(start, abs=0.3)  # and stayed for "calm"
    assert thr.thresholds(np.zeros(1), np.array(["new"]))[0] == pytest.approx(start)


def test_adaptive_threshold_is_not_raised_by_anomalies():
    thr = AdaptiveThreshold(alpha=0.1).fit(rng.normal(size=2_000))
    for _ in range(20):
        out = thr.thresholds(np.full(10, 100.0), np.zeros(10, int))
    assert out[0] == pytest.approx(thr.value)


@pytest.mark.parametrize("make", [lambda: QuantileThreshold(0.95, margin=1.5), lambda: POTThreshold(1e-4),
                                  lambda: AdaptiveThreshold(0.02, base=POTThreshold(1e-3))])
def test_to_dict_round_trips_through_json(make):
    thr = make().fit(rng.exponential(size=3_000))
    if isinstance(thr, AdaptiveThreshold):
        thr.thresholds(rng.exponential(size=50), np.array([1, 2] * 25))
    back = threshold_from_dict(json.loads(json.dumps(thr.to_dict())))
    assert type(back) is type(thr) and back.value == thr.value
    probe = rng.exponential(size=100)
    keys = np.array([1, 2] * 50)
    assert np.array_equal(back.thresholds(probe, keys), thr.thresholds(probe, keys))


def test_unknown_threshold_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown threshold kind"):
        threshold_from_dict({"kind": "magic", "value": 1.0})
    with pytest.raises(ValueError, match="not a threshold"):
        threshold_from_dict({"kind": "quantile"})
