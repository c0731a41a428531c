"""The latent-space term: it catches a reading on the normal manifold in a region training never
visited (which reconstruction error misses), reconstruction error catches one off the manifold
(which the latent distance misses), and the combined score flags both."""

from __future__ import annotations

import numpy as np
import pytest

from latentwatch.detectors import PCADetector, QuantileThreshold, make_detector, sliding_windows
from latentwatch.detectors.calibrate import fit_and_calibrate, fit_no_worse_than_pca
from latentwatch.detectors.latent import PARTS, ScoreParts, ledoit_wolf

MIX = np.random.default_rng(7).normal(size=(2, 6))  # 2 latent factors -> 6 channels


def manifold(n: int, seed: int = 0, noise: float = 0.05) -> np.ndarray:
    """Readings on a 2-D linear manifold in 6 channels; the factors stay within [-1, 1]."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(-1, 1, size=(n, 2))
    return (z @ MIX + noise * rng.normal(size=(n, 6))).astype(np.float32)


def probes() -> dict[str, np.ndarray]:
    """One reading per case: normal; on the manifold far beyond the visited region; off it."""
    normal = np.array([0.3, -0.2]) @ MIX
    unvisited = np.array([3.0, -3.0]) @ MIX  # exactly on the manifold, factors 3x the training range
    return {k: np.asarray(v, np.float32)[None, :] for k, v in {"normal": normal, "unvisited": unvisited}.items()}


def off_manifold(det: PCADetector) -> np.ndarray:
    """A normal reading moved 5 standard units orthogonally to the subspace the model learnt."""
    std, mean = det.scaler.std, det.scaler.mean
    comps = det.net.components.numpy().astype(np.float64)
    x = (probes()["normal"][0] - mean) / std
    u = np.linalg.svd(comps, full_matrices=True)[2][-1]  # orthogonal to both components
    return ((x + 5 * u) * std + mean).astype(np.float32)[None, :]


@pytest.fixture(scope="module")
def pca():
    det, thr = PCADetector(latent_dim=2), QuantileThreshold(0.99)
    fit_and_calibrate(det, manifold(2000), thr, use=PARTS)  # the score: both parts
    recon_only = PCADetector(latent_dim=2).fit(manifold(2000), val_fraction=0.2)
    return det, thr, recon_only


def test_latent_distance_catches_an_unvisited_region_that_reconstruction_misses(pca):
    det, thr, _ = pca
    s = det.score(probes()["unvisited"])
    assert s.parts["reconstruction"][0] < 3  # on the manifold: reconstructed as well as normal data
    assert s.parts["latent_distance"][0] > 15  # but far from anything training saw
    assert thr.flag(s.score)[0]


def test_reconstruction_catches_an_off_manifold_reading_that_latent_distance_misses(pca):
    det, thr, _ = pca
    s = det.score(off_manifold(det))
    assert s.parts["reconstruction"][0] > 20
    assert s.parts["latent_distance"][0] < 3
    assert thr.flag(s.score)[0]


def test_normal_reading_is_not_flagged_and_parts_average_one_on_normal_data(pca):
    det, thr, _ = pca
    assert not thr.flag(det.score(probes()["normal"]).score)[0]
    s = det.score(manifold(3000, seed=1)[:, None, :])
    for name in ("reconstruction", "latent_distance"):
        assert 0.7 < float(np.mean(s.parts[name])) < 1.4, name
        assert s.parts[name].shape == s.score.shape and s.parts[name].dtype == np.float32
    np.testing.assert_allclose(s.score, (s.parts["reconstruction"] + s.parts["latent_distance"]) / 2, rtol=1e-5)


def test_without_calibration_the_score_is_reconstruction_error_alone(pca):
    _, _, recon_only = pca
    s = recon_only.score(probes()["unvisited"])
    assert set(s.parts) == {"reconstruction"}
    np.testing.assert_allclose(s.score, s.channel_error.mean(axis=1), rtol=1e-6)
    held = recon_only.score(manifold(500, seed=3)[:, None, :]).score
    assert s.score[0] < np.quantile(held, 0.99) * 3  # reconstruction alone cannot see it


def test_autoencoder_latent_term_sees_the_unvisited_region():
    det, thr = make_detector("mlp", latent_dim=2, hidden=16, device="cpu"), QuantileThreshold(0.99)
    fit_and_calibrate(det, manifold(1500), thr, epochs=40, seed=0, use=PARTS)
    s = det.score(probes()["unvisited"])
    assert s.parts["latent_distance"][0] > 10 and thr.flag(s.score)[0]


def test_ledoit_wolf_is_well_conditioned_with_few_rows():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(6, 8))  # fewer rows than dimensions: the sample covariance is singular
    mean, cov = ledoit_wolf(Z)
    assert np.allclose(mean, Z.mean(axis=0))
    assert np.all(np.linalg.eigvalsh(cov) > 1e-6)
    big = rng.normal(size=(20000, 3)) * [1, 2, 3]
    np.testing.assert_allclose(np.diag(ledoit_wolf(big)[1]), [1, 4, 9], rtol=0.05)


def test_score_parts_round_trip_and_refuse_bad_input():
    rng = np.random.default_rng(1)
    parts = ScoreParts.fit(rng.normal(size=(200, 3)), rng.exponential(size=200))
    again = ScoreParts.from_dict(parts.to_dict(), latent_dim=3)
    z, e = rng.normal(size=(50, 3)), rng.exponential(size=50)
    assert np.array_equal(parts.combine(e, z)[1], again.combine(e, z)[1])
    with pytest.raises(ValueError, match="latent_dim"):
        ScoreParts.from_dict(parts.to_dict(), latent_dim=4)
    bad = parts.to_dict() | {"scales": {"reconstruction": 1.0, "latent_distance": -1.0}}
    with pytest.raises(ValueError, match="scales"):
        ScoreParts.from_dict(bad, latent_dim=3)


def test_an_autoencoder_on_linear_data_ends_no_worse_than_pca():
    X = manifold(1200, seed=4, noise=0.02)
    det = make_detector("mlp", latent_dim=2, hidden=32, device="cpu")
    fit_and_calibrate(det, X, QuantileThreshold(0.99), epochs=150, seed=0)
    r = det.training_report
    assert r.best_val_loss <= 1.5 * r.pca_val_loss + 0.01, (r.best_val_loss, r.pca_val_loss)
    # and the guard: whatever training reached, what `train` keeps is no worse than PCA
    weak = make_detector("mlp", latent_dim=2, hidden=32, device="cpu")
    kept, thr, held = fit_no_worse_than_pca(weak, X, lambda: QuantileThreshold(0.99), epochs=1, seed=0)
    assert kept.kind == "pca" and kept.latent_dim == 2 and np.isfinite(thr.value) and len(held) >= 10


def test_by_default_the_score_is_reconstruction_and_the_latent_distance_is_reported_beside_it():
    det, thr = PCADetector(latent_dim=2), QuantileThreshold(0.99)
    fit_and_calibrate(det, manifold(2000), thr)
    s = det.score(probes()["unvisited"])
    assert det.parts.use == ("reconstruction",)
    assert s.score[0] == s.parts["reconstruction"][0] and s.parts["latent_distance"][0] > 15
