"""A hot model swap under load, audited with the ledger (tests/support/ledger.py): a real
`latentwatch run` on a versioned directory of windowed (W=8) models, ~5,000 readings/s, an
incompatible and a corrupt version refused, a compatible one promoted mid-stream
(`latentwatch models promote` + SIGHUP, as an operator would).

Asserted, per delivery mode: no reading lost (a windowed sensor's history is kept across the
swap, so nothing warms up twice), none scored twice under exactly-once, every record of a
reading after the swap carries the new version (the swap falls between two batches: per
partition, the old version's offsets all come before the new one's), the refused versions each
get one ERROR line and their reload outcome while the loaded model keeps scoring, and the pause
in scoring at the swap is at most one batch longer than the longest gap between two batches
without a swap (Kafka timestamps of the latent records; the figures are printed).

A swap to another window under two members followed by rebalances (the changelog still holding
old tails) is tests/system/test_faults.py::test_window_change_while_members_restart_and_rebalance.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from itertools import groupby

import numpy as np
import pytest

from latentwatch.detectors import versions
from latentwatch.pipeline.cli.main import main as cli_main
from tests.support.processes import (
    TimelineStream,
    settled_ledger,
    start_pipeline,
    stop_process,
    wait_drained,
    wait_url,
)
from tests.support.streams import WINDOW, scrape, versioned_window_models, wait_metric

RATE = 5000  # readings/s fed while the versions change
PER_MESSAGE = 20  # readings per message: one Python feeder keeps the rate on a busy machine
STEP = 1000  # readings scored between two changes of `current`
RESULTS: dict[str, object] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    if RESULTS:
        print("\nswap figures:", RESULTS)


def _sample(url: str, name: str, **labels) -> float:
    """One labelled sample of /metrics (0 when absent)."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.split()[-1])
    return 0.0


