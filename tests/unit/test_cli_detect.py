"""`latentwatch train` / `score` end to end through a subprocess, plus their one-line errors."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.detector_data import normal_data
from tests.support.skab import SKAB, needs_skab

REPO = Path(__file__).resolve().parents[2]


def cli(*args, cwd=REPO):
    env_cmd = [sys.executable, "-m", "latentwatch.pipeline.cli", *map(str, args)]
    return subprocess.run(env_cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def write_csv(path: Path, X: np.ndarray, sep=";") -> Path:
    names = ["pressure", "temp", "flow", "current", "voltage", "rpm"]
    with open(path, "w") as f:
        f.write(sep.join(["datetime", *names, "anomaly"]) + "\n")
        for i, row in enumerate(X):
            f.write(sep.join([f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}", *(f"{v:.6g}" for v in row), "0"]) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    train = write_csv(tmp / "train.csv", normal_data(1500))
    out = tmp / "model"
    r = cli("train", "--data", train, "--out", out, "--model", "window", "--window", "8", "--epochs", "8",
            "--device", "cpu", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "trained window model on 1500 rows x 6 channels" in r.stdout
    return tmp, out


def test_score_writes_one_row_per_input_row_in_order(trained):
    tmp, model = trained
    X = normal_data(300, seed=5)
    X[200, 2] += 20 * X[:, 2].std()
    data = write_csv(tmp / "test.csv", X, sep=",")
    out = tmp / "scores.csv"
    r = cli("score", "--model", model, "--data", data, "--out", out, "--latent", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 300 and [int(r["row"]) for r in rows] == list(range(300))
    assert list(rows[0]) == ["row", "timestamp", "score", "threshold", "anomaly"] + [f"latent_{i}" for i in range(8)]
    assert rows[0]["timestamp"] == "2024-01-01 00:00:00" and rows[299]["timestamp"] == "2024-01-01 00:04:59"
    assert all(r["score"] == "" and r["anomaly"] == "0" and r["latent_0"] == "" for r in rows[:7])
    assert all(r["score"] != "" for r in rows[7:])
    assert rows[200]["anomaly"] == "1" and float(rows[200]["score"]) > float(rows[200]["threshold"])
    assert sum(int(r["anomaly"]) for r in rows) < 30


@pytest.mark.parametrize("kind", ["mlp", "pca"])
def test_other_models_train_with_pot_threshold(tmp_path, kind):
    train = write_csv(tmp_path / "train.csv", normal_data(800))
    r = cli("train", "--data", train, "--data", train, "--out", tmp_path / "m", "--model", kind, "--epochs", "3",
            "--threshold", "pot", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert f"trained {kind} model on 1600 rows" in r.stdout and "threshold pot" in r.stdout


def test_user_errors_are_one_line(trained, tmp_path):
    _, model = trained
    bad = tmp_path / "bad.csv"
    bad.write_text("datetime;pressure;temp\n0;1;x\n")
    cases = [
        (("score", "--model", tmp_path / "nope", "--data", bad, "--out", tmp_path / "o.csv"), "no model directory"),
        (("score", "--model", model, "--data", bad, "--out", tmp_path / "o.csv"), "channels differ from the model's"),
        (("train", "--data", bad, "--out", tmp_path / "m"), "line 2: non-numeric value 'x'"),
    ]
    for args, message in cases:
        r = cli(*args)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith("latentwatch: error:") and message in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@needs_skab
def test_skab_evaluate_smoke():
    r = cli("evaluate", "skab", "--data", SKAB, "--files", "2", "--models", "pca", "--variant", "per-file")
    assert r.returncode == 0, r.stderr
    assert "latentwatch pca [per-file" in r.stdout and "leaderboard: Conv-AE" in r.stdout
    assert "2 labelled files" in r.stdout


def test_evaluate_skab_without_the_data_says_where_to_get_it(tmp_path):
    r = cli("evaluate", "skab", "--data", tmp_path / "none", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "https://github.com/waico/SKAB" in r.stderr and "--data PATH" in r.stderr
