"""The simulator: the generator core (pure numpy), the producing loop (on a fake producer) and one
round trip through the real broker with the CLI."""

from __future__ import annotations

import csv
import itertools
import json
import threading
import time

import numpy as np
import pytest

from latentwatch.pipeline.devtools.simulate import (
    FLEET_LABELLED,
    KINDS,
    NORMAL,
    TRUTH_HEADER,
    BackgroundStream,
    FleetSimulator,
    SensorSimulator,
    TruthCSV,
    encode_message,
    produce_stream,
)

from tests.support.kafka import consume_all


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = (SensorSimulator(4, 5, seed=s, anomaly_rate=0.1) for s in (7, 7, 8))
    va, ka = a.next_readings(300)
    vb, kb = b.next_readings(300)
    vc, _ = c.next_readings(300)
    assert va.shape == (4, 300, 5) and ka.shape == (4, 300)
    assert np.array_equal(va, vb) and np.array_equal(ka, kb)
    assert not np.allclose(va, vc)
    assert np.array_equal(a.normal_training_data(100), b.normal_training_data(100))


def test_the_stream_does_not_depend_on_how_it_is_read():
    """The AR(1) state carried from one call to the next held the periodic cycle too, so small
    reads (produce_stream reads 200 steps for 10 sensors, the drift test 5) added it again and
    again: channel std 3.4x that of one big read at 5 steps a call."""
    big = SensorSimulator(10, 8, seed=1, anomaly_rate=0.0).next_readings(3000)[0]
    small_sim = SensorSimulator(10, 8, seed=1, anomaly_rate=0.0)
    small = np.concatenate([small_sim.next_readings(5)[0] for _ in range(600)], axis=1)
    ratio = small.reshape(-1, 8).std(0) / big.reshape(-1, 8).std(0)
    assert np.all((ratio > 0.8) & (ratio < 1.25)), ratio


def test_an_operating_point_change_moves_every_channel_and_stays_normal():
    sim = SensorSimulator(5, 6, seed=3, anomaly_rate=0.0)
    before, _ = sim.next_readings(1500)
    sim.change_operating_point(2.0)
    after, kinds = sim.next_readings(1500)
    std = before.reshape(-1, 6).std(0)
    moved = np.abs(after.reshape(-1, 6).mean(0) - before.reshape(-1, 6).mean(0)) / std
    assert np.median(moved) > 0.5 and (kinds == NORMAL).all()
    corr_before, corr_after = np.corrcoef(before[0].T), np.corrcoef(after[0].T)
    assert np.abs(corr_before - corr_after).max() < 0.3  # the channels still move together


def test_anomalies_cover_roughly_the_asked_fraction_of_readings_with_every_kind():
    sim = SensorSimulator(20, 4, seed=1, anomaly_rate=0.05)
    kinds = np.concatenate([sim.next_readings(500)[1] for _ in range(4)], axis=1)  # across chunk borders
    frac = (kinds != NORMAL).mean()
    assert 0.035 < frac < 0.065, frac
    assert set(np.unique(kinds)) == {NORMAL, *KINDS}
    none = SensorSimulator(20, 4, seed=1, anomaly_rate=0.0).next_readings(500)[1]
    assert (none == NORMAL).all()


def test_channels_are_correlated_and_training_data_is_anomaly_free_and_in_range():
    sim = SensorSimulator(3, 8, seed=2, anomaly_rate=0.0)
    v, _ = sim.next_readings(2000)
    corr = np.corrcoef(v[0].T)
    assert np.median(np.abs(corr[np.triu_indices(8, 1)])) > 0.6
    X = sim.normal_training_data(3000)
    assert X.shape == (3000, 8) and X.dtype == np.float32
    z = np.abs(X - v.reshape(-1, 8).mean(0)) / v.reshape(-1, 8).std(0)
    assert z.max() < 6


def _injected(kind: str, channels: int = 6, seed: int = 3):
    """(values with anomalies of one kind, the same stream without, kinds, per-channel std)."""
    clean, _ = SensorSimulator(5, channels, seed=seed, anomaly_rate=0.0).next_readings(2000)
    dirty, kinds = SensorSimulator(5, channels, seed=seed, anomaly_rate=0.2, kinds=[kind]).next_readings(2000)
    return dirty, clean, kinds, clean.std(axis=1, keepdims=True)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_only_its_own_readings(kind):
    dirty, clean, kinds, _ = _injected(kind)
    hit = kinds == kind
    assert set(np.unique(kinds)) == {NORMAL, kind}
    assert 0.1 < hit.mean() < 0.3
    assert np.array_equal(dirty[~hit], clean[~hit])  # normal readings untouched
    assert (np.abs(dirty[hit] - clean[hit]).max(axis=-1) > 0).mean() > 0.9


