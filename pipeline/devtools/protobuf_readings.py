"""Readings as Protobuf records in the Confluent wire format, through a Schema Registry: what
`simulate --format protobuf` and the bench's `protobuf` workload produce, with confluent-kafka's
own `ProtobufSerializer` (it registers the schema as a base64 FileDescriptorProto under
`<topic>-value` and writes the message indexes).

No generated `_pb2` module: the message classes come from a FileDescriptorProto built here, in
code, the shape of our JSON contract (the pipeline's default input mapping reads it):

    syntax = "proto3";  package io.latentwatch;
    import "google/protobuf/timestamp.proto";
    message Reading  { string sensor_id = 1; google.protobuf.Timestamp ts = 2; map<string, double> values = 3; }
    message Readings { string sensor_id = 1; repeated Item readings = 2;
                       message Item { google.protobuf.Timestamp ts = 1; map<string, double> values = 2; } }

Needs the `protobuf` extra (`pip install 'latentwatch[protobuf]'`).
"""

from __future__ import annotations

PACKAGE = "io.latentwatch"


def _map_entry(msg, name: str):
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    entry = msg.nested_type.add(name=name)
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    return entry


def _reading_fields(msg, full_name: str, first: int) -> None:
    """ts (a Timestamp) and values (map<string, double>) from field number `first` on."""
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    msg.field.add(name="ts", number=first, type=F.TYPE_MESSAGE, type_name=".google.protobuf.Timestamp",
                  label=F.LABEL_OPTIONAL)
    _map_entry(msg, "ValuesEntry")
    msg.field.add(name="values", number=first + 1, type=F.TYPE_MESSAGE, type_name=f".{full_name}.ValuesEntry",
                  label=F.LABEL_REPEATED)


def readings_file():
    """The FileDescriptorProto of Reading and Readings (module docstring)."""
    from google.protobuf import descriptor_pb2

    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="io/latentwatch/reading.proto", package=PACKAGE, syntax="proto3",
                                             dependency=["google/protobuf/timestamp.proto"])
    one = fdp.message_type.add(name="Reading")
    one.field.add(name="sensor_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    _reading_fields(one, f"{PACKAGE}.Reading", 2)
    many = fdp.message_type.add(name="Readings")
    many.field.add(name="sensor_id", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    item = many.nested_type.add(name="Item")
    _reading_fields(item, f"{PACKAGE}.Readings.Item", 1)
    many.field.add(name="readings", number=2, type=F.TYPE_MESSAGE, type_name=f".{PACKAGE}.Readings.Item",
                   label=F.LABEL_REPEATED)
    return fdp


def message_classes(fdp=None) -> dict:
    """Full name -> message class of every top-level message of `fdp` (default `readings_file()`)."""
    from google.protobuf import descriptor_pool, timestamp_pb2
    from google.protobuf.message_factory import GetMessageClass

    fdp = fdp or readings_file()
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
    pool.Add(fdp)
    prefix = f"{fdp.package}." if fdp.package else ""
    return {f"{prefix}{m.name}": GetMessageClass(pool.FindMessageTypeByName(f"{prefix}{m.name}"))
            for m in fdp.message_type}


class ProtobufReadings:
    """`encode(sensor_id, ts, values)` -> wire-format bytes for `topic` (the schema is registered on
    first use); `batch=True`: the Readings message (simulate --batch-size > 1)."""

    def __init__(self, registry_url: str, topic: str, batch: bool = False, client=None):
        from confluent_kafka.schema_registry import SchemaRegistryClient
        from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
        from confluent_kafka.serialization import MessageField, SerializationContext

        self.client = client or SchemaRegistryClient({"url": registry_url})
        classes = message_classes()
        self.cls = classes[f"{PACKAGE}.Readings" if batch else f"{PACKAGE}.Reading"]
        self._serializer = ProtobufSerializer(self.cls, self.client, {"use.deprecated.format": False})
        self._ctx = SerializationContext(topic, MessageField.VALUE)

    def register(self) -> int:
        """Register the schema under `<topic>-value` now, as the serializer would at the first record
        (base64 FileDescriptorProto: the same text, so the same id)."""
        import base64

        from confluent_kafka.schema_registry import Schema

        text = base64.b64encode(self.cls.DESCRIPTOR.file.serialized_pb).decode()
        return self.client.register_schema(f"{self._ctx.topic}-value", Schema(text, "PROTOBUF"))

    def __call__(self, sensor_id: str, ts: list[float], values, channels: list[str]) -> bytes:
        """simulate's encoder (`values` [n, channels])."""
        rows = [dict(zip(channels, map(float, r))) for r in values]
        if len(ts) == 1 and self.cls.DESCRIPTOR.name == "Reading":
            return self.encode(sensor_id, ts[0], rows[0])
        msg = self.cls(sensor_id=sensor_id)
        for t, r in zip(ts, rows):
            item = msg.readings.add()
            item.ts.FromMilliseconds(round(t * 1000))  # to the ms, as the JSON contract
            item.values.update(r)
        return self._serializer(msg, self._ctx)

    def encode(self, sensor_id: str, ts: float, values: dict[str, float]) -> bytes:
        msg = self.cls(sensor_id=sensor_id)
        msg.ts.FromMilliseconds(round(ts * 1000))
        msg.values.update({k: float(v) for k, v in values.items()})
        return self._serializer(msg, self._ctx)
