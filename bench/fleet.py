"""`python -m latentwatch.bench fleet`: fleet detection harness and training-scale timer (issue 28).

Detection (default): a simulated fleet (`FleetSimulator`, pipeline/devtools/simulate.py) of
`--assets` assets x 8 channels. Writes, under `--out`:
  data/train.csv   `--train-per-asset` normal readings per asset (timestamp, sensor_id, c0..c7),
                   assets one after another;
  data/test.csv    the next `--test-per-asset` readings per asset, same columns (silent readings
                   are left out); per trouble kind `--per-kind` assets with one event each
                   (spike assets: `--spikes-per-asset` isolated jumps), `--clean` clean assets;
  data/truth.csv   sensor_id, step, row (data row of test.csv, -1 = not written), kind, event,
                   moved (1 = after a set-point change: the asset's new normal, not counted
                   as normal or as trouble).
Then the real CLI: `latentwatch train --data train.csv --out DIR` and `latentwatch score`.
  - per-sensor mode: train and score the files as they are; `score`'s CSV must carry `row` (the
    0-based data row of the input file), `sensor_id` and `anomaly` (the contract of issue 28);
  - today mode (when `train` rejects the sensor_id column, or `--mode today`): the sensor_id
    column is dropped (one model on the pooled readings, as today) and each asset's test rows
    are scored from a file of their own (so no window or EWMA spans two assets).
An event is detected when at least one of its labelled readings is flagged. Normal readings
alarmed: readings labelled normal, not silent and not after a set-point change; all assets
together, and the worst asset. Sensor health (issue 30; `score --episodes`): a stuck, flatline or
silent event is caught when a health episode of its rule opened on its asset within it (a
silence: at the asset's first reading after it); the other health episodes are counted as false,
on clean assets and on the others.
Reference columns (numpy, outside latentwatch, same readings): (a) each asset standardised by its
own training median / MAD (x 1.4826), one fleet PCA (3 components) on the pooled standardised
training readings, Q statistic (squared residual) against its 99.5 % training quantile; (b) each
asset's own PCA (standardised by its own mean / std, 3 components, its own 99.5 % Q limit).

Training scale (`--train-scale 1e5,1e6,1e7`): writes a fleet CSV of N readings (time-major: every
asset's next reading, then the next step; written in chunks, memory bounded by the chunk) and
times `latentwatch train --data that.csv`: wall time, the child's peak RSS (os.wait4) and
readings/s. Benchmarks are not tests: nothing here asserts a number.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from latentwatch.pipeline.devtools.simulate import (
    FLEET_ALL_KINDS,
    FLEET_LABELLED,
    HEALTH_KINDS,
    NORMAL,
    FleetSimulator,
)
from latentwatch.pipeline.times import iso_many

START_TS = 1_767_225_600.0  # 2026-01-01T00:00:00Z: the training readings' first timestamp
# 32 assets = 4 clean + 7 kinds x 4. Pinned here, not the simulator's defaults (FLEET_KINDS), so
# the issue-28 figures stay comparable when those change (issue 30 added flatline and silent there).
DEFAULT_KINDS = ("setpoint", "foreign_point", "stuck", "ramp", "spike", "flatline", "silent")
DESCRIBE = {
    "setpoint": "set point moves by 1.5 units and stays (first 60 readings labelled)",
    "foreign_point": "80 readings at another asset's operating point",
    "stuck": f"one channel stuck for {FLEET_LABELLED['stuck']} readings",
    "ramp": "one channel ramps to +1.0 over 300 readings",
    "spike": "isolated 1.5-unit jumps on one channel",
    "flatline": f"every channel frozen for {FLEET_LABELLED['flatline']} readings (sensor health)",
    "silent": f"no readings for {FLEET_LABELLED['silent']} steps (sensor health; nothing to flag in a file)",
}
REF_COMPONENTS, REF_QUANTILE = 3, 0.995


def log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the fleet and its truth -------------------------------------------------------------------
def assign_kinds(assets: int, kinds: list[str], per_kind: int = 4, clean: int = 4) -> list[str]:
    """A kind (or "clean") per asset, round robin over ["clean", *kinds] so a small fleet still
    gets every kind, each at most `per_kind` times (clean at most `clean`); assets beyond that
    are clean."""
    slots = ["clean", *kinds]
    cap = {"clean": clean, **{k: per_kind for k in kinds}}
    plan: list[str] = []
    while len(plan) < assets and any(plan.count(s) < cap[s] for s in slots):
        for s in slots:
            if len(plan) < assets and plan.count(s) < cap[s]:
                plan.append(s)
    return plan + ["clean"] * (assets - len(plan))


def schedule_trouble(sim: FleetSimulator, plan: list[str], t0: int, n: int, spikes_per_asset: int = 6,
                     seed: int = 0) -> None:
    """One event per trouble asset somewhere in steps [t0, t0 + n) (away from the edges);
    `spikes_per_asset` isolated spikes on each spike asset, at least n / (2 x spikes) apart."""
    rng = np.random.default_rng([seed, 28])
    margin = min(200, n // 10)
    for a, kind in enumerate(plan):
        if kind == "clean":
            continue
        if kind == "spike":
            seg = (n - 2 * margin) // spikes_per_asset
            for i in range(spikes_per_asset):
                sim.schedule(a, "spike", t0 + margin + i * seg + int(rng.integers(seg // 4, 3 * seg // 4 + 1)))
            continue
        length = FLEET_LABELLED[kind]
        hi = max(t0 + margin, t0 + n - length - margin)
        sim.schedule(a, kind, int(rng.integers(t0 + margin, hi + 1)))


def write_fleet_csv(out, sensor_ids: list[str], values: np.ndarray, channel_names: list[str], *,
                    start_ts: float = START_TS, interval: float = 1.0, step0: int = 0,
                    sensor_column: bool = True, header: bool = True, order: str = "asset") -> np.ndarray:
    """Write `values` [A, n, C] (NaN rows = silent, left out) as CSV rows `timestamp[,sensor_id],
    c0..`; `order` "asset" (each asset's readings, then the next asset's) or "time" (every
    asset's reading of one step, then the next step). `out` is a path or a text file. Returns
    the 0-based data row of each reading [A, n] (-1 = not written)."""
    A, n, C = values.shape
    ts = iso_many(start_ts + (step0 + np.arange(n)) * interval)
    keep = ~np.isnan(values).any(axis=2)
    idx = np.argwhere(keep) if order == "asset" else np.argwhere(keep.T)[:, ::-1]
    rows = np.full((A, n), -1, dtype=np.int64)
    rows[idx[:, 0], idx[:, 1]] = np.arange(len(idx))
    fmt = ("%s,%s," if sensor_column else "%s,") + ",".join(["%.6g"] * C) + "\n"
    own = isinstance(out, (str, Path))
    fh = open(out, "w", newline="") if own else out  # noqa: SIM115 - closed below when ours
    try:
        if header:
            fh.write(",".join(["timestamp", *(["sensor_id"] if sensor_column else []), *channel_names]) + "\n")
        for b in range(0, len(idx), 65536):
            part = idx[b:b + 65536]
            vals = values[part[:, 0], part[:, 1]].tolist()
            if sensor_column:
                fh.write("".join(fmt % (ts[t], sensor_ids[a], *v) for (a, t), v in zip(part.tolist(), vals)))
            else:
                fh.write("".join(fmt % (ts[t], *v) for (_a, t), v in zip(part.tolist(), vals)))
    finally:
        if own:
            fh.close()
    return rows


def count_detections(event_of: np.ndarray, kinds: list[str], flags: np.ndarray) -> dict[str, list[int]]:
    """`event_of` [A, n] (the event index of each reading, -1 = none), `kinds[e]` the kind of event
    e, `flags` [A, n] bool. An event is detected iff at least one of its readings is flagged.
    Returns {kind: [events, detected]} in order of first appearance."""
    hit = np.zeros(len(kinds), dtype=bool)
    on = (event_of >= 0) & flags
    hit[np.unique(event_of[on])] = True
    seen = np.zeros(len(kinds), dtype=bool)
    seen[np.unique(event_of[event_of >= 0])] = True
    out: dict[str, list[int]] = {}
    for e, kind in enumerate(kinds):
        if seen[e]:
            row = out.setdefault(kind, [0, 0])
            row[0] += 1
            row[1] += int(hit[e])
    return out


def false_alarm_rates(normal: np.ndarray, flags: np.ndarray, assets: list[int] | None = None) -> dict:
    """Percent of `normal` [A, n] readings flagged: all (chosen) assets together and the worst one."""
    rows = list(range(normal.shape[0])) if assets is None else list(assets)
    n = normal[rows].sum(axis=1)
    f = (normal & flags)[rows].sum(axis=1)
    per = np.where(n > 0, 100.0 * f / np.maximum(n, 1), 0.0)
    worst = int(np.argmax(per)) if len(per) else 0
    return {"all_pct": 100.0 * f.sum() / max(n.sum(), 1), "worst_pct": float(per[worst]) if len(per) else 0.0,
            "worst_asset": rows[worst] if rows else -1, "per_asset_pct": [round(float(p), 3) for p in per]}


def build_fleet(args, data: Path) -> dict:
    """Simulate, write train / test / truth CSVs; returns the arrays the scoring needs."""
    sim = FleetSimulator(args.assets, args.channels, seed=args.seed, mix=args.mix, spread=args.spread)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    plan = assign_kinds(args.assets, kinds, args.per_kind, args.clean)
    n_train, n_test = args.train_per_asset, args.test_per_asset
    train, _ = sim.next_readings(n_train)
    schedule_trouble(sim, plan, n_train, n_test, args.spikes_per_asset, args.seed)
    test, labels = sim.next_readings(n_test)
    events = [e for e in sim.events]
    event_of = np.full(labels.shape, -1, dtype=np.int64)
    moved = np.zeros(labels.shape, dtype=bool)
    for i, e in enumerate(events):
        event_of[e.asset, e.start - n_train:e.end - n_train] = i
        if e.kind == "setpoint":
            moved[e.asset, e.end - n_train:] = True
    silent = np.isnan(test).any(axis=2)
    normal = (labels == NORMAL) & ~moved & ~silent
    ids, ch = sim.sensor_ids, sim.channel_names
    write_fleet_csv(data / "train.csv", ids, train, ch)
    rows = write_fleet_csv(data / "test.csv", ids, test, ch, step0=n_train)
    with open(data / "truth.csv", "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["sensor_id", "step", "row", "kind", "event", "moved"])
        for a in range(sim.assets):
            for t in range(n_test):
                w.writerow([ids[a], n_train + t, rows[a, t], labels[a, t], event_of[a, t], int(moved[a, t])])
    return {"sim": sim, "plan": plan, "train": train, "test": test, "rows": rows, "labels": labels,
            "event_of": event_of, "event_kinds": [e.kind for e in events], "normal": normal, "silent": silent}


# ---- latentwatch through its CLI ----------------------------------------------------------------
def latentwatch_exe() -> str:
    here = Path(sys.executable).parent / "latentwatch"
    return str(here) if here.exists() else (shutil.which("latentwatch") or "latentwatch")


def _run(cmd: list[str], log_path: Path) -> tuple[int, str, float]:
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    log_path.write_text(f"$ {shlex.join(cmd)}\n--- stdout\n{r.stdout}\n--- stderr\n{r.stderr}")
    return r.returncode, r.stdout + r.stderr, time.monotonic() - t0


def _flags_from_scores(path: Path, row_map: dict[int, tuple[int, int]], flags: np.ndarray,
                       sensor_ids: list[str] | None) -> None:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if sensor_ids is not None and "sensor_id" not in (reader.fieldnames or []):
            raise RuntimeError(f"{path}: no sensor_id column in score's output (the per-sensor contract)")
        for rec in reader:
            a, t = row_map[int(rec["row"])]
            if sensor_ids is not None and rec["sensor_id"] != sensor_ids[a]:
                raise RuntimeError(f"{path}: row {rec['row']} is {rec['sensor_id']}, expected {sensor_ids[a]}")
            if rec.get("anomaly") in ("1", "1.0", "True", "true"):
                flags[a, t] = True


def run_latentwatch(args, fleet: dict, work: Path) -> dict:
    exe, data = args.latentwatch or latentwatch_exe(), work / "data"
    extra = shlex.split(args.train_args or "")
    sim, rows = fleet["sim"], fleet["rows"]
    flags = np.zeros(rows.shape, dtype=bool)
    health_opens: list[tuple[str, int, int]] = []  # (rule, asset, step index in test; -1: none)
    res: dict = {"exe": exe, "train_args": extra}
    mode = args.mode
    if mode in ("auto", "per-sensor"):
        model = work / "model-per-sensor"
        log("latentwatch train (per-sensor: the CSV with its sensor_id column) ...")
        rc, text, secs = _run([exe, "train", "--data", str(data / "train.csv"), "--out", str(model), *extra],
                              work / "train-per-sensor.log")
        if rc == 0:
            mode = "per-sensor"
            res["train_s"], res["train_output"] = round(secs, 1), text.strip().splitlines()[-3:]
            log(f"trained in {secs:.0f} s; scoring test.csv")
            rc, text, secs = _run([exe, "score", "--model", str(model), "--data", str(data / "test.csv"),
                                   "--out", str(work / "scores.csv"), "--episodes", str(work / "episodes.csv")],
                                  work / "score-per-sensor.log")
            if rc != 0:
                raise RuntimeError(f"latentwatch score failed (rc {rc}): {text[-2000:]}")
            res["score_s"] = round(secs, 1)
            idx = np.argwhere(rows >= 0)
            row_map = {int(rows[a, t]): (int(a), int(t)) for a, t in idx}
            _flags_from_scores(work / "scores.csv", row_map, flags, sim.sensor_ids)
            health_opens += _health_opens(work / "episodes.csv", row_map, sim.sensor_ids)
        elif args.mode == "per-sensor":
            raise RuntimeError(f"latentwatch train refused the sensor_id CSV (rc {rc}): {text[-2000:]}")
        else:
            res["per_sensor_refused"] = text.strip().splitlines()[-1:] if text.strip() else [f"rc {rc}"]
            log(f"train refused the sensor_id column ({res['per_sensor_refused'][0][:160]}): today's mode")
            mode = "today"
    if mode == "today":
        ids, ch, n_train = sim.sensor_ids, sim.channel_names, args.train_per_asset
        write_fleet_csv(data / "train-pooled.csv", ids, fleet["train"], ch, sensor_column=False)
        model = work / "model-today"
        log("latentwatch train (today: pooled readings, no sensor_id) ...")
        rc, text, secs = _run([exe, "train", "--data", str(data / "train-pooled.csv"), "--out", str(model), *extra],
                              work / "train-today.log")
        if rc != 0:
            raise RuntimeError(f"latentwatch train failed (rc {rc}): {text[-2000:]}")
        res["train_s"], res["train_output"] = round(secs, 1), text.strip().splitlines()[-3:]
        log(f"trained in {secs:.0f} s; scoring each asset's test rows from its own file")
        t0 = time.monotonic()
        per = data / "per-asset"
        per.mkdir(exist_ok=True)
        for a, sid in enumerate(ids):
            one = fleet["test"][a:a + 1]
            own_rows = write_fleet_csv(per / f"{sid}.csv", [sid], one, ch, step0=n_train, sensor_column=False)
            out = per / f"{sid}-scores.csv"
            eps = per / f"{sid}-episodes.csv"
            rc, text, _ = _run([exe, "score", "--model", str(model), "--data", str(per / f"{sid}.csv"),
                                "--out", str(out), "--episodes", str(eps)], per / f"{sid}-score.log")
            if rc != 0:
                raise RuntimeError(f"latentwatch score failed on {sid} (rc {rc}): {text[-2000:]}")
            row_map = {int(r): (a, int(t)) for t, r in enumerate(own_rows[0]) if r >= 0}
            _flags_from_scores(out, row_map, flags, None)
            health_opens += [(rule, a, t) for rule, _a, t in _health_opens(eps, row_map, None, asset=a)]
        res["score_s"] = round(time.monotonic() - t0, 1)
    res["mode"] = mode
    res["flags"] = flags
    res["health_opens"] = health_opens
    return res


def _health_opens(path: Path, row_map: dict[int, tuple[int, int]], sensor_ids: list[str] | None,
                  asset: int | None = None) -> list[tuple[str, int, int]]:
    """The health episodes `score --episodes` opened: (rule, asset, test step index of the reading it
    opened at; a silence: the asset's first reading after it; -1: found at the end of the file)."""
    if not path.exists():
        return []
    index = {s: a for a, s in enumerate(sensor_ids)} if sensor_ids is not None else None
    out = []
    with open(path, newline="") as fh:
        for rec in csv.DictReader(fh):
            if rec["kind"] != "health" or rec["event"] != "open":
                continue
            row = int(rec["row"])
            a = index[rec["sensor_id"]] if index is not None else asset
            out.append((rec["rule"], a, row_map[row][1] if row >= 0 else -1))
    return out


def count_health(fleet: dict, opens: list[tuple[str, int, int]]) -> dict:
    """Per health rule: [events injected, caught] (an episode of the rule on the event's asset at one
    of its readings, or for a silence at the asset's first reading after it); episodes opened
    outside any injected event of their rule, on clean assets and on the others, by rule."""
    sim, plan, n_train = fleet["sim"], fleet["plan"], fleet["sim"].step - fleet["labels"].shape[1]
    events = [(i, e) for i, e in enumerate(sim.events) if e.kind in HEALTH_KINDS]
    caught: set[int] = set()
    false = {"clean": dict.fromkeys(HEALTH_KINDS, 0), "other": dict.fromkeys(HEALTH_KINDS, 0)}
    for rule, a, t in opens:
        hit = [i for i, e in events if e.kind == rule and e.asset == a and
               (t == -1 and e.end - n_train >= fleet["labels"].shape[1] or
                e.start - n_train <= t <= e.end - n_train - (0 if rule == "silent" else 1))]
        if hit:
            caught.update(hit)
        else:
            false["clean" if plan[a] == "clean" else "other"][rule] += 1
    per = {k: [sum(1 for _, e in events if e.kind == k), sum(1 for i, e in events if e.kind == k and i in caught)]
           for k in HEALTH_KINDS}
    return {"caught": per, "false": false}


# ---- the references (numpy) ---------------------------------------------------------------------
def _pca_q(train: np.ndarray, k: int):
    """(mean, components [k, C]) of `train` [n, C]; Q(x) = |x - mean - P^T P (x - mean)|^2."""
    mu = train.mean(axis=0)
    _, _, vt = np.linalg.svd(train - mu, full_matrices=False)
    return mu, vt[:k]


def _q(x: np.ndarray, mu: np.ndarray, P: np.ndarray) -> np.ndarray:
    d = x - mu
    r = d - (d @ P.T) @ P
    return (r ** 2).sum(axis=-1)


def reference_fleet_pca(train: np.ndarray, test: np.ndarray, k: int = REF_COMPONENTS,
                        q: float = REF_QUANTILE) -> np.ndarray:
    """(a): per-asset median / MAD standardisation, one PCA on the pooled fleet, Q > its q-quantile."""
    med = np.median(train, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(train - med), axis=1, keepdims=True)
    mad = np.where(mad > 0, mad, 1.0)
    ztr, zte = (train - med) / mad, (test - med) / mad
    mu, P = _pca_q(ztr.reshape(-1, train.shape[2]), k)
    limit = np.quantile(_q(ztr.reshape(-1, train.shape[2]), mu, P), q)
    qs = _q(np.nan_to_num(zte), mu, P)
    return (qs > limit) & ~np.isnan(test).any(axis=2)


def reference_own_pca(train: np.ndarray, test: np.ndarray, k: int = REF_COMPONENTS,
                      q: float = REF_QUANTILE) -> np.ndarray:
    """(b): each asset its own standardisation, own PCA (k components) and own Q limit."""
    flags = np.zeros(test.shape[:2], dtype=bool)
    for a in range(train.shape[0]):
        m, s = train[a].mean(axis=0), train[a].std(axis=0)
        s = np.where(s > 0, s, 1.0)
        z = (train[a] - m) / s
        mu, P = _pca_q(z, k)
        limit = np.quantile(_q(z, mu, P), q)
        flags[a] = _q(np.nan_to_num((test[a] - m) / s), mu, P) > limit
    return flags & ~np.isnan(test).any(axis=2)


# ---- report -------------------------------------------------------------------------------------
def evaluate(fleet: dict, flags: np.ndarray, health_opens: list | None = None) -> dict:
    plan = fleet["plan"]
    clean = [a for a, k in enumerate(plan) if k == "clean"]
    det = count_detections(fleet["event_of"], fleet["event_kinds"], flags)
    out = {"detected": det, "normal_alarmed": false_alarm_rates(fleet["normal"], flags),
           "clean_assets_alarmed": false_alarm_rates(fleet["normal"], flags, clean) if clean else None}
    if health_opens is not None:  # latentwatch's health episodes (the references have none)
        out["health"] = count_health(fleet, health_opens)
    return out


def table(results: dict, kinds: list[str]) -> str:
    cols = list(results)
    head = "| trouble | " + " | ".join(cols) + " |\n| --- |" + " ---: |" * len(cols) + "\n"
    lines = []
    for kind in kinds:
        cells = []
        for c in cols:
            n, d = results[c]["detected"].get(kind, [0, 0])
            cells.append("n/a (no readings)" if kind == "silent" else f"{d} / {n}")
        lines.append(f"| {DESCRIBE.get(kind, kind)} | " + " | ".join(cells) + " |")
    fa = [f"{r['normal_alarmed']['all_pct']:.1f} % / {r['normal_alarmed']['worst_pct']:.1f} %" for r in results.values()]
    lines.append("| normal readings alarmed: all assets / worst asset | " + " | ".join(fa) + " |")
    cl = [f"{r['clean_assets_alarmed']['all_pct']:.1f} % / {r['clean_assets_alarmed']['worst_pct']:.1f} %"
          if r.get("clean_assets_alarmed") else "-" for r in results.values()]
    lines.append("| clean assets only: all / worst | " + " | ".join(cl) + " |")
    for rule in HEALTH_KINDS:
        if rule not in kinds:
            continue
        cells = [f"{r['health']['caught'][rule][1]} / {r['health']['caught'][rule][0]}" if "health" in r else "-"
                 for r in results.values()]
        lines.append(f"| health rule `{rule}`: {rule} events caught by a {rule} episode | " + " | ".join(cells) + " |")
    if any("health" in r for r in results.values()):
        fh = [(f"{sum(r['health']['false']['clean'].values())} / {sum(r['health']['false']['other'].values())}"
               if "health" in r else "-") for r in results.values()]
        lines.append("| health episodes outside an injected fault: clean assets / others | " + " | ".join(fh) + " |")
    return head + "\n".join(lines) + "\n"


def run_detection(args) -> int:
    out = Path(args.out)
    data = out / "data"
    data.mkdir(parents=True, exist_ok=True)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    log(f"simulating {args.assets} assets x {args.channels} channels: {args.train_per_asset} training + "
        f"{args.test_per_asset} test readings each (seed {args.seed})")
    fleet = build_fleet(args, data)
    results: dict = {}
    lw = run_latentwatch(args, fleet, out) if not args.skip_latentwatch else None
    if lw is not None:
        name = "latentwatch (per-sensor)" if lw["mode"] == "per-sensor" else "latentwatch today (pooled, one model)"
        results[name] = evaluate(fleet, lw.pop("flags"), lw.pop("health_opens"))
    if not args.skip_reference:
        log("reference columns (numpy)")
        results["(a) per-asset median/MAD, one fleet PCA (Q, 99.5 %)"] = evaluate(
            fleet, reference_fleet_pca(fleet["train"], fleet["test"]))
        results["(b) each asset's own PCA (3 comp., own 99.5 % Q)"] = evaluate(
            fleet, reference_own_pca(fleet["train"], fleet["test"]))
    shown = [k for k in kinds if k in {*fleet["event_kinds"], "silent"} and k in fleet["plan"]]
    md = table(results, shown)
    settings = {k: getattr(args, k) for k in ("assets", "channels", "mix", "spread", "train_per_asset", "test_per_asset", "seed",
                                              "per_kind", "clean", "spikes_per_asset", "kinds", "mode", "train_args")}
    report = {"settings": settings, "plan": fleet["plan"], "latentwatch": lw, "results": results,
              "notes": "detected = at least one flag on the event's labelled readings; normal readings alarmed: "
                       "labelled normal, not silent, not after a set-point change"}
    (out / "fleet.json").write_text(json.dumps(report, indent=1, default=str))
    header = (f"Fleet of {args.assets} assets x {args.channels} channels, seed {args.seed}: "
              f"{args.train_per_asset} training + {args.test_per_asset} test readings per asset"
              + (f"; latentwatch mode: {lw['mode']} (train {lw.get('train_s')} s, score {lw.get('score_s')} s)"
                 if lw else "") + "\n\n")
    (out / "fleet.md").write_text(header + md)
    print(header + md)
    log(f"wrote {out / 'fleet.md'} and {out / 'fleet.json'}")
    return 0


# ---- training scale -----------------------------------------------------------------------------
def write_scale_csv(path: Path, readings: int, assets: int, channels: int = 8, seed: int = 0,
                    chunk_steps: int = 2048, sensor_column: bool = True) -> int:
    """A fleet CSV of `readings` rows (time-major), written `chunk_steps` steps at a time."""
    sim = FleetSimulator(assets, channels, seed=seed)
    steps = -(-readings // assets)
    written, first = 0, True
    with open(path, "w", newline="") as fh:
        for s0 in range(0, steps, chunk_steps):
            n = min(chunk_steps, steps - s0)
            v, _ = sim.next_readings(n)
            left = readings - written
            if left < assets * n:  # the last chunk: only the first `left` rows (time-major)
                n_full, extra = divmod(left, assets)
                v = v[:, :n_full + (1 if extra else 0)].copy()
                if extra:
                    v[extra:, -1] = np.nan  # not written
            buf = io.StringIO()
            rows = write_fleet_csv(buf, sim.sensor_ids, v, sim.channel_names, step0=s0, header=first, order="time",
                                   sensor_column=sensor_column)
            fh.write(buf.getvalue())
            written += int((rows >= 0).sum())
            first = False
    return written


def _timed_child(cmd: list[str], log_path: Path) -> dict:
    """Run `cmd`, wait for it with os.wait4: wall time and that child's own peak RSS."""
    with open(log_path, "w") as fh:
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": p.returncode, "wall_s": round(wall, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1),
            "cpu_s": round(ru.ru_utime + ru.ru_stime, 1)}


def accepts_sensor_id(exe: str, work: Path) -> bool:
    """Does `latentwatch train` take a CSV with a sensor_id column? (a 256-row probe)"""
    probe = work / "probe.csv"
    write_scale_csv(probe, 256, 4)
    rc, _, _ = _run([exe, "train", "--data", str(probe), "--out", str(work / "model-probe")], work / "probe.log")
    probe.unlink()
    shutil.rmtree(work / "model-probe", ignore_errors=True)
    return rc == 0


def run_scale(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    exe, extra = args.latentwatch or latentwatch_exe(), shlex.split(args.train_args or "")
    with_ids = {"per-sensor": True, "today": False}.get(args.mode)
    if with_ids is None:
        with_ids = accepts_sensor_id(exe, out)
        log("train takes the sensor_id column" if with_ids else
            "train refuses the sensor_id column: the scale CSVs leave it out (today's mode)")
    rows = []
    for text in args.train_scale.split(","):
        n = int(float(text))
        path = out / f"scale-{n}.csv"
        log(f"writing {n:,} fleet readings ({args.assets} assets, time-major) to {path}")
        t0 = time.monotonic()
        written = write_scale_csv(path, n, args.assets, args.channels, args.seed, sensor_column=with_ids)
        write_s = time.monotonic() - t0
        log(f"wrote {written:,} rows, {path.stat().st_size / 2**20:.0f} MiB in {write_s:.0f} s; latentwatch train ...")
        r = _timed_child([exe, "train", "--data", str(path), "--out", str(out / f"model-scale-{n}"), *extra],
                         out / f"train-scale-{n}.log")
        r.update(readings=written, sensor_id_column=with_ids, csv_mib=round(path.stat().st_size / 2**20, 1), write_s=round(write_s, 1),
                 readings_per_s=round(written / r["wall_s"], 1) if r["wall_s"] else None)
        rows.append(r)
        log(f"{n:,}: rc {r['rc']}, {r['wall_s']} s, peak RSS {r['peak_rss_mib']} MiB, {r['readings_per_s']} readings/s")
        if not args.keep_data:
            path.unlink()
    md = (f"`latentwatch train --data FLEET.csv {shlex.join(extra)}`: {args.assets} assets, time-major rows, "
          f"sensor_id column {'kept' if with_ids else 'left out (today: train refuses it)'}\n\n"
          "| readings | train wall s | CPU s | peak RSS MiB | readings/s | rc |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n"
          + "".join(f"| {r['readings']:,} | {r['wall_s']} | {r['cpu_s']} | {r['peak_rss_mib']} | {r['readings_per_s']} | "
                    f"{r['rc']} |\n" for r in rows))
    (out / "scale.json").write_text(json.dumps({"train_args": extra, "assets": args.assets, "rows": rows}, indent=1))
    (out / "scale.md").write_text(md)
    print(md)
    return 0 if all(r["rc"] == 0 for r in rows) else 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--assets", type=int, default=32, help="assets in the fleet (default %(default)s)")
    p.add_argument("--channels", type=int, default=8, help="channels per asset (default %(default)s)")
    p.add_argument("--train-per-asset", type=int, default=2000, help="normal training readings per asset (default %(default)s)")
    p.add_argument("--test-per-asset", type=int, default=3000, help="test readings per asset (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mix", type=float, default=0.2,
                   help="per-asset perturbation of the shared loading matrix, std (default %(default)s)")
    p.add_argument("--spread", type=float, default=1.0,
                   help="between-asset std of the operating points, in units (default %(default)s)")
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                   help=f"trouble kinds, one per trouble asset (default %(default)s; from {', '.join(FLEET_ALL_KINDS)})")
    p.add_argument("--per-kind", type=int, default=4, help="assets per trouble kind (default %(default)s)")
    p.add_argument("--clean", type=int, default=4, help="clean assets (default %(default)s)")
    p.add_argument("--spikes-per-asset", type=int, default=6, help="isolated spikes per spike asset (default %(default)s)")
    p.add_argument("--mode", choices=["auto", "per-sensor", "today"], default="auto",
                   help="auto: per-sensor when train takes the sensor_id column, else today's pooled model")
    p.add_argument("--latentwatch", default=None, metavar="EXE",
                   help="the latentwatch executable to run (default: this venv's)")
    p.add_argument("--train-args", default="", help="extra arguments for `latentwatch train`, one string")
    p.add_argument("--skip-reference", action="store_true", help="no numpy reference columns")
    p.add_argument("--skip-latentwatch", action="store_true", help="only the references (no train / score)")
    p.add_argument("--train-scale", default=None, metavar="N[,N...]",
                   help="instead: time `latentwatch train` on generated fleet CSVs of N readings, e.g. 1e5,1e6,1e7")
    p.add_argument("--keep-data", action="store_true", help="--train-scale: keep the generated CSVs")
    p.add_argument("--out", default="fleet-results", help="output folder (default %(default)s)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m latentwatch.bench fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    args = p.parse_args(argv)
    if args.train_scale:
        return run_scale(args)
    unknown = [k for k in args.kinds.split(",") if k.strip() and k.strip() not in FLEET_ALL_KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; choose from {', '.join(FLEET_ALL_KINDS)}")
    return run_detection(args)


if __name__ == "__main__":
    sys.exit(main())
