"""Kafka fixtures: one real broker for the whole test run, small factories on top. A pytest
plugin (tests/conftest.py lists it).

Set LATENTWATCH_TEST_BOOTSTRAP=host:port to use a broker you already run instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from latentwatch.pipeline.devtools.local_kafka import LocalBroker


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("LATENTWATCH_TEST_BOOTSTRAP")
    if external:
        yield external
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    info = broker.start()
    try:
        yield info.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def admin(kafka_bootstrap):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def make_topic(admin):
    """`make_topic(partitions=1, prefix="t")` -> a fresh, uniquely named topic that exists."""
    from latentwatch.pipeline.kafka.clients import create_topics

    created: list[str] = []

    def make(partitions: int = 1, prefix: str = "t", config: dict | None = None) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        create_topics(admin, {name: (partitions, config or {})}, exist_ok=False)
        created.append(name)
        return name

    yield make
    if created:
        for fut in admin.delete_topics(created).values():
            try:
                fut.result(timeout=30)
            except Exception:
                pass


@pytest.fixture
def producer(kafka_bootstrap):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5, "enable.idempotence": True})
    yield p
    p.flush(30)


@pytest.fixture
def make_consumer(kafka_bootstrap):
    """`make_consumer(topic, **config)` -> a subscribed consumer reading from the beginning."""
    from confluent_kafka import Consumer

    consumers: list = []

    def make(*topics: str, **config) -> Consumer:
        conf = {
            "bootstrap.servers": kafka_bootstrap,
            "group.id": f"test-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
        conf.update({k.replace("_", "."): v for k, v in config.items()})
        c = Consumer(conf)
        c.subscribe(list(topics))
        consumers.append(c)
        return c

    yield make
    for c in consumers:
        c.close()


def consume_all(consumer, expected: int, timeout: float = 60.0) -> list:
    """Poll until `expected` messages arrived or `timeout` seconds passed; errors fail the test."""
    import time

    out = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        for m in consumer.consume(min(10_000, expected - len(out)) or 1, timeout=0.5):
            if m.error():
                raise AssertionError(f"consumer error: {m.error()}")
            out.append(m)
    return out


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
