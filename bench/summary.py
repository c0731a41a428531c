"""The machine's description, the targets, and the results as JSON and a markdown table."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from latentwatch.pipeline.config import BatchSettings

GIB = 1 << 30
# Targets of issue 7 (2-core CPU machine, one pipeline process).
TARGETS = {"pipeline_vs_decode_ceiling": 0.70, "pipeline_vs_naive": 20.0, "p99_latency_ms": 25.0,
           "peak_rss_bytes": 1 * GIB}
# Issue 17's targets for the binary frames workload (the rest as above).
FRAMES_TARGETS = {"pipeline_vs_decode_ceiling": 0.85, "readings_per_s": 2_000_000.0}


def machine() -> dict:
    import confluent_kafka
    import numpy
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_bytes": mem, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "numpy": numpy.__version__,
            "confluent_kafka": confluent_kafka.__version__, "librdkafka": confluent_kafka.libversion()[0],
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


def verdicts(w: dict) -> dict:
    """Ratios against the targets for one workload's results."""
    out = {}
    pipe = (w.get("pipeline") or {}).get("readings_per_s")
    decs = [(w.get(k) or {}).get("readings_per_s") for k in ("ceiling_decode", "ceiling_decode_after")]
    decs = [d for d in decs if d]
    dec = sum(decs) / len(decs) if decs else None  # before and after the pipeline run
    if dec:
        out["decode_ceiling_mean_readings_per_s"] = round(dec, 1)
    naive = (w.get("naive") or {}).get("readings_per_s")
    model = (w.get("model_stage_ceiling") or {}).get("readings_per_s")
    if model:
        out["model_stage_ceiling_readings_per_s"] = model
    if pipe and dec and model:  # what the loop itself costs: 1.0 = as fast as its slower stage alone
        out["pipeline_vs_min_ceiling"] = round(pipe / min(dec, model), 3)
    if pipe and dec:
        out["pipeline_vs_decode_ceiling"] = round(pipe / dec, 3)
    if pipe and naive:
        out["pipeline_vs_naive"] = round(pipe / naive, 1)
    if dec and naive:  # the most a pipeline with this decoder could reach over the naive loop
        out["decode_ceiling_vs_naive"] = round(dec / naive, 1)
    p99 = (w.get("latency") or {}).get("p99_ms")
    if p99 is not None:
        out["p99_latency_ms"] = p99
    rss = (w.get("pipeline") or {}).get("peak_rss_bytes")
    if rss:
        out["peak_rss_bytes"] = rss
    frames = (w.get("workload") or {}).get("format") == "frames"
    ceiling_target = FRAMES_TARGETS if frames else TARGETS
    out["met"] = {
        "pipeline_vs_decode_ceiling": out.get("pipeline_vs_decode_ceiling", 0) >= ceiling_target["pipeline_vs_decode_ceiling"],
        "pipeline_vs_naive": out.get("pipeline_vs_naive", 0) >= TARGETS["pipeline_vs_naive"],
        "p99_latency_ms": p99 is not None and p99 <= TARGETS["p99_latency_ms"],
        "peak_rss_bytes": bool(rss) and rss <= TARGETS["peak_rss_bytes"],
    }
    if frames:
        out["met"]["readings_per_s"] = bool(pipe) and pipe >= FRAMES_TARGETS["readings_per_s"]
    return out


