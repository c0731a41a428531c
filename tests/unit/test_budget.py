"""Every record fits the producer's limit and every batch its output budget, by construction."""

from __future__ import annotations

import json

from latentwatch.pipeline import budget
from latentwatch.pipeline.config import Settings
from latentwatch.pipeline.decode import MAX_SENSOR_ID_BYTES
from latentwatch.pipeline.scorer import Scorer
from latentwatch.pipeline.state import StateStore

from tests.support.fakes import FakeMessage
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


def _scorer(model, cap=None):
    return Scorer(model, max_message_bytes=5_000_000, max_future_s=86_400, late_policy="score", critical_ratio=2.0,
                  latent_topic=True, changelog=True, max_message_readings=cap)


def test_the_largest_records_a_reading_makes_are_under_the_per_reading_bound():
    model = stub_model(window=1)
    model.threshold.value = -1.0  # every reading alerts
    worst_id = '"\\' * (MAX_SENSOR_ID_BYTES // 2)  # every character escaped in JSON
    n = 50
    body = {"sensor_id": worst_id, "readings": [{"ts": NOW - 100 + i, "values": [3e38, -3e38, 1e-30]}
                                                for i in range(n)]}
    msg = FakeMessage(json.dumps(body).encode(), worst_id.encode(), "in", 0, 2**40)
    batch = _scorer(model).score([msg], StateStore(), NOW)
    readings = [(k, v) for k, v in batch.alerts if json.loads(v)["kind"] == "reading"]
    episodes = [(k, v) for k, v in batch.alerts if json.loads(v)["kind"] == "episode"]
    assert batch.n_scored == n and len(readings) == n and len(episodes) == 1 and not batch.dead
    made = max(len(k) + len(v) for k, v in readings) + max(len(k) + len(v) for k, v in episodes) \
        + max(len(k) + len(v) for k, v in batch.latents)
    assert made <= budget.per_reading_bytes(model, Settings().topics, latent_topic=True)


def test_a_message_with_more_readings_than_the_output_budget_allows_is_a_dead_letter():
    model = stub_model(window=1)
    body = {"sensor_id": "s", "readings": [{"ts": NOW - 100 + i, "values": [1.0, 2.0, 3.0]} for i in range(20)]}
    small = {"sensor_id": "t", "readings": body["readings"][:5]}
    msgs = [FakeMessage(json.dumps(b).encode(), None, "in", 0, i) for i, b in enumerate([body, small])]
    batch = _scorer(model, cap=10).score(msgs, StateStore(), NOW)
    assert [(i, reason) for i, reason, _ in batch.dead] == [(0, "too_large")]
    assert batch.n_scored == 5 and batch.next_offsets() == {("in", 0): 2}  # committed past it


def test_the_reading_cap_keeps_a_batch_under_max_output_bytes():
    off = budget.per_reading_bytes(stub_model(window=1), Settings().topics, latent_topic=False)
    # the defaults: a reading's worst case (a 256-byte id escaped twice over, an alert and an episode
    # event) is ~4.5 kB, so 128 MiB holds ~29,500 of them, a little under the 32,768 reading cap
    assert 0.85 * 32768 < budget.readings_cap(32768, 128 * 2**20, off) <= 32768
    per = budget.per_reading_bytes(stub_model(window=1), Settings().topics, latent_topic=True)
    # with the latent topic on, a reading's worst case (alert, episode event, latent record) is
    # ~6 kB: 128 MiB holds ~21,800 of them
    assert budget.readings_cap(32768, 4 * 2**20, per) == 4 * 2**20 // per
    assert budget.readings_cap(32768, 4 * 2**20, per) * per <= 4 * 2**20


def test_a_model_whose_state_record_cannot_fit_the_producer_is_refused():
    assert budget.changelog_fits(32, 16, 1_000_000) is None
    why = budget.changelog_fits(256, 512, 1_000_000)  # two tails of 255 x 512 float32: 1.04 MB
    assert why is not None and "message.max.bytes" in why
    assert budget.changelog_record_bytes(256, 512) > 1_000_000 > budget.changelog_record_bytes(32, 16)


def test_the_pipeline_refuses_at_start_a_model_whose_state_record_cannot_fit_with_one_line():
    import pytest
    from latentwatch.pipeline.errors import UserError
    from latentwatch.pipeline.runner import Pipeline

    with pytest.raises(UserError) as info:
        Pipeline(Settings(), stub_model(channels=[f"c{i}" for i in range(512)], window=256))
    assert "message.max.bytes" in str(info.value) and "\n" not in str(info.value)


def test_sizing_the_worst_case_records_warns_nothing():
    """per_reading_bytes runs at every start and swap with the largest floats: their products in
    the record code overflow to inf by design, which must not print a RuntimeWarning to the log
    of every process (it did: alerts.py 'overflow encountered in multiply' at each start)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert budget.per_reading_bytes(stub_model(window=1), Settings().topics, latent_topic=True) > 0
