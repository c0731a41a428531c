"""CloudEvents' Kafka protocol binding, binary mode, on the alerts topic (pipeline/cloudevents.py):
the headers the sink puts on every alert and episode record, checked against the binding's
required attributes (id, source, specversion, type) and the formats of the optional ones used."""

from __future__ import annotations

import numpy as np
from latentwatch.pipeline import records
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.scorer import ScoredBatch
from latentwatch.pipeline.sink import Sink
from latentwatch.pipeline.stop import StopBudget

from tests.support.cloudevents import check_binding


class Recorder:
    def __init__(self):
        self.produced = []

    def produce(self, topic, value=None, key=None, headers=None, on_delivery=None, partition=None):
        self.produced.append((topic, key, value, headers))


def alert() -> dict:
    return records.alert_record(topic="in", partition=2, offset=41, index=0, sensor_id="pump-7", ts=1_780_000_000.25,
                                score=9.0, threshold=1.0, top=[], latent=[0.1], model_name="m", model_version="1",
                                critical_ratio=2.0)


def episode(event: str, readings: int) -> dict:
    return {"kind": "episode", "event": event, "episode_id": "in/2/41/0", "sensor_id": "pump-7",
            "ts": "2026-05-28T20:26:40.250Z", "readings": readings}


def sink(**alerts) -> Sink:
    s = Sink(Settings(group_id="plant-a", alerts=alerts), on_error=lambda err: None, stop=StopBudget.never())
    s.producer = Recorder()
    return s


def test_every_alert_and_episode_record_carries_the_binding_and_the_body_is_unchanged():
    recs = [alert(), episode("open", 1), episode("update", 5), episode("close", 9)]
    values = [records.encode(r) for r in recs]
    s = sink()
    s.produce_batch(ScoredBatch([], [], [(b"pump-7", v) for v in values], [], [], np.empty(0), 0), None)
    assert [v for _, _, v, _ in s.producer.produced] == values  # the body as before
    seen = [check_binding(h, r) for (_, _, _, h), r in zip(s.producer.produced, recs)]
    assert [h["ce_type"] for h in seen] == ["io.latentwatch.alert.reading", "io.latentwatch.episode.open",
                                           "io.latentwatch.episode.update", "io.latentwatch.episode.close"]
    assert seen[0]["ce_id"] == recs[0]["alert_id"]
    assert len({h["ce_id"] for h in seen}) == 4  # source + id unique per event: an episode's events differ
    assert {h["ce_source"] for h in seen} == {"/latentwatch/plant-a"}


def test_cloudevents_can_be_turned_off_and_the_source_set():
    value = records.encode(alert())
    off = sink(cloudevents=False)
    off.produce_batch(ScoredBatch([], [], [(b"k", value)], [], [], np.empty(0), 0), None)
    assert off.producer.produced[0][3] is None
    named = sink(cloudevents_source="urn:plant:a")
    named.produce_batch(ScoredBatch([], [], [(b"k", value)], [], [], np.empty(0), 0), None)
    assert dict(named.producer.produced[0][3])["ce_source"] == b"urn:plant:a"
