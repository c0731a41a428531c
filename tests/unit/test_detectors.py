"""Models: each separates injected anomalies from normal data, fits reproducibly, scores
without changing itself, and scores big inputs in chunks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from latentwatch.detectors import (MLPAutoencoder, PCADetector, Scores, WindowAutoencoder, make_detector, resolve_device,
                       sliding_windows)
from tests.support.detector_data import inject, normal_data, roc_auc


CONFIGS = {"mlp": {}, "window": {"window": 16, "score_last": 4}, "vae": {"window": 16, "score_last": 4},
           "pca": {"latent_dim": 2}}
FLOORS = {"spike": 0.95, "level_shift": 0.95, "stuck": 0.8, "broken_correlation": 0.8}


@pytest.fixture(scope="module")
def fitted():
    X = normal_data(2000)
    return {k: make_detector(k, device="cpu", **cfg).fit(X, epochs=30, seed=0) for k, cfg in CONFIGS.items()}


@pytest.mark.parametrize("anomaly", list(FLOORS))
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_each_model_separates_injected_anomalies(fitted, kind, anomaly):
    model = fitted[kind]
    X, labels = inject(normal_data(1500, seed=1), anomaly)
    scores = model.score(sliding_windows(X, model.window))
    auc = roc_auc(scores.score, labels[model.window - 1:])
    assert auc >= FLOORS[anomaly], f"{kind} on {anomaly}: ROC-AUC {auc:.3f}"


def test_roc_auc_helper_is_right():
    assert roc_auc(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == 1.0
    assert roc_auc(np.array([0.9, 0.8, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5]), np.array([0, 1, 0, 1])) == 0.5


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_scores_have_the_documented_shapes(fitted, kind):
    model = fitted[kind]
    X = normal_data(300, seed=2)
    s = model.score(sliding_windows(X, model.window))
    n = 300 - model.window + 1
    assert isinstance(s, Scores) and len(s) == n
    assert s.latent.shape == (n, model.latent_dim) and s.latent.dtype == np.float32
    assert s.channel_error.shape == (n, 6) and s.channel_error.dtype == np.float32
    assert s.score.shape == (n,) and s.score.dtype == np.float32
    np.testing.assert_allclose(s.score, s.channel_error.mean(axis=1), rtol=1e-5)
    assert model.channels == [f"ch{i}" for i in range(6)] and model.kind == kind


def test_channel_error_points_at_the_broken_channel(fitted):
    X = normal_data(400, seed=3)
    X[200, 4] += 10 * X[:, 4].std()
    s = fitted["mlp"].score(sliding_windows(X, 1))
    assert int(np.argmax(s.channel_error[200])) == 4


@pytest.mark.parametrize("kind", ["mlp", "window", "vae"])
def test_training_is_seeded_and_reproducible(kind):
    X = normal_data(600)
    a = make_detector(kind, device="cpu", **CONFIGS[kind]).fit(X, epochs=3, seed=7)
    b = make_detector(kind, device="cpu", **CONFIGS[kind]).fit(X, epochs=3, seed=7)
    c = make_detector(kind, device="cpu", **CONFIGS[kind]).fit(X, epochs=3, seed=8)
    w = sliding_windows(X, a.window)
    assert np.array_equal(a.score(w).score, b.score(w).score)
    assert not np.array_equal(a.score(w).score, c.score(w).score)


def test_training_reports_progress_and_stops_early(caplog):
    seen = []
    X = normal_data(800)
    with caplog.at_level("DEBUG", logger="latentwatch.detectors.training"):
        model = MLPAutoencoder().fit(X, epochs=500, patience=2, lr=0.05, seed=0,
                                     callback=lambda e, tr, va: seen.append((e, tr, va)))
    report = model.training_report
    assert [e for e, _, _ in seen] == list(range(1, report.epochs_run + 1))
    assert report.epochs_run < 500  # early stopping on the validation tail kicked in
    assert all(math.isfinite(va) for _, _, va in seen)
    assert report.best_val_loss == min(va for _, _, va in seen)
    # one line per epoch: with a progress callback the log line is DEBUG (issue #13 F: printed twice)
    epoch_lines = [r for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert any("epoch 1/500" in r.getMessage() for r in epoch_lines)
    assert all(r.levelname == "DEBUG" for r in epoch_lines)


def test_training_without_a_callback_logs_each_epoch_once_at_info(caplog):
    with caplog.at_level("INFO", logger="latentwatch.detectors.training"):
        MLPAutoencoder().fit(normal_data(300), epochs=3, patience=10, seed=0)
    assert [r.getMessage().split()[1] for r in caplog.records if r.getMessage().startswith("epoch ")] == \
        ["1/3", "2/3", "3/3"]


def test_scoring_does_not_change_the_model(fitted):
    model = fitted["window"]
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    w = sliding_windows(normal_data(200, seed=4), model.window)
    first = model.score(w).score
    second = model.score(w).score
    assert np.array_equal(first, second)
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_wrong_window_shape_is_a_clear_error(fitted):
    with pytest.raises(ValueError, match=r"expected windows \[n, 16, 6\]"):
        fitted["window"].score(np.zeros((5, 8, 6), np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        WindowAutoencoder().score(np.zeros((1, 32, 6), np.float32))


def test_pca_picks_components_by_explained_variance():
    model = PCADetector(variance=0.9).fit(normal_data(1000))
    assert model.latent_dim == 2  # two latent signals drive all six channels


def test_one_million_readings_are_scored_in_chunks():
    rng = np.random.default_rng(0)
    model = MLPAutoencoder(latent_dim=4, hidden=16, device="cpu").fit(
        rng.normal(size=(500, 32)).astype(np.float32), epochs=1)
    calls = []
    forward = model.net.forward
    model.net.forward = lambda x: calls.append(len(x)) or forward(x)
    X = rng.normal(size=(1_000_000, 32)).astype(np.float32)
    scores = model.score(sliding_windows(X, 1))
    assert len(scores) == 1_000_000 and scores.latent.shape == (1_000_000, 4)
    assert len(calls) == math.ceil(1_000_000 / model.cpu_chunk_rows) and max(calls) == model.cpu_chunk_rows
    assert np.all(np.isfinite(scores.score))
    np.testing.assert_allclose(scores.score[-1000:], model.score(X[-1000:, None, :]).score, rtol=1e-5)


def test_device_option():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_cpu_and_cuda_score_the_same(fitted, kind):
    model = fitted[kind]
    w = sliding_windows(normal_data(5000, seed=5), model.window)
    on_cpu = model.score(w)
    model.to("cuda")
    try:
        on_gpu = model.score(w)
    finally:
        model.to("cpu")
    np.testing.assert_allclose(on_gpu.score, on_cpu.score, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(on_gpu.latent, on_cpu.latent, rtol=1e-3, atol=1e-4)


def test_vae_trains_with_its_kl_term_and_scores_with_the_latent_mean(fitted):
    model = fitted["vae"]
    net = model.net
    assert not net.training and net.penalty is None  # no autograd graph kept after training
    X = normal_data(400)
    with_kl = make_detector("vae", window=8, device="cpu", beta=1.0).fit(X, epochs=2, seed=3)
    without = make_detector("vae", window=8, device="cpu", beta=0.0).fit(X, epochs=2, seed=3)
    assert with_kl.training_report.history[0][0] > without.training_report.history[0][0]  # KL in the training loss
    w = sliding_windows(normal_data(200, seed=6), model.window)
    a = model.score(w)
    with torch.inference_mode():
        x = (torch.from_numpy(np.ascontiguousarray(w)) - model._mean) / model._std
        mean = net.encoder(net.features(x.transpose(1, 2))).numpy()
    np.testing.assert_allclose(a.latent, mean, rtol=1e-5, atol=1e-6)
    assert np.array_equal(a.score, model.score(w).score)  # no sampling at scoring time
