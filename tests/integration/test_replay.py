"""Replay: the pacing schedule (pure), the CSV side, and CSV -> real topic with the CLI."""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.devtools.replay import default_sensor_id, read_csv, schedule
from latentwatch.pipeline.devtools.simulate import TRUTH_HEADER

from tests.support.kafka import consume_all
from tests.support.skab import SKAB_DATA, needs_skab

SKAB = SKAB_DATA / "valve1" / "0.csv"
T0 = datetime(2020, 3, 9, 10, 14, 33, tzinfo=UTC)


def test_schedule_scales_the_files_own_spacing_or_uses_a_fixed_rate():
    t = np.array([100.0, 101.0, 106.0, 106.5])
    assert schedule(t, speed=1).tolist() == [0.0, 1.0, 6.0, 6.5]
    assert schedule(t, speed=10).tolist() == pytest.approx([0.0, 0.1, 0.6, 0.65])
    assert schedule(t, speed=0.5).tolist() == [0.0, 2.0, 12.0, 13.0]
    assert schedule(t, rate=4).tolist() == [0.0, 0.25, 0.5, 0.75]
    assert schedule(t, speed=0).tolist() == [0.0] * 4
    assert schedule(t, speed=None).tolist() == [0.0] * 4


def _write(path: Path, rows: int = 30, gaps=None, shuffle: bool = False) -> list[dict]:
    """A SKAB-like file: `;`, `datetime`, two channels, `anomaly` and `changepoint` labels."""
    gaps = gaps or [1] * rows
    out, t = [], T0
    for i in range(rows):
        out.append({"datetime": t.strftime("%Y-%m-%d %H:%M:%S"), "a": f"{i * 0.5:.3f}", "b": f"{-i:.1f}",
                    "anomaly": "1.0" if 10 <= i < 15 else "0.0", "changepoint": "1.0" if i == 10 else "0.0"})
        t += timedelta(seconds=gaps[i])
    written = list(reversed(out)) if shuffle else out
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(out[0]), delimiter=";")
        w.writeheader()
        w.writerows(written)
    return out


def test_read_csv_sorts_by_time_and_turns_labels_into_truth(tmp_path):
    rows = _write(tmp_path / "x.csv", rows=20, shuffle=True)
    table = read_csv(tmp_path / "x.csv")
    assert table.channels == ["a", "b"]
    assert table.X[:, 0].tolist() == pytest.approx([float(r["a"]) for r in rows])
    assert np.all(np.diff(table.times) > 0) and table.times[0] == T0.timestamp()
    truth = table.truth()
    assert truth[9] == "normal" and truth[10] == "anomaly+changepoint" and truth[11] == "anomaly"
    assert truth.count("normal") == 15
    with pytest.raises(UserError, match="line"):
        (tmp_path / "bad.csv").write_text("datetime;a\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;x\n")
        read_csv(tmp_path / "bad.csv")
    assert default_sensor_id("data/valve1/3.csv") == "valve1-3" and default_sensor_id("p/pump.csv") == "pump"


