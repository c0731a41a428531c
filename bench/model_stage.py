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


def ceiling(ms: dict, max_batch: int) -> float | None:
    """The model stage's ceiling for a pipeline whose batches hold at most `max_batch` readings:
    the best 1-thread rate (the pipeline's threads) of a batch size up to that."""
    rates = [r["readings_per_s"] for r in ms.get("cpu") or [] if r["batch"] <= max_batch]
    return max(rates) if rates else None


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


def flops_per_window(det) -> int:
    """Multiply-adds x 2 of the network on one window, as its layers are written (a convolution:
    every output position times every tap, padding included; PCA: its two products)."""
    from torch import nn

    total, W = 0, det.window
    for m in det.net.modules():
        if isinstance(m, nn.Conv1d):
            total += 2 * m.in_channels * m.out_channels // m.groups * m.kernel_size[0] * W
        elif isinstance(m, nn.Linear) and not (det.kind == "vae" and m is det.net.logvar):  # logvar: training only
            total += 2 * m.in_features * m.out_features
    comps = getattr(det.net, "components", None)
    if comps is not None:
        total += 2 * 2 * comps.numel()
    return total


def executed_flops_per_window(det) -> int | None:
    """The same, as the dense form scoring runs it (detectors/fastpath.py), or None without one."""
    form = getattr(det, "_dense", None)
    if form is None:
        return None
    return sum(2 * (hi - lo) * m.shape[1] for parts, _ in form.layers for lo, hi, m, _ in parts)


def matmul_gflops(threads: int, n: int = 1536, reps: int = 5) -> float:
    """Best-of-`reps` float32 `torch.mm` of two n x n matrices on `threads` threads: the roofline."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        best = min(_timed(lambda: torch.mm(a, b)) for _ in range(reps))
    finally:
        torch.set_num_threads(before)
    return 2 * n**3 / best / 1e9


def alternating(det, n: int, reps: int = 10) -> dict:
    """The dense form against the network on the same `n` windows, alternating call by call
    (`reps` each), so both see the same background load: best and median windows/s."""
    rng = np.random.default_rng(1)
    w = (det.scaler.mean + det.scaler.std * rng.standard_normal((n, det.window, len(det.channels)))).astype(np.float32)
    forms = {"dense": det._dense, "network": None}
    rates: dict = {k: [] for k in forms}
    try:
        for _ in range(reps):
            for k, form in forms.items():
                det._dense = form
                rates[k].append(n / _timed(lambda: det.score(w)))
    finally:
        det._dense = forms["dense"]
    out = {f"{k}_{stat}": round(float(f(v)), 1) for k, v in rates.items() for stat, f in (("best", max), ("median", np.median))}
    out.update(batch=n, reps=reps, speedup_best=round(out["dense_best"] / out["network_best"], 2),
               speedup_median=round(out["dense_median"] / out["network_median"], 2))
    return out


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def roofline(det, rows: list[dict], threads: int) -> dict:
    """FLOPs per window, a matmul rate on the same threads measured now, and the fraction of it
    the best batch of `rows` reached (windows/s x FLOPs per window / matmul FLOP/s)."""
    flops = flops_per_window(det)
    gflops = matmul_gflops(threads)
    best = max(rows, key=lambda r: r["readings_per_s"])
    return {"threads": threads, "flops_per_window": flops, "executed_flops_per_window": executed_flops_per_window(det),
            "matmul_gflops": round(gflops, 1), "roofline_windows_per_s": round(gflops * 1e9 / flops, 1),
            "best_batch": best["batch"], "best_windows_per_s": best["readings_per_s"],
            "fraction_of_roofline": round(best["readings_per_s"] * flops / (gflops * 1e9), 3)}


def run(model_dir: str, sizes=BATCH_SIZES, budget_s: float = 0.5) -> dict:
    from latentwatch.detectors.checkpoint import load

    model = load(model_dir, device="cpu")
    det = model.detector
    default = torch.get_num_threads()
    out = {"model": {"kind": det.kind, "window": det.window, "channels": len(det.channels),
                     "dense_form": getattr(det, "_dense", None) is not None},
           "torch_threads": 1, "torch_default_threads": default}
    try:  # one thread, as the pipeline scores on CPU; then torch's default when that is more
        torch.set_num_threads(1)
        out["cpu"] = cpu_sweep(det, sizes, budget_s)
        out["roofline"] = roofline(det, out["cpu"], 1)
        if getattr(det, "_dense", None) is not None:  # the network itself, as scoring ran before fastpath.py
            det.dense_scoring = False
            det._ready()
            out["cpu_network"] = cpu_sweep(det, sizes, budget_s)
            out["roofline_network"] = roofline(det, out["cpu_network"], 1)
            det.dense_scoring = True
            det._ready()
            out["dense_vs_network"] = alternating(det, 16384, reps=4 if budget_s < 0.1 else 10)
        if default > 1:
            torch.set_num_threads(default)
            out["cpu_default_threads"] = cpu_sweep(det, sizes, budget_s)
            out["roofline_default_threads"] = roofline(det, out["cpu_default_threads"], default)
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
