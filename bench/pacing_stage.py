"""The batch budget alone (pipeline/pacing.py): a backlog of messages scored by the pipeline's
`Scorer` in batches capped by `batch.max_readings` only, then sized by `batch.max_latency_ms`,
back to back in one process, no Kafka. Reports the longest and the 99th-percentile batch
(every reading of a batch waits for all of it) and the readings/s each way.

Run alone: `python -m latentwatch.bench.pacing_stage --model DIR [--budget-ms 20]` (prints JSON)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from latentwatch.bench.messages import Msg


def backlog(channels: int, sensors: int, readings: int, per_message: int, fmt: str = "json") -> list:
    from latentwatch.bench.workload import SEED, encode_messages
    from latentwatch.pipeline.devtools.simulate import SensorSimulator

    sim = SensorSimulator(sensors=sensors, channels=channels, seed=SEED)
    offsets: dict[int, int] = {}
    out = []
    for key, value, _ in encode_messages(sim, readings, per_message, fmt=fmt):
        p = hash(key) % 8
        offsets[p] = offsets.get(p, -1) + 1
        out.append(Msg(value, key, p, offsets[p], topic="bench"))
    return out


def drain(model, messages: list, max_readings: int, budget_ms: float | None, per_message: int = 1) -> dict:
    """Score `messages` as the run loop would a backlog: batch after batch, state carried over."""
    from latentwatch.pipeline import state
    from latentwatch.pipeline.pacing import BatchBudget
    from latentwatch.pipeline.scorer import Scorer

    scorer = Scorer(model, max_message_bytes=1_000_000, max_future_s=1e12, late_policy="score",
                    critical_ratio=2.0, latent_topic=False, changelog=False)
    store = state.StateStore(100_000, 1e12)
    budget = BatchBudget(budget_ms, max_readings)
    times, sizes, rest, t_all = [], [], list(messages), time.perf_counter()
    while rest:
        limit = budget.limit()
        take = max(1, limit // per_message)  # what the source gathers for that limit
        t0 = time.perf_counter()
        batch = scorer.score(rest[:take], store, now=2e9, max_readings=limit)
        dt = time.perf_counter() - t0
        budget.observe(batch.n_readings, dt)
        store.apply(batch.updates)
        rest = batch.rest + rest[take:]
        times.append(dt)
        sizes.append(batch.n_readings)
    total = time.perf_counter() - t_all
    ms = np.array(times) * 1000
    return {"budget_ms": budget_ms, "max_readings": max_readings, "batches": len(times),
            "readings_per_s": round(sum(sizes) / total, 1), "batch_ms_max": round(float(ms.max()), 1),
            "batch_ms_p99": round(float(np.percentile(ms, 99)), 1), "batch_ms_median": round(float(np.median(ms)), 1),
            "batch_readings_median": int(np.median(sizes))}


def run(model_dir: str, budgets=(None, 50.0, 20.0), readings: int = 65536, per_message: int = 1,
        max_readings: int = 32768, rounds: int = 2) -> dict:
    import torch
    from latentwatch.detectors.checkpoint import load

    torch.set_num_threads(1)  # as the pipeline on a CPU
    model = load(model_dir, device="cpu")
    det = model.detector
    msgs = backlog(len(det.channels), 64, readings, per_message)
    rows = [drain(model, msgs, max_readings, b, per_message) for _ in range(rounds) for b in budgets]  # alternating rounds
    return {"model": {"kind": det.kind, "window": det.window}, "readings": readings, "per_message": per_message,
            "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m latentwatch.bench.pacing_stage", description=__doc__)
    ap.add_argument("--model", required=True)
    ap.add_argument("--readings", type=int, default=65536)
    ap.add_argument("--per-message", type=int, default=1)
    ap.add_argument("--budgets", default="none,50,20", help="comma-separated ms, 'none' for the cap alone")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    budgets = [None if b.strip() == "none" else float(b) for b in args.budgets.split(",")]
    print(json.dumps(run(args.model, budgets, args.readings, args.per_message, rounds=args.rounds), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
