"""The naive baseline: poll one message, json.loads, one model call per reading, produce the
alerts, wait for them, commit that one message. What a first prototype would do. For binary
frames the same loop, with pyarrow reading the frame into a table and the readings taken row by
row from its columns."""

from __future__ import annotations

import json
import time

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from latentwatch.pipeline.times import parse_time
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.kafka import clients


def run_naive(cluster: Settings, topic: str, partitions: int, model_dir: str, alerts_topic: str,
              max_readings: int, max_seconds: float = 30.0, fmt: str = "json") -> dict:
    from latentwatch.detectors.checkpoint import load

    model = load(model_dir, device="cpu")
    det, thr = model.detector, float(model.threshold.value)
    channels = det.channels
    if det.window != 1:
        raise ValueError("the naive baseline scores one reading per call: it needs a point-wise (window 1) model")
    c = Consumer(clients.client_config(cluster) | {"group.id": f"bench-naive-{topic}", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    p = Producer(clients.client_config(cluster) | {"acks": "all", "enable.idempotence": True})
    readings = alerts = messages = 0
    t0 = None
    try:
        deadline = time.monotonic() + 600
        while readings < max_readings and time.monotonic() < deadline:
            if t0 is not None and time.perf_counter() - t0 > max_seconds:
                break
            msg = c.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            if t0 is None:
                t0 = time.perf_counter()
            obj = json.loads(msg.value()) if fmt == "json" else _frame_as_object(msg)
            for r in obj.get("readings") or [obj]:
                x = np.array([[[r["values"][ch] for ch in channels]]], dtype=np.float32)
                score = float(det.score(x).score[0])
                readings += 1
                if score > thr:
                    alert = {"sensor_id": obj["sensor_id"], "ts": parse_time(r["ts"]), "score": score,
                             "source": [msg.topic(), msg.partition(), msg.offset()]}
                    p.produce(alerts_topic, json.dumps(alert).encode(), obj["sensor_id"].encode())
                    alerts += 1
            p.flush(30)
            c.commit(message=msg, asynchronous=False)
            messages += 1
        elapsed = time.perf_counter() - t0
    finally:
        c.close()
    return {"readings": readings, "max_readings": max_readings, "max_seconds": max_seconds, "messages": messages, "alerts": alerts, "seconds": round(elapsed, 3),
            "readings_per_s": round(readings / elapsed, 1)}


def _frame_as_object(msg) -> dict:
    """A frame as the JSON form's object: what a prototype reading Arrow with pyarrow would do."""
    import pyarrow as pa

    table = pa.ipc.open_stream(msg.value()).read_all()
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    ts = cols.pop("ts").astype("datetime64[us]").astype("int64") / 1e6
    return {"sensor_id": msg.key().decode(),
            "readings": [{"ts": float(t), "values": {k: v[i] for k, v in cols.items()}} for i, t in enumerate(ts)]}
