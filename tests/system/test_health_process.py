"""`latentwatch run` as a real process serves /healthz and /readyz next to /metrics."""

from __future__ import annotations

import time

from tests.support.processes import stop_process
from tests.support.streams import Stream, metrics_url, start_run
from tests.support.http import http_get


_get = http_get


def test_process_is_alive_and_ready_once_assigned(kafka_bootstrap, make_topic,
                                                                          model_dir):
    s = Stream(make_topic, partitions=2)
    proc = start_run(kafka_bootstrap, s, model_dir)
    base = metrics_url(proc).removesuffix("/metrics")
    deadline = time.monotonic() + 60
    ready = _get(base + "/readyz")
    while ready[0] != 200 and time.monotonic() < deadline:
        assert ready == (503, "not ok: joining the consumer group: no assignment yet\n"), ready
        time.sleep(0.2)
        ready = _get(base + "/readyz")
    assert ready == (200, "ok: model test-mlp loaded; 2 partitions assigned\n")
    status, body = _get(base + "/healthz")
    assert status == 200 and body.startswith("ok: run loop iterated")
    assert stop_process(proc) == 0
