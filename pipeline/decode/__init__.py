"""Decoding: Kafka message values (JSON or binary Arrow IPC frames) into arrays of readings, or
the reason a message is dead-lettered.

| module | holds |
| --- | --- |
| `batch.py` | `DecodedBatch` (what decoding gives back), `ContractError`, `DEAD_LETTER_REASONS`, the shared limits |
| `jsonmsg.py` | the JSON contract: `JsonDecoder`, `parse_ts`, `json_schemas` |
| `frames.py` | the binary frame contract: `FrameDecoder`, `encode_frame` |
| `arrow_ipc.py` | a bounds-checked reader of Arrow IPC messages (for `frames.py`) |
| `wire.py` | schema'd input (Avro, JSON Schema, Protobuf) in the Confluent wire format: `WireDecoder`, `Mapping` |
| `protobuf.py` | Protobuf for `wire.py`: message indexes, descriptors from the registry's schema (base64 or .proto text via protoc), records |
| `decoder.py` | `Decoder`: tells frames, wire-format records and JSON apart and decodes a micro-batch of all |

Imports go one way, batch <- arrow_ipc <- frames, batch <- jsonmsg, all <- decoder; nothing here
imports the rest of the pipeline but `times.py` (tests/unit/test_layout.py checks both).
"""

from latentwatch.pipeline.decode.batch import (
    DEAD_LETTER_REASONS,
    FLOAT32_MAX,
    MAX_SENSOR_ID_BYTES,
    TS_MIN,
    ContractError,
    Decoded,
    DecodedBatch,
    check_sensor_id,
)
from latentwatch.pipeline.decode.decoder import Decoder, SchemaInput
from latentwatch.pipeline.decode.frames import FRAME_MAGIC, FrameDecoder, encode_frame
from latentwatch.pipeline.decode.jsonmsg import JsonDecoder, json_schemas, parse_ts
from latentwatch.pipeline.decode.wire import Mapping, RegistryUnavailable, SchemaNotFound, WireDecoder

__all__ = [
    "DEAD_LETTER_REASONS", "FLOAT32_MAX", "FRAME_MAGIC", "MAX_SENSOR_ID_BYTES", "TS_MIN", "ContractError", "Decoded",
    "DecodedBatch", "Decoder", "FrameDecoder", "JsonDecoder", "check_sensor_id", "encode_frame", "json_schemas",
    "parse_ts", "Mapping", "RegistryUnavailable", "SchemaInput", "SchemaNotFound", "WireDecoder",
]
