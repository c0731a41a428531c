"""Ceilings: how fast can one Python process read the topic, bare and with our decoder?"""

from __future__ import annotations

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.decode import Decoder
from latentwatch.pipeline.kafka import clients


def _consumer(cluster: Settings, topic: str, partitions: int) -> Consumer:
    """A consumer with the pipeline's fetch settings, assigned to every partition from the start."""
    settings = cluster.model_copy(update={"group_id": "bench-ceiling"})
    conf = clients.consumer_config(settings)
    conf.pop("logger", None)
    c = Consumer(conf)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    return c


def consume_rate(cluster: Settings, topic: str, ends: dict[int, int], readings_per_message: int,
                 channels: list[str] | None = None, chunk: int | None = None) -> dict:
    """Read every message up to `ends`; decode each one when `channels` is given.

    Timing starts when the first messages arrive (connection set-up excluded) and those first
    messages are not counted. `consume(n, timeout)` returns when n messages are in or the timeout
    passes, so chunks are the pipeline's batch (4096 readings) and never more than what is left:
    one call of 10,000 on a topic of 4,000 many-reading messages took them all at once and then
    waited out its timeout, which measured the timeout. Returns readings/s, messages/s, counts."""
    chunk = chunk or max(1, 4096 // readings_per_message)
    t_assign = time.perf_counter()
    c = _consumer(cluster, topic, len(ends))
    decoder = Decoder(channels, schemas=_schemas()) if channels else None
    total = sum(ends.values())
    seen = first = readings = 0
    t0 = None
    now = time.time()
    try:
        deadline = time.monotonic() + 600
        while seen < total and time.monotonic() < deadline:
            msgs = c.consume(min(chunk, total - seen), timeout=1.0)
            if not msgs:
                continue
            if decoder is not None:  # as the run loop does: the whole chunk at once
                readings += len(decoder.decode_many([(m.value(), m.key()) for m in msgs if m.error() is None],
                                                    now).ts)
            n = sum(1 for m in msgs if m.error() is None)
            seen += n
            if t0 is None:
                t0, first = time.perf_counter(), n
        t_end = time.perf_counter()
    finally:
        c.close()
    if seen < total:
        raise RuntimeError(f"ceiling read only {seen} of {total} messages of {topic}")
    counted, elapsed = seen - first, t_end - t0
    if counted <= 0:  # everything came in the first fetch (tiny runs): time it from the assignment
        counted, elapsed = seen, t_end - t_assign
    return {"messages": seen, "readings": seen * readings_per_message,
            "decoded_readings": readings if decoder else None, "seconds": round(elapsed, 3),
            "messages_per_s": round(counted / elapsed, 1),
            "readings_per_s": round(counted * readings_per_message / elapsed, 1)}


def _schemas():
    """Schema'd input as the pipeline reads it, when the bench runs a registry (the avro and protobuf workloads)."""
    import os

    if not os.environ.get("LATENTWATCH_SCHEMA_REGISTRY__URL"):
        return None
    from latentwatch.pipeline.config import load_settings
    from latentwatch.pipeline.kafka.registry import schema_input

    return schema_input(load_settings())
