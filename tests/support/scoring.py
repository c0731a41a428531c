"""A Scorer as the run-loop tests build one (no broker), and a JSON reading for it."""

from __future__ import annotations

from latentwatch.pipeline.scorer import Scorer


def scorer_for(model, late_policy="dead-letter", changelog=False) -> Scorer:
    return Scorer(model, max_message_bytes=1_000_000, max_future_s=86_400, late_policy=late_policy,
                  critical_ratio=2.0, latent_topic=True, changelog=changelog)


def reading(sensor, ts, v, ch=3):
    return {"sensor_id": sensor, "ts": ts, "values": [float(v)] * ch}
