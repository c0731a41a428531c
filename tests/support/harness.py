"""Run a Pipeline in a background thread against the real broker, and read its topics back."""

from __future__ import annotations

import json
import threading
import time
import uuid

from confluent_kafka import Consumer

from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.runner import Pipeline


def settings_for(bootstrap: str, input_topic: str, **overrides):
    base = {
        "kafka.bootstrap_servers": bootstrap,
        "topics.input": input_topic,
        "topics.alerts": f"{input_topic}.alerts",
        "topics.dead_letter": f"{input_topic}.dlq",
        "group_id": f"lw-{uuid.uuid4().hex[:8]}",
        "metrics.port": 0,
        "create_topics": True,
        "batch.max_wait_ms": 20,
    }
    base.update(overrides)
    return load_settings(None, base)


class RunningPipeline:
    def __init__(self, settings, model, groups=None):
        self.pipeline = Pipeline(settings, model, groups=groups)
        self.pipeline.start()
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.rc = self.pipeline.run()

    def wait_for(self, predicate, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.pipeline.metrics):
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 30.0) -> int | None:
        self.pipeline.stop()
        self.thread.join(timeout)
        return self.rc


def counter(metrics, name: str, **labels) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def read_topic(bootstrap: str, topic: str, expected: int | None = None, timeout: float = 30.0,
               read_committed: bool = True) -> list:
    """All messages of `topic`: read until `expected` arrived or, without it, until the end.

    The alerts topic carries per-reading alerts and episode events, in an order that depends on
    how readings fell into batches: read it to the end (once its producer has stopped), never
    up to a count of alerts (a count reached with episode events cut the alerts short).

    "The end" is every partition's position at its high watermark. For a read_committed reader
    that also means no transaction is left open before it (a killed producer's transaction holds
    readers back until the broker aborts it), so nothing committed can still be on its way.
    """
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False,
                  "isolation.level": "read_committed" if read_committed else "read_uncommitted"})
    partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
    tps = [TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions]
    c.assign(tps)
    out = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out.extend(m for m in c.consume(1000, timeout=0.5) if m.error() is None)
        if expected is not None:
            if len(out) >= expected:
                break
            continue
        highs = {tp.partition: c.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        if all(tp.offset >= highs[tp.partition] for tp in c.position(tps)):
            break
    c.close()
    return out


def alerts_of(messages) -> list[dict]:
    """The per-reading alert records (kind "reading") among the alerts topic's messages."""
    return [r for r in map(json.loads, (m.value() for m in messages)) if r.get("kind") not in ("episode", "health")]


def episodes_of(messages) -> list[dict]:
    """The episode events (kind "episode") among the alerts topic's messages."""
    return [r for r in map(json.loads, (m.value() for m in messages)) if r.get("kind") == "episode"]
