"""`latentwatch run --config` with model groups, as a real process: the groups read from the file,
the fallback group from --model, and a SIGHUP swapping in a new version of one group's model
(pipeline/groups.py, docs/groups.md)."""

from __future__ import annotations

import json
import signal
import time

import numpy as np
from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows, versions
from latentwatch.detectors.checkpoint import save, summarise_training_data
from latentwatch.pipeline.times import parse_time

from tests.support.detector_data import normal_data
from tests.support.harness import alerts_of, read_topic
from tests.support.processes import start_pipeline, stop_process, wait_drained, wait_url
from tests.support.streams import Stream, scrape


def _publish(root, channels, seed, name):
    X = normal_data(600, channels=len(channels), seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=1).fit(X, channels=channels)
    thr = QuantileThreshold(1.0, margin=3.0).fit(det.score(sliding_windows(X, 1)).score)
    return versions.publish(root, lambda d, v: save(d, det, thr, summarise_training_data(X, channels), name=name,
                                                    version=v))


def _produce(producer, topic, t0, rows, anomalies):
    for sensor, X, start, stop in rows:
        for i in range(start, stop):
            v = X[i].astype(np.float64)
            if (sensor, i) in anomalies:
                v[0] += 30.0
            producer.produce(topic, json.dumps({"sensor_id": sensor, "ts": t0 + i, "values": v.tolist()}).encode(),
                             key=sensor.encode())
    producer.flush(30)


def test_run_with_groups_from_the_config_file_and_a_sighup_swap_of_one_group(kafka_bootstrap, make_topic, producer,
                                                                               tmp_path):
    pumps, other = tmp_path / "pumps", tmp_path / "other"
    vp1 = _publish(pumps, ["a", "b", "c"], 0, "pump")
    vo = _publish(other, ["x", "y"], 1, "other")
    cfg = tmp_path / "pipeline.yaml"
    cfg.write_text(f"groups:\n  - name: pumps\n    match: pump-*\n    model: {pumps}\ngroups_fallback: rest\n")
    stream = Stream(make_topic, partitions=2)
    pump, valve = normal_data(40, 3, seed=5), normal_data(40, 2, seed=6)
    anomalies = {("pump-1", 10), ("valve-1", 12), ("pump-1", 30)}
    t0 = time.time() - 100
    _produce(producer, stream.input, t0, [("pump-1", pump, 0, 20), ("valve-1", valve, 0, 20)], anomalies)
    log = tmp_path / "run.log"
    proc = start_pipeline(kafka_bootstrap, stream, str(other), log, "--config", str(cfg))
    try:
        url = wait_url(proc, log, since=0)
        wait_drained(kafka_bootstrap, stream, proc=proc)
        assert scrape(url, 'latentwatch_group_readings_scored_total{group="pumps"}') == 20
        assert scrape(url, 'latentwatch_group_readings_scored_total{group="rest"}') == 20
        vp2 = _publish(pumps, ["a", "b", "c"], 2, "pump")
        proc.send_signal(signal.SIGHUP)  # look at the groups' `current` pointers now
        deadline = time.monotonic() + 60
        info = f'latentwatch_group_model_info{{group="pumps",name="pump",version="{vp2}"}}'
        while scrape(url, info) != 1 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert scrape(url, info) == 1, log.read_text()[-3000:]
        _produce(producer, stream.input, t0, [("pump-1", pump, 20, 40), ("valve-1", valve, 20, 40)], anomalies)
        wait_drained(kafka_bootstrap, stream, proc=proc)
    finally:
        assert stop_process(proc) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert f"group pumps: model pump version {vp2} swapped in (was {vp1})" in text
    got = {}
    for a in alerts_of(read_topic(kafka_bootstrap, stream.alerts)):
        if a["kind"] == "reading":
            key = (a["sensor_id"], round(parse_time(a["ts"]) - t0))
            got[key] = (a["model"]["group"], a["model"]["version"])
    assert got == {("pump-1", 10): ("pumps", vp1), ("valve-1", 12): ("rest", vo), ("pump-1", 30): ("pumps", vp2)}
