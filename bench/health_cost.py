"""What the sensor health rules (issue 30, detectors/health.py) cost the scorer stage:
`Scorer.score` + `StateStore.apply`, no broker, on the bench's batch workload (the simulator's
plant, 250 readings a message, messages spread over 8 partitions, 32,768-reading batches), with
the rules on and off alternated batch by batch (the order swapped every batch), as readings per
CPU second of this process (one torch thread). The whole pipeline's A/B is `bench --ab health`.

    python -m latentwatch.bench.health_cost --model DIR [--readings 1000000] [--passes 2]
"""

from __future__ import annotations

import argparse
import json
import time

from latentwatch.bench.messages import Msg


def run(model_dir: str, readings: int = 1_000_000, passes: int = 2, sensors: int = 64, batch: int = 32_768) -> dict:
    from latentwatch.bench.workload import SEED, encode_messages
    from latentwatch.detectors.checkpoint import load
    from latentwatch.pipeline.devtools.simulate import SensorSimulator
    from latentwatch.pipeline.scorer import Scorer
    from latentwatch.pipeline.state import StateStore

    model = load(model_dir, device="cpu")
    rule = model.health
    if rule is None or not rule.judged.any():
        raise SystemExit(f"{model_dir}: the model has no health rule judging a channel: the A/B would measure nothing")
    channels = len(model.detector.channels)
    sim = SensorSimulator(sensors=sensors, channels=channels, seed=SEED)
    offsets, msgs = [0] * 8, []
    for key, value, _k in encode_messages(sim, readings, 250):
        p = int(key.decode().rsplit("-", 1)[-1]) % 8
        msgs.append(Msg(value, key, p, offsets[p]))
        offsets[p] += 1
    per = batch // 250
    batches = [msgs[i:i + per] for i in range(0, len(msgs), per)]

    def scorer(health: bool) -> Scorer:
        model.health = rule if health else None
        sc = Scorer(model, max_message_bytes=1 << 20, max_future_s=10**10, late_policy="score", critical_ratio=2.0,
                    latent_topic=False, changelog=True)
        model.health = rule
        return sc

    out = []
    for _ in range(passes):
        sc = {h: scorer(h) for h in (True, False)}
        st = {h: StateStore(max_sensors=100_000) for h in (True, False)}
        for s in st.values():
            s.expect(model.detector.window, channels)
        cpu = {True: 0.0, False: 0.0}
        for i, msgs_i in enumerate(batches):
            for h in ((True, False) if i % 2 == 0 else (False, True)):
                t0 = time.process_time()
                r = sc[h].score(msgs_i, st[h], time.time())
                st[h].apply(r.updates)
                cpu[h] += time.process_time() - t0
        with_health = {h: sum(e.health is not None for e in st[h]._entries.values()) for h in st}
        out.append({"on_readings_per_cpu_s": round(readings / cpu[True]),
                    "off_readings_per_cpu_s": round(readings / cpu[False]),
                    "off_over_on": round(cpu[True] / cpu[False], 3),
                    "sensors_with_health_state": {"on": with_health[True], "off": with_health[False]}})
    return {"model": model_dir, "readings": readings, "sensors": sensors, "channels": channels,
            "batch_readings": batch, "passes": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentwatch.bench.health_cost", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model directory with health rules (e.g. a bench work dir's model-mlp)")
    p.add_argument("--readings", type=int, default=1_000_000)
    p.add_argument("--passes", type=int, default=2)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    print(json.dumps(run(a.model, a.readings, a.passes), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
