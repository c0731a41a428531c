"""Bad binary frames for the live pipeline fuzz (tests/integration/test_fuzz.py): one per kind,
drawn from a seeded `random.Random`, so a corpus is reproducible."""

from __future__ import annotations

import random
import struct

import numpy as np
import pyarrow as pa

from latentwatch.pipeline.decode import encode_frame

FRAME_KINDS = ("frame_valid", "frame_truncated", "frame_flipped", "frame_oversize", "frame_wrong_type",
               "frame_nan", "frame_unsorted", "frame_channels", "frame_version", "frame_word")


def _arrow(columns: dict, metadata: dict) -> bytes:
    table = pa.table(columns)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema.with_metadata(metadata)) as w:
        w.write_table(table.replace_schema_metadata(metadata))
    return sink.getvalue().to_pybytes()


def fuzzed_frame(kind: str, rng: random.Random, sensor: str, ts: float, channels: list[str],
                 max_bytes: int) -> bytes:
    """A frame of `kind` for a model with `channels`; only "frame_valid" is in contract (and a
    "frame_flipped" or "frame_word" one may happen to be: the caller asks the decoder)."""
    k = rng.randrange(1, 20)
    times = ts + np.arange(k) * 0.001
    values = np.array([[rng.gauss(0, 1) for _ in channels] for _ in range(k)], dtype=np.float32)
    good = encode_frame(times, values, channels, sensor_id=sensor)
    if kind == "frame_valid":
        return good
    if kind == "frame_truncated":
        return good[:rng.randrange(4, len(good) - 8)]
    if kind == "frame_flipped":
        b = bytearray(good)
        for _ in range(rng.randrange(1, 4)):
            b[rng.randrange(4, len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "frame_word":
        b = bytearray(good)
        fmt, v = rng.choice([("<i", -1), ("<i", 2**31 - 1), ("<q", 2**62), ("<q", -1), ("<H", 0xFFFF)])
        struct.pack_into(fmt, b, rng.randrange(4, len(b) - 8), v)
        return bytes(b)
    if kind == "frame_oversize":
        n = max_bytes // (4 * len(channels) + 8) + rng.randrange(1, 500)
        return encode_frame(ts + np.arange(n) * 1e-4, np.zeros((n, len(channels))), channels, sensor_id=sensor)
    meta = {"sensor_id": sensor}
    cols = {"ts": pa.array(times), **{c: pa.array(values[:, j]) for j, c in enumerate(channels)}}
    if kind == "frame_wrong_type":
        c = rng.choice(channels)
        cols[c] = rng.choice([pa.array([str(x) for x in range(k)]), pa.array(np.arange(k, dtype=np.int32)),
                              pa.array([None] * k, pa.float32()), pa.array([[1.0]] * k)])
    elif kind == "frame_nan":
        j = rng.randrange(len(channels))
        v = values[:, j].copy()
        v[rng.randrange(k)] = rng.choice([np.nan, np.inf, -np.inf])
        cols[channels[j]] = pa.array(v)
    elif kind == "frame_unsorted":
        cols["ts"] = pa.array(np.r_[times, times[-1] - rng.choice([0, 1, 1000])])
        cols = {n: (a if n == "ts" else pa.array(np.r_[a.to_numpy(), 0.0].astype(np.float32)))
                for n, a in cols.items()}
    elif kind == "frame_channels":
        del cols[rng.choice(channels)]
    elif kind == "frame_version":
        meta["latentwatch.frame"] = rng.choice(["0", "2", "1.1", ""])
    return _arrow(cols, meta)