def _wait_reload(url: str, outcome: str, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while _sample(url, "latentwatch_model_reloads_total", outcome=outcome) < 1:
        assert proc.poll() is None, "the pipeline exited"
        assert time.monotonic() < deadline, f"no reload with outcome {outcome} within {timeout} s"
        time.sleep(0.1)


def _point(root, version: str, proc) -> None:
    """Move `current` the way a script or a config sync would, and ask for a check now."""
    versions.set_current(root, version, reason="test")
    proc.send_signal(signal.SIGHUP)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_hot_swap_under_load(kafka_bootstrap, make_topic, producer, tmp_path, delivery):
    root = tmp_path / "models"
    v = versioned_window_models(root)
    s = TimelineStream(make_topic)
    s.window = WINDOW
    log = tmp_path / "run.log"
    feeding = threading.Event()
    feeding.set()

    def feed():  # a second of readings a chunk: each chunk ends with a flush (acks), which costs time
        chunk = 0
        while feeding.is_set():
            s.produce(producer, RATE, seed=chunk, bad_every=250, per_second=RATE, per_message=PER_MESSAGE)
            chunk += 1

    feeder = threading.Thread(target=feed)
    proc = start_pipeline(kafka_bootstrap, s, str(root), log, "--delivery", delivery, "--batch-size", "1000")
    try:
        url = wait_url(proc, log)
        started = time.monotonic()
        feeder.start()
        wait_metric(url, "latentwatch_readings_scored_total", STEP)
        _point(root, v["incompatible"], proc)  # refused: the old model keeps scoring
        _wait_reload(url, "incompatible", proc)
        scored = scrape(url, "latentwatch_readings_scored_total")
        wait_metric(url, "latentwatch_readings_scored_total", scored + STEP)
        assert cli_main(["models", "promote", str(root), v["b"]]) == 0  # what an operator runs
        proc.send_signal(signal.SIGHUP)
        _wait_reload(url, "success", proc)
        scored = scrape(url, "latentwatch_readings_scored_total")
        wait_metric(url, "latentwatch_readings_scored_total", scored + STEP)
        _point(root, v["corrupt"], proc)  # refused: the new model keeps scoring
        _wait_reload(url, "corrupt", proc)
        scored = scrape(url, "latentwatch_readings_scored_total")
        wait_metric(url, "latentwatch_readings_scored_total", scored + STEP)  # the new version goes on scoring
        feeding.clear()
        feeder.join(timeout=60)
        assert not feeder.is_alive()
        fed_s = time.monotonic() - started
        drain_started = time.monotonic()
        wait_drained(kafka_bootstrap, s, proc=proc)
        drain_s = time.monotonic() - drain_started
        batches = scrape(url, "latentwatch_batches_total")
        assert _sample(url, "latentwatch_model_info", version=v["b"]) == 1
        assert stop_process(proc) == 0
    finally:
        feeding.clear()
        stop_process(proc)
    text = log.read_text()
    assert "Traceback" not in text
    for outcome in ("incompatible", "corrupt"):
        lines = [line for line in text.splitlines() if f"refused ({outcome})" in line]
        assert len(lines) == 1 and " ERROR " in lines[0], text[-3000:]
    assert len(re.findall(rf"version {v['b']} swapped in \(was {v['a']}\)", text)) == 1

    led = settled_ledger(s, kafka_bootstrap)
    assert len(led.inputs) == s.sent
    assert not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    assert not led.lost, f"lost {len(led.lost)} readings: {sorted(led.lost)[:5]}"  # history kept: no 2nd warm-up
    assert len({(p, o) for p, o, _ in led.dead}) == len(s.bad)
    if delivery == "exactly-once":
        assert led.duplicates == 0
    # One swap, between two batches: the latent topic is the old version's records, then the new one's.
    runs = [(version, len(list(g))) for version, g in groupby(r[1] for r in led.scored_log)]
    assert [version for version, _ in runs] == [v["a"], v["b"]], runs[:10]
    assert runs[0][1] >= 2 * STEP and runs[1][1] >= STEP, runs  # both scored a good part of the stream
    by_version = {v["a"]: {}, v["b"]: {}}
    for _, version, (p, o, _i) in led.scored_log:
        seen = by_version[version].setdefault(p, [o, o])
        seen[0], seen[1] = min(seen[0], o), max(seen[1], o)
    for p, (_, last_old) in by_version[v["a"]].items():
        first_new = by_version[v["b"]].get(p, [float("inf")])[0]
        assert last_old < first_new, f"partition {p}: old version scored offset {last_old}, new {first_new}"
    # Alerts: the version of the record that scored the reading, and the same order.
    scored_by = {ref: version for _, version, ref in led.scored_log}
    assert led.alert_log and all(scored_by[ref] == version for _, version, ref in led.alert_log)
    assert [version for version, _ in groupby(r[1] for r in led.alert_log)] in ([v["a"], v["b"]], [v["b"]])
    # The pause: Kafka timestamps of the last old-version and first new-version latent records,
    # against the gaps between batches without a swap (the `batches - 1` largest gaps between
    # consecutive records; those inside a batch are ~0 ms).
    ts = np.array([r[0] for r in led.scored_log], dtype=np.int64)
    cut = runs[0][1]
    gaps = np.diff(ts)
    swap_gap = int(gaps[cut - 1])
    others = np.delete(gaps, cut - 1)
    boundaries = np.sort(others)[::-1][:max(1, int(batches) - 2)]
    period = float(np.median(boundaries))
    RESULTS[delivery] = {"readings": s.sent, "batches": int(batches), "swap_gap_ms": swap_gap,
                         "batch_gap_ms_median": period, "batch_gap_ms_max": int(others.max()),
                         "duplicates": led.duplicates, "scored_old": runs[0][1], "scored_new": runs[1][1],
                         "alerts": len(led.alert_log), "fed_s": round(fed_s, 1),
                         "fed_per_s": round(s.sent / fed_s), "drain_s": round(drain_s, 1)}
    # At most one batch: no longer than the longest gap between two batches without a swap,
    # plus one typical batch (the machine's noise is in both).
    assert swap_gap <= others.max() + period, RESULTS[delivery]
