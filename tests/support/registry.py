"""Schema Registry fixtures: one real Apicurio Registry (devtools/local_registry.py) for the test
run, bound to 127.0.0.1, global compatibility BACKWARD, stopped at the end. A pytest plugin
(tests/conftest.py lists it). Tests use subject names of their own (`subject` below): the
registry is shared by the whole session.

Set LATENTWATCH_TEST_REGISTRY=http://host:port/apis/ccompat/v7 to use a registry you already run.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from latentwatch.pipeline.decode import RegistryUnavailable
from latentwatch.pipeline.devtools.local_registry import LocalRegistry


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("LATENTWATCH_TEST_REGISTRY")
    if external:
        yield external
        return
    registry = LocalRegistry(tmp_path_factory.mktemp("registry"))
    info = registry.start()
    try:
        yield info.url
    finally:
        registry.stop()


@pytest.fixture
def own_registry(tmp_path) -> Iterator[LocalRegistry]:
    """A registry of this test's own, for tests that stop and restart it (an outage)."""
    registry = LocalRegistry(tmp_path / "registry")
    registry.start()
    try:
        yield registry
    finally:
        registry.stop()


@pytest.fixture
def sr_client(registry_url):
    from confluent_kafka.schema_registry import SchemaRegistryClient

    return SchemaRegistryClient({"url": registry_url})


@pytest.fixture
def subject() -> str:
    """A subject name no other test uses (the registry outlives each test)."""
    return f"lw-test-{uuid.uuid4().hex[:10]}-value"


class Counting:
    """A lookup that counts what it is asked, and can be switched off (an outage)."""

    def __init__(self, inner):
        self.inner, self.asked, self.down = inner, [], False

    def get(self, schema_id):
        if self.down:
            raise RegistryUnavailable("connection refused")
        self.asked.append(schema_id)
        return self.inner.get(schema_id)


@pytest.fixture
def mock_sr():
    """confluent-kafka's in-process MockSchemaRegistryClient, a fresh one per test: for unit tests
    only (it checks no compatibility)."""
    import time

    from confluent_kafka.schema_registry._sync.mock_schema_registry_client import (
        MockSchemaRegistryClient,
    )

    return MockSchemaRegistryClient({"url": f"mock://{time.monotonic_ns()}"})


def counting_decoder(client, channels, mapping=None):
    """(a Decoder of schema'd input through `client`, its Counting lookup)."""
    from latentwatch.pipeline.decode import Decoder, Mapping, SchemaInput
    from latentwatch.pipeline.kafka.registry import RegistryLookup

    lookup = Counting(RegistryLookup(client))
    return Decoder(channels, schemas=SchemaInput(lookup, mapping or Mapping())), lookup
