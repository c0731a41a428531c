"""A bounds-checked reader of Arrow IPC stream messages and the few flatbuffer fields the frame
decoder (decode/frames.py) needs: every read is checked against the message it belongs to, so
a truncated or corrupted frame raises ContractError("corrupt_frame"), never reads out of range.

Layout (Arrow columnar format, "Encapsulated message format"): 0xFFFFFFFF, int32 metadata size,
a flatbuffer `Message` {version, header_type, header, bodyLength, custom_metadata} padded to 8
bytes, then the body. Flatbuffers: a table starts with an int32 offset back to its vtable
(uint16 vtable size, uint16 table size, uint16 per-field offsets, 0 = absent/default); tables,
vectors and strings are reached through uint32 offsets relative to where they are stored.
"""

from __future__ import annotations

import struct

from latentwatch.pipeline.decode.batch import ContractError

MAGIC = b"\xff\xff\xff\xff"  # Arrow IPC's continuation marker, the first bytes of every frame
METADATA_VERSIONS = (3, 4)  # Arrow MetadataVersion V4 and V5 (the current one since Arrow 1.0)
SCHEMA, RECORD_BATCH = 1, 3  # MessageHeader union types


class Reader:
    """Bounds-checked little-endian reads of a flatbuffer inside `data[start:end]`."""

    __slots__ = ("data", "end", "start")

    def __init__(self, data: bytes, start: int, end: int):
        self.data, self.start, self.end = data, start, end

    def read(self, fmt: str, pos: int) -> int:
        size = struct.calcsize(fmt)
        if pos < self.start or pos + size > self.end:
            raise ContractError("corrupt_frame", "flatbuffer offset outside the message")
        return struct.unpack_from(fmt, self.data, pos)[0]

    def table(self, pos: int) -> tuple[int, int, int]:
        """(table position, vtable position, vtable size) of the table at `pos`."""
        vt = pos - self.read("<i", pos)
        vt_size = self.read("<H", vt)
        if vt_size < 4 or vt_size % 2:
            raise ContractError("corrupt_frame", "bad flatbuffer vtable")
        self.read("<H", vt + vt_size - 2)  # the whole vtable is inside
        return pos, vt, vt_size

    def field(self, tab: tuple[int, int, int], i: int) -> int:
        """Position of field i of the table, 0 when absent."""
        pos, vt, vt_size = tab
        slot = 4 + 2 * i
        if slot >= vt_size:
            return 0
        off = self.read("<H", vt + slot)
        return pos + off if off else 0

    def ref(self, at: int) -> int:
        """Follow a uoffset (to a table, vector or string)."""
        return at + self.read("<I", at)

    def vector(self, at: int, item: int) -> tuple[int, int]:
        """(position of the first element, count) of the vector referenced at `at`."""
        v = self.ref(at)
        n = self.read("<I", v)
        if v + 4 + n * item > self.end:
            raise ContractError("corrupt_frame", "flatbuffer vector runs past the message")
        return v + 4, n


def read_message(data: bytes, pos: int) -> tuple[Reader, tuple, int, int, int]:
    """The encapsulated IPC message at `pos`: (reader, Message table, header type, header
    position, body length). The body is not checked (it may lie past `data`)."""
    if data[pos:pos + 4] != MAGIC:
        raise ContractError("corrupt_frame", f"no Arrow IPC continuation marker at byte {pos}")
    if pos + 8 > len(data):
        raise ContractError("corrupt_frame", "frame truncated in a message length")
    (size,) = struct.unpack_from("<i", data, pos + 4)
    start, end = pos + 8, pos + 8 + size
    if size <= 0 or end > len(data):
        raise ContractError("corrupt_frame", "frame truncated (or a bad message length)")
    b = Reader(data, start, end)
    msg = b.table(b.ref(start))
    version_at = b.field(msg, 0)
    version = b.read("<h", version_at) if version_at else 0
    if version not in METADATA_VERSIONS:
        raise ContractError("unsupported_version", f"Arrow metadata version {version + 1} (V4 or V5 expected)")
    type_at, header_at, body_at = b.field(msg, 1), b.field(msg, 2), b.field(msg, 3)
    header_type = b.read("<B", type_at) if type_at else 0
    if not header_at:
        raise ContractError("corrupt_frame", "IPC message without a header")
    body_len = b.read("<q", body_at) if body_at else 0
    if body_len < 0:
        raise ContractError("corrupt_frame", "negative body length")
    return b, msg, header_type, b.ref(header_at), body_len


def legacy_stream(value: bytes) -> bool:
    """An Arrow IPC stream in the pre-0.15 format: an int32 metadata length (padded to 8 bytes)
    and no continuation marker. Only asked of a message JSON could not read."""
    if len(value) < 16:
        return False
    size = int.from_bytes(value[:4], "little", signed=True)
    if size <= 0 or size + 4 > len(value) or (size + 4) % 8:
        return False
    import pyarrow as pa

    try:
        pa.ipc.open_stream(value).schema  # noqa: B018 - reading it is the check
    except Exception:  # noqa: BLE001 - untrusted bytes
        return False
    return True
