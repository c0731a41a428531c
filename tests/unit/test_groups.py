"""Model groups (pipeline/routing.py, pipeline/groups.py): routing rules, and the grouped scorer
against two stub models of different channels, without a broker."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from latentwatch.pipeline import routing
from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.groups import Group, GroupedScorer, GroupSpec
from latentwatch.pipeline.routing import MALFORMED, NO_GROUP, Router
from latentwatch.pipeline.state import Entry, Fit, StateStore

from tests.support.fakes import FakeMessage
from tests.support.scoring import scorer_for
from tests.support.stub_model import stub_model

PUMP_CH, FAN_CH = ["a", "b", "c"], ["x", "y"]


# -- routing rules ------------------------------------------------------------------------------
def test_globs_and_regexes_match_whole_ids_first_rule_wins_then_the_fallback():
    r = Router(["pump-*", "re:fan-\\d+", "*-7"], fallback=3)
    assert r.route("pump-7") == 0  # the first rule that matches, though *-7 matches too
    assert r.route("fan-12") == 1
    assert r.route("fan-12b") == 3  # the regex must match the whole id: no rule, the fallback
    assert r.route("valve-7") == 2
    assert r.route("PUMP-1") == 3  # case-sensitive
    assert r.route("xpump-1") == 3  # a glob is anchored too


def test_without_a_fallback_an_unmatched_sensor_routes_nowhere():
    r = Router(["pump-*"], fallback=None)
    assert r.route("pump-1") == 0
    assert r.route("fan-1") == NO_GROUP


def test_a_message_is_routed_by_its_key_else_a_keyless_jsons_body():
    r = Router(["pump-*", "fan-*"], fallback=None)
    body = orjson.dumps({"sensor_id": "fan-1", "ts": 1, "values": [1, 2]})
    assert r.route_message(body, b"pump-1") == 0  # the key (the contract: key = sensor id)
    assert r.route_message(body, None) == 1  # keyless: the body's sensor_id
    assert r.route_message(body, b"\xe4pump") == 1  # a key that is not UTF-8: the body's, as decoded
    assert r.route_message(b"{nope", None) == MALFORMED  # no sensor id: its decoder says why
    assert r.route_message(b"[1, 2]", None) == MALFORMED
    assert r.route_message(None, None) == MALFORMED
    frame = b"\xff\xff\xff\xff" + b"\x00" * 8
    assert r.route_message(frame, None) == NO_GROUP  # keyless frame: the fallback's, and there is none
    assert Router(["pump-*"], fallback=1).route_message(frame, None) == 1
    assert r.route_message(frame, b"fan-3") == 1  # a keyed frame by its key


def test_the_route_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(routing, "ROUTE_CACHE", 4)
    r = Router(["pump-*"], fallback=1)
    for i in range(10):
        assert r.route(f"pump-{i}") == 0
        assert len(r._cache) <= 4
    assert r.route("fan-1") == 1
    r._cache.clear()
    assert r.route("pump-" + "x" * 10_000) == 0 and r._cache == {}  # too long for a sensor id: not kept


def test_config_errors_are_one_clear_line():
    with pytest.raises(UserError) as bad:
        load_settings(None, {"groups": [{"name": "pumps", "match": "re:pump-(", "model": "m"}]})
    assert str(bad.value).startswith("invalid configuration: groups.0.match: match 're:pump-(' is not a valid "
                                     "regular expression") and "\n" not in str(bad.value)
    with pytest.raises(UserError, match="group name 'default' is used twice"):
        load_settings(None, {"groups": [{"name": "default", "match": "pump-*", "model": "m"}]})
    with pytest.raises(UserError, match="groups.0.name"):
        load_settings(None, {"groups": [{"name": "has space", "match": "pump-*", "model": "m"}]})
    with pytest.raises(UserError, match="groups.0.model: Field required"):
        load_settings(None, {"groups": [{"name": "p", "match": "pump-*", "mdl": "m"}]})
    s = load_settings(None, {"groups": [{"name": "p", "match": "pump-*", "model": "m"}], "groups_fallback": "none"})
    assert s.fallback_group is None
    assert load_settings(None, {}).groups == [] and load_settings(None, {}).fallback_group == "default"


# -- the grouped scorer ---------------------------------------------------------------------------
def _groups(fallback: bool):
    """pumps (a, b, c; threshold 9) and fans (x, y; threshold 4), and `other` (a, b, c) as the fallback."""
    specs = [(GroupSpec("pumps", "pump-*", "p"), stub_model(PUMP_CH, threshold=9.0)),
             (GroupSpec("fans", "fan-*", "f"), stub_model(FAN_CH, threshold=4.0))]
    if fallback:
        specs.append((GroupSpec("other", None, "o"), stub_model(PUMP_CH, threshold=9.0)))
    for _, model in specs:
        model.name = f"m{len(model.detector.channels)}"
    groups = []
    for i, (spec, model) in enumerate(specs):
        g = Group(i, spec, model, scorer=scorer_for(model, changelog=True))
        g.scorer.group = spec.name
        g.fit = Fit(1, len(model.detector.channels))
        groups.append(g)
    router = Router([s.match for s, _ in specs if s.match], len(specs) - 1 if fallback else None)
    return groups, GroupedScorer(groups, router)


def _msg(sensor, ts, values, offset, partition=0, key=True):
    body = json.dumps({"sensor_id": sensor, "ts": ts, "values": values}).encode()
    return FakeMessage(body, sensor.encode() if key else None, "in", partition, offset)


def _stream(t0=1_700_000_000.0):
    """Interleaved pumps and fans on two partitions; pump-1 and fan-1 anomalous at their 2nd reading."""
    out, off = [], {0: 0, 1: 0}
    for k in range(3):
        for sensor, n, part in (("pump-1", 3, 0), ("fan-1", 2, 1), ("pump-2", 3, 1), ("fan-2", 2, 0)):
            v = [0.0] * n
            if k == 1 and sensor.endswith("-1"):
                v[0] = 10.0  # z^2 = 100: mean 33 over 3 channels, 50 over 2: both alarm
            out.append(_msg(sensor, t0 + k, v, off[part], part))
            off[part] += 1
    return out


def _records(batch):
    return [json.loads(v) for _, v in batch.alerts]


def test_each_sensor_is_scored_by_its_groups_model_and_records_name_the_group():
    groups, gs = _groups(fallback=False)
    msgs = _stream()
    batch = gs.score(msgs, StateStore(), now=1_700_000_100.0)
    assert batch.messages == msgs and batch.rest == [] and batch.dead == []
    assert batch.n_readings == batch.n_scored == 12
    alerts = _records(batch)
    assert {(a["sensor_id"], a["model"]["group"], a["model"]["name"]) for a in alerts if a["kind"] == "reading"} == \
        {("pump-1", "pumps", "m3"), ("fan-1", "fans", "m2")}
    fan_alert = next(a for a in alerts if a["sensor_id"] == "fan-1" and a["kind"] == "reading")
    assert [c["channel"] for c in fan_alert["top_channels"]] == ["x", "y"]  # the fans model's channels
    assert {json.loads(v)["model"]["group"] for _, v in batch.latents} == {"pumps", "fans"}
    # Each group's model saw its own sensors only, in one call each.
    assert groups[0].model.detector.calls == 1 and groups[1].model.detector.calls == 1
    # The same as each group's scorer alone on its messages: scores and state updates.
    for g, sub in batch.parts:
        own = [m for m in msgs if m.key().decode().startswith(groups[g].spec.match[:-1])]
        alone = scorer_for(groups[g].model, changelog=True).score(own, StateStore(), now=1_700_000_100.0)
        assert sub.messages == own
        np.testing.assert_array_equal(sub.scores, alone.scores)
    assert set(batch.updates) == {(0, "pump-1"), (1, "fan-1"), (1, "pump-2"), (0, "fan-2")}
    assert batch.next_offsets() == {("in", 0): 6, ("in", 1): 6}
    assert sorted(batch.scores.tolist()) == sorted(np.concatenate([sub.scores for _, sub in batch.parts]).tolist())


def test_dead_letters_keep_their_original_positions_and_unmatched_sensors_are_no_group():
    groups, gs = _groups(fallback=False)
    t0 = 1_700_000_000.0
    msgs = [_msg("pump-1", t0, [0, 0, 0], 0), _msg("valve-9", t0, [0, 0, 0], 1),
            _msg("fan-1", t0, [0], 2),  # one value for two channels: missing_channels, in the fans group
            FakeMessage(b"{nope", None, "in", 0, 3),  # not JSON, no key: dead for its real reason
            _msg("fan-1", t0 + 1, [0, 0], 4), _msg("pump-1", t0 + 1, [0, 0, 0], 5)]
    batch = gs.score(msgs, StateStore(), now=t0 + 100)
    # fan-1's one value is short of the fans' 2 channels (the pumps' 3 would be short by 2)
    assert [(i, reason) for i, reason, _ in batch.dead] == [(1, "no_group"), (2, "missing_channels"), (3, "not_json")]
    assert batch.dead[1][2] == "1 values, the model has 2 channels"
    assert "valve-9" in batch.dead[0][2] and "groups_fallback is none" in batch.dead[0][2]
    assert batch.n_readings == 3 and batch.next_offsets() == {("in", 0): 6}
    # With a fallback, the unmatched sensor is scored by it.
    groups, gs = _groups(fallback=True)
    batch = gs.score(msgs, StateStore(), now=t0 + 100)
    assert [(i, reason) for i, reason, _ in batch.dead] == [(2, "missing_channels"), (3, "not_json")]
    assert batch.n_readings == 4 and (0, "valve-9") in batch.updates
    assert groups[2].model.detector.calls == 1


def test_a_cap_cuts_the_whole_batch_at_the_earliest_message_handed_back():
    _, gs = _groups(fallback=False)
    t0 = 1_700_000_000.0
    # pumps send 1 reading a message, fans 4 (a batch message): the cap is 6 readings.
    fan = lambda k, off: FakeMessage(json.dumps({"sensor_id": "fan-1", "readings": [
        {"ts": t0 + 4 * k + j, "values": [0, 0]} for j in range(4)]}).encode(), b"fan-1", "in", 0, off)
    pump = lambda k, off: _msg("pump-1", t0 + k, [0, 0, 0], off)
    msgs = [pump(0, 0), fan(0, 1), pump(1, 2), fan(1, 3), pump(2, 4), pump(3, 5)]
    batch = gs.score(msgs, StateStore(), now=t0 + 100, max_readings=6)
    # fans alone take fan(0) only (4 + 4 > 6): cut at fan(1), index 3; pumps had taken 4 messages and
    # are scored again with the 2 before the cut. 2 + 4 = 6 readings.
    assert batch.messages == msgs[:3] and batch.rest == msgs[3:]
    assert batch.n_readings == 6 and batch.next_offsets() == {("in", 0): 3}
    assert {k: e.last_ts for k, e in batch.updates.items()} == {(0, "pump-1"): t0 + 1, (0, "fan-1"): t0 + 3}
    pumps = dict(batch.parts)[0]
    assert pumps.messages == [msgs[0], msgs[2]]


def test_groups_that_together_pass_the_cap_are_cut_at_the_longest_prefix_within_it():
    _, gs = _groups(fallback=False)
    t0 = 1_700_000_000.0
    msgs = [_msg("pump-1" if i % 2 == 0 else "fan-1", t0 + i, [0.0] * (3 if i % 2 == 0 else 2), i) for i in range(10)]
    batch = gs.score(msgs, StateStore(), now=t0 + 100, max_readings=7)  # each group alone fits (5 each)
    assert batch.messages == msgs[:7] and batch.rest == msgs[7:] and batch.n_readings == 7
    assert batch.next_offsets() == {("in", 0): 7}
    batch = gs.score(msgs, StateStore(), now=t0 + 100, max_readings=10)
    assert batch.messages == msgs and batch.rest == []


def test_another_groups_state_never_reaches_a_model_of_other_channels():
    """A key naming a pump and a body naming a fan with state of the fans' shape: the pumps' scorer
    is routed the message (by its key) and must not be fed the fan's 2-channel tail."""
    groups, gs = _groups(fallback=False)
    for g in groups:  # windowed: tails matter
        g.model.detector.window = 3
        g.scorer = scorer_for(g.model, changelog=True)
        g.scorer.group = g.name
        g.fit = Fit(3, len(g.model.detector.channels))
    store = StateStore()
    store.apply({(0, "fan-1"): Entry(1_700_000_000.0, np.zeros((2, 2), np.float32), None, 1)})
    body = json.dumps({"sensor_id": "fan-1", "ts": 1_700_000_001.0, "values": [0, 0, 0]}).encode()
    batch = gs.score([FakeMessage(body, b"pump-1", "in", 0, 5)], store, now=1_700_000_100.0)
    assert batch.dead == [] and batch.updates[(0, "fan-1")].tail.shape == (1, 3)


