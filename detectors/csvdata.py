"""Sensor readings from a CSV file: header row, `,` or `;` separated, one reading per row.

The time column is found by name (timestamp, datetime, time, ts) or named explicitly; columns
named anomaly, changepoint or label are never channels but come back as `labels` (SKAB-style
files carry them). A `sensor_id` column says whose reading each row is (a fleet in one file; each
sensor's rows in time order, sensors interleaved or one after another). Every problem raises one `CSVError` naming the file and line, because the
person reading it has to open that file and fix that line.

Speed: valid files go through numpy's C parser (`np.loadtxt`); only when it objects do we
re-read with the `csv` module to say exactly what is wrong and where.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

TIME_NAMES = ("timestamp", "datetime", "time", "ts")
LABEL_NAMES = ("anomaly", "changepoint", "label")
ID_NAME = "sensor_id"  # a column of sensor ids: whose reading each row is (a fleet in one file)


class CSVError(ValueError):
    """A CSV file the user has to fix; the message names the file and line."""


@dataclass
class CSVData:
    path: str
    channels: list[str]  # channel names, in the order of `values` columns
    values: np.ndarray  # [n, channels] float32
    timestamps: np.ndarray | None  # [n] str as written in the file; None without a time column
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. {"anomaly": [n] float32}
    time_column: str | None = None
    sensor_ids: np.ndarray | None = None  # [n] str from a `sensor_id` column; None without one

    def __len__(self) -> int:
        return len(self.values)


def read_csv(path: str | Path, *, columns: list[str] | None = None, time_column: str | None = None,
             expect_channels: list[str] | None = None, fast: bool = True) -> CSVData:
    """Read channels from `path`. `columns` picks the channels (default: every column that is
    not time or label); `expect_channels` (a model's channels) requires exactly that set and
    returns the values in that order."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CSVError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    text_head = data[: data.find(b"\n")] if b"\n" in data else data
    header_line = text_head.decode("utf-8-sig", errors="replace").rstrip("\r")
    if not header_line.strip():
        raise CSVError(f"{path}: line 1: the file is empty; expected a header row of column names")
    delim = ";" if header_line.count(";") > header_line.count(",") else ","
    header = [h.strip() for h in next(csv.reader([header_line], delimiter=delim))]
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise CSVError(f"{path}: line 1: duplicate column names {dupes}")
    tcol = _find_time_column(path, header, time_column)
    label_idx = {h: i for i, h in enumerate(header) if h.lower() in LABEL_NAMES and i != tcol}
    icol = header.index(ID_NAME) if ID_NAME in header and header.index(ID_NAME) != tcol else None
    if icol is not None:
        label_idx_with_id = dict(label_idx, **{ID_NAME: icol})
    else:
        label_idx_with_id = label_idx
    names = _select_channels(path, header, tcol, label_idx_with_id, columns, expect_channels)
    chan_idx = [header.index(c) for c in names]
    num_idx = chan_idx + list(label_idx.values())

    parsed = _fast_parse(path, data, delim, len(header), tcol, num_idx, icol) if fast else None
    if parsed is None:
        parsed = _careful_parse(path, delim, header, tcol, num_idx, icol)
    numbers, stamps, ids = parsed
    if len(numbers) == 0:
        raise CSVError(f"{path}: line 2: no data rows after the header")
    values = np.ascontiguousarray(numbers[:, : len(chan_idx)])
    labels = {h: numbers[:, len(chan_idx) + j].copy() for j, h in enumerate(label_idx)}
    return CSVData(str(path), names, values, stamps, labels, header[tcol] if tcol is not None else None, ids)


def _find_time_column(path: Path, header: list[str], time_column: str | None) -> int | None:
    if time_column is not None:
        if time_column not in header:
            raise CSVError(f"{path}: line 1: no time column {time_column!r}; columns are {header}")
        return header.index(time_column)
    for i, h in enumerate(header):
        if h.lower() in TIME_NAMES:
            return i
    return None


def _select_channels(path, header, tcol, label_idx, columns, expect) -> list[str]:
    available = [h for i, h in enumerate(header) if i != tcol and h not in label_idx]
    if columns is not None:
        missing = [c for c in columns if c not in header]
        if missing:
            raise CSVError(f"{path}: line 1: no column(s) {missing}; columns are {header}")
        chosen = list(columns)
    else:
        chosen = available
    if expect is not None:
        missing = [c for c in expect if c not in chosen]
        extra = [c for c in chosen if c not in expect]
        if missing or extra:
            what = "; ".join(s for s in (missing and f"missing {missing}", extra and f"not in the model {extra}") if s)
            raise CSVError(f"{path}: line 1: channels differ from the model's ({what}); the model expects "
                           f"{list(expect)} (use --columns to pick them if the file has extra columns)")
        chosen = list(expect)
    if not chosen:
        raise CSVError(f"{path}: line 1: no channel columns (header: {header})")
    return chosen


def _fast_parse(path, data: bytes, delim, ncols, tcol, num_idx, icol=None):
    """numpy's C parser for the common clean file; None means "let the careful parser explain"."""
    body_rows = data.count(b"\n") - 1 + (0 if data.endswith(b"\n") else 1)
    if b'"' in data or b"\n\n" in data or body_rows < 1 or data.count(delim.encode()) != (ncols - 1) * (body_rows + 1):
        return None  # quoting, blank lines or a ragged row: the careful path handles (or reports) them
    try:
        numbers = np.loadtxt(path, delimiter=delim, skiprows=1, usecols=num_idx, dtype=np.float32, ndmin=2,
                             encoding="utf-8")
        stamps = ids = None
        if tcol is not None:
            stamps = np.loadtxt(path, delimiter=delim, skiprows=1, usecols=[tcol], dtype=str, ndmin=1,
                                encoding="utf-8", comments=None)
        if icol is not None:
            ids = np.loadtxt(path, delimiter=delim, skiprows=1, usecols=[icol], dtype=str, ndmin=1,
                             encoding="utf-8", comments=None)
    except (ValueError, UnicodeDecodeError):
        return None
    if len(numbers) != body_rows or any(a is not None and len(a) != body_rows for a in (stamps, ids)):
        return None
    if not np.all(np.isfinite(numbers)):
        return None
    return (numbers, (np.char.strip(stamps) if stamps is not None else None),
            (np.char.strip(ids) if ids is not None else None))


def _careful_parse(path, delim, header, tcol, num_idx, icol=None):
    """Row by row with the csv module: slower, but names the exact line of any problem."""
    rows: list[list[float]] = []
    stamps: list[str] = []
    ids: list[str] = []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delim)
            next(reader, None)
            for row in reader:
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue  # blank line
                if len(row) != len(header):
                    raise CSVError(f"{path}: line {line}: {len(row)} fields, but the header has {len(header)}")
                out = []
                for i in num_idx:
                    cell = row[i].strip()
                    try:
                        v = float(cell)
                    except ValueError:
                        what = "an empty cell (missing value)" if not cell else f"non-numeric value {cell!r}"
                        raise CSVError(f"{path}: line {line}: {what} in column {header[i]!r}"
                                       f"{_hint(header[i], cell)}") from None
                    if not math.isfinite(v):
                        raise CSVError(f"{path}: line {line}: {cell!r} in column {header[i]!r} is not a finite number")
                    out.append(v)
                rows.append(out)
                if tcol is not None:
                    stamps.append(row[tcol].strip())
                if icol is not None:
                    ids.append(row[icol].strip())
    except UnicodeDecodeError as exc:
        raise CSVError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise CSVError(f"{path}: line {reader.line_num}: {exc}") from None
    numbers = np.asarray(rows, dtype=np.float32).reshape(len(rows), len(num_idx))
    return (numbers, (np.asarray(stamps, dtype=str) if tcol is not None else None),
            (np.asarray(ids, dtype=str) if icol is not None else None))


_TIME_LIKE = re.compile(r"^\d{1,4}[-/.:]\d{1,2}[-/.:T ]")  # 2026-11-21..., 21.11.2026..., 10:00:00


def _hint(column: str, cell: str) -> str:
    """What to do about a text cell in a channel column: a time column not named like one
    (timestamp/datetime/time/ts), or a column that is no channel at all."""
    if not cell:
        return ""
    if _TIME_LIKE.match(cell):
        return f"; it looks like a time: if it is the time column, say so with --time-column {column}"
    return f"; if {column!r} is not a channel, pick the channel columns with --columns a,b,c"
