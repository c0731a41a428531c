"""A/B of the pipeline in one bench run: the same topic through pipeline processes that differ only
in their environment (a setting, e.g. `LATENTWATCH_SENSORS__ENABLED=false`, or another tree's code
on `PYTHONPATH`), run alternated A B A B ..., so that the load of a shared machine hits both.

The figure is the ratio B / A of each round (and of the medians), never a pass/fail on time.
Beside the wall-clock rate, each run's readings per CPU second of the pipeline process itself
(first to last commit): other work on the machine moves it far less than the wall-clock rate.
"""

from __future__ import annotations

import statistics

HEALTH = "on:;off:LATENTWATCH_SENSORS__ENABLED=false"  # --ab health: the sensor health rules (issue 30)


def parse(spec: str) -> dict[str, dict[str, str]]:
    """'NAME:VAR=VALUE,VAR=VALUE;NAME:...' -> {name: env}; 'health' is short for `HEALTH`.
    The first variant is A (the reference of the ratios)."""
    spec = HEALTH if spec.strip() == "health" else spec
    out: dict[str, dict[str, str]] = {}
    for part in [p.strip() for p in spec.split(";") if p.strip()]:
        name, sep, rest = part.partition(":")
        if not sep or not name.strip():
            raise SystemExit(f"--ab: {part!r} is not NAME:VAR=VALUE,... (e.g. 'on:;off:LATENTWATCH_SENSORS__ENABLED=false')")
        env = {}
        for kv in [x.strip() for x in rest.split(",") if x.strip()]:
            k, eq, v = kv.partition("=")
            if not eq or not k:
                raise SystemExit(f"--ab: {kv!r} in variant {name!r} is not VAR=VALUE")
            env[k] = v
        if name.strip() in out:
            raise SystemExit(f"--ab: variant {name.strip()!r} named twice")
        out[name.strip()] = env
    if len(out) < 2:
        raise SystemExit("--ab needs at least two variants (e.g. --ab health, or 'new:;old:PYTHONPATH=/path')")
    return out


def order(variants: dict, rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in run order: A B A B ... (each round every variant once, in the given order)."""
    return [(r, name) for r in range(rounds) for name in variants]


def summarise(runs: list[dict], variants: dict, key: str) -> dict:
    """Per variant the figures of `key` in run order and their median; per round and of the
    medians the ratio of each other variant to the first."""
    names = list(variants)
    per = {n: [r[key] for r in runs if r["variant"] == n and r.get(key) is not None] for n in names}
    med = {n: (statistics.median(v) if v else None) for n, v in per.items()}
    a = names[0]
    ratios: dict = {}
    for n in names[1:]:
        rounds = sorted({r["round"] for r in runs})
        by = {(r["round"], r["variant"]): r.get(key) for r in runs}
        ratios[n] = {"per_round": [round(by[(k, n)] / by[(k, a)], 3) if by.get((k, n)) and by.get((k, a)) else None
                                   for k in rounds],
                     "of_medians": round(med[n] / med[a], 3) if med[n] and med[a] else None}
    return {"values": per, "median": med, f"ratio_to_{a}": ratios}


def markdown(ab: dict) -> list[str]:
    """The A/B's lines for a results file."""
    names = list(ab["variants"])
    a = names[0]
    runs = " ".join(n for _, n in order(ab["variants"], ab["rounds"]))
    envs = "; ".join(f"**{n}** `{' '.join(f'{k}={v}' for k, v in env.items()) or '(as is)'}`"
                     for n, env in ab["variants"].items())
    lines = ["", (f"A/B in one run ({ab['model']} / {ab['workload']}, {ab['rounds']} rounds, run order {runs}); "
                  f"variants' environment: {envs}"), "",
             ("| run | round | variant | readings/s | readings per pipeline CPU s | peak RSS MiB | batches "
              "| health episode events | state records with health state | code | load avg (1 min) at start |"),
             "|---:|---:|---|---:|---:|---:|---:|---|---:|---|---:|"]
    for i, r in enumerate(ab["runs"], 1):
        pm = r.get("pipeline_metrics") or {}
        he = pm.get("health_episode_events")
        lines.append(f"| {i} | {r['round'] + 1} | {r['variant']} | {_n(r.get('readings_per_s'))} "
                     f"| {_n(r.get('readings_per_cpu_s'))} | {_n((r.get('peak_rss_bytes') or 0) / (1 << 20))} "
                     f"| {_n(pm.get('batches'))} | {', '.join(f'{k} {v:g}' for k, v in sorted(he.items())) if he else '0'} "
                     f"| {_n((r.get('state') or {}).get('with_health'))} of {_n((r.get('state') or {}).get('records'))} "
                     f"| {r.get('code') or '–'} | {r.get('loadavg_start', ['–'])[0]} |")
    lines.append("")
    for key, label in (("readings_per_s", "readings/s"), ("readings_per_cpu_s", "readings per pipeline CPU second"),
                       ("peak_rss_bytes", "peak RSS")):
        s = ab["summary"].get(key)
        if not s:
            continue
        for n, r in s[f"ratio_to_{a}"].items():
            lines.append(f"- {label}, {n} / {a}: per round {', '.join(_n(x, 3) for x in r['per_round'])}; "
                         f"of the medians **{_n(r['of_medians'], 3)}**")
    lat = ab.get("latency") or []
    if lat:
        head = (f"Latency at {_n(lat[0]['offered_readings_per_s'])} readings/s (half the median readings/s "
                f"of {a}), alternated the same way:")
        lines += ["", head, "",
                  "| run | variant | p50 ms | p99 ms | p99.9 ms | samples |", "|---:|---|---:|---:|---:|---:|"]
        lines += [f"| {i} | {x['variant']} | {_n(x.get('p50_ms'), 1)} | {_n(x.get('p99_ms'), 1)} "
                  f"| {_n(x.get('p999_ms'), 1)} | {x.get('samples')} |" for i, x in enumerate(lat, 1)]
        s = ab["summary"].get("p99_ms")
        lines.append("")
        if s:
            for n, r in s[f"ratio_to_{a}"].items():
                lines.append(f"- p99, {n} / {a}: per round {', '.join(_n(x, 3) for x in r['per_round'])}; "
                             f"of the medians **{_n(r['of_medians'], 3)}**")
    return lines


def _n(x, digits=0) -> str:
    if x is None:
        return "–"
    return f"{x:,.{digits}f}"


def code_of(env: dict) -> str:
    """Where a pipeline process with `env` imports the run loop from (a check that a PYTHONPATH
    variant really runs the other tree), and that tree's commit when it is a git work tree."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", "import latentwatch.pipeline.runner as r; print(r.__file__)"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=120, check=False)
    path = out.stdout.strip() or f"(import failed: {out.stderr.strip()[-200:]})"
    if out.returncode == 0:
        tree = Path(path).resolve().parent.parent
        rev = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             check=False)
        if rev.returncode == 0:
            path = f"{tree} @ {rev.stdout.strip()}"
    return path
