"""Shadow scoring in a real `latentwatch run --shadow DIR` (#15's Done-when): the agreement
metrics match an offline `latentwatch score` of the same readings with both models, the shadow
produces no alerts of its own, and the loaded model's outputs are what they are without it."""

from __future__ import annotations

import csv
import json
import time
from collections import defaultdict

import numpy as np

from latentwatch.pipeline.cli.main import main as cli_main
from latentwatch.pipeline.lifecycle.shadow import AGREEMENTS, spearman
from tests.support.harness import read_topic
from tests.support.processes import TimelineStream, start_pipeline, stop_process, wait_drained, wait_url
from tests.support.streams import CH, WINDOW, normal_values, scrape

CANDIDATE_WINDOW = 4


def _candidate(path) -> str:
    """Another window and a lower threshold than the W=8 model: they disagree on some readings."""
    from latentwatch.detectors.base import sliding_windows
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from latentwatch.detectors.networks import make_detector
    from latentwatch.detectors.thresholds import QuantileThreshold

    rng = np.random.default_rng(5)
    X = normal_values(rng, 3000).astype(np.float32)
    det = make_detector("pca", window=CANDIDATE_WINDOW, latent_dim=2).fit(X, CH)
    held = normal_values(rng, 3000).astype(np.float32)
    thr = QuantileThreshold(0.99).fit(det.score(sliding_windows(held, CANDIDATE_WINDOW)).score)
    save(path, det, thr, summarise_training_data(X, CH), name="candidate")
    return str(path)


def _offline(model: str, csv_path, out_path) -> tuple[np.ndarray, np.ndarray]:
    """(score, anomaly) per row of `latentwatch score`; NaN score on warm-up rows."""
    assert cli_main(["score", "--model", model, "--data", str(csv_path), "--out", str(out_path)]) == 0
    with open(out_path) as f:
        rows = list(csv.DictReader(f))
    score = np.array([float(r["score"]) if r["score"] else np.nan for r in rows])
    return score, np.array([r["anomaly"] == "1" for r in rows])


def test_shadow_agreement_matches_offline_scores_of_both_models(kafka_bootstrap, make_topic, producer,
                                                                window_model_dir, tmp_path):
    candidate = _candidate(tmp_path / "candidate")
    s = TimelineStream(make_topic)
    n = 6000
    s.produce(producer, n, bad_every=500)
    log = tmp_path / "run.log"
    proc = start_pipeline(kafka_bootstrap, s, window_model_dir, log, "--shadow", candidate)
    try:
        url = wait_url(proc, log)
        wait_drained(kafka_bootstrap, s, proc=proc)
        # metrics follow the commit within the same loop iteration: one scrape may be early
        for _ in range(50):
            counts = {a: _labelled(url, a) for a in AGREEMENTS}
            if sum(counts.values()) >= n - len(s.bad) - 16 * (WINDOW - 1):
                break
            time.sleep(0.1)
        unpaired = scrape(url, "latentwatch_shadow_unpaired_readings_total")
        failures = scrape(url, "latentwatch_shadow_failures_total")
        correlation = scrape(url, "latentwatch_shadow_score_correlation")
        alerts_metric = scrape(url, "latentwatch_alerts_total")
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()

    # Offline: each sensor's readings in offset order (a sensor is one key, so one partition),
    # exactly the bytes the pipeline read, scored by `latentwatch score` with each model.
    series = defaultdict(list)
    for m in sorted(read_topic(kafka_bootstrap, s.input), key=lambda m: (m.partition(), m.offset())):
        try:
            body = json.loads(m.value())
        except ValueError:
            continue  # the dead letters: neither model scores them
        series[body["sensor_id"]].append(body["values"])
    want = dict.fromkeys(AGREEMENTS, 0)
    pairs, want_unpaired = [], 0
    for sensor, values in series.items():
        data = tmp_path / f"{sensor}.csv"
        with open(data, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CH)
            w.writerows(values)
        sc, ac = _offline(window_model_dir, data, tmp_path / f"{sensor}.current.csv")
        sk, ak = _offline(candidate, data, tmp_path / f"{sensor}.candidate.csv")
        both = ~np.isnan(sc) & ~np.isnan(sk)
        want_unpaired += int(np.count_nonzero(~np.isnan(sc) ^ ~np.isnan(sk)))
        a, k = ac[both], ak[both]
        want["both"] += int(np.count_nonzero(a & k))
        want["current_only"] += int(np.count_nonzero(a & ~k))
        want["candidate_only"] += int(np.count_nonzero(~a & k))
        want["neither"] += int(np.count_nonzero(~a & ~k))
        pairs.append(np.stack([sc[both], sk[both]], 1))
    pairs = np.concatenate(pairs)
    print(f"\nshadow agreement: stream {counts}, offline {want}; unpaired {unpaired:.0f} (offline {want_unpaired}); "
          f"correlation {correlation:.6f} (offline {spearman(pairs[:, 0], pairs[:, 1]):.6f})")
    assert counts == {a: float(v) for a, v in want.items()}
    assert want["current_only"] > 0 and want["candidate_only"] > 0 and want["both"] > 0  # they do differ
    assert unpaired == want_unpaired == 16 * (WINDOW - CANDIDATE_WINDOW)
    assert failures == 0
    assert len(pairs) < 10_000  # all of them in the correlation window
    assert abs(correlation - spearman(pairs[:, 0], pairs[:, 1])) < 1e-3
    # Alerts come from the loaded model only: as many as its offline anomalies.
    alerts = read_topic(kafka_bootstrap, s.alerts)  # per-reading records and episode events
    readings = [m for m in alerts if json.loads(m.value())["kind"] == "reading"]
    assert len(readings) == alerts_metric == want["both"] + want["current_only"]
    assert {json.loads(m.value())["model"]["name"] for m in alerts} == {"test-window"}


def _labelled(url: str, agreement: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(url, timeout=5).read().decode()
    line = next(line for line in text.splitlines()
                if line.startswith(f'latentwatch_shadow_readings_total{{agreement="{agreement}"}}'))
    return float(line.split()[-1])
