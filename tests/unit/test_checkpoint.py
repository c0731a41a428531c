"""Checkpoints: round trip gives identical scores; every broken checkpoint is one CheckpointError."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from latentwatch.detectors import AdaptiveThreshold, QuantileThreshold, make_detector, sliding_windows
from latentwatch.detectors.checkpoint import CheckpointError, load, save, summarise_training_data
from tests.support.detector_data import normal_data

torch.set_num_threads(2)
CONFIGS = {"mlp": {"hidden": [16, 8]}, "window": {"window": 8, "score_last": 2}, "pca": {"window": 3}}


def _save(tmp_path, kind="mlp", threshold=None):
    X = normal_data(400)
    names = ["pressure", "temp", "flow", "current", "voltage", "rpm"]
    det = make_detector(kind, device="cpu", **CONFIGS[kind]).fit(X, channels=names, epochs=2)
    thr = (threshold or QuantileThreshold(0.99)).fit(det.score(sliding_windows(X, det.window)).score)
    path = save(tmp_path / f"model-{kind}", det, thr, summarise_training_data(X, names, ["a.csv"]))
    return path, det, thr, X


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_round_trip_scores_identically(tmp_path, kind):
    path, det, thr, X = _save(tmp_path, kind)
    loaded = load(path, device="cpu")
    w = sliding_windows(normal_data(300, seed=9), det.window)
    a, b = det.score(w), loaded.detector.score(w)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.latent, b.latent)
    assert loaded.threshold.value == thr.value
    assert loaded.detector.channels == det.channels and loaded.detector.window == det.window
    assert loaded.detector.kind == kind and loaded.detector.latent_dim == det.latent_dim
    assert loaded.name == f"model-{kind}" and loaded.version


def test_metadata_describes_the_model_and_its_training_data(tmp_path):
    path, det, _, X = _save(tmp_path, "window", AdaptiveThreshold())
    meta = json.loads((path / "model.json").read_text())
    assert meta["channels"] == det.channels and meta["window"] == 8 and meta["kind"] == "window"
    assert np.allclose(meta["scaler"]["mean"], X.mean(axis=0), atol=1e-4)
    assert meta["threshold"]["kind"] == "adaptive" and meta["hyperparameters"]["score_last"] == 2
    training = meta["training"]
    assert training["rows"] == 400 and training["files"] == ["a.csv"] and training["trained_at"]
    assert training["channels"]["temp"]["max"] == pytest.approx(float(X[:, 1].max()), rel=1e-6)
    assert meta["latentwatch_version"]
    assert load(path).threshold.kind == "adaptive"


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere: no model directory.*latentwatch train"):
        load(tmp_path / "nowhere")
    path, *_ = _save(tmp_path)
    (path / "weights.pt").unlink()
    with pytest.raises(CheckpointError, match=r"weights\.pt is missing"):
        load(path)


def test_corrupt_json(tmp_path):
    path, *_ = _save(tmp_path)
    (path / "model.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"model\.json is not valid JSON"):
        load(path)


def test_corrupt_weights(tmp_path):
    path, *_ = _save(tmp_path)
    (path / "weights.pt").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(CheckpointError, match=r"weights\.pt is corrupt"):
        load(path)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_malicious_pickle_is_rejected_without_running_code(tmp_path):
    path, *_ = _save(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"encoder.0.weight": _Evil(str(marker))}, path / "weights.pt")
    with pytest.raises(CheckpointError, match=r"weights\.pt is corrupt or holds more than plain tensors"):
        load(path)
    assert not marker.exists()
    (path / "weights.pt").write_bytes(pickle.dumps(_Evil(str(marker))))  # a bare pickle, not a torch zip
    with pytest.raises(CheckpointError):
        load(path)
    assert not marker.exists()


def test_weights_that_do_not_match_the_metadata(tmp_path):
    path, *_ = _save(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    meta["hyperparameters"]["hidden"] = [32, 8]
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"does not fit the model described"):
        load(path)


@pytest.mark.parametrize("field,value,message", [
    ("kind", "transformer", "unknown model kind 'transformer'"),
    ("format_version", 99, "format version 99"),
    ("format", "something-else", "not a latentwatch model"),
    ("channels", ["only-one"], "scaler has 6 channels"),
])
def test_unknown_or_inconsistent_metadata(tmp_path, field, value, message):
    path, *_ = _save(tmp_path)
    meta = json.loads((path / "model.json").read_text())
    meta[field] = value
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=message) as info:
        load(path)
    assert str(path) in str(info.value)
