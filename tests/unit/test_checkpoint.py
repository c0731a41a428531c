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

CONFIGS = {"mlp": {"hidden": [16, 8]}, "window": {"window": 8, "score_last": 2}, "pca": {"window": 3},
           "vae": {"window": 8, "score_last": 2, "latent_dim": 3, "hidden": 8, "beta": 0.5}}


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


def _calibrated(tmp_path, kind="pca"):
    from latentwatch.detectors.calibrate import fit_and_calibrate
    from latentwatch.detectors import alarms

    X = normal_data(600)
    names = ["pressure", "temp", "flow", "current", "voltage", "rpm"]
    det, thr = make_detector(kind, device="cpu", **CONFIGS[kind]), QuantileThreshold(0.99, margin=1.5)
    held = fit_and_calibrate(det, X, thr, channels=names, epochs=2, use=("reconstruction",))
    rule = alarms.calibrate(held, 0.02, lam=0.2, instant=thr.value)
    return save(tmp_path / f"cal-{kind}", det, thr, summarise_training_data(X, names), alarm=rule), det, thr


@pytest.mark.parametrize("kind", ["pca", "window", "vae"])
def test_score_parts_alarm_rule_and_fit_report_round_trip(tmp_path, kind):
    path, det, thr = _calibrated(tmp_path, kind)
    meta = json.loads((path / "model.json").read_text())
    assert meta["alarm"]["budget"] == 0.02 and meta["alarm"]["lambda"] == 0.2 and meta["alarm"]["instant"] == thr.value
    assert set(meta["score_parts"]) == {"latent_mean", "latent_precision", "scales", "use"}
    assert meta["score_parts"]["use"] == ["reconstruction"] and meta["threshold"]["margin"] == 1.5
    assert meta["training"]["fit"]["validation_windows"] == det.training_report.validation_rows > 0
    loaded = load(path, device="cpu")
    assert loaded.alarm.to_dict() == meta["alarm"]  # score and run decide with the same limits
    w = sliding_windows(normal_data(300, seed=9), det.window)
    a, b = det.score(w), loaded.detector.score(w)
    assert np.array_equal(a.score, b.score) and set(a.parts) == set(b.parts) == {"reconstruction", "latent_distance"}
    for name in a.parts:
        assert np.array_equal(a.parts[name], b.parts[name])
    assert loaded.detector.parts.use == ("reconstruction",) and loaded.threshold.value == thr.value


def test_a_checkpoint_written_before_score_parts_and_the_alarm_rule_still_loads(tmp_path):
    """Older model.json (format version 1 without `score_parts` / `alarm`, perhaps with the k-of-n
    `persistence` of before): loads, scores by reconstruction error as before, and alarms on the
    plain threshold (instant limit, no EWMA)."""
    path, det, thr, X = _save(tmp_path, "pca")
    meta = json.loads((path / "model.json").read_text())
    for added in ("alarm", "score_parts"):
        meta.pop(added, None)
    meta["persistence"] = {"k": 3, "n": 4}
    meta["training"].pop("fit", None)
    (path / "model.json").write_text(json.dumps(meta))
    loaded = load(path, device="cpu")
    assert loaded.alarm.instant == loaded.threshold.value and loaded.alarm.ewma_limit == float("inf")
    assert loaded.detector.parts is None
    w = sliding_windows(normal_data(200, seed=4), det.window)
    s = loaded.detector.score(w)
    np.testing.assert_allclose(s.score, s.channel_error.mean(axis=1), rtol=1e-6)
    assert np.array_equal(s.score, det.score(w).score) and set(s.parts) == {"reconstruction"}


def test_inconsistent_score_parts_are_a_checkpoint_error(tmp_path):
    path, _, _ = _calibrated(tmp_path, "pca")
    meta = json.loads((path / "model.json").read_text())
    meta["score_parts"]["latent_mean"] = [0.0]
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="score_parts"):
        load(path)


def test_vae_checkpoint_round_trips_its_hyperparameters_and_latent_mean(tmp_path):
    path, det, thr = _calibrated(tmp_path, "vae")
    meta = json.loads((path / "model.json").read_text())
    assert meta["kind"] == "vae" and meta["hyperparameters"]["beta"] == 0.5 and meta["hyperparameters"]["hidden"] == 8
    loaded = load(path, device="cpu").detector
    assert type(loaded).__name__ == "VariationalAutoencoder" and loaded.hparams == det.hparams
    w = sliding_windows(normal_data(200, seed=5), det.window)
    a, b = det.score(w), loaded.score(w)
    assert np.array_equal(a.latent, b.latent) and np.array_equal(a.score, b.score)
    assert np.array_equal(b.latent, loaded.score(w).latent)  # the latent mean: no sampling when scoring
    # weights hold plain tensors only: the loader's weights_only=True reads them
    assert all(isinstance(v, torch.Tensor) for v in torch.load(path / "weights.pt", weights_only=True).values())


def test_cross_fitted_calibration_is_recorded_and_round_trips(tmp_path):
    from latentwatch.detectors.calibrate import fit_and_calibrate

    X = normal_data(400)
    names = ["pressure", "temp", "flow", "current", "voltage", "rpm"]
    det, thr = make_detector("pca", device="cpu", window=8, score_last=8, variance=0.8), QuantileThreshold(0.99)
    fit_and_calibrate(det, X, thr, channels=names, calibration="cross")
    path = save(tmp_path / "cross", det, thr, summarise_training_data(X, names))
    fit = json.loads((path / "model.json").read_text())["training"]["fit"]
    assert fit["calibration"] == "cross" and fit["validation_windows"] == 393
    loaded = load(path, device="cpu")
    w = sliding_windows(normal_data(100, seed=6), 8)
    assert np.array_equal(loaded.detector.score(w).score, det.score(w).score)
    assert loaded.detector.parts.scales == det.parts.scales and loaded.threshold.value == thr.value


def test_a_checkpoint_without_the_calibration_field_still_loads(tmp_path):
    path, det, _ = _calibrated(tmp_path, "pca")
    meta = json.loads((path / "model.json").read_text())
    assert meta["training"]["fit"].pop("calibration") == "blocks"
    (path / "model.json").write_text(json.dumps(meta))
    w = sliding_windows(normal_data(100, seed=7), det.window)
    assert np.array_equal(load(path, device="cpu").detector.score(w).score, det.score(w).score)
