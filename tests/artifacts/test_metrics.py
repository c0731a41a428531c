"""The pipeline's metrics as Prometheus sees them: a real Prometheus scrapes a served
`PipelineMetrics` and stores every series the process exposes, including the pre-initialised
zero series, with the values observed."""

from __future__ import annotations

import pytest

from latentwatch.pipeline.metrics import DEAD_LETTER_REASONS, PipelineMetrics
from tests.support.prom import make_prometheus, needs_prometheus  # noqa: F401  (fixture)

pytestmark = needs_prometheus


@pytest.fixture
def served_metrics():
    m = PipelineMetrics()
    server, thread = m.serve(0)
    try:
        yield m, f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def exposed_series(m: PipelineMetrics) -> dict[tuple, float]:
    """Every sample the registry exposes: (name, sorted labels) -> value."""
    out = {}
    for family in m.registry.collect():
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_prometheus_scrapes_every_pipeline_series(served_metrics, make_prometheus):
    m, target = served_metrics
    m.model_info.info({"name": "ae-test", "version": "3", "kind": "dense"})
    m.device_info.info({"device": "cpu", "torch": "2.x"})
    m.messages_consumed.inc(12)
    m.readings_consumed.inc(11)
    m.readings_scored.inc(10)
    m.dead_letters.labels(reason="schema").inc()
    m.alerts.labels(severity="critical").inc(2)
    m.e2e_latency.observe(0.2)
    m.e2e_latency.observe(1.5)
    m.score.observe(3.0)
    m.threshold.set(4.5)
    m.batch_size.observe(10)
    m.inference_seconds.observe(0.002)
    m.on_stats('{"topics": {"readings": {"partitions": {"0": {"fetch_state": "active", '
               '"consumer_lag": 7}, "-1": {"consumer_lag": 99}}}}}')

    prom = make_prometheus([target])
    prom.wait_for_targets_up()
    prom.wait_for_scrapes(1)

    expected = exposed_series(m)
    stored = {
        (s["__name__"], tuple(sorted((k, v) for k, v in s.items() if k not in ("__name__", "job", "instance"))))
        for s in prom.series('{job="latentwatch"}')
    }
    missing = sorted(set(expected) - stored)
    assert not missing, f"series exposed but not in Prometheus: {missing}"
    assert len(expected) > 100  # histograms' buckets, the labelled pre-initialised series ...

    # values made it through, the pre-initialised series are there at 0
    assert prom.value('latentwatch_readings_scored_total') == 10
    assert prom.value('latentwatch_dead_letters_total{reason="schema"}') == 1
    for reason in DEAD_LETTER_REASONS:
        if reason != "schema":
            assert prom.value(f'latentwatch_dead_letters_total{{reason="{reason}"}}') == 0, reason
    assert prom.value('sum(latentwatch_dead_letters_total)') == 1
    assert prom.value('latentwatch_alerts_total{severity="warning"}') == 0
    assert prom.value('latentwatch_alerts_total{severity="critical"}') == 2
    for kind in ("transport", "broker", "fatal"):
        assert prom.value(f'latentwatch_kafka_errors_total{{kind="{kind}"}}') == 0
    assert prom.value('latentwatch_consumer_lag_messages{topic="readings", partition="0"}') == 7
    assert prom.query('latentwatch_consumer_lag_messages{partition="-1"}') == []
    assert prom.value('latentwatch_threshold') == 4.5
    for outcome in ("success", "corrupt", "incompatible", "non_finite"):
        assert prom.value(f'latentwatch_model_reloads_total{{outcome="{outcome}"}}') == 0
    assert prom.value('latentwatch_model_info{name="ae-test", version="3"}') == 1
    assert prom.value('latentwatch_device_info{device="cpu"}') == 1
    # the latency objectives are bucket boundaries
    assert prom.value('latentwatch_end_to_end_latency_seconds_bucket{le="0.25"}') == 1
    assert prom.value('latentwatch_end_to_end_latency_seconds_bucket{le="1.0"}') == 1
    assert prom.value('latentwatch_end_to_end_latency_seconds_bucket{le="+Inf"}') == 2
    assert prom.value('latentwatch_end_to_end_latency_seconds_count') == 2

    # a later change is seen by a later scrape (the harness really re-scrapes)
    m.readings_scored.inc(5)
    prom.wait_for_scrapes(1)
    assert prom.value('latentwatch_readings_scored_total') == 15


def test_query_reports_bad_expressions(served_metrics, make_prometheus):
    """The harness fails loudly on an invalid expression instead of returning 'no data'."""
    from tests.support.prom import PrometheusError

    _, target = served_metrics
    prom = make_prometheus([target])
    with pytest.raises(PrometheusError, match="parse"):
        prom.query("rate(latentwatch_readings_scored_total[")
    assert prom.query("latentwatch_no_such_metric") == []
