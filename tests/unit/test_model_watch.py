"""ModelWatcher: notices a moved `current` pointer, loads and validates off the calling thread,
hands a new model over once or refuses it with one ERROR line and a metric."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows, versions
from latentwatch.detectors.checkpoint import load, save, summarise_training_data
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.lifecycle.watch import ModelWatcher

from tests.support.detector_data import normal_data

NAMES = ["pressure", "temp", "flow", "current", "voltage", "rpm"]


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _writer(seed=0, names=NAMES, window=1):
    X = normal_data(300, seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=2, window=window).fit(X, channels=names)
    thr = QuantileThreshold(0.99).fit(det.score(sliding_windows(X, window)).score)
    return lambda d, v: save(d, det, thr, summarise_training_data(X, names), name="pump", version=v)


@pytest.fixture
def setup(tmp_path):
    root = tmp_path / "pump"
    versions.publish(root, _writer(0))
    clock, metrics = Clock(), PipelineMetrics()
    current = load(root, device="cpu")
    watcher = ModelWatcher(root, current, interval_s=5, metrics=metrics, clock=clock)
    yield root, clock, metrics, watcher
    watcher.close()


def _poll(watcher, sample=None):
    """One check: start it, let the background thread finish, collect."""
    first = watcher.poll(sample)
    watcher.wait()
    return first, watcher.poll(sample)


def _reloads(metrics, outcome):
    return metrics.registry.get_sample_value("latentwatch_model_reloads_total", {"outcome": outcome})


def test_a_new_version_is_handed_over_once_after_the_interval(setup):
    root, clock, metrics, watcher = setup
    assert _poll(watcher) == (None, None)  # interval not reached: nothing checked
    v2 = versions.publish(root, _writer(1))
    assert _poll(watcher) == (None, None)
    clock.t += 5
    first, new = _poll(watcher, sample=normal_data(50, seed=3))
    assert first is None and new is not None and new.version == v2
    assert watcher.current is new and watcher.last_outcome == "success"
    assert _reloads(metrics, "success") == 1
    clock.t += 5
    assert _poll(watcher) == (None, None)  # the same version is not handed over again
    assert _reloads(metrics, "success") == 1


def test_request_check_checks_at_once_and_loading_is_off_the_calling_thread(setup):
    root, clock, metrics, watcher = setup
    threads = []
    real = watcher.loader
    watcher.loader = lambda *a, **kw: threads.append(threading.current_thread()) or real(*a, **kw)
    versions.publish(root, _writer(1))
    watcher.request_check()  # what the SIGHUP handler calls
    _, new = _poll(watcher)
    assert new is not None and threads and threading.current_thread() not in threads


def test_rollback_is_noticed_too(setup):
    root, clock, metrics, watcher = setup
    versions.publish(root, _writer(1))
    watcher.request_check()
    assert _poll(watcher)[1] is not None
    old = versions.rollback(root).version
    watcher.request_check()
    assert _poll(watcher)[1].version == old


def test_incompatible_version_is_refused_once_with_one_error_line(setup, caplog):
    root, clock, metrics, watcher = setup
    versions.publish(root, _writer(1, names=list(reversed(NAMES))))
    caplog.set_level(logging.INFO, logger="latentwatch.model")
    watcher.request_check()
    assert _poll(watcher) == (None, None)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "incompatible" in errors[0].getMessage()
    assert "same names in the same order" in errors[0].getMessage()
    assert _reloads(metrics, "incompatible") == 1 and watcher.last_outcome == "incompatible"
    assert watcher.current.version != versions.read_pointer(root).version  # the old one keeps scoring
    clock.t += 5
    assert _poll(watcher) == (None, None) and _reloads(metrics, "incompatible") == 1  # not retried
    watcher.request_check()
    _poll(watcher)
    assert _reloads(metrics, "incompatible") == 2  # SIGHUP retries


def test_corrupt_version_is_refused(setup):
    root, clock, metrics, watcher = setup
    v2 = versions.publish(root, _writer(1), make_current=False)
    weights = root / "versions" / v2 / "weights.pt"
    weights.chmod(0o644)
    weights.write_bytes(b"\x00not a torch file")
    versions.set_current(root, v2, reason="test")
    watcher.request_check()
    assert _poll(watcher) == (None, None) and _reloads(metrics, "corrupt") == 1


def test_a_version_giving_non_finite_scores_on_recent_readings_is_refused(setup):
    root, clock, metrics, watcher = setup
    versions.publish(root, _writer(1))
    watcher.request_check()
    huge = np.full((20, len(NAMES)), 3e38, dtype=np.float32)
    assert _poll(watcher, sample=lambda: huge) == (None, None)
    assert _reloads(metrics, "non_finite") == 1


def test_sample_shorter_than_the_new_window_and_no_sample_at_all(setup):
    root, clock, metrics, watcher = setup
    versions.publish(root, _writer(1, window=8))
    watcher.request_check()
    new = _poll(watcher, sample=normal_data(3, seed=1))[1]
    assert new is not None and new.detector.window == 8
    versions.publish(root, _writer(2, window=4))
    watcher.request_check()
    assert _poll(watcher, sample=None)[1].detector.window == 4  # validated on the training means


def test_a_plain_model_directory_is_watched_by_its_files(tmp_path):
    path = _writer(0)(tmp_path / "plain", "v1")
    clock = Clock()
    watcher = ModelWatcher(path, load(path), interval_s=1, clock=clock)
    try:
        clock.t += 1
        assert _poll(watcher) == (None, None)
        _writer(1)(path, "v2")
        clock.t += 1
        assert _poll(watcher)[1].version == "v2"
    finally:
        watcher.close()


def test_state_survives_a_swap_to_another_window():
    from latentwatch.pipeline.scorer import Scorer
    from latentwatch.pipeline.state import Entry, StateStore
    from tests.support.fakes import messages
    from tests.support.stub_model import stub_model

    def scorer(window):
        return Scorer(stub_model(("a", "b"), window=window), max_message_bytes=10**6, max_future_s=86400,
                      late_policy="dead-letter", critical_ratio=2.0, latent_topic=False, changelog=False)

    def reading(ts, v):
        return {"sensor_id": "s", "ts": 1_800_000_000.0 - 100 + ts, "values": v}

    store = StateStore()
    tail = np.arange(6, dtype=np.float32).reshape(3, 2)  # the last 3 readings of a W=4 model
    store.apply({(0, "s"): Entry(1_800_000_000.0 - 100 + 9, tail)})
    store.for_model(2, 2)  # a swap to W=2: no warm-up, the last reading stays
    out = scorer(2).score(messages([reading(10, [20, 21])]), store, 1_800_000_000.0)
    assert out.n_scored == 1 and store.get((0, "s")).tail.tolist() == [[4, 5]]
    assert scorer(2).score(messages([reading(9, [0, 0])]), store, 1_800_000_000.0).dead[0][1] == "late"
    store.apply({(0, "s"): Entry(1_800_000_000.0 - 100 + 9, tail)})
    store.for_model(6, 2)  # W=6: 3 readings kept, 5 needed: the third new one is scored
    out = scorer(6).score(messages([reading(10 + i, [0, 0]) for i in range(3)]), store, 1_800_000_000.0)
    assert out.n_scored == 1


def test_set_model_exports_info_threshold_and_age(setup):
    root, clock, metrics, watcher = setup
    metrics.set_model(watcher.current)
    info = metrics.registry.get_sample_value("latentwatch_model_info",
                                             {"name": "pump", "version": watcher.current.version, "kind": "pca",
                                              "window": "1", "channels": "6"})
    assert info == 1
    assert metrics.registry.get_sample_value("latentwatch_threshold") == pytest.approx(
        watcher.current.threshold.value)
    age = metrics.registry.get_sample_value("latentwatch_model_age_seconds")
    assert 0 <= age < 600


def test_lifecycle_swaps_between_batches_and_restarts_drift(tmp_path):
    from latentwatch.pipeline.lifecycle.drift import reference
    from latentwatch.pipeline.lifecycle import Lifecycle

    def writer(seed):
        X = normal_data(600, seed=seed)
        det = make_detector("pca", device="cpu", latent_dim=2).fit(X, channels=NAMES)
        scores = det.score(sliding_windows(X, 1))
        thr = QuantileThreshold(0.99).fit(scores.score)
        summary = {**summarise_training_data(X, NAMES), "drift_reference": reference(scores.latent, scores.score,
                                                                                      thr.value)}
        return lambda d, v: save(d, det, thr, summary, name="pump", version=v)

    root = tmp_path / "pump"
    versions.publish(root, writer(0))
    metrics = PipelineMetrics()
    model = load(root)
    life = Lifecycle(model, metrics, path=str(root), interval_s=3600)
    try:
        assert life.drift is not None and life.between_batches() is None
        X = normal_data(700, seed=4)
        scores = model.detector.score(sliding_windows(X, 1))
        life.scored(X, scores.latent, scores.score > model.threshold.value)
        assert life.drift.readings() == 700
        v2 = versions.publish(root, writer(1))
        life.request_check()
        assert life.between_batches() is None  # the check runs in the background
        life.watcher.wait()
        new = life.between_batches()
        assert new is not None and new.version == v2 and life.model is new
        assert life.drift.readings() == 0  # a new window against the new model's training data
        assert metrics.registry.get_sample_value("latentwatch_model_info", {
            "name": "pump", "version": v2, "kind": "pca", "window": "1", "channels": "6"}) == 1
        assert metrics.registry.get_sample_value("latentwatch_model_reloads_total", {"outcome": "success"}) == 1
    finally:
        life.close()


def test_the_run_loops_lifecycle_takes_drift_window_and_shadow_from_settings(tmp_path):
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.lifecycle.drift import reference
    from latentwatch.pipeline.lifecycle import Lifecycle

    X = normal_data(600, seed=0)
    det = make_detector("pca", device="cpu", latent_dim=2).fit(X, channels=NAMES)
    scores = det.score(sliding_windows(X, 1))
    thr = QuantileThreshold(0.99).fit(scores.score)
    save(tmp_path / "pump", det, thr, {**summarise_training_data(X, NAMES),
                                       "drift_reference": reference(scores.latent, scores.score, thr.value)})
    model = load(tmp_path / "pump")
    settings = load_settings(None, {"model.path": str(tmp_path / "pump"), "model.drift_window_s": 20})
    life = Lifecycle.for_settings(model, PipelineMetrics(), settings, shadow=load(tmp_path / "pump"))
    try:
        assert (life.drift.window_s, life.drift.bucket_s) == (20, 5)  # buckets: a quarter window, at most 10 s
        assert life.shadow is not None and life.shadow.model.name == model.name
        assert Lifecycle.for_settings(model, PipelineMetrics(), load_settings(None, {})).drift.window_s == 120
    finally:
        life.close()


def test_the_same_model_under_another_pointer_is_not_swapped(tmp_path):
    """A plain directory adopted as a version keeps its files but may get another version name."""
    path = _writer(0)(tmp_path / "pump", "not a valid/version name")
    metrics = PipelineMetrics()
    watcher = ModelWatcher(path, load(path), metrics=metrics, interval_s=3600)
    try:
        versions.adopt(path)
        watcher.request_check()
        assert _poll(watcher) == (None, None)
        assert _reloads(metrics, "success") == 0 and watcher._known.startswith("version:")
    finally:
        watcher.close()


def test_a_version_whose_state_record_cannot_fit_is_refused_like_the_other_refusals(tmp_path, caplog):
    """The run loop refuses a model whose per-sensor state record would pass the producer's
    message.max.bytes (budget.changelog_fits). That is a refusal like a channel mismatch: counted
    `incompatible`, one ERROR line, the old model's info still exported, not retried until the
    pointer moves; never counted `success` with the old model still scoring."""
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.runner import Pipeline

    root = tmp_path / "pump"
    versions.publish(root, _writer(0, window=8))  # its state record: 1,380 bytes (+ ~900 of health and control, issue 30)
    settings = load_settings(None, {"model.path": str(root), "kafka.producer": {"message.max.bytes": 3000}})
    metrics = PipelineMetrics()
    pipeline = Pipeline(settings, load(root), metrics)
    try:
        old = pipeline.model.version
        v2 = versions.publish(root, _writer(1, window=64))  # 4,068 bytes (+ ~900): over the 3,000 limit
        caplog.set_level(logging.INFO, logger="latentwatch")
        pipeline.lifecycle.request_check()
        for _ in range(2):  # what the run loop does between two batches: start the check, then collect it
            new = pipeline.lifecycle.between_batches()
            if new is not None:
                pipeline._swap(new)
            pipeline.lifecycle.watcher.wait()
        assert pipeline.model.version == old and pipeline.detector.window == 8
        assert _reloads(metrics, "success") == 0 and _reloads(metrics, "incompatible") == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1 and "refused (incompatible)" in errors[0] and "message.max.bytes" in errors[0]
        assert v2 in errors[0] and "\n" not in errors[0]
        def info(version, window):
            return metrics.registry.get_sample_value("latentwatch_model_info", {
                "name": "pump", "version": version, "kind": "pca", "window": window, "channels": "6"})
        assert info(old, "8") == 1 and not info(v2, "64")  # the model info still names the model that scores
        assert pipeline.lifecycle.model.version == old and pipeline.lifecycle.watcher.current.version == old
        pipeline.lifecycle.watcher.clock = lambda: 10**12  # the interval passed: the same version is not retried
        assert pipeline.lifecycle.between_batches() is None
        pipeline.lifecycle.watcher.wait()
        assert pipeline.lifecycle.between_batches() is None and _reloads(metrics, "incompatible") == 1
    finally:
        pipeline.lifecycle.close()


def _same_weights_writers(seed=0):
    """Two writers of one fitted detector (the same weights, as seeded training on the same data
    gives) with different thresholds: what `train --false-alarm-rate 0.2` after a default train is."""
    X = normal_data(300, seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=2, window=1).fit(X, channels=NAMES)
    scores = det.score(sliding_windows(X, 1)).score
    return [lambda d, v, q=q: save(d, det, QuantileThreshold(q).fit(scores), summarise_training_data(X, NAMES),
                                   name="pump", version=v) for q in (0.99, 0.8)]


@pytest.mark.parametrize("move", ["promote", "rollback"])
def test_a_version_with_the_same_weights_but_another_threshold_is_swapped_in(tmp_path, caplog, move):
    """Issue 29.2: equal weights_sha256 was taken for "unchanged"; a new threshold or alarm rule
    on the same weights was never swapped in, with no log line and no metric."""
    root = tmp_path / "pump"
    first, second = _same_weights_writers()
    v1 = versions.publish(root, first)
    if move == "promote":  # running v1, v2 promoted
        loaded = load(root, device="cpu")
        v2 = versions.publish(root, second)
    else:  # running v2, rolled back to v1
        v2 = versions.publish(root, second)
        loaded = load(root, device="cpu")
        versions.rollback(root)
    metrics = PipelineMetrics()
    watcher = ModelWatcher(root, loaded, metrics=metrics, interval_s=3600)
    try:
        want = v2 if move == "promote" else v1
        assert loaded.version != want
        watcher.request_check()
        caplog.set_level(logging.INFO, logger="latentwatch.model")
        _, new = _poll(watcher)
        assert new is not None and new.version == want and new.threshold.value != loaded.threshold.value
        assert new.metadata["weights_sha256"] == loaded.metadata["weights_sha256"]
        assert _reloads(metrics, "success") == 1
        assert any(want in r.getMessage() and "swapping it in" in r.getMessage() for r in caplog.records)
    finally:
        watcher.close()
