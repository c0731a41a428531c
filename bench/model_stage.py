"""The model stage alone: readings/s against batch size, on CPU; on a CUDA machine also the
per-call overhead of eager PyTorch against a CUDA graph and torch.compile.

Run alone: `python -m bench.model_stage --model DIR` (prints JSON)."""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

BATCH_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536)


def _rate(fn, n: int, budget_s: float) -> tuple[float, float]:
    """(calls/s, readings/s) of `fn()` scoring `n` windows, after one warm-up call."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= budget_s and calls >= 3:
            return calls / elapsed, calls * n / elapsed


def cpu_sweep(detector, sizes=BATCH_SIZES, budget_s: float = 0.5, seed: int = 0) -> list[dict]:
    """`detector.score` (standardise, network, errors, back to numpy) on random windows."""
    rng = np.random.default_rng(seed)
    C, W = len(detector.channels), detector.window
    mean, std = detector.scaler.mean, detector.scaler.std
    rows = []
    for n in sizes:
        w = (mean + std * rng.standard_normal((n, W, C))).astype(np.float32)
        per_s, readings_s = _rate(lambda w=w: detector.score(w), n, budget_s)
        rows.append({"batch": n, "readings_per_s": round(readings_s, 1), "us_per_call": round(1e6 / per_s, 2)})
    return rows


def gpu_overhead(detector, sizes=(1, 64, 4096, 65536), budget_s: float = 0.5) -> dict:
    """Per-call time of the network on CUDA: eager, CUDA graph, torch.compile(reduce-overhead).

    Input is already on the device in a static buffer, so the numbers are the model call itself
    (launch overhead at small batches, compute at large ones); `score_e2e` adds the host copies
    and the numpy round trip of `detector.score`."""
    if not torch.cuda.is_available():
        return {"available": False}
    det = detector.to("cuda")
    net = det.net
    C, W = len(det.channels), det.window
    out: dict = {"available": True, "device": torch.cuda.get_device_name(0), "rows": []}
    compiled = None
    try:
        compiled = torch.compile(net, mode="reduce-overhead", dynamic=False)
    except Exception as exc:  # noqa: BLE001 - compile is optional (no triton etc.)
        out["compile_error"] = str(exc)[:200]

    def sync(fn):
        def run():
            fn()
            torch.cuda.synchronize()
        return run

    for n in sizes:
        x = torch.randn(n, W, C, device="cuda")
        row = {"batch": n}
        with torch.inference_mode():
            per_s, rs = _rate(sync(lambda x=x: net(x)), n, budget_s)
            row["eager_us_per_call"], row["eager_readings_per_s"] = round(1e6 / per_s, 2), round(rs, 1)
        # CUDA graph: capture once on a static input, replay.
        static_x = x.clone()
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.inference_mode(), torch.cuda.stream(stream):
            for _ in range(3):
                net(static_x)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph):
            net(static_x)
        per_s, rs = _rate(sync(graph.replay), n, budget_s)
        row["graph_us_per_call"], row["graph_readings_per_s"] = round(1e6 / per_s, 2), round(rs, 1)
        if compiled is not None:
            try:
                with torch.inference_mode():
                    per_s, rs = _rate(sync(lambda x=x: compiled(x)), n, budget_s)
                row["compiled_us_per_call"], row["compiled_readings_per_s"] = round(1e6 / per_s, 2), round(rs, 1)
            except Exception as exc:  # noqa: BLE001
                row["compile_error"] = str(exc)[:200]
        host = np.random.default_rng(0).standard_normal((n, W, C)).astype(np.float32)
        per_s, rs = _rate(lambda host=host: det.score(host), n, budget_s)
        row["score_e2e_us_per_call"], row["score_e2e_readings_per_s"] = round(1e6 / per_s, 2), round(rs, 1)
        out["rows"].append(row)
    det.to("cpu")
    return out


def run(model_dir: str, sizes=BATCH_SIZES, budget_s: float = 0.5) -> dict:
    from latentwatch.detectors.checkpoint import load

    model = load(model_dir, device="cpu")
    det = model.detector
    default = torch.get_num_threads()
    out = {"model": {"kind": det.kind, "window": det.window, "channels": len(det.channels)},
           "torch_threads": 1, "torch_default_threads": default}
    try:  # one thread, as the pipeline scores on CPU; then torch's default when that is more
        torch.set_num_threads(1)
        out["cpu"] = cpu_sweep(det, sizes, budget_s)
        if default > 1:
            torch.set_num_threads(default)
            out["cpu_default_threads"] = cpu_sweep(det, sizes, budget_s)
    finally:
        torch.set_num_threads(default)
    out["gpu"] = gpu_overhead(det, budget_s=budget_s)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.model_stage", description=__doc__)
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--budget", type=float, default=0.5, help="seconds per batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps(run(args.model, budget_s=args.budget), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
