"""The Schema Registry as decode/wire.py asks it: confluent-kafka's `SchemaRegistryClient`
behind the `SchemaLookup` protocol, its faults sorted into the two kinds that matter:

- the registry answered that it has no such id (HTTP 404): `SchemaNotFound` -> a dead letter;
- anything else (refused, timed out, 5xx, 401/403 after a credential change): `RegistryUnavailable`
  -> a transient fault; the run loop backs off and redoes the batch, dead-lettering nothing.

Schemas are cached by id for the process's life (ids are immutable in the registry): each id is
asked once, and a restart of the registry does not matter to ids already seen. The client's own
retries are off (`max.retries` 0): the run loop owns the backoff, and beats the health probe
while it waits.
"""

from __future__ import annotations

import logging

from latentwatch.pipeline.config import mask_url
from latentwatch.pipeline.decode.wire import RegistryUnavailable, SchemaNotFound

log = logging.getLogger("latentwatch.run")


def client_config(settings) -> dict:
    """SchemaRegistryClient's configuration from `RegistrySettings` (secrets revealed: for the client only)."""
    r = settings
    conf: dict = {"url": r.url, "timeout": r.timeout_s, "max.retries": 0}
    if r.basic_auth_user_info is not None:
        conf["basic.auth.user.info"] = r.basic_auth_user_info.get_secret_value()
    if r.bearer_token is not None:
        conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
        conf["bearer.auth.token"] = r.bearer_token.get_secret_value()
        conf["bearer.auth.logical.cluster"] = "-"  # required by the client with a static token; unused here
        conf["bearer.auth.identity.pool.id"] = "-"
    for ours, theirs in (("ssl_ca_location", "ssl.ca.location"), ("ssl_certificate_location", "ssl.certificate.location"),
                         ("ssl_key_location", "ssl.key.location")):
        if getattr(r, ours) is not None:
            conf[theirs] = getattr(r, ours)
    return conf


class RegistryLookup:
    """`SchemaLookup` over a SchemaRegistryClient (or anything with its `get_schema(id)`)."""

    def __init__(self, client, secrets: tuple[str, ...] = ()):
        self.client = client
        self._secrets = tuple(x for x in secrets if x)  # scrubbed from what is logged and shown
        self._cache: dict[int, tuple[str, str]] = {}
        self._references: dict[int, list] = {}  # schema id -> its SchemaReferences (Protobuf imports)
        self._versions: dict[tuple, object] = {}  # (subject, version) -> RegisteredSchema of a reference
        self.fetched = 0  # schemas asked of the registry (tests: once per id)

    @classmethod
    def for_settings(cls, registry_settings) -> RegistryLookup:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        conf = client_config(registry_settings)
        secrets = [conf.get("basic.auth.user.info"), conf.get("bearer.auth.token"), registry_settings.url]
        return cls(SchemaRegistryClient(conf), tuple(s for s in secrets if s and s != mask_url(s)) + tuple(
            s for s in secrets[:2] if s))

    def get(self, schema_id: int) -> tuple[str, str]:
        got = self._cache.get(schema_id)
        if got is not None:
            return got
        schema = self._ask(lambda: self.client.get_schema(schema_id))
        self.fetched += 1
        got = (schema.schema_type or "AVRO", schema.schema_str)
        self._cache[schema_id] = got
        self._references[schema_id] = list(schema.references or ())
        return got

    def imports(self, schema_id: int) -> dict[str, str]:
        """The schemas a schema (asked with `get` before) imports: its references and theirs, by
        import name: {name: schema text}. Each (subject, version) is asked once."""
        out: dict[str, str] = {}
        todo = list(self._references.get(schema_id, ()))
        while todo:
            ref = todo.pop()
            key = (ref.subject, ref.version)
            if ref.name in out:
                continue
            if key not in self._versions:
                self._versions[key] = self._ask(lambda: self.client.get_version(ref.subject, ref.version))  # noqa: B023
            schema = self._versions[key].schema
            out[ref.name] = schema.schema_str
            todo.extend(schema.references or ())
        return out

    def _ask(self, call):
        """`call()` against the registry, its faults sorted: 404 -> SchemaNotFound, anything else
        -> RegistryUnavailable (module docstring)."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        try:
            return call()
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                raise SchemaNotFound(str(exc)) from None
            raise RegistryUnavailable(self._scrub(f"the schema registry answered HTTP {exc.http_status_code}: "
                                                  f"{exc.error_message}")) from None
        except Exception as exc:  # noqa: BLE001 - connection refused, timeouts, TLS: the registry is not there
            raise RegistryUnavailable(self._scrub(f"the schema registry cannot be reached: {type(exc).__name__}: "
                                                  f"{exc}")) from None

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, mask_url(secret) if "@" in secret else "**********")
        return text[:300]


def schema_input(settings):
    """The registry lookup and field mapping of schema'd input (decode.SchemaInput); None without
    schema_registry.url. The pipeline and `train --from-topic` decode through the same."""
    from latentwatch.pipeline.decode import Mapping, SchemaInput

    if not settings.schema_registry.url:
        return None
    m = settings.input_mapping
    return SchemaInput(RegistryLookup.for_settings(settings.schema_registry),
                       Mapping(m.sensor_id, m.time, m.time_unit, m.channels, dict(m.rename)))
