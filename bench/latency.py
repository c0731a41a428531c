"""Latency at a fixed offered rate.

Method: a fresh input topic (8 partitions) and an alerts topic with
`message.timestamp.type=LogAppendTime`, so each alert carries the broker's append time: when
the broker wrote it, i.e. its acknowledgement less the response's trip back (sub-millisecond
on localhost). The bench produces pre-encoded messages at a steady rate (librdkafka
`linger.ms=5`, librdkafka's default; woken every 0.5 ms at most); a reading's Kafka timestamp is
its message's CreateTime, set to the time the message was scheduled (so the generator's own delays count).
Latency of an alert = alert LogAppendTime - CreateTime of the input message it names in
`source` (partition, offset). Every alert the model raises at its real threshold is a sample
(~1-2 % of readings: the simulator's anomalies plus the 0.99-quantile threshold's false
alarms), so the sampled readings are spread over the whole run. Samples whose input was
produced in the first `warmup_s` (3 s; a quarter of a shorter run) are left out of the
percentiles, which describe the steady state at the offered rate; they are reported apart
(`startup_*`). Every latency run starts a new
pipeline process on a new topic and group, and its first ~0.5 s at half the maximum rate is a
backlog (first fetches of the new partitions, first produce and commit) that takes a few seconds
to drain. Kafka timestamps are whole milliseconds.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import numpy as np
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from latentwatch.bench.pipeline_proc import CommitWatcher, PipelineProcess, wait_for_commits
from latentwatch.bench.workload import PARTITIONS, SEED, encode_messages, end_offsets, make_topics, unique
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.devtools.simulate import SensorSimulator
from latentwatch.pipeline.kafka import clients

MIN_SLEEP_S = 0.0005  # the load generator's pacing granularity
# The generator's librdkafka linger.ms: librdkafka's default, as a sensor gateway would run. Its
# wait counts as latency; 1 ms instead costs the broker ~2x the CPU in produce requests.
GENERATOR_LINGER_MS = 5.0


def _cpu_snapshot(pipeline_pid: int) -> dict:
    """CPU seconds so far: the whole machine (busy, of all cores), the pipeline, this process."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]
    try:
        stat = Path(f"/proc/{pipeline_pid}/stat").read_text().rsplit(")", 1)[1].split()
        pipeline = (int(stat[11]) + int(stat[12])) / tick
    except OSError:
        pipeline = float("nan")
    return {"wall": time.monotonic(), "busy": (sum(fields) - idle) / tick, "pipeline": pipeline,
            "generator": time.process_time()}


def _cpu_used(a: dict, b: dict) -> dict:
    """Mean cores used between two snapshots (the rest of `machine_busy` is the broker and others)."""
    wall = b["wall"] - a["wall"]
    return {k: round((b[k] - a[k]) / wall, 2) for k in ("busy", "pipeline", "generator")}


