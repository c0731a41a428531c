"""Shadow scoring: the agreement counts and the score correlation equal an offline scoring of
the same readings with both models."""

from __future__ import annotations

import numpy as np
import pytest
from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows
from latentwatch.detectors.checkpoint import LoadedModel
from latentwatch.pipeline.history import SensorHistory
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.shadow import ShadowScorer

from tests.support.detector_data import inject, normal_data

NAMES = ["pressure", "temp", "flow", "current", "voltage", "rpm"]


def _model(seed, window, q):
    X = normal_data(2000, seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=2, window=window).fit(X, channels=NAMES)
    thr = QuantileThreshold(q).fit(det.score(sliding_windows(normal_data(1000, seed=seed + 50), window)).score)
    return LoadedModel(det, thr, {}, f"m{seed}", f"v{seed}")


def test_agreement_and_correlation_match_an_offline_score():
    current, candidate = _model(0, 1, 0.99), _model(1, 4, 0.95)
    sensors = ["a", "b", "c"]
    data = {}
    for i, s in enumerate(sensors):
        X, _ = inject(normal_data(600, seed=10 + i), "spike", seed=i)
        data[s] = X.astype(np.float32)
    metrics = PipelineMetrics()
    shadow = ShadowScorer(candidate, NAMES, metrics, window_s=1e9)
    history = SensorHistory(current.detector.window, len(NAMES))
    for start in range(0, 600, 37):  # batches of 37 readings per sensor, sensors interleaved
        parts = [data[s][start:start + 37] for s in sensors]
        values = np.concatenate(parts)
        sizes = np.cumsum([0] + [len(p) for p in parts])
        keys = [(0, s) for s in sensors]
        groups = [np.arange(sizes[i], sizes[i + 1]) for i in range(len(sensors))]
        ids = np.repeat(np.array(sensors, dtype=object), [len(p) for p in parts])
        windows, scored = history.windows(keys, groups, values)
        sc = current.detector.score(windows).score
        flag = sc > current.threshold.thresholds(sc)
        shadow.observe(keys, groups, values, scored, sc, flag, ids, now=float(start))

    expected = dict.fromkeys(("both", "current_only", "candidate_only", "neither"), 0)
    xs, ys = [], []
    for s in sensors:
        a = current.detector.score(sliding_windows(data[s], 1)).score[3:]  # the candidate's first 3: warm-up
        b = candidate.detector.score(sliding_windows(data[s], 4)).score
        fa, fb = a > current.threshold.value, b > candidate.threshold.value
        for name, m in zip(expected, (fa & fb, fa & ~fb, ~fa & fb, ~fa & ~fb)):
            expected[name] += int(m.sum())
        xs.append(a)
        ys.append(b)
    assert shadow.counts == expected and expected["current_only"] + expected["candidate_only"] > 0
    for name, n in expected.items():
        assert metrics.registry.get_sample_value("latentwatch_shadow_readings_total", {"agreement": name}) == n
    offline = np.corrcoef(np.concatenate(xs), np.concatenate(ys))[0, 1]
    assert shadow.correlation() == pytest.approx(offline, rel=1e-6)
    assert metrics.registry.get_sample_value("latentwatch_shadow_score_correlation") == pytest.approx(offline, rel=1e-6)
    assert metrics.registry.get_sample_value("latentwatch_shadow_model_info", {"name": "m1", "version": "v1"}) == 1


def test_a_shadow_with_other_channels_is_refused():
    with pytest.raises(ValueError, match="same names in the same order"):
        ShadowScorer(_model(0, 1, 0.99), list(reversed(NAMES)))
