"""Shadow scoring without a broker: readings paired by source across two models with other
windows and thresholds, agreement counted exactly, its own state (the loaded model's untouched),
a failing candidate logged once and counted, the rank correlation."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.metrics import PipelineMetrics
from latentwatch.pipeline.scorer import Scorer
from latentwatch.pipeline.lifecycle.shadow import AGREEMENTS, Shadow, spearman
from latentwatch.pipeline.state import StateStore
from tests.support.fakes import messages
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


def _primary_scorer(model) -> Scorer:
    return Scorer(model, max_message_bytes=1_000_000, max_future_s=86_400, late_policy="dead-letter",
                  critical_ratio=2.0, latent_topic=False, changelog=False, refs=True)


def _count(metrics, agreement=None, name="latentwatch_shadow_readings_total") -> float:
    return metrics.registry.get_sample_value(name, {"agreement": agreement} if agreement else None) or 0.0


def _batches(values, per_batch=100):
    """Readings of sensors A and B alternating, one a message, in batches of `per_batch`."""
    out = []
    for start in range(0, len(values), per_batch):
        payloads = [{"sensor_id": "AB"[i % 2], "ts": NOW - 10_000 + i, "values": [float(values[i])] * 3}
                    for i in range(start, min(start + per_batch, len(values)))]
        out.append(messages(payloads, first_offset=start))
    return out


def test_agreement_is_counted_per_reading_both_models_scored():
    # The stub's score is the mean squared z of the window's last reading: v**2 here, for both.
    current, candidate = stub_model(window=1, threshold=1.0), stub_model(window=3, threshold=2.0)
    values = np.random.default_rng(0).normal(size=400) * 1.5
    metrics = PipelineMetrics()
    shadow = Shadow(candidate, metrics, load_settings(None, {}))
    scorer, store = _primary_scorer(current), StateStore()
    for batch_messages in _batches(values):
        batch = scorer.score(batch_messages, store, NOW)
        store.apply(batch.updates)
        before = {k: store.get(k) for k in ((0, "A"), (0, "B"))}
        shadow.observe(batch)
        assert {k: store.get(k) for k in before} == before  # the loaded model's state is not touched
    s = values ** 2
    paired = np.arange(len(values)) >= 4  # the candidate's warm-up: each sensor's first 2 readings
    a, b = s > 1.0, s > 2.0
    want = {"both": a & b, "current_only": a & ~b, "candidate_only": ~a & b, "neither": ~a & ~b}
    for agreement in AGREEMENTS:
        assert _count(metrics, agreement) == np.count_nonzero(want[agreement] & paired), agreement
    assert _count(metrics, name="latentwatch_shadow_unpaired_readings_total") == 4
    assert _count(metrics, "both") > 0 and _count(metrics, "current_only") > 0  # a test that can fail
    assert metrics.registry.get_sample_value("latentwatch_shadow_score_correlation") == pytest.approx(1.0)
    assert len(shadow.state) == 2 and shadow.state.get((0, "A")).tail.shape == (2, 3)
    shadow.forget({0})
    assert len(shadow.state) == 0


def test_a_failing_candidate_is_logged_once_counted_and_never_raises(caplog):
    candidate = stub_model()
    candidate.detector.score = lambda windows: (_ for _ in ()).throw(RuntimeError("CUDA error: out of memory"))
    metrics = PipelineMetrics()
    shadow = Shadow(candidate, metrics, load_settings(None, {}))
    scorer, store = _primary_scorer(stub_model()), StateStore()
    with caplog.at_level(logging.ERROR, logger="latentwatch.shadow"):
        for batch_messages in _batches(np.ones(300)):
            shadow.observe(scorer.score(batch_messages, store, NOW))
    assert metrics.registry.get_sample_value("latentwatch_shadow_failures_total") == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "out of memory" in errors[0].getMessage()
    assert all(_count(metrics, a) == 0 for a in AGREEMENTS)


def test_spearman_uses_average_ranks_for_ties():
    x = np.array([1.0, 2.0, 2.0, 3.0, 4.0])
    y = np.array([10.0, 20.0, 30.0, 30.0, 50.0])
    # average ranks: x 1, 2.5, 2.5, 4, 5; y 1, 2, 3.5, 3.5, 5 -> Pearson of those
    rx, ry = np.array([1, 2.5, 2.5, 4, 5]), np.array([1, 2, 3.5, 3.5, 5])
    assert spearman(x, y) == pytest.approx(np.corrcoef(rx, ry)[0, 1])
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert np.isnan(spearman(x, np.ones(5)))


def test_without_a_shadow_the_series_exist_and_correlation_is_nan():
    metrics = PipelineMetrics()
    assert all(_count(metrics, a) == 0 for a in AGREEMENTS)
    assert np.isnan(metrics.registry.get_sample_value("latentwatch_shadow_score_correlation"))