def _read_all(cluster: Settings, topic: str, partitions: int, ends: dict[int, int], on_msg) -> None:
    c = Consumer(clients.client_config(cluster) | {"group.id": "bench-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    seen, total = 0, sum(ends.values())
    deadline = time.monotonic() + 300
    try:
        while seen < total and time.monotonic() < deadline:
            for m in c.consume(10_000, timeout=1.0):
                if m.error() is None:
                    seen += 1
                    on_msg(m)
    finally:
        c.close()


def run_latency(cluster: Settings, model_dir: str, work: Path, *, rate: float, duration: float, channels: int,
                sensors: int, readings_per_message: int, batch_size: int, warmup_s: float | None = None,
                env: dict | None = None, seed: int = SEED, max_wait_ms: float | None = None,
                profile_out: Path | None = None, linger_ms: float = GENERATOR_LINGER_MS, fmt: str = "json") -> dict:
    topic, alerts, dlq, group = unique("lat-in"), unique("lat-alerts"), unique("lat-dlq"), unique("lat-group")
    make_topics(cluster, {topic: (PARTITIONS, {}), alerts: (1, {"message.timestamp.type": "LogAppendTime"}),
                            dlq: (1, {})})
    warmup_s = min(3.0, duration / 4) if warmup_s is None else warmup_s  # 3 s, less in a smoke run
    n_readings = int(rate * duration)
    sim = SensorSimulator(sensors=sensors, channels=channels, seed=seed)
    pending = list(encode_messages(sim, n_readings, readings_per_message, fmt=fmt))  # encoded before the clock starts
    # The pre-encoded messages are millions of objects: a full collection walking them stalls the
    # generator for tens of ms, a delay a real sensor gateway would not have. Frozen, it skips them.
    gc.collect()
    gc.freeze()

    proc = PipelineProcess(cluster, model_dir, topic, alerts, dlq, group, work / f"{group}.log",
                           batch_size=batch_size, max_wait_ms=max_wait_ms, env=env, profile_out=profile_out)
    p = Producer(clients.client_config(cluster) | {"linger.ms": linger_ms, "acks": "all", "enable.idempotence": True,
                  "compression.type": "lz4"})
    watcher = CommitWatcher(cluster, group, topic, PARTITIONS)
    behind_max = 0.0
    try:
        proc.wait_assigned()
        time.sleep(0.5)  # let the consumer's first fetches go out
        cpu0 = _cpu_snapshot(proc.python_pid())
        t0_wall = time.time()
        t0 = time.perf_counter()
        sent = 0
        for key, value, k in pending:
            due = sent / rate  # seconds after t0 at which this message is scheduled
            now = time.perf_counter() - t0
            if due > now:
                # Sleep at least MIN_SLEEP_S and send what fell due meanwhile in one go: a wake-up
                # per message would cost the generator most of a core at these rates (on the
                # 2 cores it shares with the broker and the pipeline it measures).
                time.sleep(max(due - now, MIN_SLEEP_S))
                p.poll(0)
            else:
                behind_max = max(behind_max, now - due)
            while True:
                try:
                    # The timestamp is the scheduled time, not the produce() call: time a message
                    # waits because the generator slept or fell behind counts as latency.
                    p.produce(topic, value, key, timestamp=int((t0_wall + due) * 1000))
                    break
                except BufferError:
                    p.poll(0.001)
            sent += k
        produce_s = time.perf_counter() - t0
        cpu = _cpu_used(cpu0, _cpu_snapshot(proc.python_pid()))
        p.flush(60)
        ends = end_offsets(cluster, topic)
        wait_for_commits(proc, watcher, ends, timeout=max(120.0, 4 * duration))
        rss = proc.peak_rss_bytes()
        own = proc.scrape()
    finally:
        watcher.close()
        proc.stop()
    del pending
    gc.unfreeze()

    alert_src: list[tuple[int, int, int]] = []  # (partition, offset, alert append time ms)

    def on_alert(m):
        record = json.loads(m.value())
        if record.get("kind") in ("episode", "health"):
            return
        src = record["source"]
        alert_src.append((src["partition"], src["offset"], m.timestamp()[1]))

    _read_all(cluster, alerts, 1, end_offsets(cluster, alerts, 1), on_alert)
    ts_kinds = set()
    needed = {(pa, off) for pa, off, _ in alert_src}
    input_ts: dict[tuple[int, int], int] = {}

    def on_input(m):
        key = (m.partition(), m.offset())
        if key in needed:
            kind, ts = m.timestamp()
            ts_kinds.add(kind)
            input_ts[key] = ts

    _read_all(cluster, topic, PARTITIONS, ends, on_input)
    cutoff = (t0_wall + warmup_s) * 1000
    pairs = np.array([(input_ts[(pa, off)], a - input_ts[(pa, off)]) for pa, off, a in alert_src
                      if (pa, off) in input_ts], dtype=np.float64).reshape(-1, 2)
    lat = pairs[pairs[:, 0] >= cutoff, 1]
    startup = pairs[pairs[:, 0] < cutoff, 1]
    second = ((pairs[:, 0] - t0_wall * 1000) // 1000).astype(int)
    by_second = [[int(k), float(np.median(pairs[second == k, 1]))] for k in np.unique(second)]
    out = {"method": "alert LogAppendTime - input CreateTime (ms); alerts at the model's own threshold",
           "offered_readings_per_s": round(rate, 1), "achieved_readings_per_s": round(sent / produce_s, 1),
           "producer_max_behind_ms": round(behind_max * 1000, 2), "duration_s": round(produce_s, 2),
           "readings": sent, "alerts": len(alert_src), "samples": len(lat), "warmup_s": warmup_s,
           "generator_linger_ms": linger_ms,
           "batch_size": batch_size, "max_wait_ms": max_wait_ms, "peak_rss_bytes": rss.get("VmHWM"),
           "cpu_cores_used": cpu,
           "pipeline_metrics": own}
    if len(startup):
        out.update({"startup_p50_ms": float(np.percentile(startup, 50)),
                    "startup_p99_ms": float(np.percentile(startup, 99)), "startup_max_ms": float(startup.max())})
    if len(lat):
        out.update({"p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)),
                    "p999_ms": float(np.percentile(lat, 99.9)), "max_ms": float(lat.max()),
                    "mean_ms": round(float(lat.mean()), 3), "median_ms_by_second": by_second})
    return out
