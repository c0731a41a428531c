"""Newcomer items of issue 29: hints that point at the fix, not at a wrong one."""

from __future__ import annotations

import pytest
from latentwatch.detectors.checkpoint import CheckpointError, load
from latentwatch.detectors.csvdata import CSVError, read_csv


def test_model_pointing_at_the_versions_folder_or_a_csv_file_hints_at_the_model_directory(tmp_path):
    from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows, versions
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from tests.support.detector_data import normal_data

    X, names = normal_data(300, seed=0), ["a", "b", "c", "d", "e", "f"]
    det = make_detector("pca", device="cpu", latent_dim=2, window=1).fit(X, channels=names)
    thr = QuantileThreshold(0.99).fit(det.score(sliding_windows(X, 1)).score)
    root = tmp_path / "pump"
    versions.publish(root, lambda d, v: save(d, det, thr, summarise_training_data(X, names), version=v))
    with pytest.raises(CheckpointError) as info:
        load(root / "versions")
    assert f"--model {root} " in str(info.value) and f"train --out {root}" not in str(info.value)
    data = tmp_path / "file.csv"
    data.write_text("a,b\n1,2\n")
    with pytest.raises(CheckpointError) as info:
        load(data)
    assert "is a file" in str(info.value) and f"train --out {data}" not in str(info.value)


@pytest.mark.parametrize("header, row, hint", [
    ("when,a,b", "2026-11-21 10:00:00,1,2", "--time-column when"),
    ("a,b,site", "1,2,north", "--columns"),
])
def test_a_non_numeric_column_hints_at_time_column_or_columns(tmp_path, header, row, hint):
    path = tmp_path / "d.csv"
    path.write_text(f"{header}\n{row}\n{row}\n")
    with pytest.raises(CSVError) as info:
        read_csv(str(path))
    assert "non-numeric value" in str(info.value) and hint in str(info.value)
