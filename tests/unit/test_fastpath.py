"""The dense scoring form (detectors/fastpath.py) gives the network's scores: old path (the
network, `dense_scoring = False`) against new path on the same weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentwatch.detectors import fastpath
from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.networks import make_detector

CASES = [("window", {"window": 8, "score_last": 8}), ("window", {"window": 8, "score_last": 1}),
         ("window", {"window": 5, "hidden": 8, "kernel": 3, "latent_dim": 3}),
         ("vae", {"window": 8, "score_last": 8})]


def _data(n: int, channels: int = 6, offset: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    X = np.sin(t / (5 + np.arange(channels))) + 0.1 * rng.standard_normal((n, channels))
    return (offset + X * (1 + np.arange(channels))).astype(np.float32)


def _both(det, windows):
    det.dense_scoring = False
    det._ready()
    old = det.score(windows)
    det.dense_scoring = True
    det._ready()
    assert det._dense is not None, "the dense form was not used: the comparison would be vacuous"
    return old, det.score(windows)


def _assert_same(old, new):
    np.testing.assert_allclose(new.score, old.score, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(new.channel_error, old.channel_error, rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(new.latent, old.latent, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,config", CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_dense_form_scores_equal_the_network(kind, config):
    torch.manual_seed(0)
    det = make_detector(kind, device="cpu", **config).fit(_data(1200), epochs=2, seed=0)
    windows = sliding_windows(_data(700, seed=1) * 1.5, det.window)  # off the training data: large errors too
    old, new = _both(det, windows)
    _assert_same(old, new)
    small = windows[:fastpath.BAND_MIN_ROWS - 1]  # small batches run the one-band form
    _assert_same(*_both(det, small))


def test_equal_with_large_offsets_and_in_chunks():
    """Raw values far from zero (standardised before the dense form, never folded into it) and
    a batch scored in several chunks."""
    torch.manual_seed(0)
    det = make_detector("window", window=8, score_last=8, device="cpu").fit(_data(1200, offset=1e4), epochs=2)
    det.cpu_chunk_rows = 256
    windows = sliding_windows(_data(1000, offset=1e4, seed=2), 8)
    old, new = _both(det, windows)
    _assert_same(old, new)


def test_equal_after_calibration():
    torch.manual_seed(0)
    det = make_detector("window", window=8, score_last=8, device="cpu").fit(_data(1200), epochs=2)
    w = sliding_windows(_data(1200), 8)
    det.calibrate(w[:600], w[600:])
    old, new = _both(det, sliding_windows(_data(500, seed=3), 8))
    _assert_same(old, new)
    for part in old.parts:
        np.testing.assert_allclose(new.parts[part], old.parts[part], rtol=1e-4, atol=1e-6)


def test_a_dense_form_that_disagrees_is_not_used(monkeypatch):
    """The build-time probe: a form that does not reproduce the network is dropped."""
    torch.manual_seed(0)
    det = make_detector("window", window=8, device="cpu").fit(_data(600), epochs=1)
    assert det._dense is not None
    real = fastpath.DenseForm.of

    def broken(net, window, groups=1):
        form = real(net, window, groups)
        (lo, hi, m, b), *rest = form.layers[0][0]
        form.layers[0] = ([(lo, hi, m * 1.01, b), *rest], form.layers[0][1])
        return form

    monkeypatch.setattr(fastpath.DenseForm, "of", staticmethod(broken))
    det._ready()
    assert det._dense is None

    def broken_whole(net, window, groups=1):  # only the small-batch form is off
        form = real(net, window, groups)
        (lo, hi, m, b), *rest = form.whole[0][0]
        form.whole = [([(lo, hi, m * 1.01, b), *rest], form.whole[0][1]), *form.whole[1:]]
        return form

    monkeypatch.setattr(fastpath.DenseForm, "of", staticmethod(broken_whole))
    det._ready()
    assert det._dense is None
    assert np.isfinite(det.score(sliding_windows(_data(50), 8)).score).all()  # the network scores


@pytest.mark.parametrize("kind", ["mlp", "pca"])
def test_mlp_and_pca_keep_the_network(kind):
    det = make_detector(kind, device="cpu", **({"window": 8} if kind == "pca" else {})).fit(_data(400), epochs=1)
    assert det._dense is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_dense_form_on_cuda_equals_cpu():
    torch.manual_seed(0)
    det = make_detector("window", window=8, score_last=8, device="cpu").fit(_data(1200), epochs=2)
    windows = sliding_windows(_data(700, seed=1), 8)
    cpu = det.score(windows)
    det.to("cuda")
    assert det._dense is not None
    gpu = det.score(windows)
    np.testing.assert_allclose(gpu.score, cpu.score, rtol=1e-4, atol=1e-5)
