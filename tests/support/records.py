"""A well-formed alert record as the pipeline writes it (for subscriber tests)."""

from __future__ import annotations

from datetime import UTC, datetime

def alert_record(sensor: str, severity: str = "warning", channel: str = "temp", score: float = 12.3,
                 ts: datetime | None = None, n: int = 0) -> dict:
    ts = ts or datetime.now(UTC)
    return {
        "alert_id": f"sensor-readings/0/{100 + n}/0",
        "sensor_id": sensor,
        "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "detected_at": datetime.now(UTC).isoformat(),
        "score": score,
        "threshold": 4.5,
        "severity": severity,
        "top_channels": [{"channel": channel, "share": 0.71}, {"channel": "flow", "share": 0.2},
                         {"channel": "rpm", "share": 0.09}],
        "latent": [0.1, -0.2, 0.3],
        "model": {"name": "ae", "version": "1"},
        "source": {"topic": "sensor-readings", "partition": 0, "offset": 100 + n, "index": 0},
    }