def test_spike_leaves_the_normal_range_and_lasts_one_to_three_readings():
    dirty, clean, kinds, std = _injected("spike")
    hit = kinds == "spike"
    z = np.abs(dirty - clean.mean(axis=1, keepdims=True)) / std
    assert (z[hit].max(axis=-1) > 4).mean() > 0.95
    assert (z[~hit].max(axis=-1) > 4).mean() < 0.01
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, hit[0].astype(int), 0])))[::2]
    assert runs.max() <= 6  # at most two adjacent spikes of 1-3 readings


def test_level_shift_is_a_constant_offset_and_drift_grows():
    d, c, kinds, std = _injected("level_shift")
    s, t = np.nonzero(kinds == "level_shift")
    shift = (d - c)[s, t] / std[s, 0]
    moved = np.abs(shift) > 1e-9
    assert np.abs(shift[moved]).min() > 2.5
    d, c, kinds, std = _injected("drift")
    first = np.flatnonzero(np.diff(np.r_[0, (kinds[0] == "drift").astype(int)]) == 1)[0]
    gap = np.abs(d[0, first:first + 5] - c[0, first:first + 5]).max(axis=-1)
    assert np.all(np.diff(gap) > 0)


def test_stuck_has_zero_variance_and_noise_burst_raises_it():
    d, _, kinds, std = _injected("stuck")
    starts = np.flatnonzero(np.diff(np.r_[0, (kinds[1] == "stuck").astype(int)]) == 1)
    assert len(starts) > 3
    for t in starts:  # every event lasts >= 5 readings
        assert (np.ptp(d[1, t:t + 5], axis=0) == 0).any()
    assert (np.ptp(d[1, :5], axis=0) > 0).all() or kinds[1, 0] != NORMAL
    d, c, kinds, std = _injected("noise_burst")
    hit = kinds == "noise_burst"
    assert np.std((d - c)[hit] / std[np.nonzero(hit)[0]], axis=0).max() > 1.5


def test_correlation_break_reverses_the_channel_correlation():
    d, _, kinds, _ = _injected("correlation_break", channels=2)
    for s in range(5):
        hit = kinds[s] == "correlation_break"
        normal = np.corrcoef(d[s, ~hit].T)[0, 1]
        broken = np.corrcoef(d[s, hit].T)[0, 1]
        assert abs(normal) > 0.5
        assert broken * np.sign(normal) < abs(normal) - 0.8
    with pytest.raises(ValueError):
        SensorSimulator(2, 1, kinds=["correlation_break"])


def test_single_and_batch_messages_follow_the_contract():
    from latentwatch.pipeline.decode import Decoder

    dec = Decoder(["a", "b"])
    one = encode_message("s-1", ["2026-01-01T00:00:00.000Z"], np.array([[1.0, 2.0]]), ["a", "b"])
    assert json.loads(one) == {"sensor_id": "s-1", "ts": "2026-01-01T00:00:00.000Z", "values": {"a": 1.0, "b": 2.0}}
    ts = ["2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z"]
    batch = encode_message("s-1", ts, np.array([[1.0, 2.0], [3.0, 4.0]]), None)
    assert json.loads(batch)["readings"][1] == {"ts": ts[1], "values": [3.0, 4.0]}
    out = dec.decode(batch, b"s-1", now=1.9e9)
    assert out.values.tolist() == [[1.0, 2.0], [3.0, 4.0]]


class FakeProducer:
    """Records messages; delivery reports run on poll/flush like librdkafka's; full queue once."""

    def __init__(self, full_after: int | None = None):
        self.messages, self.pending, self.full_after, self.polls = [], [], full_after, 0

    def produce(self, topic, key, value, headers, on_delivery):
        if self.full_after is not None and len(self.messages) == self.full_after:
            self.full_after = None
            raise BufferError("queue full")
        self.messages.append((topic, key, value, dict(headers)))
        self.pending.append((on_delivery, len(self.messages) - 1))

    def poll(self, timeout=0):
        self.polls += 1
        for cb, off in self.pending:
            cb(None, type("M", (), {"topic": lambda s: "t", "partition": lambda s: 0, "offset": lambda s, o=off: o})())
        self.pending = []
        return 0

    flush = poll


def test_a_fleet_streams_through_produce_stream_and_a_silent_sensor_sends_nothing():
    sim = FleetSimulator(3, 8, seed=2)
    sim.schedule(1, "silent", 10)
    sim.schedule(2, "spike", 12)
    rows: list = []
    prod = FakeProducer()
    steps = FLEET_LABELLED["silent"] + 80
    stats = produce_stream(prod, "t", sim, rate=0, count=3 * steps, on_truth=rows.extend, start_ts=1.7e9)
    silent = FLEET_LABELLED["silent"]
    assert stats.readings == len(rows) == 3 * steps - silent  # asked `steps` steps of 3 assets
    assert "silent" not in {r.kind for r in rows}
    assert sum(r.kind == "spike" for r in rows) == 1
    sent_1 = [r for r in rows if r.sensor_id == "asset-001"]
    assert len(sent_1) == steps - silent
    obj = json.loads(prod.messages[0][2])
    assert set(obj["values"]) == {f"c{i}" for i in range(8)}


