"""The scorer without a broker: windows across batches, purity (a redone batch changes nothing
twice), the reading cap, and values that would overflow float32."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latentwatch.detectors.thresholds import AdaptiveThreshold, QuantileThreshold
from latentwatch.pipeline.state import StateStore
from tests.support.fakes import messages
from tests.support.scoring import reading, scorer_for
from tests.support.stub_model import stub_model

NOW = 1_800_000_000.0


def test_windows_are_the_last_w_readings_of_each_sensor_across_batches():
    model = stub_model(window=3)
    sc, store = scorer_for(model), StateStore()
    # sensor A: 0, 2, 4, 6 ; sensor B: 1, 3, 5 (interleaved in one partition)
    batch = sc.score(messages([reading("A" if i % 2 == 0 else "B", NOW - 100 + i, i) for i in range(7)]), store, NOW)
    assert batch.n_readings == 7 and batch.n_scored == 3  # A: 4, 6; B: 5 (the rest warm up)
    latent_src = sorted((json.loads(v)["sensor_id"], json.loads(v)["source"]["offset"]) for _, v in batch.latents)
    assert latent_src == [("A", 4), ("A", 6), ("B", 5)]
    assert store.get((0, "A")) is None  # nothing applied before the commit
    store.apply(batch.updates)
    assert store.get((0, "A")).tail[:, 0].tolist() == [4, 6]
    nxt = sc.score(messages([reading("A", NOW - 50, 8)], first_offset=7), store, NOW)
    assert nxt.n_scored == 1  # its window spans the batch boundary: 4, 6, 8
    store.drop_partitions({0})
    again = sc.score(messages([reading("A", NOW - 40, 9)], first_offset=8), store, NOW)
    assert again.n_scored == 0  # a dropped partition's sensors warm up again


def test_a_redone_batch_gives_the_same_outputs_and_moves_adaptive_thresholds_once():
    model = stub_model(window=1)
    rng = np.random.default_rng(0)
    model.threshold = AdaptiveThreshold(alpha=0.2, base=QuantileThreshold(0.99)).fit(rng.chisquare(3, 5000) / 3)
    sc, store = scorer_for(model, changelog=True), StateStore()
    batch_msgs = messages([reading("s1", NOW - 100 + i, rng.normal()) for i in range(50)])
    first = sc.score(batch_msgs, store, NOW)
    redo = sc.score(batch_msgs, store, NOW)  # the same batch after a rewind: nothing was applied
    assert first.updates[(0, "s1")].threshold == redo.updates[(0, "s1")].threshold
    assert first.updates[(0, "s1")].threshold != (model.threshold.mean0, model.threshold.var0)
    assert model.threshold.state == {}  # the threshold object itself never changes in the stream
    assert [v for _, v in first.alerts] == [v for _, v in redo.alerts] or len(first.alerts) == len(redo.alerts)
    store.apply(first.updates)
    moved_once = store.get((0, "s1")).threshold
    assert moved_once == first.updates[(0, "s1")].threshold


def test_max_readings_caps_readings_not_messages():
    sc, store = scorer_for(stub_model()), StateStore()
    payloads = [{"sensor_id": f"s{i}", "readings": [{"ts": NOW - 100 + j, "values": [1, 2, 3]} for j in range(10)]}
                for i in range(5)]
    batch = sc.score(messages(payloads), store, NOW, max_readings=25)
    assert batch.n_readings == 20 and len(batch.messages) == 2
    assert [m.offset() for m in batch.rest] == [2, 3, 4]
    assert batch.next_offsets() == {("in", 0): 2}
    one = sc.score(messages(payloads[:2]), store, NOW, max_readings=5)
    assert len(one.messages) == 1 and one.n_readings == 10  # at least one message, whatever its size


def test_a_batch_past_max_readings_is_parsed_once_and_the_rest_not_at_all(monkeypatch):
    # Parsing is most of a batch's cost: the cut must not decode the taken messages twice, nor
    # decode those it hands back (they are decoded with the next batch). Only the message that
    # crosses the cap is parsed and then handed back.
    from latentwatch.pipeline.decode.jsonmsg import JsonDecoder

    sc, store = scorer_for(stub_model()), StateStore()
    parsed = []
    real = JsonDecoder._parse
    monkeypatch.setattr(JsonDecoder, "_parse", lambda self, v, k: parsed.append(v) or real(self, v, k))
    payloads = [{"sensor_id": f"s{i}", "readings": [{"ts": NOW - 100 + j, "values": [1, 2, 3]} for j in range(10)]}
                for i in range(40)]
    batch = sc.score(messages(payloads), store, NOW, max_readings=25)
    assert batch.n_readings == 20 and len(batch.rest) == 38
    assert len(parsed) == 3
    bad = messages([{"sensor_id": "x"}, *payloads[:3]])  # a dead letter holds no readings: taken
    parsed.clear()
    cut = sc.score(bad, store, NOW, max_readings=25)
    assert len(cut.dead) == 1 and cut.n_readings == 20 and [m.offset() for m in cut.rest] == [3]
    assert len(parsed) == 4


def test_float32_max_is_a_dead_letter_for_a_scaled_model_not_a_crash():
    from latentwatch.detectors.checkpoint import load, save, summarise_training_data  # noqa: F401
    from latentwatch.detectors.networks import make_detector

    rng = np.random.default_rng(1)
    X = rng.normal(size=(600, 3)).astype(np.float32)
    det = make_detector("pca", latent_dim=2).fit(X, ["a", "b", "c"])
    model = stub_model()
    model.detector = det
    model.threshold = QuantileThreshold(0.99).fit(det.score(X[:, None, :]).score)
    sc = scorer_for(model)
    batch = sc.score(messages([reading("s", NOW - 10, 3.4e38), reading("s", NOW - 9, 0.1)]), StateStore(), NOW)
    assert [(i, reason) for i, reason, _ in batch.dead] == [(0, "out_of_range")]
    assert batch.n_scored == 1 and np.isfinite(batch.scores).all()


def test_a_non_finite_score_becomes_the_largest_float_and_alerts():
    # the stub model has no scaler to check the range against: its float32 arithmetic overflows
    sc = scorer_for(stub_model(threshold=9.0))
    batch = sc.score(messages([reading("s", NOW - 10, 3.4e38)]), StateStore(), NOW)
    assert np.isfinite(batch.scores).all() and batch.scores[0] > 1e300
    alert = json.loads(batch.alerts[0][1])
    assert alert["score"] is not None and alert["score"] > 1e300


def test_late_readings_are_judged_against_committed_state_and_the_batch_itself():
    sc, store = scorer_for(stub_model()), StateStore()
    first = sc.score(messages([reading("s", NOW - 10, 1), reading("s", NOW - 20, 1)]), store, NOW)
    assert [r for _, r, _ in first.dead] == ["late"]
    store.apply(first.updates)
    second = sc.score(messages([reading("s", NOW - 10, 1)], first_offset=2), store, NOW)
    assert [r for _, r, _ in second.dead] == ["late"]
    scored = scorer_for(stub_model(), late_policy="score").score(
        messages([reading("s", NOW - 10, 1)], first_offset=2), store, NOW)
    assert not scored.dead and scored.n_scored == 1


@pytest.mark.parametrize("window", [1, 4])
def test_changelog_records_carry_the_entry_and_the_one_before(window):
    from latentwatch.pipeline import state

    sc, store = scorer_for(stub_model(window=window), changelog=True), StateStore()
    b1 = sc.score(messages([reading("s", NOW - 50 + i, i) for i in range(6)]), store, NOW)
    store.apply(b1.updates)
    b2 = sc.score(messages([reading("s", NOW - 40 + i, 10 + i) for i in range(3)], first_offset=6), store, NOW)
    (partition, key, value), = b2.changelog
    entry, before = state.unpack(value)
    assert (partition, key) == (0, b"s") and entry.valid_at == 9 and before.valid_at == 6
    assert state.as_of(entry, before, 9) is entry or state.as_of(entry, before, 9).valid_at == 9
    assert state.as_of(entry, before, 6).valid_at == 6  # b2 written, its offsets not committed
    assert state.as_of(entry, before, 3) is None
    assert entry.tail.shape == (window - 1, 3)


def test_alert_times_formatted_per_batch_match_one_by_one():
    from latentwatch.pipeline.times import iso, iso_many

    rng = np.random.default_rng(0)
    ts = np.concatenate([rng.uniform(946_684_800, 1.9e9, 5000), [1795255200.0005, 1795255200.0015, 1795255200.2495]])
    assert iso_many(ts) == [iso(float(t)) for t in ts]


def test_the_alarm_rule_gives_the_stream_the_same_flags_and_episodes_as_score_over_the_file():
    """Stream-sized batches, their state through the changelog record between batches, and a
    redone batch: the same alarmed readings, rules and episodes (open and close at the same
    readings, ids from the first reading) as `latentwatch score` over the readings as a file."""
    import math

    from latentwatch.detectors.alarms import AlarmRule
    from latentwatch.detectors.recipe import flag_series
    from latentwatch.pipeline import state

    model = stub_model(window=1, threshold=30.0)
    model.alarm = AlarmRule(instant=30.0, ewma_limit=math.log(3.0), floor=0.0, center=0.0, lam=0.2, close_after=5)
    sc, store = scorer_for(model, changelog=True), StateStore()
    rng = np.random.default_rng(3)
    v = rng.normal(size=160) * 0.5
    v[30:60] = 2.2  # a sustained shift: score 4.84, under the instant limit; the EWMA fires
    v[100] = 8.0  # one reading far out (score 64): the instant limit fires at once
    fired, rules, events = [], {}, []
    for b in range(0, 160, 7):
        batch = sc.score(messages([reading("s", NOW - 200 + i, v[i]) for i in range(b, min(b + 7, 160))],
                                  first_offset=b), store, NOW)
        redo = sc.score(batch.messages, store, NOW)  # a redone batch: same outputs, state applied once
        strip = lambda recs: [{k: r[k] for k in r if k != "detected_at"} for r in map(json.loads, recs)]  # noqa: E731
        assert strip(v for _, v in redo.alerts) == strip(v for _, v in batch.alerts)
        # the state goes through its changelog record, as a restore would read it
        store.apply({k: state.unpack(state.pack(e, None))[0] for k, e in batch.updates.items()})
        for r in map(json.loads, (a for _, a in batch.alerts)):
            if r["kind"] == "reading":
                fired.append(r["source"]["offset"])
                rules[r["source"]["offset"]] = r["rule"]
                assert r["statistic"] > r["limit"]
            else:
                events.append((r["event"], r["source"]["offset"], r["episode_id"]))
    as_file = flag_series(model.detector, model.threshold, model.alarm, np.repeat(v[:, None], 3, axis=1))
    assert fired == np.flatnonzero(as_file.anomaly).tolist()
    assert rules[100] == "instant" and 100 in fired and 99 not in fired
    assert {rules[o] for o in fired if 30 <= o < 60} == {"ewma"} and fired[0] <= 35  # within a few readings
    file_events = [(e, ep.ref[1]) for e, _row, ep in as_file.events]
    assert [(e, int(i.split("/")[2])) for e, _o, i in events] == file_events
    assert [e for e, _o, _i in events] == ["open", "close", "open", "close"]
    assert events[0][2] == f"in/0/{fired[0]}/0"  # named by its first reading


def test_latent_records_name_the_model_version_that_scored_them():
    """After a hot swap the latent topic must say which version scored each reading, like alerts."""
    model = stub_model()
    model.name, model.version = "pump", "20261129T101500Z"
    batch = scorer_for(model).score(messages([reading("s1", NOW - 10 + i, i) for i in range(3)]), StateStore(), NOW)
    assert len(batch.latents) == 3
    assert {json.dumps(json.loads(v)["model"]) for _, v in batch.latents} == \
        {json.dumps({"name": "pump", "version": "20261129T101500Z"})}


def test_frames_past_max_readings_are_cut_like_json():
    from latentwatch.pipeline.decode import encode_frame

    sc, store = scorer_for(stub_model()), StateStore()
    chans = list(sc.channels)
    frames = [encode_frame(NOW - 100 + np.arange(10, dtype=np.float64) + 20 * i,
                           np.ones((10, len(chans)), np.float32), chans) for i in range(5)]
    from tests.support.fakes import FakeMessage
    msgs = [FakeMessage(v, f"s{i}".encode(), "in", 0, i) for i, v in enumerate(frames)]
    batch = sc.score(msgs, store, NOW, max_readings=25)
    assert batch.n_readings == 20 and [m.offset() for m in batch.rest] == [2, 3, 4]
    assert batch.next_offsets() == {("in", 0): 2}


def test_adaptive_threshold_state_is_kept_per_partition_and_sensor_like_the_rest():
    """A sensor id seen on two partitions in one batch (a producer that changed its partitioner, or
    two sites reusing an id) is two sensors, as its windows and alarm state are: each (partition,
    sensor) gets the threshold state it gets when its partition is scored alone."""
    from latentwatch.pipeline.state import Entry

    model = stub_model(window=1)
    rng = np.random.default_rng(1)
    model.threshold = AdaptiveThreshold(alpha=0.2, base=QuantileThreshold(0.99)).fit(rng.chisquare(3, 5000) / 3)
    sc, store = scorer_for(model, changelog=True), StateStore()
    store.apply({(0, "s"): Entry(NOW - 200, np.empty((0, 3), np.float32), (0.5, 0.01)),
                 (1, "s"): Entry(NOW - 200, np.empty((0, 3), np.float32), (4.0, 1.0))})
    p0 = messages([reading("s", NOW - 100 + i, rng.normal()) for i in range(20)], partition=0)
    p1 = messages([reading("s", NOW - 100 + i, 1.5 + rng.normal()) for i in range(20)], partition=1)
    both = sc.score(p0 + p1, store, NOW)
    alone = {0: sc.score(p0, store, NOW), 1: sc.score(p1, store, NOW)}
    for p in (0, 1):
        assert both.updates[(p, "s")].threshold == alone[p].updates[(p, "s")].threshold
    assert both.updates[(0, "s")].threshold != both.updates[(1, "s")].threshold
    assert both.flagged.tolist() == alone[0].flagged.tolist() + alone[1].flagged.tolist()
