"""Readings as Avro records in the Confluent wire format, through a Schema Registry: what
`simulate --format avro` and the bench's `avro` workload produce, and what the tests use as "a
producer nobody here wrote" (confluent-kafka's own `AvroSerializer`, auto-registering under
`<topic>-value`).

`READING_V1` has the shape of our JSON contract (sensor_id, ts, values): the pipeline's default
input mapping reads it with no configuration. `ts` is Avro's `timestamp-millis`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

READING_V1 = {
    "type": "record", "name": "Reading", "namespace": "io.latentwatch",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "values", "type": {"type": "map", "values": "double"}},
    ],
}


# The batch form (a sensor's several readings in one message), as the JSON contract's `readings`.
READINGS_V1 = {
    "type": "record", "name": "Readings", "namespace": "io.latentwatch",
    "fields": [
        {"name": "sensor_id", "type": "string"},
        {"name": "readings", "type": {"type": "array", "items": {
            "type": "record", "name": "Item", "fields": READING_V1["fields"][1:]}}},
    ],
}


def reading_v2() -> dict:
    """v1 plus a field with a default: a BACKWARD-compatible evolution."""
    schema = json.loads(json.dumps(READING_V1))
    schema["fields"].append({"name": "site", "type": "string", "default": "unknown"})
    return schema


class AvroReadings:
    """`encode(sensor_id, ts, values)` -> wire-format bytes for `topic` (schema registered on first use)."""

    def __init__(self, registry_url: str, topic: str, schema: dict | None = None, client=None):
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.avro import AvroSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.client = client or SchemaRegistryClient({"url": registry_url})
        self.schema = schema or READING_V1
        self._serializer = AvroSerializer(self.client, json.dumps(self.schema))
        self._ctx = SerializationContext(topic, MessageField.VALUE)

    def register(self) -> int:
        """Register the schema under `<topic>-value` now (the serializer would at the first record)."""
        from confluent_kafka.schema_registry import Schema

        return self.client.register_schema(f"{self._ctx.topic}-value", Schema(json.dumps(self.schema), "AVRO"))

    def __call__(self, sensor_id: str, ts: list[float], values, channels: list[str]) -> bytes:
        """simulate's encoder (`values` [n, channels]): one reading as READING_V1, several as
        READINGS_V1 (then this encoder must have been made with that schema)."""
        rows = [dict(zip(channels, map(float, r))) for r in values]
        if len(ts) == 1:
            return self.encode(sensor_id, ts[0], rows[0])
        items = [{"ts": datetime.fromtimestamp(t, UTC), "values": r} for t, r in zip(ts, rows)]
        return self._serializer({"sensor_id": sensor_id, "readings": items}, self._ctx)

    def encode(self, sensor_id: str, ts: float, values: dict[str, float], **extra) -> bytes:
        record = {"sensor_id": sensor_id, "ts": datetime.fromtimestamp(ts, UTC),
                  "values": {k: float(v) for k, v in values.items()}, **extra}
        return self._serializer(record, self._ctx)
