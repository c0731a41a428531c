"""Label-blind SKAB selection (`detectors.selection`): the choice for a held-out folder never
depends on that folder's labels, and the counts add up. Synthetic SKAB-shaped folders are made
under tmp_path (SKAB itself is GPL and never copied here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from latentwatch.detectors import evaluate, selection
from latentwatch.detectors.base import sliding_windows
from latentwatch.detectors.selection import ModelSpec, Setting, SpecScores
from latentwatch.pipeline.cli.main import main
from tests.support.detector_data import normal_data
from tests.support.skab_like import FOLDERS, make_file, write_skab_file


@pytest.fixture()
def skab_root(tmp_path: Path) -> Path:
    for g, folder in enumerate(FOLDERS):
        (tmp_path / "data" / folder).mkdir(parents=True)
        for i in range(2):
            X, y = make_file(10 * g + i)
            write_skab_file(tmp_path / "data" / folder / f"{i}.csv", X, y)
    return tmp_path


SPECS = [ModelSpec("pca", 1, 1, 0.9, "tail"), ModelSpec("pca", 4, 4, 0.9, "tail"), ModelSpec("pca", 4, 1, 0.8, "cross"),
         ModelSpec("pca", 8, 8, 0.8, "tail")]
GRID = selection.expand(SPECS, smooth=(1, 4), quantiles=(0.99, 1.0), margins=(1.0, 2.0))


def poison(root: Path, folder: str, how: str) -> None:
    """Rewrite `folder`'s labels (values untouched): inverted, all anomalous, or shuffled."""
    for path in (root / "data" / folder).glob("*.csv"):
        rows = [line.split(";") for line in path.read_text().splitlines()]
        col = rows[0].index("anomaly")
        y = np.array([float(r[col]) for r in rows[1:]])
        rng = np.random.default_rng(0)
        y = {"invert": 1 - y, "ones": np.ones_like(y), "shuffle": rng.permutation(y)}[how]
        for r, v in zip(rows[1:], y):
            r[col] = f"{v}"
        path.write_text("\n".join(";".join(r) for r in rows) + "\n")


