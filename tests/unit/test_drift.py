"""Latent drift: flat on a normal simulated stream, up within minutes of an operating-point
change, bounded state, exported gauges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from latentwatch.detectors import QuantileThreshold, make_detector
from latentwatch.detectors.calibrate import fit_and_calibrate
from latentwatch.pipeline.devtools.simulate import SensorSimulator
from latentwatch.pipeline.lifecycle.drift import LatentDrift, reference, reference_for
from latentwatch.pipeline.metrics import PipelineMetrics

STALE = 0.25  # the "model stale" rule's threshold (config/prometheus/rules)


@pytest.fixture(scope="module")
def trained():
    sim = SensorSimulator(10, 8, seed=1, anomaly_rate=0.01)
    X = sim.normal_training_data(20_000)
    det, thr = make_detector("pca", device="cpu", latent_dim=3), QuantileThreshold(0.99)
    held_out = fit_and_calibrate(det, X, thr, channels=sim.channel_names)
    return sim, det, thr, reference_for(det, X, held_out, thr.value)


def _stream(sim, det, thr, drift, seconds, start, per_second=5):
    """Feed `seconds` of stream (every sensor `per_second` readings a second, one batch each);
    the largest PSI per 10 s."""
    out = []
    for sec in range(start, start + seconds):
        values, _ = sim.next_readings(per_second)
        scores = det.score(values.reshape(-1, 1, values.shape[-1]).astype(np.float32))
        drift.observe(scores.latent, scores.score > thr.value, now=float(sec))
        if sec % 10 == 9:
            out.append(drift.max_psi(float(sec)))
    return out


def test_flat_for_ten_minutes_of_normal_traffic_and_up_within_three_of_a_new_operating_point(trained):
    sim, det, thr, ref = trained
    drift = LatentDrift(ref, window_s=120, bucket_s=10)
    _stream(sim, det, thr, drift, 120, 0)  # the first window fills
    normal = _stream(sim, det, thr, drift, 600, 120)
    assert max(normal) < 0.2, normal  # measured 0.04-0.13
    assert drift.exceedance(719.0) < 0.03 and drift.reference_exceedance == pytest.approx(0.01, abs=0.002)
    sim.change_operating_point(2.0)
    after = _stream(sim, det, thr, drift, 180, 720)
    assert max(after) > STALE, after  # measured: above 0.25 after 60 s
    first = next(i for i, v in enumerate(after) if v > STALE)
    assert all(v > STALE for v in after[first:])  # and stays up


def test_state_is_bounded_and_too_few_readings_give_no_value():
    rng = np.random.default_rng(0)
    ref = reference(rng.normal(size=(5000, 4)), rng.normal(size=1000), 2.0)
    drift = LatentDrift(ref, window_s=60, bucket_s=10, min_readings=500)
    drift.observe(rng.normal(size=(100, 4)), 0, now=0.0)
    assert math.isnan(drift.max_psi(0.0)) and math.isnan(drift.exceedance(0.0))
    for t in range(1000):
        drift.observe(rng.normal(size=(50, 4)), 1, now=float(t))
    assert len(drift._buckets) <= 6 and drift.readings() <= 6 * 10 * 50
    assert drift.max_psi(999.0) < 0.05 and drift.exceedance(999.0) == pytest.approx(1 / 50)
    assert math.isnan(drift.max_psi(2000.0))  # everything aged out


def test_psi_of_a_shifted_dimension_is_large_and_gauges_are_exported():
    rng = np.random.default_rng(1)
    ref = reference(rng.normal(size=(5000, 2)), rng.normal(size=1000), 2.0)
    m = PipelineMetrics()
    assert math.isnan(m.registry.get_sample_value("latentwatch_latent_drift_psi"))
    clock = [0.0]
    drift = LatentDrift(ref, metrics=m, clock=lambda: clock[0])
    assert m.registry.get_sample_value("latentwatch_reference_exceedance_ratio") == pytest.approx(
        ref["exceedance"])
    shifted = rng.normal(size=(3000, 2)) + [1.0, 0.0]
    clock[0] = 5.0
    drift.observe(shifted, np.arange(3000) < 300)
    psi = drift.psi_per_dim()
    assert psi[0] > 0.5 and psi[1] < 0.05
    assert m.registry.get_sample_value("latentwatch_latent_drift_psi") == pytest.approx(psi.max())
    assert m.registry.get_sample_value("latentwatch_live_exceedance_ratio") == pytest.approx(0.1)
    assert m.registry.get_sample_value("latentwatch_drift_window_readings") == 3000


def test_from_model_without_a_reference_is_none():
    class Model:
        metadata = {"training": {}}

    assert LatentDrift.from_model(Model()) is None


def test_simulate_operating_point_change_flag_errors_are_one_line(capsys):
    from latentwatch.pipeline.cli.main import main

    assert main(["simulate", "--topic", "t", "--operating-point-change", "soon", "--count", "1"]) == 2
    assert "AFTER_S:SHIFT, e.g. 600:2" in capsys.readouterr().err
