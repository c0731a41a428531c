"""Alert records: what subscribers of the alerts topic receive (JSON, key = sensor id).

`alert_id` is `<topic>/<partition>/<offset>/<index>` of the reading that raised it, so a replay
after a crash produces the same id and subscribers can drop duplicates.
"""

from __future__ import annotations

import time

import numpy as np
import orjson

from latentwatch.pipeline.contract import iso


def severity(score: float, threshold: float, critical_ratio: float) -> str:
    return "critical" if score >= critical_ratio * threshold else "warning"


def top_channels(channel_error: np.ndarray, channels: list[str], k: int = 3) -> list[list[dict]]:
    """For each row of `[n, channels]`, the `k` channels with the largest share of that reading's
    reconstruction error. A batch's alerts in one pass: numpy's overhead per call, per alert,
    cost more than the sums themselves."""
    err = np.maximum(channel_error.astype(np.float64), 0.0)
    total = err.sum(axis=1, keepdims=True)
    shares = np.divide(err, total, out=np.full_like(err, 1.0 / err.shape[1]), where=total > 0)
    order = np.argsort(-shares, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(shares, order, axis=1).tolist()
    return [[{"channel": channels[i], "share": round(v, 4)} for i, v in zip(idx, vals)]
            for idx, vals in zip(order.tolist(), top)]


def alert_record(*, topic: str, partition: int, offset: int, index: int, sensor_id: str, ts: float | str,
                 score: float, threshold: float, top: list[dict], latent: list[float], model_name: str,
                 model_version: str, critical_ratio: float, detected_at: float | str | None = None,
                 parts: dict | None = None, rule: dict | None = None) -> dict:
    """One alert; `top` is its row of `top_channels`, `latent` its latent vector as floats. Times
    may come as epoch seconds or already as ISO strings (a batch formats them in one pass)."""
    return {
        "alert_id": f"{topic}/{partition}/{offset}/{index}",
        "sensor_id": sensor_id,
        "ts": ts if isinstance(ts, str) else iso(ts),
        "detected_at": detected_at if isinstance(detected_at, str) else iso(
            detected_at if detected_at is not None else time.time()),
        "score": round(float(score), 6),
        "threshold": round(float(threshold), 6),
        "severity": severity(score, threshold, critical_ratio),
        "top_channels": top,
        "latent": [round(x, 5) for x in latent],
        "model": {"name": model_name, "version": model_version},
        "source": {"topic": topic, "partition": partition, "offset": offset, "index": index},
        **({"parts": parts} if parts else {}),  # which part of the score fired (reconstruction, latent_distance)
        **({"rule": rule} if rule else {}),  # the persistence rule that fired: k of the last n above
    }


def iso_many(ts: np.ndarray) -> list[str]:
    """`contract.iso` for an array in one numpy pass (same rounding to the millisecond)."""
    ms = np.round(np.asarray(ts, dtype=np.float64) * 1000).astype("datetime64[ms]")
    return [t + "Z" for t in np.datetime_as_string(ms, unit="ms").tolist()]


def encode(record: dict) -> bytes:
    """Compact JSON (orjson: ~12x the stdlib's speed on an alert). The same values as json.dumps;
    only the spelling of some floats differs (0.00008, not 8e-05)."""
    return orjson.dumps(record)
