"""`evaluate skab --select defaults` is what a new user gets from plain `latentwatch train` on a
file's first 400 rows and `latentwatch score` on the rest: the in-process figure equals the CLI's
flags counted against the labels. Synthetic SKAB-shaped files (SKAB itself is GPL, never copied)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from latentwatch.detectors import evaluate
from latentwatch.pipeline.cli.main import main
from tests.support.skab import SKAB, needs_skab
from tests.support.skab_like import FOLDERS, make_file, write_skab_file


def test_defaults_figure_is_plain_train_then_score_on_the_rest(tmp_path: Path, capsys):
    root = tmp_path / "skab"
    for g, folder in enumerate(FOLDERS[:2]):
        (root / "data" / folder).mkdir(parents=True)
        X, y = make_file(10 * g + 1)
        write_skab_file(root / "data" / folder / "0.csv", X, y)
    cli = evaluate.Counts()
    for i, path in enumerate(evaluate.labelled_files(root)):
        lines = path.read_text().splitlines()
        first, rest = tmp_path / f"first-{i}.csv", tmp_path / f"rest-{i}.csv"
        first.write_text("\n".join(lines[:1 + evaluate.TRAIN_ROWS]) + "\n")
        rest.write_text("\n".join([lines[0], *lines[1 + evaluate.TRAIN_ROWS:]]) + "\n")
        assert main(["train", "--data", str(first), "--out", str(tmp_path / f"m{i}"), "--device", "cpu"]) == 0
        out = tmp_path / f"s{i}.csv"
        assert main(["score", "--model", str(tmp_path / f"m{i}"), "--data", str(rest), "--out", str(out),
                     "--device", "cpu"]) == 0
        with open(out) as f:
            flags = np.array([int(r["anomaly"]) for r in csv.DictReader(f)], dtype=bool)
        truth = np.array([float(line.split(";")[-2]) for line in lines[1 + evaluate.TRAIN_ROWS:]]) > 0
        cli.add(flags, truth)
    got = evaluate.run_defaults(root).counts
    assert got == cli and got.tp > 0
    capsys.readouterr()
    assert main(["evaluate", "skab", "--select", "defaults", "--data", str(root)]) == 0
    printed = capsys.readouterr().out
    assert "train --model auto + score, defaults" in printed and f"{got.f1:5.3f}" in printed


@needs_skab
@pytest.mark.slow
def test_skab_through_plain_train_and_score_keeps_its_figure():
    """Issue #14's defaults protocol on SKAB, with issue #21's alarm rule (measured 0.838 / FAR
    22.47 % / MAR 13.90; k-of-n before it: 0.799 / 12.36 / 26.40): a change that makes the default
    detector worse on it fails here. The rule meets its budget on each file's held-out normal
    scores; SKAB's test parts are not like them (detectors/README.md), hence the FAR."""
    r = evaluate.run_defaults(SKAB)
    assert r.files == 34 and set(r.kinds) == {"pca"}
    assert r.counts.f1 >= 0.83 and r.counts.far <= 23.0, (r.counts.f1, r.counts.far, r.counts.mar)
    assert max(r.measured) <= 0.01 and np.mean(r.measured) >= 0.005  # the 1 % budget, on held-out data
    assert r.detection["score"][2] > r.detection["score"][0]  # the trade-off is reported, and rises
