"""(issue 22) Restore rate of the state changelog on the local broker: N sensors, one record each (as after
compaction) plus optional dirty records; W x C tails. Prints records/s and s per 100k sensors."""
import tempfile
import time

import numpy as np
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from latentwatch.pipeline import state
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.devtools.local_kafka import LocalBroker
from latentwatch.pipeline.kafka import changelog

broker = LocalBroker(tempfile.mkdtemp(prefix="lw-restore-"))
info = broker.start()
try:
    s = Settings(kafka={"bootstrap_servers": info.bootstrap})
    admin = AdminClient({"bootstrap.servers": info.bootstrap})
    for n, window, channels, parts in [(100_000, 32, 16, 4), (100_000, 1, 16, 4), (100_000, 8, 4, 4)]:
        topic = f"st-{window}-{channels}"
        admin.create_topics([NewTopic(topic, parts, 1, config=changelog.TOPIC_CONFIG)])[topic].result(30)
        p = Producer({"bootstrap.servers": info.bootstrap, "linger.ms": 20, "compression.type": "lz4",
                      "queue.buffering.max.messages": 500000})
        tail = np.random.default_rng(0).normal(size=(max(window - 1, 0), channels)).astype(np.float32)
        for i in range(n):
            e = state.Entry(1.8e9 + i, tail, (0.5, 0.1), valid_at=i // parts)
            while True:
                try:
                    p.produce(topic, state.pack(e, e), f"sensor-{i:06d}".encode(), partition=i % parts)
                    break
                except BufferError:
                    p.poll(0.1)
        p.flush(120)
        rec_bytes = len(state.pack(e, e))
        store = state.StateStore(max_sensors=200_000)
        store.expect(window, channels)
        t0 = time.monotonic()
        out = changelog.restore_into(store, s, topic, [TopicPartition("in", q) for q in range(parts)],
                                     lambda ps, stop, parts=parts: [TopicPartition("in", q, 10**9) for q in range(parts)],
                                     lambda: False)
        dt = time.monotonic() - t0
        print(f"W={window} C={channels}: {n} sensors, {rec_bytes} B records, {len(store)} restored in {dt:.2f} s "
              f"= {n/dt:,.0f} records/s, {dt * 100_000 / n:.1f} s per 100,000 sensors; dropped {out[0].dropped}",
              flush=True)
finally:
    broker.stop()