def _n(x, digits=0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# latentwatch benchmark ({res['started_at']})", "",
             (f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_bytes'] / GIB:.1f} GiB RAM; "
             f"Python {m['python']}, torch {m['torch']} ({m['torch_threads']} threads), "
             f"confluent-kafka {m['confluent_kafka']} (librdkafka {m['librdkafka']}), numpy {m['numpy']}; "
             f"Kafka {res['broker']['version']} ({res['broker']['kind']}). Load average at start/end: "
             f"{res['loadavg_start']} / {res['loadavg_end']}."), "",
             (f"Model: {res['model']['kind']} (window {res['model']['window']}), {res['model']['channels']} channels. "
             f"Pipeline batch.max_readings {res['settings']['batch_size']}"
             + (f" (frames: {res['settings']['frames_batch_size']})" if res['settings'].get('frames_batch_size') else "")
             + ", batch.max_wait_ms "
              f"{res['settings'].get('max_wait_ms') or 'default (' + format(BatchSettings().max_wait_ms, 'g') + ')'}, torch threads "
              f"{res['settings'].get('torch_threads_env') or 'default'}. Command: `{res['command']}`"), "",
             ("| model | workload | readings | bare consume r/s | consume+decode r/s (before / after) | model stage r/s "
             "| pipeline r/s | pipeline / decode (>= 0.70) | pipeline / min(decode, model) "
             "| naive r/s | pipeline / naive (>= 20) | consume+decode / naive | latency offered r/s | p50 ms "
             "| p99 ms (<= 25) | p99.9 ms | peak RSS MiB (<= 1024) |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    by_model = res.get("models") or {res["model"]["kind"]: {"model": res["model"], "workloads": res["workloads"]}}
    for model_name, name, w in [(k, n, w) for k, mm in by_model.items() for n, w in mm["workloads"].items()]:
        v = w.get("verdict", {})
        met = v.get("met", {})
        lat = w.get("latency") or {}
        pipe = w.get("pipeline") or {}

        def mark(key, text, met=met):
            return f"{text} {'✅' if met.get(key) else '❌'}"

        mdesc = by_model[model_name]["model"]
        lines.append(
            f"| {mdesc['kind']} W={mdesc['window']} | {name} ({w['workload']['readings_per_message']}/msg) "
            f"| {_n(w['workload']['readings'])} "
            f"| {_n((w.get('ceiling_bare') or {}).get('readings_per_s'))} "
            f"| {_n((w.get('ceiling_decode') or {}).get('readings_per_s'))} / "
            f"{_n((w.get('ceiling_decode_after') or {}).get('readings_per_s'))} "
            f"| {_n(v.get('model_stage_ceiling_readings_per_s'))} "
            f"| {mark('readings_per_s', _n(pipe.get('readings_per_s'))) if 'readings_per_s' in met else _n(pipe.get('readings_per_s'))} "
            f"| {mark('pipeline_vs_decode_ceiling', _n(v.get('pipeline_vs_decode_ceiling'), 2))} "
            f"| {_n(v.get('pipeline_vs_min_ceiling'), 2)} "
            f"| {_n((w.get('naive') or {}).get('readings_per_s'))} | {mark('pipeline_vs_naive', _n(v.get('pipeline_vs_naive'), 1))} "
            f"| {_n(v.get('decode_ceiling_vs_naive'), 1)} "
            f"| {_n(lat.get('offered_readings_per_s'))} | {_n(lat.get('p50_ms'), 1)} "
            f"| {mark('p99_latency_ms', _n(lat.get('p99_ms'), 1))} | {_n(lat.get('p999_ms'), 1)} "
            f"| {mark('peak_rss_bytes', _n((pipe.get('peak_rss_bytes') or 0) / (1 << 20), 0))} |")
    for mm in by_model.values():
        for w in mm["workloads"].values():
            if w.get("ab"):
                from latentwatch.bench import ab

                lines += ab.markdown(w["ab"])
    sweeps = [(name, w["latency_sweep"]) for name, w in res["workloads"].items() if w.get("latency_sweep")]
    if sweeps:
        lines += ["", "Latency against offered rate:", "",
                  ("| workload | fraction of max | offered r/s | p50 ms | p99 ms | p99.9 ms | samples "
                   "| start-up p50 / p99 / max ms | CPU cores busy: machine / pipeline / generator |"),
                  "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        lines += [f"| {name} | {x['fraction_of_max']} | {_n(x['offered_readings_per_s'])} | {_n(x.get('p50_ms'), 1)} "
                  f"| {_n(x.get('p99_ms'), 1)} | {_n(x.get('p999_ms'), 1)} | {x['samples']} "
                  f"| {_n(x.get('startup_p50_ms'))} / {_n(x.get('startup_p99_ms'))} / {_n(x.get('startup_max_ms'))} "
                  f"| {_cpu(x)} |"
                  for name, sweep in sweeps for x in sweep]
    scales = [(name, w["scale"]) for name, w in res["workloads"].items() if w.get("scale")]
    if scales:
        lines += ["", f"Scale-out: pipeline processes in one consumer group ({res['broker']['kind']}), rate "
                  "from the last process's assignment to the last commit:", "",
                  "| workload | processes | readings measured | readings/s | batches per process |",
                  "|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {r['processes']} | {_n(r['readings_measured'])} | {_n(r['readings_per_s'])} "
                  f"| {r['batches_per_process']} |" for name, rows in scales for r in rows]
    stages = [(k, mm["model_stage"]) for k, mm in by_model.items() if (mm.get("model_stage") or {}).get("cpu")]
    for model_name, ms in stages:
        lines += model_stage_lines(model_name, ms)
    ms = res.get("model_stage") or {}
    gpu = ms.get("gpu") or {}
    if gpu.get("available"):
        lines += ["", f"GPU ({gpu['device']}), µs per call: eager / CUDA graph / torch.compile / score() end to end:", ""]
        lines += [f"- batch {r['batch']}: {r.get('eager_us_per_call')} / {r.get('graph_us_per_call')} / "
                  f"{r.get('compiled_us_per_call', '–')} / {r.get('score_e2e_us_per_call')}" for r in gpu["rows"]]
    else:
        lines += ["", "GPU: not available on this machine (the CUDA path of `bench/model_stage.py` did not run)."]
    lat = next((w["latency"] for w in res["workloads"].values() if w.get("latency")), {})
    warm = next((w["latency_warmup_run"] for w in res["workloads"].values() if w.get("latency_warmup_run")), None)
    lines += ["", "Latency: " + lat.get("method", "–")
              + "; offered rate = half the pipeline's measured maximum for that workload. Input CreateTime is "
              "each message's scheduled send time (generator delays count); the generator runs librdkafka "
              f"linger.ms {_n(lat.get('generator_linger_ms'))} and shares the 2 cores with the broker and the "
              "pipeline. The local broker runs group.coordinator.append.linger.ms=0 (Kafka 4.x's default of "
              "5 ms adds ~6 ms to every offset commit).",
              ("Consume+decode / naive: the most a pipeline using this decoder could reach over the naive "
               "loop here, scoring and producing nothing. Latency percentiles leave out readings produced "
               f"in a run's first {_n(lat.get('warmup_s'))} s (a new pipeline, topic and group each run: "
               "start-up backlog), which are reported as start-up"
               + (f"; an unmeasured {_n(warm.get('duration_s'))} s run at the headline rate goes first to "
                  "warm the broker's JIT (its figures are in the JSON, `latency_warmup_run`)." if warm else ".")),
              ("Frames: the batch workload's readings as binary Arrow IPC frames (pipeline/decode/frames.py); its "
               "targets are >= 2,000,000 readings/s and pipeline / decode >= 0.85 (issue 17)."),
              ("Throughput: readings between the group's first and last observed offset commit, over that time "
              "(committed offsets polled every 50 ms). Ceilings: one consumer, same fetch settings, timed from the "
              "first fetched batch; consume+decode is measured before and after the pipeline run and the ratio "
              "uses their mean. Naive: one message at a time, one model call per reading, flush and "
              "synchronous commit per message, on a prefix of the topic."), ""]
    return "\n".join(lines)


def model_stage_lines(model_name: str, ms: dict) -> list[str]:
    other = {r["batch"]: r for r in ms.get("cpu_default_threads") or []}
    d = ms.get("torch_default_threads")
    m = ms["model"]
    lines = ["", f"Model stage alone, {model_name} ({m['kind']}, window {m['window']}, dense form "
             f"{'on' if m.get('dense_form') else 'off'}): `detector.score` on random windows, CPU:", ""]
    for key, label in (("roofline", "1 thread"), ("roofline_network", "1 thread, the network without the dense form"),
                       ("roofline_default_threads", f"{d} threads")):
        r = ms.get(key)
        if r:
            lines.append(f"- roofline, {label}: {r['flops_per_window']:,} FLOPs per window as written "
                         f"(executed: {_n(r.get('executed_flops_per_window'))}); torch.mm float32 "
                         f"{r['matmul_gflops']} GFLOP/s now -> {_n(r['roofline_windows_per_s'])} windows/s; best "
                         f"{_n(r['best_windows_per_s'])} windows/s (batch {r['best_batch']}) = "
                         f"**{r['fraction_of_roofline']:.2f} of roofline**")
    ab = ms.get("dense_vs_network")
    if ab:
        lines.append(f"- dense form vs the network, alternating call by call ({ab['reps']} each, batch {ab['batch']}, "
                     f"1 thread): best {_n(ab['dense_best'])} vs {_n(ab['network_best'])} windows/s "
                     f"(**{ab['speedup_best']}x**), median {_n(ab['dense_median'])} vs {_n(ab['network_median'])} "
                     f"({ab['speedup_median']}x)")
    net = {r["batch"]: r for r in ms.get("cpu_network") or []}
    lines += ["", (f"| batch | readings/s (1 thread, as the pipeline) | µs per call | readings/s ({d} threads) "
                   "| µs per call | readings/s (1 thread, network without the dense form) |"),
              "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {_n(r['readings_per_s'])} | {_n(r['us_per_call'], 1)} "
              f"| {_n(other.get(r['batch'], {}).get('readings_per_s'))} "
              f"| {_n(other.get(r['batch'], {}).get('us_per_call'), 1)} "
              f"| {_n(net.get(r['batch'], {}).get('readings_per_s'))} |" for r in ms["cpu"]]
    return lines


def _cpu(x: dict) -> str:
    c = x.get("cpu_cores_used") or {}
    return " / ".join(_n(c.get(k), 2) for k in ("busy", "pipeline", "generator")) if c else "–"


def write(res: dict, out_dir: Path, stem: str = "latest") -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    j, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    j.write_text(json.dumps(res, indent=2) + "\n")
    md.write_text(markdown(res))
    return j, md
