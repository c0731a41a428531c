"""Alert records: what subscribers of the alerts topic receive (JSON, key = sensor id).

`alert_id` is `<topic>/<partition>/<offset>/<index>` of the reading that raised it, so a replay
after a crash produces the same id and subscribers can drop duplicates.
"""

from __future__ import annotations

import json
import time

import numpy as np

from pipeline.contract import iso


def severity(score: float, threshold: float, critical_ratio: float) -> str:
    return "critical" if score >= critical_ratio * threshold else "warning"


def top_channels(channel_error: np.ndarray, channels: list[str], k: int = 3) -> list[dict]:
    """The `k` channels with the largest share of the reading's reconstruction error."""
    err = np.maximum(channel_error.astype(np.float64), 0.0)
    total = err.sum()
    shares = err / total if total > 0 else np.full_like(err, 1.0 / len(err))
    order = np.argsort(-shares, kind="stable")[:k]
    return [{"channel": channels[i], "share": round(float(shares[i]), 4)} for i in order]


def alert_record(*, topic: str, partition: int, offset: int, index: int, sensor_id: str, ts: float,
                 score: float, threshold: float, channel_error: np.ndarray, latent: np.ndarray,
                 channels: list[str], model_name: str, model_version: str, critical_ratio: float,
                 detected_at: float | None = None) -> dict:
    return {
        "alert_id": f"{topic}/{partition}/{offset}/{index}",
        "sensor_id": sensor_id,
        "ts": iso(ts),
        "detected_at": iso(detected_at if detected_at is not None else time.time()),
        "score": round(float(score), 6),
        "threshold": round(float(threshold), 6),
        "severity": severity(score, threshold, critical_ratio),
        "top_channels": top_channels(channel_error, channels),
        "latent": [round(float(x), 5) for x in latent],
        "model": {"name": model_name, "version": model_version},
        "source": {"topic": topic, "partition": partition, "offset": offset, "index": index},
    }


def encode(record: dict) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()
