"""Versioned model directories: immutable versions, an atomic `current` pointer, `models` CLI."""

from __future__ import annotations

import shutil
import threading

import pytest
from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows, versions
from latentwatch.detectors.checkpoint import CheckpointError, load, save, summarise_training_data
from latentwatch.pipeline.cli.main import main

from tests.support.detector_data import normal_data

NAMES = ["pressure", "temp", "flow", "current", "voltage", "rpm"]


def _model(seed=0, latent=2):
    X = normal_data(300, seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=latent).fit(X, channels=NAMES)
    thr = QuantileThreshold(0.99).fit(det.score(sliding_windows(X, 1)).score)
    return det, thr, summarise_training_data(X, NAMES)


def _publish(root, seed=0, **kw):
    det, thr, summary = _model(seed)
    return versions.publish(root, lambda d, v: save(d, det, thr, summary, name="pump", version=v), **kw)


def test_publish_writes_an_immutable_version_and_points_current_at_it(tmp_path):
    root = tmp_path / "pump"
    v1 = _publish(root)
    v2 = _publish(root, seed=1)
    assert versions.list_versions(root) == sorted([v1, v2]) and v1 != v2
    assert versions.read_pointer(root).version == v2 and versions.read_pointer(root).previous == (v1,)
    m = load(root, device="cpu")
    assert m.version == v2 and m.name == "pump"
    assert load(root / "versions" / v1).version == v1  # a version directory loads directly too
    files = list((root / "versions" / v2).iterdir())
    assert {f.name for f in files} == {"weights.pt", "model.json"}
    assert all(not (f.stat().st_mode & 0o222) for f in files)  # read-only
    assert not [p for p in (root / "versions").iterdir() if p.name.startswith(".")]


def test_no_promote_leaves_current_alone(tmp_path):
    v1 = _publish(tmp_path / "m")
    v2 = _publish(tmp_path / "m", seed=1, make_current=False)
    assert versions.read_pointer(tmp_path / "m").version == v1 and v2 in versions.list_versions(tmp_path / "m")


def test_a_failed_write_leaves_no_version_behind(tmp_path):
    root = tmp_path / "m"
    v1 = _publish(root)

    def broken(d, v):
        (d / "model.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        versions.publish(root, broken)
    assert versions.list_versions(root) == [v1] and [p.name for p in (root / "versions").iterdir()] == [v1]
    assert load(root).version == v1


def test_plain_model_directory_still_loads_and_is_adopted_by_the_next_train(tmp_path):
    det, thr, summary = _model()
    plain = save(tmp_path / "old", det, thr, summary, version="20250101T000000Z")
    assert load(plain).version == "20250101T000000Z"
    v2 = _publish(plain, seed=1)
    assert versions.list_versions(plain) == ["20250101T000000Z", v2]
    assert versions.read_pointer(plain).previous == ("20250101T000000Z",)
    assert not (plain / "weights.pt").exists() and load(plain).version == v2


def test_a_weights_file_from_another_save_is_refused(tmp_path):
    """The older `save` replaced weights.pt and model.json one after the other: a reader between
    the two renames got new weights with old metadata, which loads silently when shapes agree."""
    a = save(tmp_path / "a", *_model(0))
    b = save(tmp_path / "b", *_model(1))
    shutil.copy(b / "weights.pt", a / "weights.pt")
    with pytest.raises(CheckpointError, match="not the one model.json was saved with"):
        load(a)


def test_readers_never_see_half_a_model_while_versions_are_published(tmp_path):
    root = tmp_path / "m"
    _publish(root)
    expected = {}
    seen, failures, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                m = load(root, device="cpu")
                seen.append((m.version, float(m.threshold.value)))
            except Exception as exc:  # noqa: BLE001
                failures.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for seed in range(1, 6):
            det, thr, summary = _model(seed)
            v = versions.publish(root, lambda d, v, m=(det, thr, summary): save(d, *m, version=v))
            expected[v] = float(thr.value)
    finally:
        stop.set()
        t.join()
    assert not failures
    assert all(expected.get(v, thr) == thr for v, thr in seen)  # metadata of the version it names


def test_rollback_walks_back_and_promote_moves_forward(tmp_path):
    root = tmp_path / "m"
    vs = [_publish(root, seed=s) for s in range(3)]
    assert versions.rollback(root).version == vs[1]
    assert versions.rollback(root).version == vs[0]
    with pytest.raises(versions.VersionError, match="no earlier version"):
        versions.rollback(root)
    assert versions.set_current(root, vs[2], reason="promote").previous[0] == vs[0]
    with pytest.raises(versions.VersionError, match="no version 'nope'"):
        versions.set_current(root, "nope", reason="promote")


def test_broken_pointer_is_one_clear_error(tmp_path):
    root = tmp_path / "m"
    _publish(root)
    (root / "current").write_text('{"version": "19990101T000000Z"}')
    with pytest.raises(CheckpointError, match="points at version 19990101T000000Z"):
        load(root)
    (root / "current").write_text("garbage")
    with pytest.raises(CheckpointError, match="not a valid pointer"):
        load(root)


def test_models_cli(tmp_path, capsys):
    root = tmp_path / "m"
    v1, v2 = _publish(root), _publish(root, seed=1)
    assert main(["models", "list", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["VERSION", "KIND"] and out[-1].startswith("*") and v2 in out[-1]
    assert main(["models", "show", str(root)]) == 0
    assert f"current:   {v2}" in capsys.readouterr().out
    assert main(["models", "rollback", str(root)]) == 0
    assert versions.read_pointer(root).version == v1
    assert main(["models", "promote", str(root), v2]) == 0 and load(root).version == v2
    assert main(["models", "show", str(root), v1, "--json"]) == 0
    capsys.readouterr()
    # a corrupt version is not promoted
    bad = root / "versions" / v1 / "weights.pt"
    bad.chmod(0o644)
    bad.write_bytes(b"\x00garbage")
    assert main(["models", "promote", str(root), v1]) == 2
    assert "not promoted" in capsys.readouterr().err and load(root).version == v2
    assert main(["models", "list", str(tmp_path / "nothing")]) == 2
    assert "not a versioned model directory" in capsys.readouterr().err
