"""Newcomer item of issue 29: `train --out DIR` with data of other channels than DIR's current
version silently made the incompatible model current (a running pipeline refuses it, a later
`score` of the old data fails on channels). Refused now unless --new-channels says it is meant."""

from __future__ import annotations

import numpy as np
from latentwatch.pipeline.cli.main import main


def _csv(path, names, seed=0):
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(300, len(names)))
    path.write_text(",".join(names) + "\n" + "".join(",".join(f"{v:.4f}" for v in r) + "\n" for r in rows))
    return str(path)


def _versions(out):
    return sorted(p.name for p in (out / "versions").iterdir())


def test_train_into_a_model_of_other_channels_is_refused_without_new_channels(tmp_path, capsys):
    out = tmp_path / "pump"
    assert main(["train", "--data", _csv(tmp_path / "a.csv", ["a", "b", "c"]), "--out", str(out), "--model", "pca"]) == 0
    before = _versions(out)
    other = _csv(tmp_path / "d.csv", ["a", "b", "d"], seed=1)
    capsys.readouterr()
    assert main(["train", "--data", other, "--out", str(out), "--model", "pca"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "['a', 'b', 'c']" in err and "--new-channels" in err
    assert _versions(out) == before  # nothing written, `current` untouched
    assert main(["train", "--data", other, "--out", str(out), "--model", "pca", "--new-channels"]) == 0
    assert len(_versions(out)) == len(before) + 1


def test_the_same_channels_in_another_column_order_train_in_the_current_order(tmp_path):
    import json

    from latentwatch.detectors import versions

    out = tmp_path / "pump"
    assert main(["train", "--data", _csv(tmp_path / "a.csv", ["a", "b", "c"]), "--out", str(out), "--model", "pca"]) == 0
    assert main(["train", "--data", _csv(tmp_path / "c.csv", ["c", "a", "b"], 2), "--out", str(out),
                 "--model", "pca"]) == 0
    meta = json.loads((versions.resolve(out) / versions.METADATA).read_text())
    assert meta["channels"] == ["a", "b", "c"]  # a running pipeline swaps it in (same names, same order)
