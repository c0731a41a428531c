"""dashboards/latentwatch.json: provisionable as a file (explicit datasource uid, no `${DS_...}`
inputs, `"id": null`), covers what operators need, uses only metrics the pipeline exports, and
every PromQL expression in it returns finite data from a real Prometheus scraping a served
`PipelineMetrics` that saw traffic."""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

from latentwatch.pipeline.metrics import PipelineMetrics

from tests.support.dashboard import DASHBOARD, all_panels, dashboard_exprs, load
from tests.support.prom import make_prometheus, needs_prometheus  # noqa: F401  (fixture)


def test_dashboard_is_file_provisionable():
    text = DASHBOARD.read_text()
    dash = json.loads(text)
    assert dash["id"] is None
    assert dash["uid"] and dash["title"]
    assert "__inputs" not in dash and "${DS_" not in text
    for p in all_panels(dash):
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "prometheus"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "prometheus", p["title"]
    ids = [p["id"] for p in all_panels(dash)]
    assert len(ids) == len(set(ids))


def test_panels_do_not_overlap():
    cells = {}
    for p in all_panels(load()):
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]


def test_dashboard_covers_the_operator_questions():
    exprs = "\n".join(dashboard_exprs())
    for q in (0.5, 0.95, 0.99):
        assert f"histogram_quantile({q}, sum by (le) (rate(latentwatch_end_to_end_latency_seconds_bucket" in exprs
    for needle in ("latentwatch_readings_consumed_total", "latentwatch_readings_scored_total",
                   "latentwatch_dead_letters_total", "latentwatch_alerts_total",
                   "latentwatch_reconstruction_score_bucket", "latentwatch_threshold",
                   "latentwatch_consumer_lag_messages", "latentwatch_inference_duration_seconds",
                   "latentwatch_batch_size_readings", "latentwatch_model_info", "latentwatch_device_info",
                   "latentwatch_processing_delay_seconds", "latentwatch_latent_drift_psi",
                   "latentwatch_live_exceedance_ratio", "latentwatch_model_age_seconds",
                   "latentwatch_model_reloads_total", "latentwatch_shadow_readings_total",
                   "latentwatch_shadow_score_correlation", "latentwatch_health_episode_events_total",
                   "latentwatch_sensors_muted", "latentwatch_alarms_suppressed_total",
                   "latentwatch_control_commands_total", "latentwatch_baselines_adapted_total"):
        assert needle in exprs, needle
    heatmaps = [p for p in all_panels(load()) if p["type"] == "heatmap"]
    assert heatmaps and "latentwatch_reconstruction_score_bucket" in heatmaps[0]["targets"][0]["expr"]


def test_dashboard_uses_only_exported_metrics():
    m = PipelineMetrics()
    families = list(m.registry.collect())
    exported = {s.name for fam in families for s in fam.samples}
    exported |= {fam.name for fam in families if fam.type == "gauge"}  # labelled, no series yet
    exported |= {f"{name}_info" for name in ("latentwatch_model", "latentwatch_device")}
    used = set(re.findall(r"\blatentwatch_[a-z_]+", "\n".join(dashboard_exprs())))
    assert used and used <= exported, used - exported


@needs_prometheus
def test_every_dashboard_query_returns_finite_data(make_prometheus):
    m = PipelineMetrics()
    detector = SimpleNamespace(kind="window", window=32, channels=["a", "b"], device="cpu")
    m.set_model(SimpleNamespace(name="ae", version="1", detector=detector, threshold=SimpleNamespace(value=4.0),
                                metadata={"training": {"trained_at": "2026-11-29T10:00:00+00:00"}}))
    server, thread = m.serve(0)
    try:
        prom = make_prometheus([f"127.0.0.1:{server.server_port}"])
        prom.wait_for_targets_up()

        def traffic(k: int) -> None:
            m.messages_consumed.inc(10 * k)
            m.readings_consumed.inc(10 * k)
            m.readings_scored.inc(9 * k)
            m.readings_warming_up.inc(k)
            m.dead_letters.labels(reason="not_json").inc(k)
            m.alerts.labels(severity="warning").inc(k)
            m.commits.inc(k)
            m.batches.inc(k)
            for i in range(k):
                m.e2e_latency.observe(0.01 * (i + 1))
                m.batch_seconds.observe(0.005 * (i + 1))
                m.inference_seconds.observe(0.001 * (i + 1))
                m.batch_size.observe(10 + i)
                m.score.observe(0.5 * (i + 1))
            m.threshold.set(4.0)
            m.processing_delay.set(0.3)
            m.last_batch.set_to_current_time()
            m.assigned_partitions.set(1)
            m.latent_drift_psi.set(0.08)  # NaN until the drift window holds enough readings
            m.live_exceedance.set(0.012)
            m.reference_exceedance.set(0.01)
            m.model_reloads.labels(outcome="success").inc()
            m.shadow_readings.labels(agreement="neither").inc(8 * k)  # with run --shadow
            m.shadow_readings.labels(agreement="both").inc(k)
            m.shadow_correlation.set(0.93)  # NaN without a shadow model
            m.health_episodes.labels(rule="silent", event="open").inc(k)  # issue 30
            m.alarms_suppressed.inc(k)
            m.baselines_adapted.inc(k)
            m.sensors_muted.set(2)
            m.control_command("mute")
            m.on_stats('{"topics": {"readings": {"partitions": {"0": {"fetch_state": "active", "consumer_lag": 3}}}}}')

        traffic(3)
        prom.wait_for_scrapes(1)
        traffic(5)
        prom.wait_for_scrapes(2)

        empty, not_finite = [], []
        for expr in dashboard_exprs():
            result = prom.query(expr)
            if not result:
                empty.append(expr)
            elif not all(math.isfinite(float(r["value"][1])) for r in result):
                not_finite.append((expr, result))
        assert empty == [], "no data for:\n" + "\n".join(empty)
        assert not_finite == []
        assert prom.value(dashboard_exprs()[0]) == 1  # "Pipeline up"
        # ... and the check can fail: a misspelt metric is empty, not an error
        assert prom.query("sum(rate(latentwatch_readings_scorred_total[30s]))") == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