@pytest.mark.parametrize("batch", [1, 4])
def test_produce_stream_count_batches_truth_and_determinism(batch):
    runs = []
    for _ in range(2):
        sim = SensorSimulator(3, 4, seed=5, anomaly_rate=0.3)
        rows: list = []
        prod = FakeProducer(full_after=2)
        stats = produce_stream(prod, "t", sim, rate=0, count=25, batch_size=batch, on_truth=rows.extend,
                               start_ts=1.7e9)
        runs.append(prod.messages)
    msgs = runs[0]
    assert runs[0] == runs[1]  # seeded + simulated event time: byte-identical
    assert stats.readings == stats.delivered_readings == len(rows) == 25
    assert stats.messages == len(msgs) == (25 if batch == 1 else 7)  # 6 x 4 readings + 1
    assert {m[1] for m in msgs} == {b"sensor-000", b"sensor-001", b"sensor-002"}
    for _, key, value, headers in msgs:
        obj = json.loads(value)
        truth = headers[TRUTH_HEADER].decode().split(",")
        readings = obj.get("readings", [obj])
        assert obj["sensor_id"] == key.decode() and len(truth) == len(readings)
        assert ("readings" in obj) == (len(readings) > 1)
        assert set(truth) <= {NORMAL, *KINDS} and set(readings[0]["values"]) == {"ch0", "ch1", "ch2", "ch3"}
    assert sum(stats.by_kind.values()) == 25 and stats.by_kind[NORMAL] < 25


def test_wall_clock_ts_and_background_stream_stops():
    from latentwatch.pipeline.times import parse_time

    sim = SensorSimulator(2, 3, seed=1)
    prod = FakeProducer()
    bg = BackgroundStream(prod, "t", sim, rate=2000, batch_size=3).start()
    while bg.stats.readings < 60 and bg.is_alive():
        threading.Event().wait(0.01)
    stats = bg.stop()
    assert not bg.is_alive() and bg.error is None and stats.readings >= 60
    ts = [parse_time(r["ts"]) for m in prod.messages for r in json.loads(m[2])["readings"]]
    assert abs(ts[-1] - time.time()) < 60
    per_msg = [json.loads(m[2])["readings"] for m in prod.messages]
    assert all(parse_time(a["ts"]) < parse_time(b["ts"]) for r in per_msg for a, b in itertools.pairwise(r))


@pytest.mark.broker
@pytest.mark.parametrize("batch, fmt", [(1, "json"), (5, "json"), (5, "frames")])
def test_cli_simulate_round_trip_through_kafka(batch, fmt, kafka_bootstrap, make_topic, make_consumer, tmp_path):
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.decode import Decoder

    topic = make_topic(partitions=2)
    truth_csv = tmp_path / "truth.csv"
    rc = main(["simulate", "--topic", topic, "--bootstrap", kafka_bootstrap, "--count", "200", "--rate", "0",
               "--sensors", "4", "--channels", "3", "--anomaly-rate", "0.2", "--seed", "1",
               "--batch-size", str(batch), "--truth-csv", str(truth_csv), "--format", fmt])
    assert rc == 0
    msgs = consume_all(make_consumer(topic), 200 // batch)
    assert len(msgs) == 200 // batch
    dec = Decoder(["ch0", "ch1", "ch2"])
    header_truth = {}
    for m in msgs:
        assert (m.value()[:4] == b"\xff\xff\xff\xff") == (fmt == "frames")  # an Arrow IPC stream
        out = dec.decode(m.value(), m.key(), now=time.time())
        assert out.sensor_id == m.key().decode()
        kinds = dict(m.headers())[TRUTH_HEADER].decode().split(",")
        assert len(kinds) == len(out.values)
        for i, k in enumerate(kinds):
            header_truth[(m.partition(), m.offset(), i)] = k
    with open(truth_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["sensor_id", "ts", "kind", "topic", "partition", "offset", "index"]
    assert len(rows) == 200
    assert {(int(r["partition"]), int(r["offset"]), int(r["index"])): r["kind"] for r in rows} == header_truth
    assert {r["kind"] for r in rows} - {NORMAL} and {r["topic"] for r in rows} == {topic}


def test_truth_csv_writes_header_and_rows(tmp_path):
    from latentwatch.pipeline.devtools.simulate import TruthRow

    with TruthCSV(tmp_path / "t.csv") as sink:
        sink([TruthRow("s", "2026-01-01T00:00:00.000Z", "spike", "t", 0, 5, 0)])
    assert (tmp_path / "t.csv").read_text().splitlines() == [
        "sensor_id,ts,kind,topic,partition,offset,index", "s,2026-01-01T00:00:00.000Z,spike,t,0,5,0"]
