"""train --from-topic without a broker: time parsing, and why false alerts go back into the
threshold's data (leaving out every alerted reading cuts the top of the normal scores)."""

from __future__ import annotations

import numpy as np
import pytest
from latentwatch.detectors import QuantileThreshold, make_detector
from latentwatch.detectors.calibrate import expected_alert_rate, fit_and_calibrate, recalibrate
from latentwatch.pipeline.cli.detect import parse_time_arg
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.lifecycle.retrain import StreamData

CH = ["c0", "c1", "c2", "c3"]


def _normal(rng, n):
    f = rng.normal(size=(n, 2))
    return np.stack([f[:, 0], f[:, 0] + 0.1 * rng.normal(size=n), f[:, 1], f[:, 0] - f[:, 1]], 1).astype(np.float32)


def test_parse_time_arg():
    assert parse_time_arg("2026-11-20T00:00Z") == 1795132800.0
    assert parse_time_arg("1795132800") == 1795132800.0
    assert parse_time_arg("6h", now=10_000.0) == parse_time_arg("-6h", now=10_000.0) == 10_000.0 - 6 * 3600
    assert parse_time_arg("30m", now=10_000.0) == 8_200.0
    with pytest.raises(UserError, match="ISO-8601"):
        parse_time_arg("yesterday")


def test_expected_alert_rate_of_thresholds():
    assert expected_alert_rate({"kind": "quantile", "q": 0.99}) == pytest.approx(0.01)
    assert expected_alert_rate({"kind": "pot", "risk": 1e-3}) == 1e-3
    assert expected_alert_rate({"kind": "adaptive", "base": {"kind": "quantile", "q": 0.995}}) == pytest.approx(0.005)
    assert expected_alert_rate(None) == 0.0


def test_a_model_with_an_alarm_rule_alerts_at_its_budget():
    from latentwatch.detectors.calibrate import model_alert_rate

    assert model_alert_rate({"alarm": {"budget": 0.02, "ewma_limit": 1.2}, "threshold": {"kind": "pot", "risk": 0.004}}) == 0.02
    # a checkpoint from before the alarm rule (the threshold alone, no EWMA limit): its threshold's rate
    assert model_alert_rate({"alarm": {"budget": 0.01, "ewma_limit": float("inf")},
                             "threshold": {"kind": "quantile", "q": 0.99}}) == pytest.approx(0.01)
    assert model_alert_rate({"threshold": {"kind": "quantile", "q": 0.995}}) == pytest.approx(0.005)


def test_readmitting_the_false_alerts_restores_the_threshold():
    rng = np.random.default_rng(0)
    current = make_detector("pca", device="cpu", latent_dim=2).fit(_normal(rng, 5000), CH)
    cur_thr = QuantileThreshold(0.99).fit(current.score(_normal(rng, 5000)[:, None]).score)
    X = _normal(rng, 40_000)
    hit = rng.random(len(X)) < 0.03
    X[hit, 1] += rng.uniform(2, 6, hit.sum()) * rng.choice([-1, 1], hit.sum())
    alerted = current.score(X[:, None]).score > cur_thr.value
    data = StreamData(X[~alerted], full=X, kept=~alerted)

    det, thr = make_detector("pca", device="cpu", latent_dim=2), QuantileThreshold(0.99)
    held_out = fit_and_calibrate(det, data.values, thr, channels=CH)
    truth = np.quantile(det.score(_normal(rng, 100_000)[:, None]).score, 0.99)  # the new model on normal data
    assert thr.value < 0.9 * truth  # without the false alerts: the 0.99 quantile of a cut tail
    k = recalibrate(det, thr, data.full, data.kept, held_out, expected_alert_rate(cur_thr.to_dict()))
    assert 0.005 * len(held_out) < k < 0.02 * len(held_out)
    assert thr.value == pytest.approx(truth, rel=0.07)


def test_the_consumer_gets_run_s_connection_settings(monkeypatch, tmp_path):
    """TLS and SASL come from the same settings tree (config file, LATENTWATCH_* env) as `run`."""
    from latentwatch.pipeline.lifecycle import retrain
    from latentwatch.pipeline.config import load_settings

    seen = {}
    monkeypatch.setattr(retrain, "Consumer", lambda conf: seen.update(conf) or object())
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: kafka:9093\n  security_protocol: SASL_SSL\n"
                   "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: lw\n  ssl_ca_location: /etc/ca.pem\n")
    monkeypatch.setenv("LATENTWATCH_KAFKA__SASL_PASSWORD", "s3cret")
    retrain.TopicRange(load_settings(str(cfg)))
    assert seen["bootstrap.servers"] == "kafka:9093" and seen["security.protocol"] == "SASL_SSL"
    assert seen["sasl.mechanisms"] == "SCRAM-SHA-512" and seen["sasl.username"] == "lw"
    assert seen["sasl.password"] == "s3cret" and seen["ssl.ca.location"] == "/etc/ca.pem"
    assert seen["isolation.level"] == "read_committed" and not seen["enable.auto.commit"]
