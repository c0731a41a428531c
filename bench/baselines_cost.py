"""What each sensor's own normal costs the scorer (issue 28): readings/s of the scorer stage
(decode, windows, model, alarm rule, records; `Scorer.score` + `StateStore.apply`, no broker)
on a stream of 100,000 sensors, with the same model

- `pooled`: without per-sensor baselines (the model as before issue 28),
- `baselines`: every sensor with a baseline from training, no own models,
- `own`: every sensor with a baseline and an own model (PCA, K = C-1 columns: the most),
- `cold`: a model with baselines, but every sensor new to it, in its cold start (learning: its
  first readings kept in the state and written to the changelog with every batch),
- `learned`: the same once every sensor's cold start has ended (its learned baseline in the state),

measured alternately in one run as readings per CPU second of this process (`time.process_time`,
one torch thread: on a shared machine wall time measured the neighbours; ratios against `pooled`
of the same round, their median over rounds), and the memory
per sensor: the model's baselines and own models, and a state entry with a learned cold start.

    python -m latentwatch.bench.baselines_cost [--sensors 100000] [--rounds 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import time
import tracemalloc
from pathlib import Path

import numpy as np
from latentwatch.bench.messages import Msg


def _model(channels: int, window: int, sensors: int, variant: str, seed: int = 0):
    from latentwatch.detectors import alarms
    from latentwatch.detectors.baselines import Baselines
    from latentwatch.detectors.checkpoint import LoadedModel
    from latentwatch.detectors.networks import make_detector
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(seed)
    X = rng.normal(size=(4000, channels)).astype(np.float32)
    det = make_detector("pca", window=window, latent_dim=4).fit(X, [f"c{i}" for i in range(channels)])
    held = rng.chisquare(4, 5000) / 4
    thr = QuantileThreshold(0.999).fit(held)
    rule = alarms.calibrate(held, 0.01, instant=thr.value)
    if variant == "pooled":
        return LoadedModel(det, thr, {}, "bench", "v1", rule)
    ids = np.array([f"s{i:06d}" for i in range(sensors)])
    b = Baselines(ids, np.zeros((sensors, channels), np.float32), np.ones((sensors, channels), np.float32),
                  np.full(sensors, 4000, np.int64), np.zeros(channels, np.float32), np.ones(channels, np.float32),
                  np.ones(channels, np.float32), cold_start=64)
    own_rule = None
    if variant == "own":
        q, _ = np.linalg.qr(rng.normal(size=(channels, channels)))
        basis = np.zeros((channels, channels - 1), np.float32)
        basis[:, :3] = q[:, :3]
        b.own_row = np.arange(sensors, dtype=np.int32)
        b.own_mean = np.zeros((sensors, channels), np.float32)
        b.own_basis = np.broadcast_to(basis, (sensors, channels, channels - 1)).copy()
        b.own_norm = np.ones(sensors, np.float32)
        b.own_gain = np.ones((sensors, channels), np.float32)  # set after construction: sized here too
        own_rule = rule
    if variant in ("cold", "learned"):  # the model knows other sensors than the stream's
        b = Baselines(np.array(["elsewhere"]), np.zeros((1, channels), np.float32), np.ones((1, channels), np.float32),
                      np.full(1, 4000, np.int64), np.zeros(channels, np.float32), np.ones(channels, np.float32),
                      np.ones(channels, np.float32), cold_start=64)
    return LoadedModel(det, thr, {}, "bench", "v1", rule, b, own_rule)


def _batches(sensors: int, channels: int, batches: int, size: int, seed: int = 1):
    """Batches of `size` one-reading JSON messages, each sensor in turn (time keeps rising)."""
    import orjson

    rng = np.random.default_rng(seed)
    t0 = time.time() - 86_000
    out, k = [], 0
    for _ in range(batches):
        msgs = []
        vals = rng.normal(size=(size, channels)).round(4).tolist()
        for j in range(size):
            s = k % sensors
            msgs.append(Msg(orjson.dumps({"sensor_id": f"s{s:06d}", "ts": t0 + k * 1e-3, "values": vals[j]}),
                            None, 0, k))
            k += 1
        out.append(msgs)
    return out


def run(sensors: int = 100_000, channels: int = 16, window: int = 8, rounds: int = 3, size: int = 4096) -> dict:
    from latentwatch.pipeline import state as st
    from latentwatch.pipeline.scorer import Scorer
    from latentwatch.pipeline.state import StateStore

    variants = ("pooled", "baselines", "own", "cold", "learned")
    models = {v: _model(channels, window, sensors, v) for v in variants}
    warm = _batches(sensors, channels, -(-sensors // size), size, seed=1)  # every sensor once: state filled
    timed = _batches(sensors, channels, 12, size, seed=2)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    for _ in range(rounds):
        for v in variants:
            sc = Scorer(models[v], max_message_bytes=1 << 20, max_future_s=86_400, late_policy="score",
                        critical_ratio=2.0, latent_topic=False, changelog=True)
            store = StateStore(max_sensors=sensors * 2)
            store.expect(window, channels)
            now = time.time()
            for msgs in warm:
                store.apply(sc.score(msgs, store, now).updates)
            if v == "learned":  # as if each had sent its first `cold_start` readings already
                done = st.Baseline(64, np.empty((0, channels), np.float32), np.zeros(channels, np.float32),
                                   np.ones(channels, np.float32))
                store.apply({k: st.Entry(e.last_ts, e.tail, e.threshold, e.valid_at, e.alarm, done)
                             for k, e in list(store._entries.items())})
            t0 = time.process_time()
            n = 0
            for msgs in timed:
                b = sc.score(msgs, store, now)
                store.apply(b.updates)
                n += b.n_readings
            rates[v].append(n / (time.process_time() - t0))
    ratio = {v: float(np.median(np.array(rates[v]) / np.array(rates["pooled"]))) for v in variants}
    return {"sensors": sensors, "channels": channels, "window": window, "batch_readings": size, "rounds": rounds,
            "readings_per_s": {v: [round(x) for x in r] for v, r in rates.items()},
            "ratio_to_pooled": {v: round(ratio[v], 3) for v in variants},
            "memory": memory(channels, window)}


def memory(channels: int = 16, window: int = 8, sensors: int = 20_000) -> dict:
    """Bytes per sensor (tracemalloc): the model's baselines, with own models (K = C-1), and a
    state entry with a learned cold start beside one without."""
    from latentwatch.pipeline import state

    def measure(make) -> float:
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        kept = make()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        size = sum(s.size_diff for s in after.compare_to(before, "filename"))
        del kept
        return size / sensors

    own = measure(lambda: _model(channels, window, sensors, "own").baselines)
    plain = measure(lambda: _model(channels, window, sensors, "baselines").baselines)
    tail = np.zeros((window - 1, channels), np.float32)

    def entries(cold: bool):
        out = {}
        for i in range(sensors):
            b = state.Baseline(600, np.zeros((0, channels), np.float32), np.zeros(channels, np.float32),
                               np.ones(channels, np.float32)) if cold else None
            out[(0, f"s{i:06d}")] = state.Entry(1.0, tail.copy(), None, i, None, b)
        return out

    return {"model_baselines_bytes_per_sensor": round(plain), "model_own_models_bytes_per_sensor": round(own),
            "state_entry_bytes": round(measure(lambda: entries(False))),
            "state_entry_with_learned_cold_start_bytes": round(measure(lambda: entries(True)))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentwatch.bench.baselines_cost", description=__doc__.splitlines()[0])
    p.add_argument("--sensors", type=int, default=100_000)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="write the figures as JSON into this folder")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = run(a.sensors, a.channels, rounds=a.rounds)
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        (Path(a.out) / "baselines-cost.json").write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
