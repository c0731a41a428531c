"""`latentwatch train` / `score` end to end through a subprocess, plus their one-line errors.

In the system tier since issue 24 (it was unit/): 13 CLI processes, each paying the interpreter's
and PyTorch's start-up, took 36 s (pytest --durations) of the unit tier's 92 s run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.detector_data import normal_data
from tests.support.skab import SKAB, needs_skab

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def cli(*args, cwd=REPO):
    env_cmd = [sys.executable, "-m", "latentwatch.pipeline.cli", *map(str, args)]
    return subprocess.run(env_cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def write_csv(path: Path, X: np.ndarray, sep=";", labels=()) -> Path:
    names = ["pressure", "temp", "flow", "current", "voltage", "rpm"]
    with open(path, "w") as f:
        f.write(sep.join(["datetime", *names, "anomaly"]) + "\n")
        for i, row in enumerate(X):
            f.write(sep.join([f"2024-01-01 00:{i // 60 % 60:02d}:{i % 60:02d}", *(f"{v:.6g}" for v in row), "1" if i in labels else "0"]) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    train = write_csv(tmp / "train.csv", normal_data(1500))
    out = tmp / "model"
    r = cli("train", "--data", train, "--out", out, "--model", "window", "--window", "8", "--epochs", "2",
            "--device", "cpu", "--seed", "1")
    assert r.returncode == 0, r.stderr
    # two epochs cannot learn what PCA does: an explicit --model is kept all the same, with a warning
    # (the guard that swaps in PCA belongs to --model auto)
    assert "trained window model on 1500 rows x 6 channels" in r.stdout
    assert "window autoencoder ended worse than PCA on held-out data" in r.stderr and "kept as asked" in r.stderr
    assert "false-alarm budget 1.000% of normal readings, measured" in r.stdout
    from latentwatch.detectors.checkpoint import load

    ref = load(out, device="cpu").metadata["training"]["drift_reference"]  # latent drift's baseline
    assert len(ref["edges"]) == 8 and len(ref["expected"][0]) == 10 and 0 <= ref["exceedance"] < 0.05  # q0.99 x 1.5: few or none
    return tmp, out


def test_score_writes_one_row_per_input_row_in_order(trained):
    tmp, model = trained
    X = normal_data(300, seed=5)
    X[200, 2] += 20 * X[:, 2].std()
    data = write_csv(tmp / "test.csv", X, sep=",", labels={200})
    out = tmp / "scores.csv"
    r = cli("score", "--model", model, "--data", data, "--out", out, "--latent", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 300 and [int(r["row"]) for r in rows] == list(range(300))
    assert list(rows[0]) == (["row", "timestamp", "score", "threshold", "anomaly", "above", "rule", "statistic",
                              "limit", "ewma", "reconstruction", "latent_distance"] + [f"latent_{i}" for i in range(8)]
                             + ["sensor_id", "baseline"])  # a model trained per sensor: whose reading, judged how
    assert {r["sensor_id"] for r in rows} == {""} and {r["baseline"] for r in rows} == {"own"}  # the file's sensor
    assert rows[0]["timestamp"] == "2024-01-01 00:00:00" and rows[299]["timestamp"] == "2024-01-01 00:04:59"
    assert all(r["score"] == "" and r["anomaly"] == "0" and r["latent_0"] == "" for r in rows[:7])
    assert all(r["score"] != "" for r in rows[7:])
    assert rows[200]["above"] == "1" and float(rows[200]["score"]) > float(rows[200]["threshold"])
    assert float(rows[200]["reconstruction"]) > 10 * float(rows[100]["reconstruction"])  # which part fired
    # one reading far out alarms at once, on the instant limit (the k-of-n rule of before never did)
    assert rows[200]["anomaly"] == "1" and rows[200]["rule"] == "instant"
    assert float(rows[200]["statistic"]) > float(rows[200]["limit"]) == float(rows[200]["threshold"])
    assert sum(int(r["anomaly"]) for r in rows) < 30
    # the labelled file's trade-off beside the operating point
    assert "cut at 1 / 5 / 10 % false alarms" in r.stdout and "operating point" in r.stdout


def test_the_budget_is_a_setting_and_bad_ones_are_one_line(trained, tmp_path):
    tmp, _ = trained
    train = write_csv(tmp_path / "train.csv", normal_data(1500))
    r = cli("train", "--data", train, "--out", tmp_path / "m", "--model", "pca", "--false-alarm-rate", "0.05",
            "--device", "cpu")
    assert r.returncode == 0, r.stderr
    meta = json.loads(next((tmp_path / "m" / "versions").glob("*/model.json")).read_text())
    assert meta["alarm"]["budget"] == 0.05 and 0.025 <= meta["alarm"]["measured_false_alarm_rate"] <= 0.05
    assert "about 4.32e+03 falsely alarmed readings per sensor per day" in r.stdout  # 1 s sampling
    for flag, value in (("--false-alarm-rate", "5"), ("--ewma-lambda", "0")):
        bad = cli("train", "--data", train, "--out", tmp_path / "m2", flag, value)
        assert bad.returncode == 2 and flag in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("kind", ["mlp", "vae", "pca"])
def test_other_models_train_with_pot_threshold(tmp_path, kind):
    train = write_csv(tmp_path / "train.csv", normal_data(800))
    r = cli("train", "--data", train, "--data", train, "--out", tmp_path / "m", "--model", kind, "--epochs", "3",
            "--threshold", "pot", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    kept = kind  # an explicit --model is kept, even a 3-epoch autoencoder worse than PCA
    assert f"trained {kept} model on 1600 rows" in r.stdout and "instant limit pot" in r.stdout
    meta = json.loads(next((tmp_path / "m" / "versions").glob("*/model.json")).read_text())
    assert meta["kind"] == kept and meta["training"]["fit"]["calibration"] == ("cross" if kept == "pca" else "blocks")


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
