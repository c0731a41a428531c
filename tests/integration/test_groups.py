"""Model groups on the real broker (pipeline/groups.py, docs/groups.md): one process, two groups
of other channels and windows, an unmatched sensor, and a hot swap of one group's model."""

from __future__ import annotations

import json
import time

import numpy as np
from latentwatch.detectors import QuantileThreshold, make_detector, sliding_windows, versions
from latentwatch.detectors.checkpoint import save, summarise_training_data
from latentwatch.pipeline.cli.run import load_groups
from latentwatch.pipeline.times import parse_time

from tests.support.detector_data import normal_data
from tests.support.harness import RunningPipeline, alerts_of, counter, read_topic, settings_for

PUMP_CH, FAN_CH = ["a", "b", "c"], ["x", "y"]


def _publish(root, channels, window, seed, name):
    X = normal_data(600, channels=len(channels), seed=seed)
    det = make_detector("pca", device="cpu", latent_dim=1, window=window).fit(X, channels=channels)
    thr = QuantileThreshold(1.0, margin=3.0).fit(det.score(sliding_windows(X, window)).score)  # 3x the largest
    return versions.publish(root, lambda d, v: save(d, det, thr, summarise_training_data(X, channels), name=name,
                                                    version=v))


def _produce(producer, topic, sensors, series, start, stop, t0, anomalies):
    for i in range(start, stop):
        for sensor, X in zip(sensors, series):
            v = X[i].astype(np.float64)
            if (sensor, i) in anomalies:
                v[0] += 30.0
            producer.produce(topic, json.dumps({"sensor_id": sensor, "ts": t0 + i, "values": v.tolist()}).encode(),
                             key=sensor.encode())
    producer.flush(30)


def _group(m, name, group):
    return counter(m, name, group=group)


def _info(m, group, name, version) -> float:
    return m.registry.get_sample_value("latentwatch_group_model_info", {"group": group, "name": name,
                                                                        "version": version}) or 0.0


def test_two_groups_in_one_process_a_no_group_dead_letter_and_a_swap_of_one_group(kafka_bootstrap, make_topic,
                                                                                   producer, tmp_path):
    pumps, fans = tmp_path / "pumps", tmp_path / "fans"
    vp = _publish(pumps, PUMP_CH, 4, 0, "pump")
    vf1 = _publish(fans, FAN_CH, 4, 1, "fan")
    topic = make_topic(partitions=2)
    settings = settings_for(kafka_bootstrap, topic, groups=[
        {"name": "pumps", "match": "pump-*", "model": str(pumps)},
        {"name": "fans", "match": "re:fan-[0-9]+", "model": str(fans)}], groups_fallback="none",
        **{"model.device": "cpu"})
    sensors = ["pump-1", "pump-2", "fan-1", "fan-2"]
    series = [normal_data(80, 3, seed=10), normal_data(80, 3, seed=11), normal_data(80, 2, seed=12),
              normal_data(80, 2, seed=13)]
    t0 = time.time() - 1000
    anomalies = {("pump-1", 30), ("fan-1", 30), ("pump-2", 60), ("fan-2", 60)}
    _produce(producer, topic, sensors, series, 0, 40, t0, anomalies)
    for i in range(3):  # matches no rule, and there is no fallback group
        producer.produce(topic, json.dumps({"sensor_id": "valve-1", "ts": t0 + i, "values": [1, 2, 3]}).encode(),
                         key=b"valve-1")
    producer.flush(30)

    groups = load_groups(settings)
    assert [(spec.name, model.version) for spec, model, _ in groups] == [("pumps", vp), ("fans", vf1)]
    run = RunningPipeline(settings, groups[0][1], groups=groups)
    m = run.pipeline.metrics
    try:
        scored = 2 * (40 - 3)  # window 4: each sensor's first 3 readings warm up
        assert run.wait_for(lambda m: _group(m, "latentwatch_group_readings_scored_total", "pumps") == scored
                            and _group(m, "latentwatch_group_readings_scored_total", "fans") == scored
                            and counter(m, "latentwatch_dead_letters_total", reason="no_group") == 3)
        warming = counter(m, "latentwatch_readings_warming_up_total")
        assert warming == 4 * 3
        # A new version of the fans' model, with another window: swapped in for the fans alone.
        vf2 = _publish(fans, FAN_CH, 2, 2, "fan")
        run.pipeline.lifecycle.request_check()  # what SIGHUP does
        assert run.wait_for(lambda m: _info(m, "fans", "fan", vf2) == 1)
        assert _info(m, "fans", "fan", vf1) == 0 and _info(m, "pumps", "pump", vp) == 1
        _produce(producer, topic, sensors, series, 40, 80, t0, anomalies)
        assert run.wait_for(lambda m: _group(m, "latentwatch_group_readings_scored_total", "pumps") == scored + 80
                            and _group(m, "latentwatch_group_readings_scored_total", "fans") == scored + 80)
        # Nobody warmed up again: the fans' tails were cut to the new window, the pumps' kept as they were.
        assert counter(m, "latentwatch_readings_warming_up_total") == warming
    finally:
        assert run.stop() == 0
    assert counter(m, "latentwatch_group_messages_consumed_total", group="pumps") == 160
    assert counter(m, "latentwatch_group_messages_consumed_total", group="fans") == 160
    assert counter(m, "latentwatch_messages_consumed_total") == 323

    alerts = [a for a in alerts_of(read_topic(kafka_bootstrap, settings.topics.alerts)) if a["kind"] == "reading"]
    seen, per_group = {}, {"pumps": 0, "fans": 0}
    for a in alerts:
        i = round(parse_time(a["ts"]) - t0)
        # a window of the injected reading (the window's last reading names the alert): W <= 4
        hit = [(s, j) for s, j in anomalies if s == a["sensor_id"] and j <= i < j + 4]
        assert len(hit) == 1, a
        model = (a["model"]["group"], a["model"]["name"], a["model"]["version"])
        assert seen.setdefault(hit[0], model) == model
        per_group[a["model"]["group"]] += 1
    assert seen == {("pump-1", 30): ("pumps", "pump", vp), ("fan-1", 30): ("fans", "fan", vf1),
                    ("pump-2", 60): ("pumps", "pump", vp), ("fan-2", 60): ("fans", "fan", vf2)}
    assert per_group == {g: counter(m, "latentwatch_group_alerts_total", group=g) for g in per_group}

    dlq = read_topic(kafka_bootstrap, settings.topics.dead_letter, expected=3)
    assert [dict(msg.headers())["lw-dlq-reason"] for msg in dlq] == [b"no_group"] * 3
    assert all(b"valve-1" in dict(msg.headers())["lw-dlq-detail"] for msg in dlq)

