"""Replay a recorded CSV (SKAB and alike) into Kafka in the input contract, keeping the file's
timestamps and, scaled by `speed`, its time spacing: the same data the offline tools see, now as a
stream. Label columns become the `lw-truth` header instead of channels.

CSV parsing is `detectors.csvdata` (delimiter, time and label columns); `read_csv` here adds parsed
times in time order and is also what `report` uses.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentwatch.pipeline.times import parse_time
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.devtools.simulate import NORMAL, ProduceStats, encode, iso_ts, send


@dataclass
class Table:
    """A sensor CSV with rows sorted by time (stable)."""

    times: np.ndarray  # [n] epoch seconds
    channels: list[str]
    X: np.ndarray  # [n, channels]
    labels: dict[str, np.ndarray]  # label column -> [n]

    def truth(self) -> list[str]:
        """Per row: 'normal', or the non-zero label column names joined by '+'."""
        out = np.full(len(self.times), "", dtype=object)
        for name, col in self.labels.items():
            hit = np.nan_to_num(col) != 0
            out[hit] = np.where(out[hit] == "", name, out[hit] + "+" + name)
        out[out == ""] = NORMAL
        return out.tolist()


def read_csv(path, channels: list[str] | None = None) -> Table:
    """`detectors.csvdata.read_csv` plus parsed, sorted times; `channels` (a model's) must all be
    present and come back in that order. Problems raise UserError naming file and line."""
    from latentwatch.detectors.csvdata import CSVError
    from latentwatch.detectors.csvdata import read_csv as read

    try:
        data = read(path, expect_channels=channels) if channels else read(path)
    except CSVError as exc:
        raise UserError(str(exc)) from None
    if data.timestamps is None:
        raise UserError(f"{path}: no time column (named one of timestamp, datetime, time, ts)")
    times = np.empty(len(data))
    for i, text in enumerate(data.timestamps.tolist()):
        try:
            times[i] = parse_time(text.strip())
        except ValueError:
            raise UserError(f"{path}: line {i + 2}: {text!r} is neither ISO-8601 nor epoch seconds") from None
    order = np.argsort(times, kind="stable")
    return Table(times[order], list(data.channels), data.values[order],
                 {k: v[order] for k, v in data.labels.items()})


def schedule(times: np.ndarray, speed: float | None = 1.0, rate: float | None = None) -> np.ndarray:
    """Seconds after the start at which each row is due: the file's spacing divided by `speed`,
    or `i / rate` with a fixed `rate`; all zeros when `speed` is 0 / None (no pacing)."""
    times = np.asarray(times, dtype=float)
    if rate:
        return np.arange(len(times)) / float(rate)
    if not speed:
        return np.zeros(len(times))
    return (times - times[0]) / float(speed)


def default_sensor_id(path) -> str:
    """'valve1/3.csv' -> 'valve1-3' (a bare number is a poor sensor id); 'pump.csv' -> 'pump'."""
    p = Path(path)
    return f"{p.parent.name}-{p.stem}" if p.stem.isdigit() and p.parent.name else p.stem


def replay_table(producer, topic: str, table: Table, sensor_id: str, *, speed: float | None = 1.0,
                 rate: float | None = None, batch_size: int = 1, stop: threading.Event | None = None,
                 on_truth=None, stats: ProduceStats | None = None, flush_timeout: float = 30.0,
                 fmt: str = "json") -> ProduceStats:
    """Produce `table` in time order; a batch goes out when its last reading is due. `fmt`
    "frames": binary frames (pipeline/decode/frames.py) instead of JSON."""
    stats = stats if stats is not None else ProduceStats()
    stop = stop or threading.Event()
    due = schedule(table.times, speed, rate)
    ts = [iso_ts(t) for t in table.times]
    kinds = table.truth()
    t_start = time.monotonic()
    try:
        for i in range(0, len(ts), batch_size):
            j = min(i + batch_size, len(ts))
            delay = t_start + due[j - 1] - time.monotonic()
            if stop.is_set() or (delay > 0 and stop.wait(delay)):
                break
            value = encode(fmt, sensor_id, table.times[i:j], table.X[i:j], table.channels)
            send(producer, topic, sensor_id, value, list(zip(ts[i:j], kinds[i:j])), stats, on_truth)
    finally:
        producer.flush(flush_timeout)
        stats.elapsed_s = time.monotonic() - t_start
    return stats


def replay_file(producer, topic: str, path, *, sensor_id: str | None = None, **kwargs) -> ProduceStats:
    """`read_csv` + `replay_table`; the sensor id defaults to one made from the file name."""
    return replay_table(producer, topic, read_csv(path), sensor_id or default_sensor_id(path), **kwargs)