def test_trailing_mean_is_causal():
    x = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(selection.trailing_mean(x, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(selection.trailing_mean(x, 1), x)
    np.testing.assert_allclose(selection.trailing_mean(x, 10), [1.0, 2.0, 3.0, 4.0])


def test_cross_validate_hand_checked():
    # files 0, 1 in folder a; 2 in b; 3 in c. Two settings; counts (tp, fp, fn, tn).
    table = np.array([
        [[5, 0, 0, 5], [0, 0, 5, 5]],
        [[3, 1, 1, 5], [4, 0, 0, 6]],
        [[0, 4, 4, 2], [4, 0, 0, 6]],
        [[2, 0, 2, 6], [1, 3, 3, 3]],
    ])
    folds = selection.cross_validate(table, ["a", "a", "b", "c"])
    # a: on b+c, s0 = (2,4,6,8) F1 2/7; s1 = (5,3,3,9) F1 5/8 -> s1, scored on files 0+1: (4,0,5,11)
    # b: on a+c, s0 = (10,1,3,16) F1 10/12; s1 = (5,3,8,14) F1 5/10.5 -> s0, scored on file 2: (0,4,4,2)
    # c: on a+b, s0 = (8,5,5,12) F1 8/13; s1 = (8,0,5,17) F1 8/10.5 -> s1, scored on file 3: (1,3,3,3)
    assert [(f.group, f.chosen) for f in folds] == [("a", 1), ("b", 0), ("c", 1)]
    assert [f.inner_f1 for f in folds] == pytest.approx([5 / 8, 10 / 12, 8 / 10.5])
    assert [(f.counts.tp, f.counts.fp, f.counts.fn, f.counts.tn) for f in folds] == [
        (4, 0, 5, 11), (0, 4, 4, 2), (1, 3, 3, 3)]
    result = selection.SelectionResult([], {"best F1": folds}, table, [], 0.0, 2)
    c = result.blind
    assert (c.tp, c.fp, c.fn, c.tn) == (5, 7, 12, 16)
    assert c.f1 == pytest.approx(5 / (5 + 19 / 2))
    assert c.far == pytest.approx(100 * 7 / 23) and c.mar == pytest.approx(100 * 12 / 17)


def test_far_cap_chooses_within_the_cap_on_the_other_folders():
    # two folders, one file each; s0: F1 8/10.5 but FAR 50 %; s1: F1 5/7, FAR 10 %
    table = np.array([[[8, 5, 0, 5], [5, 1, 3, 9]], [[8, 5, 0, 5], [5, 1, 3, 9]]])
    assert [f.chosen for f in selection.cross_validate(table, ["a", "b"])] == [0, 0]
    assert [f.chosen for f in selection.cross_validate(table, ["a", "b"], max_far=13.55)] == [1, 1]
    # nothing within the cap: the lowest FAR on the other folders
    assert [f.chosen for f in selection.cross_validate(table, ["a", "b"], max_far=5)] == [1, 1]


def test_cross_validate_ties_go_to_the_first_setting_and_one_folder_is_refused():
    table = np.array([[[1, 1, 1, 1], [1, 1, 1, 1]], [[1, 0, 0, 1], [1, 0, 0, 1]]])
    assert [f.chosen for f in selection.cross_validate(table, ["a", "b"])] == [0, 0]
    with pytest.raises(ValueError, match="at least two folders"):
        selection.cross_validate(table, ["a", "a"])


def test_count_table_by_hand():
    # held-out normal scores 0..4: q1.0 -> 4; test scores against it (x1, x0.5); smoothing 2
    sc = SpecScores(calib=np.arange(5.0), series=np.array([0.0, 0.0, 1.0, 5.0, 3.0, 9.0, 0.0]), first_test=2, seconds=0)
    spec = ModelSpec("pca")
    run = selection.FileRun(Path("f.csv"), "a", {spec: sc})
    truth = np.array([0, 1, 1, 0, 0], dtype=bool)  # test rows: scores 1, 5, 3, 9, 0
    settings = [Setting(spec, 1, 1.0, 1.0), Setting(spec, 1, 1.0, 0.5), Setting(spec, 2, 1.0, 1.0)]
    table = selection.count_table([run], [truth], settings)
    # x1 (thr 4): flags 0,1,0,1,0 -> tp 1 fp 1 fn 1 tn 2; x0.5 (thr 2): 0,1,1,1,0 -> tp 2 fp 1 fn 0 tn 2
    # smooth 2: calib -> 0,.5,1.5,2.5,3.5 (q1.0 3.5); test -> .5,3,4,6,4.5 -> 0,0,1,1,1 -> tp 1 fp 2 fn 1 tn 1
    assert table[0].tolist() == [[1, 1, 1, 2], [2, 1, 0, 2], [1, 2, 1, 1]]
    for i, s in enumerate(settings):  # predict() says the same alarms count_table counted
        flags = selection.predict(sc, s)
        assert [int((flags & truth).sum()), int((flags & ~truth).sum())] == table[0, i, :2].tolist()


@pytest.mark.parametrize("max_far", [None, 20.0])
def test_held_out_labels_never_change_the_choice_or_the_alarms(skab_root, max_far):
    base = selection.run_selection(skab_root, settings=GRID, max_far=max_far)
    criteria = list(base.cv)
    assert criteria[0] == selection.PRIMARY and len(criteria) == (2 if max_far is None else 3)
    for folder, how in zip(FOLDERS, ("invert", "ones", "shuffle")):
        poison(skab_root, folder, how)
        again = selection.run_selection(skab_root, settings=GRID, max_far=max_far)
        for criterion in criteria:
            assert [f.group for f in again.cv[criterion]] == list(FOLDERS)
            fold = {f.group: f for f in again.cv[criterion]}[folder]
            before = {f.group: f for f in base.cv[criterion]}[folder]
            assert again.settings[fold.chosen] == base.settings[before.chosen]
            pred, base_pred = again.predictions(again.cv[criterion]), base.predictions(base.cv[criterion])
            for path in (skab_root / "data" / folder).glob("*.csv"):
                np.testing.assert_array_equal(pred[path], base_pred[path])
            assert fold.counts != before.counts  # the poison did reach the labels, scoring only
        base = again  # the next folder's comparison starts from this state


def test_blind_counts_are_the_chosen_settings_predictions_against_the_labels(skab_root):
    result = selection.run_selection(skab_root, settings=GRID)
    total = evaluate.Counts()
    for path, flags in result.predictions().items():
        total.add(flags, selection.read_truth(path))
    assert total == result.blind
    assert result.grid_size == len(GRID) and set(result.fixed) == {
        "fixed a-priori default", "evaluate.SETTINGS pca (swept on test labels)"}


def test_swept_setting_matches_run_skab(skab_root):
    """The grid's copy of `evaluate.SETTINGS["pca"]` scores exactly as `run_skab` does."""
    result = selection.run_selection(skab_root, settings=GRID)
    assert result.counts_of(selection.SWEPT) == evaluate.run_skab(skab_root, "pca").counts


def test_cli_select_cv_prints_blind_rows_beside_the_leaderboard(skab_root, monkeypatch, capsys):
    monkeypatch.setattr(selection, "model_grid", lambda kinds: SPECS[:2])
    assert main(["evaluate", "skab", "--select", "cv", "--max-far", "13.55", "--data", str(skab_root)]) == 0
    out = capsys.readouterr().out
    for text in ("BLIND CV: best F1, FAR <= 10 % (pre-registered) on other folders", "BLIND CV: best F1 on other folders",
                 "BLIND CV: best F1, FAR <= 13.55 % on other folders", "fixed a-priori default", "NOT blind", "flag every test point",
                 "leaderboard: Conv-AE", "6 labelled files", "valve2 ", "evaluation wall time"):
        assert text in out


def test_primary_criterion_honours_the_far_cap_on_the_training_folders():
    """Random tables: each fold's primary choice is the best F1 among settings whose FAR pooled
    over the *other* folders is <= 10 %, never worse there than any other setting within the cap."""
    rng = np.random.default_rng(7)
    groups = ["a", "a", "b", "c", "c"]
    for _ in range(50):
        table = rng.integers(0, 40, size=(5, 30, 4))
        for fold in selection.cross_validate(table, groups, selection.PRIMARY_MAX_FAR):
            pooled = table[np.asarray(groups) != fold.group].sum(axis=0)
            far = 100 * pooled[:, 1] / np.maximum(pooled[:, 1] + pooled[:, 3], 1)
            f1 = selection.f1_scores(pooled)
            if np.any(far <= 10):
                assert far[fold.chosen] <= 10
                assert f1[fold.chosen] == f1[far <= 10].max()
            else:
                assert far[fold.chosen] == far.min()
            assert fold.inner_f1 == pytest.approx(f1[fold.chosen])


def test_dropped_channels_do_not_reach_the_model():
    X = normal_data(500, channels=4, seed=3)
    names = ["Volume Flow RateRMS", "Temperature", "Pressure", "Thermocouple"]
    spec = ModelSpec("pca", 4, 4, 0.9, "cross", selection.THERMAL)
    a = selection.score_file(X, spec, channels=names)
    Y = X.copy()
    Y[:, [1, 3]] = np.random.default_rng(0).normal(size=(500, 2)) * 100  # only the thermal channels change
    b = selection.score_file(Y, spec, channels=names)
    np.testing.assert_array_equal(a.series, b.series)
    np.testing.assert_array_equal(a.calib, b.calib)
    kept = selection.score_file(Y, ModelSpec("pca", 4, 4, 0.9, "cross"), channels=names)
    assert not np.array_equal(kept.series, a.series)  # without `drop` they do matter
    with pytest.raises(ValueError, match="channel names"):
        selection.score_file(X, spec)


def test_persistence_auto_counts_are_its_label_free_rule_over_the_stream(skab_root):
    """Every setting's counts in the table are its `predict` alarms against the labels; with
    persistence auto, those are the rule `persistence.choose` picks from the calibration scores."""
    from latentwatch.detectors.persistence import choose

    settings = [s for s in GRID if s.persistence == "auto"][:6]
    result = selection.run_selection(skab_root, settings=settings)
    run = result.runs[0]
    truth = selection.read_truth(run.path)
    for i, setting in enumerate(settings):
        flags = selection.predict(run.scores[setting.model], setting)
        c = evaluate.Counts()
        c.add(flags, truth)
        assert tuple(result.table[0, i]) == (c.tp, c.fp, c.fn, c.tn)
        sc = run.scores[setting.model]
        calib = selection.trailing_mean(sc.pair(setting.statistic)[0], setting.smooth)
        thr = np.quantile(calib, setting.q) * setting.margin
        above = selection.trailing_mean(sc.pair(setting.statistic)[1], setting.smooth) > thr
        rule = choose(calib, thr)
        assert np.array_equal(flags, rule.flags(np.zeros(len(above), np.int64), above)[sc.first_test:])


def test_grid_holds_both_channel_sets_and_every_smoothing():
    specs = selection.model_grid(("pca",))
    assert {s.drop for s in specs} == {(), selection.THERMAL}
    assert len(specs) == 2 * len({s for s in specs if not s.drop})
    settings = selection.expand(specs)
    assert len(settings) == len(specs) * 2 * 4 * 3 * 4 * 2
    assert {s.statistic for s in settings} == {"spe", "t2+spe"} and {s.persistence for s in settings} == {"none", "auto"}
    window_ae = selection.expand([ModelSpec("window", 8, 8)])
    assert {s.statistic for s in window_ae} == {"spe"}  # T^2 is PCA's


def test_t2_sees_moves_along_the_principal_axes_that_spe_misses():
    X = normal_data(400, channels=6, seed=5)
    det = selection.make_detector("pca", window=1, variance=0.95).fit(X)
    stats = selection.statistics(det, sliding_windows(X, 1))
    normal = stats(sliding_windows(X, 1))
    assert np.mean(normal["t2+spe"]) == pytest.approx(2.0, rel=1e-3)  # each term averages 1 on the fit rows
    axis = det.net.components[0].numpy()  # first principal axis, standard units
    sd = np.sqrt(np.mean(det.score(X).latent[:, 0] ** 2))  # the spread of normal data along it
    moved = stats(sliding_windows((X + 5 * sd * axis * det.scaler.std).astype(np.float32), 1))
    np.testing.assert_allclose(moved["spe"], normal["spe"], rtol=1e-2, atol=1e-4)  # spe: nothing happened
    assert np.mean(moved["t2+spe"]) > 4 * np.mean(normal["t2+spe"])  # t2: five standard deviations off
