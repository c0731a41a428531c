"""Schema'd output (`alerts.format: avro`): the records of the alerts topic (per-reading alerts and
episode events) and of the latent topic as Avro records in the Confluent wire format (magic byte
0, the 4-byte schema id, the Avro binary), so a Kafka Connect sink or ksqlDB reads them with no code.

- The schemas are files in the repo, `pipeline/schemas/alert.avsc` and `latent.avsc`; every
  version published before is kept in `pipeline/schemas/history/` and the current one must be
  BACKWARD compatible with each (tests/integration/test_avro_output.py asks the real registry).
  A field added to a record in records.py needs a nullable field with default null here.
- One subject per topic (`<topic>-value`, Confluent's TopicNameStrategy): the alerts topic holds
  both kinds, so `AlertEvent` is one flat record, `kind` reading | episode; the other kind's
  fields are null (the JSON record omits them; read back with nulls dropped it equals the JSON).
- The schemas are registered once, at start (`register`): the registry's answer is the id
  every record carries. Encoding needs no registry after that, so an outage while running does
  not touch the output. At start, an unreachable registry is retried until startup_timeout_s;
  a schema the registry refuses (HTTP 409: incompatible with the subject's latest) is one line.
- The body is the JSON record's values: the scorer still builds the JSON (records.py) and the
  sink re-encodes it (orjson.loads + fastavro: a few us a record). Sizes: an Avro record is
  never larger than its JSON (no field names, 8-byte doubles against up to 24 characters), so
  budget.py's JSON worst case bounds it (tests/unit/test_avro_output.py).
"""

from __future__ import annotations

import io
import json
import logging
import struct
import time
from functools import cache
from pathlib import Path

from latentwatch.pipeline.config import mask_url
from latentwatch.pipeline.errors import UserError

log = logging.getLogger("latentwatch.run")

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
_HEADER = struct.Struct(">bI")


@cache
def schema_text(name: str) -> str:
    """The current schema `name` (alert | latent) as the repo keeps it."""
    return (SCHEMA_DIR / f"{name}.avsc").read_text()


def load_schema(name: str) -> dict:
    return json.loads(schema_text(name))


class AvroOutput:
    """Wire-format encoders of the alerts topic's and the latent topic's records, with the
    schema ids the registry gave them."""

    def __init__(self, alerts_id: int, latent_id: int | None):
        import fastavro  # here, not at the top: a JSON pipeline never loads it (tests/unit/test_lazy_imports.py)

        self._writer = fastavro.schemaless_writer
        self._alert = (_HEADER.pack(0, alerts_id), fastavro.parse_schema(load_schema("alert")),
                       frozenset(f["name"] for f in load_schema("alert")["fields"]))
        self._latent = (None if latent_id is None else
                        (_HEADER.pack(0, latent_id), fastavro.parse_schema(load_schema("latent")),
                         frozenset(f["name"] for f in load_schema("latent")["fields"])))

    def alert(self, record: dict) -> bytes:
        return _encode(self._alert, record, self._writer)

    def latent(self, record: dict) -> bytes:
        return _encode(self._latent, record, self._writer)


def _encode(how, record: dict, writer) -> bytes:
    header, schema, names = how
    extra = record.keys() - names
    if extra:  # fastavro would drop it silently: the schema must follow records.py
        raise ValueError(f"field {sorted(extra)[0]} of the record is not in schema {schema['name']}")
    buf = io.BytesIO()
    buf.write(header)
    writer(buf, schema, record)
    return buf.getvalue()


def register(client, alerts_topic: str, latent_topic: str | None) -> AvroOutput:
    """Registers the current schemas under `<topic>-value` (the same schema again gets its id
    back). Raises the client's errors."""
    from confluent_kafka.schema_registry import Schema

    alerts_id = client.register_schema(f"{alerts_topic}-value", Schema(schema_text("alert"), "AVRO"))
    latent_id = (client.register_schema(f"{latent_topic}-value", Schema(schema_text("latent"), "AVRO"))
                 if latent_topic else None)
    return AvroOutput(alerts_id, latent_id)


def for_settings(settings, stopping=lambda: False) -> AvroOutput | None:
    """The encoder `alerts.format` asks for (None: JSON). Registers the schemas, retrying an
    unreachable registry until `startup_timeout_s`; what the user must fix is a UserError."""
    if settings.alerts.format != "avro":
        return None
    if not settings.schema_registry.url:
        raise UserError("alerts.format avro needs a schema registry: set schema_registry.url "
                        "(LATENTWATCH_SCHEMA_REGISTRY__URL)")
    from confluent_kafka.schema_registry.error import SchemaRegistryError
    from latentwatch.pipeline.kafka.registry import RegistryLookup

    lookup = RegistryLookup.for_settings(settings.schema_registry)
    scrub = lookup._scrub  # secrets out of what is shown
    url = mask_url(settings.schema_registry.url)
    deadline, wait = time.monotonic() + settings.startup_timeout_s, 0.5
    while True:
        try:
            return register(lookup.client, settings.topics.alerts, settings.topics.latent)
        except SchemaRegistryError as exc:
            if exc.http_status_code in (409, 422, 400):
                raise UserError(scrub(f"the schema registry at {url} refuses the output schemas "
                                      f"(HTTP {exc.http_status_code}: {exc.error_message}); a subject "
                                      f"{settings.topics.alerts}-value of another shape needs its own topic")) from None
            why = f"HTTP {exc.http_status_code}: {exc.error_message}"
        except Exception as exc:  # noqa: BLE001 - refused, timed out, TLS: not there (yet)
            why = f"{type(exc).__name__}: {exc}"
        if stopping() or time.monotonic() + wait > deadline:
            raise UserError(scrub(f"the schema registry at {url} could not register the output schemas "
                                  f"within startup_timeout_s ({why})")[:400]) from None
        log.warning("%s", scrub(f"schema registry at {url} not reachable yet ({why}); retrying")[:300])
        time.sleep(wait)
        wait = min(wait * 2, settings.schema_registry.backoff_max_s)
