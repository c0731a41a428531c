"""Protobuf records in the Confluent wire format, read with no generated classes (for wire.py).

After the 5-byte header comes the *message-indexes* array, then the protobuf payload. The array
says which message of the schema's file the payload is: zigzag varints, first the count, then
each index (a path into nested messages: [1, 0] = the first message nested in the second
top-level one); the common case [0] (the first message) is the single byte 0.

The schema comes from the registry in one of two forms, and both are read:
- a base64 `FileDescriptorProto`: what confluent-kafka's own ProtobufSerializer registers, and what
  Apicurio 3.0.9 hands back verbatim (it ignores Confluent's `?format=serialized`, checked here);
  read with the `protobuf` package alone;
- `.proto` text (Java's serializer, the registry's UI or REST API register that; Confluent's
  registry answers with text unless asked `format=serialized`): compiled by `protoc` from the
  `grpcio-tools` wheel (the `latentwatch[protobuf]` extra), in a subprocess, once per schema id.
  The whole language is read as protoc reads it (enums, oneofs, options, nested messages, the
  well-known types' imports), not a subset; protoc's first error line is what a refusal says.
Imports of schemas that are neither well-known types nor in the text are not fetched (a refusal).

The message classes come from `google.protobuf.message_factory.GetMessageClass` over a private
descriptor pool per schema id. `record_reader` turns a parsed message into the dict wire.py maps
to a reading, touching only the fields the mapping needs.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable

PROTOC_TIMEOUT_S = 30.0
TIMESTAMP = "google.protobuf.Timestamp"


class Instant(float):
    """An event time already in epoch seconds (a google.protobuf.Timestamp): not scaled by time_unit."""


class SchemaError(Exception):
    """A schema that cannot be turned into message descriptors (one line, for a refusal)."""


def read_indexes(payload: bytes | memoryview) -> tuple[list[int], int]:
    """(message indexes, where the protobuf payload starts) from the bytes after the 5-byte header.
    Raises ValueError on a truncated or absurd array (the message is undecodable)."""
    pos = 0

    def varint() -> int:
        nonlocal pos
        value = shift = 0
        while True:
            if pos >= len(payload):
                raise ValueError("message indexes end early")
            b = payload[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return (value >> 1) ^ -(value & 1)  # zigzag
            shift += 7
            if shift > 63:
                raise ValueError("message index varint longer than 10 bytes")

    count = varint()
    if count == 0:
        return [0], pos
    if count < 0 or count > 100:
        raise ValueError(f"{count} message indexes")
    indexes = [varint() for _ in range(count)]
    if any(i < 0 for i in indexes):
        raise ValueError(f"negative message index in {indexes}")
    return indexes, pos


def encode_indexes(indexes: list[int]) -> bytes:
    """The message-indexes array as Confluent writes it ([0] -> the single byte 0)."""
    if list(indexes) == [0]:
        return b"\x00"
    out = bytearray()
    for v in (len(indexes), *indexes):
        v = (v << 1) ^ (v >> 63)
        while v & ~0x7F:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _as_descriptor_proto(text: str):
    """The FileDescriptorProto of a base64 schema; None when `text` is not one (then it is .proto text)."""
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import DecodeError

    stripped = text.strip()
    if not stripped or any(c in stripped for c in " ;{\n"):
        return None
    try:
        raw = base64.b64decode(stripped, validate=True)
        fdp = descriptor_pb2.FileDescriptorProto.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        return None
    return fdp if fdp.message_type else None


def compile_proto(text: str, name: str = "schema.proto") -> list:
    """.proto text -> its FileDescriptorProtos, imports first (protoc from grpcio-tools)."""
    from google.protobuf import descriptor_pb2

    try:
        import grpc_tools
    except ImportError:
        raise SchemaError("this schema is .proto text, which needs protoc: pip install 'latentwatch[protobuf]' "
                          "(grpcio-tools)") from None
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")  # the well-known types
    with tempfile.TemporaryDirectory(prefix="lw-proto-") as tmp:
        with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
            f.write(text)
        out = os.path.join(tmp, "set.pb")
        env = dict(os.environ, GRPC_PYTHON_DISABLE_DYNAMIC_STUBS="1")
        try:
            done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{tmp}", f"-I{include}",
                                   "--include_imports", f"--descriptor_set_out={out}", name],
                                  check=False, capture_output=True, text=True, timeout=PROTOC_TIMEOUT_S,
                                  env=env, cwd=tmp)
        except subprocess.TimeoutExpired:
            raise SchemaError(f"protoc took more than {PROTOC_TIMEOUT_S:.0f} s") from None
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["protoc failed"])[0]
            raise SchemaError(f".proto text not readable: {first.replace(tmp + os.sep, '')}")
        with open(out, "rb") as f:
            return list(descriptor_pb2.FileDescriptorSet.FromString(f.read()).file)


class ProtoSchema:
    """One registry schema: its file in a private descriptor pool, message classes by index path."""

    def __init__(self, text: str):
        try:
            from google.protobuf import descriptor_pool, timestamp_pb2
        except ImportError:
            raise SchemaError("Protobuf input needs the protobuf package: pip install 'latentwatch[protobuf]'") from None
        fdp = _as_descriptor_proto(text)
        files = [fdp] if fdp is not None else compile_proto(text)
        self.pool = descriptor_pool.DescriptorPool()
        names = {f.name for f in files}
        if timestamp_pb2.DESCRIPTOR.name not in names:  # a base64 schema names its imports only
            self.pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
        try:
            for f in files:
                self.pool.Add(f)
            self.file = self.pool.FindFileByName(files[-1].name)
        except Exception as exc:  # noqa: BLE001 - an import we do not have, a type it cannot resolve
            raise SchemaError(f"schema not usable: {type(exc).__name__}: {exc}"[:250]) from None
        if not self.file.message_types_by_name:
            raise SchemaError("the schema has no message")

    def message(self, indexes: list[int]):
        """The Descriptor an index path names; ValueError when there is none."""
        types = self.file.message_types_by_name.values()
        desc = None
        for i in indexes:
            types = list(types)
            if i >= len(types):
                raise ValueError(f"message indexes {indexes} name no message of the schema")
            desc = types[i]
            types = desc.nested_types
        return desc

    def first_message(self):
        return self.message([0])


def fields_of(desc) -> dict:
    """Field name -> FieldDescriptor of a message (what wire.py's schema checks look at)."""
    return dict(desc.fields_by_name)


def record_fields(field) -> set | None:
    """The field names of a field that holds a message (not a map, not a Timestamp); None otherwise."""
    m = getattr(field, "message_type", None)
    if m is None or m.GetOptions().map_entry or m.full_name == TIMESTAMP or _repeated(field):
        return None
    return set(m.fields_by_name)


def _repeated(field) -> bool:
    flag = getattr(field, "is_repeated", None)  # protobuf >= 6; `label` is deprecated there
    return bool(flag) if flag is not None else field.label == field.LABEL_REPEATED


def _converter(field) -> Callable:
    """A function of a field's Python value (as upb gives it) to what wire.py's mapping reads."""
    m = field.message_type
    if m is not None and m.GetOptions().map_entry:
        return dict
    if _repeated(field):
        if m is None:
            return list
        inner = _message_converter(m)
        return lambda v: [inner(x) for x in v]
    if m is not None:
        return _message_converter(m)
    if field.type == field.TYPE_STRING:
        return lambda v: v or None  # proto3: no presence; "" is "not set" (the key is used)
    return lambda v: v


def _message_converter(m) -> Callable:
    if m.full_name == TIMESTAMP:
        return lambda v: Instant(v.seconds + v.nanos * 1e-9)
    convs = [(f.name, _converter(f)) for f in m.fields]
    return lambda v: {name: conv(getattr(v, name)) for name, conv in convs}


def record_reader(desc, wanted: set[str]) -> Callable:
    """Parsed message -> {field: value} for the fields of `desc` in `wanted` (a message field not
    set: None, so a missing Timestamp is "no time", not 1970)."""
    convs = [(f.name, _converter(f), f.message_type is not None and not _repeated(f))
             for f in desc.fields if f.name in wanted]

    def read(msg) -> dict:
        return {name: (conv(getattr(msg, name)) if not has or msg.HasField(name) else None)
                for name, conv, has in convs}

    return read


def message_class(desc):
    from google.protobuf.message_factory import GetMessageClass

    return GetMessageClass(desc)
