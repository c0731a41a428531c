"""What decoding gives back, and why a message is refused: the `DecodedBatch` value both
decoders (JSON, frames) produce and `merge` joins, `ContractError` and the dead-letter reasons,
and the limits every message kind shares (event time range, float32 range, sensor ids).

The reasons are a public contract: they are the `reason` label of
`latentwatch_dead_letters_total` and the `lw-dlq-reason` header of every dead letter.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

# Reasons a message goes to the dead-letter topic (the `reason` label and header).
DEAD_LETTER_REASONS = (
    "not_json",
    "invalid_utf8",
    "schema",  # wrong shape or types
    "missing_channels",
    "non_finite",  # NaN / Inf / out of float32 range
    "too_large",
    "bad_timestamp",
    "late",  # older than or equal to the sensor's last scored reading (windowed models)
    "bad_sensor_id",  # longer than MAX_SENSOR_ID_BYTES (256) bytes of UTF-8, or a control character
    "out_of_range",  # finite, but too far from the training scale to score in float32 (e.g. 3.4e38)
    # Binary frames (decode/frames.py) only; their other faults map onto the reasons above.
    "corrupt_frame",  # not a readable Arrow IPC stream: truncated, bit-flipped, bad offsets
    "unsupported_version",  # an Arrow metadata version or latentwatch.frame version we do not read
    # Schema'd input in the Confluent wire format (decode/wire.py) only.
    "unknown_schema",  # a schema id the registry does not have (or no registry configured)
    "undecodable",  # a payload its own schema does not read (truncated, bytes left over)
    "schema_mapping",  # a schema whose fields cannot give a reading (names the field), or not readable
    # The control topic (pipeline/control.py) only.
    "control_invalid",  # not a command: unknown command, no sensor id, who or why missing, bad times
    # Model groups (pipeline/groups.py, docs/groups.md) with `groups_fallback: none` only.
    "no_group",  # its sensor id matches no group's rule (or a keyless frame / schema'd record)
)

FLOAT32_MAX = float(np.finfo(np.float32).max)
# Event times outside [TS_MIN, now + max_future] are out of contract (reason "bad_timestamp").
TS_MIN = datetime(2000, 1, 1, tzinfo=UTC).timestamp()
# A sensor id is the key (and a field) of every alert, latent and state record made of it: at most
# this many bytes of UTF-8, no control characters (C0, DEL, C1), else reason "bad_sensor_id".
MAX_SENSOR_ID_BYTES = 256
# Control characters, and what reorders or breaks a terminal line without being one: bidirectional
# marks, embeddings, overrides and isolates (U+202E shows "pump-7" for another id in `alerts tail`),
# line and paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


class ContractError(Exception):
    """A message that breaks the contract; `reason` is one of DEAD_LETTER_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_sensor_id(sensor_id: str, where: str = "sensor_id") -> str:
    """`sensor_id` when it may be one, else a ContractError (invalid_utf8, bad_sensor_id)."""
    if sensor_id.isascii() and len(sensor_id) <= MAX_SENSOR_ID_BYTES and sensor_id.isprintable():
        return sensor_id  # the usual id, without encoding it or a regex: 2.2 % of the loop (py-spy)
    try:
        n = len(sensor_id.encode("utf-8"))  # it becomes the key of what we produce
    except UnicodeEncodeError:
        raise ContractError("invalid_utf8", f"{where} holds a lone surrogate (\\ud800-\\udfff)") from None
    if n > MAX_SENSOR_ID_BYTES:
        raise ContractError("bad_sensor_id", f"{where} is {n} bytes of UTF-8 (at most {MAX_SENSOR_ID_BYTES})")
    if _CONTROL.search(sensor_id):
        raise ContractError("bad_sensor_id", f"{where} holds a control character")
    return sensor_id


def key_sensor_id(key: bytes, where: str = "the message key (the sensor id)") -> str:
    """The sensor id a message key names. Strict UTF-8: decoding with errors="replace" made
    different Latin-1 keys (pump-\xe4, pump-\xf6) one sensor, pump-\ufffd."""
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("invalid_utf8", f"{where}: byte {exc.start} is not UTF-8") from None
    return check_sensor_id(text, where)


@dataclass
class Decoded:
    """The readings of one valid message: `values` [k, channels] float32, `ts` [k] epoch seconds."""

    sensor_id: str
    values: np.ndarray
    ts: np.ndarray


@dataclass
class DecodedBatch:
    """The outcome of `Decoder.decode_many`: the valid messages' readings, concatenated in input
    order, and the reason of every invalid one."""

    index: list[int]  # position in the input of each valid message
    sensor_ids: list[str]  # of each valid message
    counts: np.ndarray  # [m] readings per valid message
    values: np.ndarray  # [n, channels] float32, n = counts.sum()
    ts: np.ndarray  # [n] epoch seconds
    errors: list[tuple[int, ContractError]]  # (position in the input, why)
    taken: int | None = None  # with a reading cap: the input's first `taken` items (None: all)

    def capped(self, n_items: int, max_readings: int) -> DecodedBatch:
        """The longest prefix of the `n_items` input items holding at most `max_readings`
        readings (at least one item)."""
        if n_items < 2 or int(self.counts.sum()) <= max_readings:
            return self
        per_item = np.zeros(n_items, np.int64)
        per_item[self.index] = self.counts
        return self.head(max(1, int(np.searchsorted(np.cumsum(per_item), max_readings, side="right"))))

    def head(self, n: int) -> DecodedBatch:
        """The outcome of the input's first `n` items only."""
        j = bisect.bisect_left(self.index, n)
        rows = int(self.counts[:j].sum())
        return DecodedBatch(self.index[:j], self.sensor_ids[:j], self.counts[:j], self.values[:rows], self.ts[:rows],
                            [e for e in self.errors if e[0] < n], n)


def renumber(d: DecodedBatch, positions: list[int]) -> DecodedBatch:
    """Positions in a sub-list -> positions in the whole input."""
    d.index = [positions[i] for i in d.index]
    d.errors = [(positions[i], err) for i, err in d.errors]
    return d


def merge(a: DecodedBatch, b: DecodedBatch) -> DecodedBatch:
    """Two outcomes over disjoint positions of one input -> one, in input order."""
    index = a.index + b.index
    counts = np.concatenate([a.counts, b.counts])
    order = np.argsort(np.array(index, dtype=np.int64), kind="stable")
    starts = np.cumsum(counts) - counts
    ordered = counts[order]
    rows = np.repeat(starts[order] - (np.cumsum(ordered) - ordered), ordered) + np.arange(int(ordered.sum()))
    sensor_ids = a.sensor_ids + b.sensor_ids
    return DecodedBatch([index[j] for j in order], [sensor_ids[j] for j in order], ordered,
                        np.concatenate([a.values, b.values])[rows], np.concatenate([a.ts, b.ts])[rows],
                        sorted(a.errors + b.errors, key=lambda e: e[0]))
