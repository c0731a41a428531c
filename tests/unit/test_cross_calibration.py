"""Cross-fitted calibration (`calibrate.cross_fit`, train's default for PCA): every window gets one
held-out score from a model that never saw its block, in time order; the model kept is fitted on
all windows; the score parts are scaled on the held-out parts; too little data falls back to one
held-out set of blocks."""

from __future__ import annotations

import numpy as np
import pytest

from latentwatch.detectors import PCADetector, QuantileThreshold, sliding_windows
from latentwatch.detectors.calibrate import fit_and_calibrate
from latentwatch.detectors.training import split_blocks
from tests.support.detector_data import normal_data


def test_folds_hold_out_every_block_once_and_purge_the_seams():
    n, window = 393, 8
    held = [split_blocks(n, 0.2, window, fold=f) for f in range(5)]
    everything = np.sort(np.concatenate([v for _, v in held]))
    assert np.array_equal(everything, np.arange(n))
    for train, val in held:
        assert len(np.intersect1d(train, val)) == 0
        # no training window shares a reading with a held-out one
        gaps = np.abs(train[:, None] - val[None, :]).min(axis=1)
        assert gaps.min() >= window


def test_cross_fit_gives_every_window_a_held_out_score_and_fits_the_model_on_all():
    X = normal_data(400, seed=3)
    det, thr = PCADetector(window=8, score_last=8, variance=0.8), QuantileThreshold(0.99)
    held = fit_and_calibrate(det, X, thr, calibration="cross")
    windows = sliding_windows(X, 8)
    assert len(held) == len(windows) == det.training_report.validation_rows
    assert thr.value == pytest.approx(float(np.quantile(held, 0.99)))
    whole = PCADetector(window=8, score_last=8, variance=0.8).fit(X)  # every window, no hold-out
    assert np.allclose(np.abs(det.net.components.numpy()), np.abs(whole.net.components.numpy()), atol=1e-5)
    in_sample = det.score(windows).parts["reconstruction"]
    # held-out scores come from models that did not fit those windows: higher than in-sample ones
    assert float(np.mean(held)) == pytest.approx(1.0, rel=1e-4) and float(np.mean(in_sample)) < 1.0
    assert held.dtype == np.float32 and np.all(np.isfinite(held))


def test_both_parts_are_scaled_on_the_cross_fitted_parts():
    X = normal_data(600, seed=4)
    det = PCADetector(window=4, score_last=4, variance=0.8)
    held = fit_and_calibrate(det, X, QuantileThreshold(0.99), calibration="cross",
                             use=("reconstruction", "latent_distance"))
    assert det.parts.use == ("reconstruction", "latent_distance")
    assert float(np.mean(held)) == pytest.approx(1.0, rel=1e-4)  # each part averages 1 on held-out windows


def test_auto_is_cross_for_pca_and_too_little_data_falls_back_to_blocks():
    det = PCADetector(window=8, score_last=8)
    held = fit_and_calibrate(det, normal_data(400), QuantileThreshold(0.99), calibration="auto")
    assert len(held) == 393
    small = PCADetector(window=8, score_last=8)
    held = fit_and_calibrate(small, normal_data(120), QuantileThreshold(0.99), calibration="cross")
    assert 10 <= len(held) < 113 and len(held) == small.training_report.validation_rows
    with pytest.raises(ValueError, match="calibration"):
        fit_and_calibrate(PCADetector(), normal_data(200), QuantileThreshold(0.99), calibration="tail")


def test_the_pca_guard_still_works_with_cross_fitted_autoencoders():
    """Cross-fitting an autoencoder fits the kept model without a hold-out; the guard compares the
    folds' held-out losses with PCA's on the same folds instead."""
    from latentwatch.detectors import make_detector
    from latentwatch.detectors.calibrate import fit_no_worse_than_pca

    X = normal_data(400, seed=8)
    weak = make_detector("mlp", latent_dim=2, hidden=8, device="cpu")
    kept, thr, held = fit_no_worse_than_pca(weak, X, lambda: QuantileThreshold(0.99), calibration="cross",
                                            epochs=1, seed=0)
    assert kept.kind == "pca" and kept.latent_dim == 2 and len(held) == 400
    assert kept.training_report.calibration == "cross" and np.isfinite(thr.value)
