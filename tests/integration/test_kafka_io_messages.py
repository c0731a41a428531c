"""Unit tests of the Kafka clients' log hygiene and user-facing lines (no broker)."""

from __future__ import annotations

import logging
import time

from latentwatch.pipeline.kafka import clients, logs
from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.source import accumulate
from latentwatch.pipeline.stop import StopBudget


def _record(level: int, msg: str, *args) -> logging.LogRecord:
    return logging.LogRecord("latentwatch.librdkafka", level, __file__, 1, msg, args, None)


def test_repeat_filter_holds_back_alike_warnings_then_counts_them(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    f = logs.RepeatFilter(period=60)
    refused = "FAIL [lw-%d#consumer-3] 127.0.0.1:%d/bootstrap: Connect failed: Connection refused (after %dms)"
    assert f.filter(_record(logging.ERROR, refused, 11, 9092, 0))
    for i in range(50):  # ~20 a second from librdkafka while the broker is down
        clock[0] += 0.05
        assert not f.filter(_record(logging.ERROR, refused, 11, 9092, i))
    assert f.filter(_record(logging.ERROR, "another kind of error"))  # kinds are held back apart
    assert f.filter(_record(logging.DEBUG, refused, 11, 9092, 0))  # debug output always passes
    clock[0] += 60
    passed = _record(logging.ERROR, refused, 11, 9092, 0)
    assert f.filter(passed)
    assert passed.getMessage().endswith("(50 more like it not shown)")


def test_deleted_topic_line_names_the_topic_and_the_fix():
    s = load_settings(None, {"group_id": "plant-7"})
    line = clients.topics_gone_message(s, ["sensor-readings"])
    assert "\n" not in line
    assert line.startswith("input topic sensor-readings was deleted from Kafka at 127.0.0.1:9092")
    assert "Recreate it" in line and "--create-topics" in line and "group plant-7" in line
    line = clients.topics_gone_message(s, ["anomaly-alerts"])
    assert line.startswith("alerts topic anomaly-alerts was deleted") and "redone after a restart" in line
    assert "auto_offset_reset" not in line  # only the input topic's offsets go with it


def test_bootstrap_reachable_is_a_plain_tcp_probe():
    import socket

    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert clients.bootstrap_reachable(f"127.0.0.1:{port}")
        assert clients.bootstrap_reachable(f"127.0.0.1:1, PLAINTEXT://127.0.0.1:{port}")  # any one will do
    assert not clients.bootstrap_reachable(f"127.0.0.1:{port}")  # closed: refused at once
    assert not clients.bootstrap_reachable("host.invalid:9092")


class _TruncatingConsumer:
    """Waits like librdkafka: in whole milliseconds, truncated (a timeout under 1 ms returns at
    once). One message is there at first; nothing more arrives."""

    def __init__(self):
        self.waits: list[float] = []

    def poll(self, timeout):
        return _Msg()

    def consume(self, n, timeout):
        self.waits.append(timeout)
        time.sleep(int(timeout * 1000) / 1000)
        return []


class _Msg:
    def __len__(self):
        return 100


def test_accumulate_waits_out_its_deadline_without_spinning():
    c = _TruncatingConsumer()
    t0 = time.monotonic()
    batch = accumulate(c, 1000, 1 << 20, 0.0013, StopBudget.never())
    took = time.monotonic() - t0
    assert len(batch) == 1
    assert took < 0.05
    # consume(n, 0) for what is already there, then at most one or two waits of >= 1 ms: the
    # loop must not call consume() over and over with sub-millisecond timeouts until the deadline
    assert c.waits[0] == 0
    assert len(c.waits) <= 3, c.waits
    assert all(w >= 0.001 for w in c.waits[1:]), c.waits