@pytest.mark.broker
@pytest.mark.parametrize("batch", [1, 4])
def test_cli_replay_keeps_order_ts_truth_and_pacing(batch, kafka_bootstrap, make_topic, make_consumer, tmp_path):
    from latentwatch.pipeline.cli.main import main

    gaps = [1, 1, 1, 5] * 8  # irregular spacing: the schedule must follow it
    rows = _write(tmp_path / "r.csv", rows=30, gaps=gaps)
    topic = make_topic()
    truth_csv = tmp_path / "truth.csv"
    rc = main(["replay", str(tmp_path / "r.csv"), "--topic", topic, "--bootstrap", kafka_bootstrap,
               "--speed", "50", "--batch-size", str(batch), "--sensor-id", "pump-1", "--truth-csv", str(truth_csv)])
    assert rc == 0
    n_msgs = -(-30 // batch)
    msgs = consume_all(make_consumer(topic), n_msgs)
    assert len(msgs) == n_msgs
    readings, kinds = [], []
    for m in msgs:
        obj = json.loads(m.value())
        assert m.key() == b"pump-1" and obj["sensor_id"] == "pump-1"
        readings += obj.get("readings", [obj])
        kinds += dict(m.headers())[TRUTH_HEADER].decode().split(",")
    expect_ts = [datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S").strftime("%Y-%m-%dT%H:%M:%S.000Z")
                 for r in rows]
    assert [r["ts"] for r in readings] == expect_ts
    assert [r["values"]["a"] for r in readings] == pytest.approx([float(r["a"]) for r in rows])
    assert set(readings[0]["values"]) == {"a", "b"}  # labels are not channels
    assert kinds[10] == "anomaly+changepoint" and kinds.count("anomaly") == 4 and kinds.count("normal") == 25
    assert len(truth_csv.read_text().splitlines()) == 31
    # pacing: a message never leaves before its last reading is due, so the produce-time span is at
    # least the scheduled span (minus clock granularity); the upper bound is only a sanity bound.
    due = schedule(np.array([(datetime.fromisoformat(t)).timestamp() for t in expect_ts]), speed=50)
    due_span = due[[min(i + batch, 30) - 1 for i in range(0, 30, batch)]]
    produced = np.array([m.timestamp()[1] for m in msgs]) / 1000.0
    assert produced[-1] - produced[0] >= (due_span[-1] - due_span[0]) - 0.05
    assert produced[-1] - produced[0] < (due_span[-1] - due_span[0]) + 30


@pytest.mark.broker
@needs_skab
def test_skab_file_replays_as_is(kafka_bootstrap, make_topic, make_consumer):
    from latentwatch.pipeline.cli.main import main

    topic = make_topic()
    rc = main(["replay", str(SKAB), "--topic", topic, "--bootstrap", kafka_bootstrap, "--as-fast-as-possible",
               "--batch-size", "50"])
    assert rc == 0
    msgs = consume_all(make_consumer(topic), 23)
    assert len(msgs) == 23 and msgs[0].key() == b"valve1-0"
    first = json.loads(msgs[0].value())["readings"][0]
    assert first["ts"] == "2020-03-09T10:14:33.000Z" and len(first["values"]) == 8
    assert "anomaly" not in first["values"] and first["values"]["Temperature"] == pytest.approx(79.3366)
    kinds = [k for m in msgs for k in dict(m.headers())[TRUTH_HEADER].decode().split(",")]
    assert len(kinds) == 1147 and sum(k != "normal" for k in kinds) == 402


@pytest.mark.broker
def test_cli_replay_frames_carry_the_files_times_and_values(kafka_bootstrap, make_topic, make_consumer, tmp_path):
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.decode import Decoder

    rows = _write(tmp_path / "r.csv", rows=30)
    topic = make_topic()
    rc = main(["replay", str(tmp_path / "r.csv"), "--topic", topic, "--bootstrap", kafka_bootstrap,
               "--as-fast-as-possible", "--batch-size", "8", "--sensor-id", "pump-1", "--format", "frames"])
    assert rc == 0
    msgs = consume_all(make_consumer(topic), 4)
    assert [len(dict(m.headers())[TRUTH_HEADER].split(b",")) for m in msgs] == [8, 8, 8, 6]
    decoded = [Decoder(["a", "b"]).decode(m.value(), m.key(), now=datetime.now(UTC).timestamp()) for m in msgs]
    assert {d.sensor_id for d in decoded} == {"pump-1"}
    ts = np.concatenate([d.ts for d in decoded])
    assert ts.tolist() == [datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()
                           for r in rows]
    values = np.concatenate([d.values for d in decoded])
    assert values[:, 0].tolist() == pytest.approx([float(r["a"]) for r in rows])
