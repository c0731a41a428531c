"""/healthz and /readyz of a real run loop on the real broker: ready once the model is loaded
and partitions are assigned; not alive while the loop is stuck in a call that does not return."""

from __future__ import annotations

import json
import threading
import time

from tests.support.harness import RunningPipeline, settings_for
from tests.support.stub_model import stub_model
from tests.support.http import http_get

CH = ["a", "b", "c"]


_get = http_get


def _wait_status(url: str, status: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    got = (0, "")
    while time.monotonic() < deadline:
        got = _get(url)
        if got[0] == status:
            return got[1]
        time.sleep(0.1)
    raise AssertionError(f"{url} stayed {got}, wanted {status}")


def test_stalled_loop_fails_healthz_until_it_moves_again(kafka_bootstrap, make_topic, producer):
    topic = make_topic(partitions=1)
    model = stub_model(CH)
    gate = threading.Event()
    score = model.detector.score

    def stuck_score(windows):  # the warm-up call passes; the first batch hangs until the gate opens
        if model.detector.calls >= 1:
            gate.wait(120)
        return score(windows)

    model.detector.score = stuck_score
    settings = settings_for(kafka_bootstrap, topic, **{"health.stall_after_s": 1.0})
    run = RunningPipeline(settings, model)
    try:
        base = f"http://127.0.0.1:{run.pipeline.metrics_server.server_port}"
        assert "1 partitions assigned" in _wait_status(base + "/readyz", 200)
        assert _get(base + "/healthz")[0] == 200  # idle, nothing to do: alive
        producer.produce(topic, json.dumps({"sensor_id": "s1", "ts": time.time(),
                                            "values": {c: 0.0 for c in CH}}).encode(), key=b"s1")
        producer.flush(10)
        assert "run loop stalled" in _wait_status(base + "/healthz", 503)
        assert _get(base + "/readyz")[0] == 200  # stalled is a liveness matter, not readiness
        gate.set()
        _wait_status(base + "/healthz", 200)
    finally:
        gate.set()
        assert run.stop() == 0