def test_state_restore_checks_each_entry_against_its_own_groups_model():
    store = StateStore()
    fits = {"pump": Fit(3, 3), "fan": Fit(3, 2)}
    store.fit_of = lambda key: fits[key[1].split("-")[0]]
    two, three = np.zeros((2, 2), np.float32), np.zeros((2, 3), np.float32)
    loaded = store.load({(0, "pump-1"): Entry(1.0, three, None, 1), (0, "fan-1"): Entry(1.0, two, None, 1),
                         (0, "pump-2"): Entry(1.0, two, None, 1)})
    assert loaded.dropped == {"channels": 1}
    assert store.get((0, "pump-1")) is not None and store.get((0, "fan-1")) is not None
    # A swap of the fans' model re-fits the fans' entries only.
    store.for_model(2, 4, only=lambda key: key[1].startswith("fan-"))
    assert store.get((0, "fan-1")).tail.shape == (0, 4)
    assert store.get((0, "pump-1")).tail.shape == (2, 3)


# -- the CLI: models groups, config show --------------------------------------------------------
def test_models_groups_lists_rules_directories_and_current_versions(tmp_path, capsys, monkeypatch):
    from latentwatch.detectors import versions
    from latentwatch.pipeline.cli.main import main

    monkeypatch.delenv("LATENTWATCH_CONFIG", raising=False)
    pumps = tmp_path / "pumps"
    v = versions.publish(pumps, lambda d, name: (d.mkdir(parents=True, exist_ok=True),
                                                 (d / "model.json").write_text("{}")))
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"groups:\n  - name: pumps\n    match: pump-*\n    model: {pumps}\n"
                   f"  - name: fans\n    match: 're:fan-[0-9]+'\n    model: {tmp_path / 'nothing'}\n"
                   "groups_fallback: none\n")
    assert main(["models", "groups", "--config", str(cfg)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["GROUP", "MATCH", "MODEL", "DIR", "VERSION"]
    assert lines[1].split() == ["pumps", "pump-*", str(pumps), v]
    assert lines[2].split()[:3] == ["fans", "re:fan-[0-9]+", str(tmp_path / "nothing")]
    assert "no model here" in lines[2]
    assert "no_group" in lines[3]
    assert main(["config", "show", "--config", str(cfg), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [g["name"] for g in shown["groups"]] == ["pumps", "fans"] and shown["groups_fallback"] == "none"
    # With a fallback, model.path is its model; none set: one clear line.
    cfg.write_text(f"groups:\n  - name: pumps\n    match: pump-*\n    model: {pumps}\n")
    assert main(["models", "groups", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "groups_fallback is 'default' but model.path is not set" in err and err.count("\n") == 1


class _Watcher:
    def __init__(self, new):
        self.new = new

    def poll(self, sample=None):
        new, self.new = self.new, None
        return new

    def request_check(self):
        pass

    def close(self):
        pass


# -- a Pipeline with groups, without a broker: per-group metrics, lifecycle and swap -------------
def test_a_pipeline_with_groups_counts_per_group_and_swaps_one_groups_model_alone():
    from latentwatch.pipeline.events import Committed
    from latentwatch.pipeline.runner import Pipeline

    settings = load_settings(None, {"groups": [{"name": "pumps", "match": "pump-*", "model": "p"},
                                               {"name": "fans", "match": "fan-*", "model": "f"}],
                                    "groups_fallback": "none", "metrics.port": None})
    pump, fan = stub_model(PUMP_CH, window=2), stub_model(FAN_CH, window=2)
    pump.name, fan.name = "pump", "fan"
    pipeline = Pipeline(settings, pump, groups=[(GroupSpec("pumps", "pump-*", "p"), pump, None),
                                                (GroupSpec("fans", "fan-*", "f"), fan, None)])
    try:
        m = pipeline.metrics.registry.get_sample_value
        assert m("latentwatch_group_model_info", {"group": "fans", "name": "fan", "version": "0"}) == 1
        assert m("latentwatch_model_info", {"name": "pump", "version": "0", "kind": "zscore-stub", "window": "2",
                                            "channels": "3"}) == 1  # the primary group's (no fallback: the first)
        msgs = _stream()
        batch = pipeline.scorer.score(msgs, pipeline.state, now=1_700_000_100.0)
        pipeline.state.apply(batch.updates)
        pipeline.events.on_batch_committed(Committed(batch, 0.0, {}, len(pipeline.state), 0))
        assert m("latentwatch_group_readings_scored_total", {"group": "pumps"}) == 4  # 2 sensors x (3 - 1)
        assert m("latentwatch_group_readings_scored_total", {"group": "fans"}) == 4
        assert m("latentwatch_group_alerts_total", {"group": "pumps"}) == 1  # pump-1's window with reading 2
        assert m("latentwatch_group_messages_consumed_total", {"group": "fans"}) == 6
        assert m("latentwatch_readings_scored_total") == 8
        # A new fans model with another window: the fans' tails re-fitted, the pumps' kept.
        new = stub_model(FAN_CH, window=3)
        new.name, new.version = "fan", "1"
        pumps_tail = pipeline.state.get((0, "pump-1")).tail
        fans_life = pipeline.groups.groups[1].lifecycle
        fans_life.watcher = _Watcher(new)  # what the watcher hands over once a new version validated
        assert pipeline.lifecycle.between_batches() is None  # swapped by the groups, not the run loop
        assert fans_life.model is new
        assert pipeline.groups.groups[1].scorer.model is new and pipeline.groups.groups[1].scorer.group == "fans"
        assert pipeline.state.get((0, "pump-1")).tail is pumps_tail
        assert pipeline.state.get((1, "fan-1")).tail.shape == (1, 2)  # kept: shorter than the new W - 1
        assert m("latentwatch_group_model_info", {"group": "fans", "name": "fan", "version": "1"}) == 1
        assert m("latentwatch_group_model_info", {"group": "fans", "name": "fan", "version": "0"}) is None
        assert pipeline.model is pump  # the primary group was not swapped
    finally:
        pipeline.lifecycle.close()


def test_alertmanager_alerts_carry_the_group_label_only_with_groups():
    from latentwatch.pipeline.subscribers.alertmanager import (
        episode_to_alertmanager,
        to_alertmanager,
    )

    reading = {"sensor_id": "fan-1", "ts": "2026-12-01T10:00:00Z", "score": 5.0, "threshold": 1.0,
               "severity": "critical", "top_channels": [{"channel": "x", "share": 0.9}],
               "model": {"name": "fan", "version": "1", "group": "fans"}}
    assert to_alertmanager(reading)["labels"]["group"] == "fans"
    assert "group" not in to_alertmanager({**reading, "model": {"name": "fan", "version": "1"}})["labels"]
    ep = {"event": "open", "sensor_id": "fan-1", "episode_id": "in/0/1/0", "started_at": "2026-12-01T10:00:00Z",
          "ts": "2026-12-01T10:00:00Z", "severity": "warning", "model": {"name": "fan", "version": "1", "group": "fans"}}
    assert [a["labels"]["group"] for a in episode_to_alertmanager(ep)] == ["fans"]


def test_a_groups_shadow_scores_that_groups_readings_only():
    from latentwatch.pipeline.events import Committed
    from latentwatch.pipeline.runner import Pipeline

    settings = load_settings(None, {"groups": [{"name": "pumps", "match": "pump-*", "model": "p"},
                                               {"name": "fans", "match": "fan-*", "model": "f"}],
                                    "groups_fallback": "none", "metrics.port": None})
    pump, fan, candidate = stub_model(PUMP_CH), stub_model(FAN_CH), stub_model(FAN_CH, threshold=1e9)
    with pytest.raises(UserError, match="groups are configured"):
        Pipeline(settings, pump)
    pipeline = Pipeline(settings, pump, groups=[(GroupSpec("pumps", "pump-*", "p"), pump, None),
                                                (GroupSpec("fans", "fan-*", "f", "c"), fan, candidate)])
    try:
        batch = pipeline.scorer.score(_stream(), pipeline.state, now=1_700_000_100.0)
        pipeline.events.on_batch_committed(Committed(batch, 0.0, {}, 0, 0))
        m = pipeline.metrics.registry.get_sample_value
        # fan-1's anomalous reading alarms with the fans' model only; the other 5 fan readings neither
        assert {a: m("latentwatch_shadow_readings_total", {"agreement": a}) for a in
                ("both", "current_only", "candidate_only", "neither")} == \
            {"both": 0, "current_only": 1, "candidate_only": 0, "neither": 5}
        assert candidate.detector.calls == 1 and m("latentwatch_shadow_unpaired_readings_total") == 0
    finally:
        pipeline.lifecycle.close()
