"""/healthz and /readyz: the Health state the run loop reports to, and the HTTP endpoints next
to /metrics. A fake clock stands in for time (no sleeping, no timed assertions)."""

from __future__ import annotations


import pytest

from latentwatch.pipeline.health import Health
from latentwatch.pipeline.metrics import PipelineMetrics
from tests.support.http import http_get


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_loop_that_stops_iterating_is_not_alive_and_recovers_when_it_beats_again():
    clock = Clock()
    h = Health(stall_after_s=30, clock=clock)
    assert h.liveness()[0]  # just started
    clock.now += 29
    assert h.liveness()[0]
    clock.now += 2
    ok, reason = h.liveness()
    assert not ok and "stalled" in reason and "31 s" in reason and "stall_after_s" in reason
    h.beat()
    assert h.liveness()[0]


def test_idle_loop_stays_alive():
    """An idle loop (empty polls) beats as often as a busy one: idle is not a stall."""
    clock = Clock()
    h = Health(stall_after_s=5, clock=clock)
    for _ in range(100):
        clock.now += 0.1  # one empty poll
        h.beat()
    assert h.liveness()[0]


def test_not_ready_without_a_model_nor_before_the_group_answers():
    h = Health()
    ok, reason = h.readiness()
    assert not ok and reason == "model not loaded"
    h.assignment(3)  # assigned, but no model: still not ready
    assert h.readiness() == (False, "model not loaded")
    h = Health()
    h.model_loaded("pump")
    ok, reason = h.readiness()
    assert not ok and "joining the consumer group" in reason
    h.assignment(3)
    assert h.readiness() == (True, "model pump loaded; 3 partitions assigned")


def test_ready_when_the_group_has_no_partition_for_this_member():
    """More members than partitions: this one waits for work, and that is ready, not broken."""
    h = Health()
    h.model_loaded("pump")
    h.assignment(0)
    ok, reason = h.readiness()
    assert ok and "waiting for work" in reason


def test_a_rebalance_does_not_make_a_ready_member_unready_but_stopping_does():
    h = Health()
    h.model_loaded("pump")
    h.waiting_for_assignment()  # revoked before the first assignment: still joining
    assert not h.readiness()[0]
    h.assignment(2)
    h.waiting_for_assignment()
    ok, reason = h.readiness()
    assert ok and "rebalancing" in reason
    h.stopping()
    assert h.readiness() == (False, "shutting down")
    assert h.liveness()[0]  # shutting down is not dead


_get = http_get


@pytest.fixture
def served():
    clock = Clock()
    health = Health(stall_after_s=10, clock=clock)
    metrics = PipelineMetrics()
    server, _ = metrics.serve(0, "127.0.0.1", health=health)
    base = f"http://127.0.0.1:{server.server_port}"
    yield base, health, clock
    server.shutdown()
    server.server_close()


def test_endpoints_say_why_with_503_and_200(served):
    base, health, clock = served
    assert _get(base + "/healthz") == (200, "ok: run loop iterated 0.0 s ago\n")
    assert _get(base + "/readyz") == (503, "not ok: model not loaded\n")
    health.model_loaded("pump")
    health.assignment(1)
    assert _get(base + "/readyz") == (200, "ok: model pump loaded; 1 partitions assigned\n")
    clock.now += 11
    status, body = _get(base + "/healthz")
    assert status == 503 and body.startswith("not ok: run loop stalled")
    status, body = _get(base + "/metrics")  # still there, next to them
    assert status == 200 and "latentwatch_batches_total" in body


def test_metrics_alone_without_health():
    metrics = PipelineMetrics()
    server, _ = metrics.serve(0, "127.0.0.1")
    try:
        status, body = _get(f"http://127.0.0.1:{server.server_port}/metrics")
        assert status == 200 and "latentwatch_start_time_seconds" in body
    finally:
        server.shutdown()
        server.server_close()


def test_registry_outage_keeps_the_process_alive_and_ready_and_says_so():
    clock = Clock()
    h = Health(stall_after_s=30, clock=clock)
    h.model_loaded("m")
    h.assignment(1)
    h.registry(False, "connection refused")
    clock.now += 12
    ok, why = h.readiness()
    assert ok and "schema registry unreachable for 12 s" in why and "connection refused" in why
    h.registry(True, "")
    assert "registry" not in h.readiness()[1]
@pytest.mark.parametrize("with_health", [True, False])
def test_metrics_are_served_at_metrics_only_other_paths_are_404(with_health):
    """Issue 29.7: /metrics was served at any path (/, /favicon.ico, a typo in a scrape config)."""
    metrics = PipelineMetrics()
    server, _ = metrics.serve(0, "127.0.0.1", health=Health() if with_health else None)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        for path in ("/", "/metricz", "/favicon.ico", "/healthz/x"):
            status, body = _get(base + path)
            assert status == 404 and "latentwatch_" not in body, path
        assert _get(base + "/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()
