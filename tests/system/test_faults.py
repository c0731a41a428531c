"""Faults against real processes, each audited with the ledger (tests/ledger.py): the broker
killed with SIGKILL and restarted on its data dir, the pipeline killed at random points over many
rounds, a rebalance while batches are in flight, the input or an output topic deleted mid-run.

`LATENTWATCH_SOAK_ROUNDS=N` runs the SIGKILL rounds N times over (CI default: 4 rounds).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from latentwatch.detectors import versions
from latentwatch.pipeline.kafka.clients import create_topics
from tests.support.ledger import committed_lag
from tests.support.processes import (
    PrivateBroker,
    TimelineStream,
    settled_ledger,
    start_pipeline,
    stop_process,
    topic_maker,
    wait_drained,
    wait_url,
)
from tests.support.streams import WINDOW, scrape, wait_metric, window_change_models

# Both delivery modes, each with a point-wise model and a windowed one (W=8): a windowed model's
# history must survive the fault (restored from the state changelog), so every reading past a
# sensor's first W-1 is scored (the ledger's warm_up).
MODES = [("at-least-once", "point"), ("exactly-once", "point"), ("at-least-once", "window"),
         ("exactly-once", "window")]
SOAK_ROUNDS = int(os.environ.get("LATENTWATCH_SOAK_ROUNDS", "4"))
RESULTS: dict[str, object] = {}  # figures for the report, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    if RESULTS:
        print("\nfault figures:", RESULTS)


@pytest.fixture
def private_broker(tmp_path):
    broker = PrivateBroker(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _drain_with_a_new_process(kafka_bootstrap, stream, model, log, delivery) -> None:
    """Start a pipeline on `stream`, wait until it has committed everything, stop it cleanly."""
    proc = start_pipeline(kafka_bootstrap, stream, model, log, "--delivery", delivery)
    try:
        wait_url(proc, log)
        wait_drained(kafka_bootstrap, stream, proc=proc)
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)


def _assert_balanced(led, n, dead=0):
    assert len(led.inputs) == n
    assert not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    assert not led.lost, f"lost {len(led.lost)} readings: {sorted(led.lost)[:5]}"
    assert len({(p, o) for p, o, _ in led.dead}) == dead


@pytest.mark.parametrize(("delivery", "model"), MODES)
def test_broker_sigkill_and_restart_mid_stream(private_broker, tmp_path, model_dir, window_model_dir, delivery, model):  # noqa: F811
    """SIGKILL the broker while traffic flows, keep it down a few seconds, restart it on the same
    data dir and port: the same pipeline process carries on by itself and the ledger balances."""
    bs = private_broker.bootstrap
    s = TimelineStream(topic_maker(bs))
    s.window, model_dir = (WINDOW, window_model_dir) if model == "window" else (1, model_dir)
    producer = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5, "log_level": 0})
    n = 6000
    s.produce(producer, n // 2, seed=1, bad_every=500)
    log = tmp_path / "run.log"
    proc = start_pipeline(bs, s, model_dir, log, "--delivery", delivery)
    try:
        url = wait_url(proc, log)
        wait_metric(url, "latentwatch_batches_total", 2)
        feeder = threading.Thread(target=s.produce, args=(producer, n // 2),
                                  kwargs={"seed": 2, "bad_every": 500, "per_second": 600})
        feeder.start()
        time.sleep(1.0)
        private_broker.kill()
        outage_start = log.stat().st_size
        time.sleep(4)
        assert proc.poll() is None, "the pipeline died while the broker was down"
        scored_during = scrape(url, "latentwatch_readings_scored_total")
        private_broker.start()
        feeder.join(timeout=120)
        assert not feeder.is_alive()
        wait_drained(bs, s, proc=proc)
        assert proc.poll() is None
        assert scrape(url, "latentwatch_readings_scored_total") > scored_during  # resumed, same process
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    outage_log = log.read_text()[outage_start:]
    assert "Traceback" not in outage_log
    del producer
    led = settled_ledger(s, bs)
    _assert_balanced(led, n, dead=n // 500)
    assert not led.missing_alerts(s.anomalies)
    if delivery == "exactly-once":
        assert led.duplicates == 0
    RESULTS[f"broker_kill_{delivery}_{model}"] = {"readings": n, "lost": len(led.lost), "duplicates": led.duplicates}


@pytest.mark.parametrize(("delivery", "model"), MODES)
def test_pipeline_sigkill_at_random_points_over_many_rounds(kafka_bootstrap, make_topic, producer, model_dir,  # noqa: F811
                                                            baseline_window_model_dir, tmp_path, delivery, model):
    """SOAK_ROUNDS rounds of: start the pipeline, SIGKILL it at a random moment (during start-up,
    assignment, a batch, a commit), while traffic flows; then one clean run drains the rest.

    Traffic flows until the last round ends, however long start-ups take: a fixed amount (2500
    readings a round, at 1200/s) ran out when rounds were slower than 2 s, and a later round
    then waited 120 s for a batch from an input that was all committed already (seen as a
    "stall" in CI: assigned, fetching at the log end, nothing to do)."""
    s = TimelineStream(make_topic)
    # the windowed model has per-sensor baselines: every sensor is new to it, so its cold start
    # (fleet baseline, then its own learned from its first 48 readings) lives in the changelog too
    s.window, model_dir = (WINDOW, baseline_window_model_dir) if model == "window" else (1, model_dir)
    rounds = SOAK_ROUNDS
    feeding = threading.Event()
    feeding.set()

    def feed():
        chunk = 0
        while feeding.is_set():
            s.produce(producer, 300, seed=chunk, bad_every=400, per_second=1200)
            chunk += 1

    feeder = threading.Thread(target=feed)
    feeder.start()
    seed = int(os.environ.get("LATENTWATCH_SOAK_SEED") or int.from_bytes(os.urandom(4), "little"))
    print(f"\nSIGKILL rounds: seed {seed} (LATENTWATCH_SOAK_SEED={seed} repeats the kill times)")
    rng = np.random.default_rng(seed)
    log = tmp_path / "run.log"
    killed_after_batches = []
    try:
        for r in range(rounds):
            proc = start_pipeline(kafka_bootstrap, s, model_dir, log, "--delivery", delivery)
            try:
                url = wait_url(proc, log)
                if r % 3:  # two rounds in three: mid-stream (batches, commits); else during start-up
                    wait_metric(url, "latentwatch_batches_total", 1, timeout=120)
                time.sleep(float(rng.uniform(0.0, 1.5)))
                try:
                    killed_after_batches.append(scrape(url, "latentwatch_batches_total"))
                except OSError:
                    killed_after_batches.append(-1)
            finally:
                proc.send_signal(signal.SIGKILL)  # also when the round failed: leave nothing behind
                proc.wait(timeout=10)
    finally:
        feeding.clear()
        feeder.join(timeout=300)
    n = s.sent
    _drain_with_a_new_process(kafka_bootstrap, s, model_dir, log, delivery)
    led = settled_ledger(s, kafka_bootstrap)
    _assert_balanced(led, n, dead=len(s.bad))
    assert not led.missing_alerts(s.anomalies)
    # episodes: each opened once and closed at most once under exactly-once, ids stable across kills
    assert not led.episode_faults(delivery == "exactly-once"), led.episode_faults(delivery == "exactly-once")[:5]
    assert sum(1 for _i, e in led.episodes if e == "open") >= len(s.anomalies) // 10
    if delivery == "exactly-once":
        assert led.duplicates == 0
    else:
        assert led.duplicates <= rounds * 200  # at most the batch in flight per kill
    if model == "window":  # tails and cold starts restored as of the committed offset: the scores `score` gives
        from latentwatch.detectors.checkpoint import load

        faults = led.score_faults(load(model_dir, device="cpu"), s.values)
        assert not faults, faults[:5]
    RESULTS[f"sigkill_rounds_{delivery}_{model}"] = {"rounds": rounds, "readings": n, "lost": len(led.lost),
                                             "duplicates": led.duplicates,
                                             "batches_at_kill": killed_after_batches, "seed": seed}


@pytest.mark.parametrize(("delivery", "model"), MODES)
def test_rebalance_with_batches_in_flight(kafka_bootstrap, make_topic, producer, model_dir, baseline_window_model_dir,  # noqa: F811
                                          tmp_path, delivery, model):
    """A second instance joins while the first is mid-batch (slow batches: a long max wait and
    paced traffic), then leaves: nothing lost, and no reading scored twice (clean hand-overs).
    The windowed model has per-sensor baselines: cold starts move with their partitions."""
    s = TimelineStream(make_topic)
    s.window, model_dir = (WINDOW, baseline_window_model_dir) if model == "window" else (1, model_dir)
    n = 8000
    slow = ("--delivery", delivery, "--max-wait-ms", "400")
    feeder = threading.Thread(target=s.produce, args=(producer, n), kwargs={"bad_every": 300, "per_second": 500})
    log_a, log_b = tmp_path / "a.log", tmp_path / "b.log"
    a = start_pipeline(kafka_bootstrap, s, model_dir, log_a, *slow)
    b = None
    try:
        url_a = wait_url(a, log_a)
        feeder.start()
        wait_metric(url_a, "latentwatch_batches_total", 3)
        for _ in range(2):  # join, leave, join, leave
            b = start_pipeline(kafka_bootstrap, s, model_dir, log_b, *slow)
            url_b = wait_url(b, log_b)
            wait_metric(url_b, "latentwatch_assigned_partitions", 1)
            time.sleep(1.5)  # a few of its slow batches
            assert stop_process(b) == 0
        feeder.join(timeout=120)
        wait_drained(kafka_bootstrap, s, proc=a)
        assert stop_process(a) == 0
    finally:
        stop_process(a)
        if b is not None:
            stop_process(b)
    assert "revoked" in log_a.read_text()  # the rebalance did happen to A
    led = settled_ledger(s, kafka_bootstrap)
    _assert_balanced(led, n, dead=len(s.bad))
    RESULTS[f"rebalance_{delivery}_{model}"] = {"readings": n, "lost": len(led.lost), "duplicates": led.duplicates}
    assert led.duplicates == 0, f"{led.duplicates} readings processed twice across the rebalances"
    # an episode open when its partition moved is closed by the next owner (state from the changelog)
    assert not led.episode_faults(exactly_once=True), led.episode_faults(True)[:5]
    assert any(e == "close" for _i, e in led.episodes)
    if model == "window":
        from latentwatch.detectors.checkpoint import load

        faults = led.score_faults(load(model_dir, device="cpu"), s.values)
        assert not faults, faults[:5]


def _sample(url: str, name: str, proc=None, log: Path | None = None, **labels) -> float:
    """One labelled sample of /metrics (0 when absent). With `proc`: a process that died is
    reported with its exit status and the end of its `log`, not as a refused connection."""
    import urllib.request

    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        time.sleep(1)
        if proc is None or proc.poll() is None:
            raise
        raise AssertionError(f"the pipeline exited with {proc.returncode}:\n{log.read_text()[-3000:]}") from None
    for line in text.splitlines():
        if (line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items())) or \
                (not labels and line.startswith(name + " ")):
            return float(line.split()[-1])
    return 0.0


def _wait_sample(url: str, name: str, at_least: float, proc, log: Path, timeout: float = 120, **labels) -> None:
    deadline = time.monotonic() + timeout
    while _sample(url, name, proc, log, **labels) < at_least:
        assert proc.poll() is None, f"the pipeline exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"{name} {labels} under {at_least} after {timeout} s"
        time.sleep(0.2)


def _wait_committed_past(bootstrap: str, s, marks: dict[int, int], procs, timeout: float = 60) -> None:
    """Until the group's committed offsets reach `marks` (per partition) on every partition.

    Under exactly-once, offsets a transaction holds are unstable until it ends, and a member
    SIGKILLed mid-transaction holds them until its successor fences it or the transaction times
    out (10 s): the broker then keeps answering "not yet" and `committed()` times out. That is a
    "not yet" here too, asked again until `timeout`.
    """
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": s.group, "log_level": 0})
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                done = {tp.partition: tp.offset for tp in c.committed(
                    [TopicPartition(s.input, p) for p in range(s.partitions)], timeout=5)}
            except KafkaException as exc:  # "not yet": the same checks and pause as an answer short of marks
                done = {"no answer": str(exc)}
            if all(done.get(p, -1) >= mark for p, mark in marks.items()):
                return
            assert all(p.poll() is None for p in procs), "a pipeline exited"
            assert time.monotonic() < deadline, f"committed {done}, wanted {marks}"
            time.sleep(0.3)
    finally:
        c.close()


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_window_change_while_members_restart_and_rebalance(kafka_bootstrap, make_topic, producer, tmp_path,
                                                           delivery):
    """The model's window changes (W=8 -> W=4) under a group of two members, A and B, that stay
    up, while a third, C, joins and is SIGKILLed before the change, joins with the new model (its
    restore reads W=8 tails) and is SIGKILLed, and joins and leaves cleanly: every rebalance moves
    partitions between processes that read each other's changelog records.

    Half the sensors of each partition go quiet before the change and come back after C's second
    join, so the changelog still holds their W=8 tails when processes on W=4 restore them (the
    issue-22 case 'hot swap, then a rebalance': A and B cut their own tails in memory
    (StateStore.for_model), the changelog keeps the old ones). Asserted: no process crashes
    (clean exits 0, no traceback), both A and B swap once, C's restore drops the W=8 entries it
    cannot use (latentwatch_state_dropped_total{reason="window"}), every committed reading is
    scored or dead-lettered except each sensor's first warm-up and, after the change, warm-ups of
    at most W-1 = 3 readings (Ledger.window_change_faults), per partition the old version's
    offsets all come before the new one's, and no duplicate under exactly-once. This one test is
    also issue 22's 'two-member hot swap then rebalance' (A and B stay up throughout)."""
    root = tmp_path / "models"
    v = window_change_models(root, old=WINDOW, new=4)
    s = TimelineStream(make_topic)
    s.window = WINDOW
    every = [f"s{j}" for j in range(16)]
    phase = {"ids": every}
    feeding = threading.Event()
    feeding.set()

    def feed():
        chunk = 0
        while feeding.is_set():
            s.produce(producer, 200, seed=chunk, bad_every=150, per_second=800, sensor_ids=phase["ids"])
            chunk += 1

    feeder = threading.Thread(target=feed)
    rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
    logs = {name: tmp_path / f"{name}.log" for name in ("a", "b", "c1", "c2", "c3")}  # one a process
    args = (str(root), "--delivery", delivery)
    procs, exits, dropped = {}, [], 0.0
    started = time.monotonic()
    try:
        procs["a"] = start_pipeline(kafka_bootstrap, s, args[0], logs["a"], *args[1:])
        procs["b"] = start_pipeline(kafka_bootstrap, s, args[0], logs["b"], *args[1:])
        urls = {name: wait_url(procs[name], logs[name], since=0) for name in "ab"}
        feeder.start()
        for name in "ab":
            _wait_sample(urls[name], "latentwatch_batches_total", 1, procs[name], logs[name])

        def join_c(n: int, kill: bool, before=None) -> None:
            nonlocal dropped
            log = logs[f"c{n}"]
            c = procs[f"c{n}"] = start_pipeline(kafka_bootstrap, s, args[0], log, *args[1:])
            url = wait_url(c, log, since=0)
            _wait_sample(url, "latentwatch_batches_total", 1, c, log)
            dropped += _sample(url, "latentwatch_state_dropped_total", c, log, reason="window")
            if before is not None:
                before()
            time.sleep(float(rng.uniform(0.3, 1.5)))
            if kill:
                c.send_signal(signal.SIGKILL)
                c.wait(timeout=10)
            else:
                exits.append(stop_process(c))

        join_c(1, kill=True)  # a rebalance and a SIGKILL on the old model
        with s._lock:
            by_partition: dict[int, list[str]] = {}
            for ref, sensor in s.sensors.items():
                if sensor not in by_partition.setdefault(ref[0], []):
                    by_partition[ref[0]].append(sensor)
        quiet = {sensor for sensors in by_partition.values() for sensor in sorted(sensors)[::2]}
        phase["ids"] = [sensor for sensor in every if sensor not in quiet]
        time.sleep(0.5)  # messages of the quiet sensors still in the producer's hands are sent
        with s._lock:
            marks = {}
            for p, o, _ in s.refs:
                marks[p] = max(marks.get(p, 0), o + 1)
        _wait_committed_past(kafka_bootstrap, s, marks, [procs["a"], procs["b"]])  # quiet ones' W=8 state written
        versions.set_current(root, v["new"], reason="test")  # the window changes: W=8 -> W=4
        for name in "ab":
            procs[name].send_signal(signal.SIGHUP)
        for name in "ab":
            _wait_sample(urls[name], "latentwatch_model_reloads_total", 1, procs[name], logs[name], 60,
                         outcome="success")
        # C joins with W=4 and restores W=8 tails; the quiet sensors come back while it is up
        join_c(2, kill=True, before=lambda: phase.update(ids=every))
        join_c(3, kill=False)  # joins and leaves cleanly
        feeding.clear()
        feeder.join(timeout=120)
        assert not feeder.is_alive()
        wait_drained(kafka_bootstrap, s, proc=procs["a"])
        for name in "ab":
            dropped += _sample(urls[name], "latentwatch_state_dropped_total", procs[name], logs[name], reason="window")
            assert _sample(urls[name], "latentwatch_model_info", procs[name], logs[name], version=v["new"]) == 1
        exits += [stop_process(procs[name]) for name in "ab"]
    finally:
        feeding.clear()
        for proc in procs.values():
            stop_process(proc)
    took = time.monotonic() - started
    for name, log in logs.items():
        assert "Traceback" not in log.read_text(), f"{name}:\n{log.read_text()[-3000:]}"
    assert exits == [0, 0, 0], exits
    for name in "ab":
        assert len(re.findall(rf"version {v['new']} swapped in \(was {v['old']}\)", logs[name].read_text())) == 1
    assert dropped > 0  # a W=8 tail was restored on W=4 and dropped, not fed to the model

    def last_old_offsets(led) -> dict[int, int]:
        last: dict[int, int] = {}
        for _, version, (p, o, _i) in led.scored_log:
            if version == v["old"]:
                last[p] = max(last.get(p, -1), o)
        return last

    led = settled_ledger(s, kafka_bootstrap, balanced=lambda led: not led.uncommitted and not led.window_change_faults(
        4, last_old_offsets(led)))
    assert len(led.inputs) == s.sent and not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    assert len({(p, o) for p, o, _ in led.dead}) == len(s.bad)
    last_old, first_new = last_old_offsets(led), {}
    for _, version, (p, o, _i) in led.scored_log:
        if version != v["old"]:
            assert version == v["new"], version
            first_new[p] = min(first_new.get(p, o), o)
    assert all(last_old.get(p, -1) < o for p, o in first_new.items()), (last_old, first_new)
    assert len(first_new) == s.partitions  # the new model scored on every partition
    faults = led.window_change_faults(4, last_old)
    assert not faults, f"{len(faults)} unexplained unscored runs: {faults[:5]}"
    if delivery == "exactly-once":
        assert led.duplicates == 0
    else:
        assert led.duplicates <= 2 * 400  # at most the batches in flight at the two kills
    runs = [run for runs in led.unscored_runs().values() for run in runs]
    rewarmed = sum(len(run) for run in runs if run[0][1] > last_old.get(run[0][0], -1))
    RESULTS[f"window_change_{delivery}"] = {"readings": s.sent, "duplicates": led.duplicates,
                                            "dropped_window": dropped, "unscored": sum(map(len, runs)),
                                            "unscored_after_change": rewarmed,
                                            "seconds": round(took, 1)}


def _one_clear_line(text: str, topic: str) -> str:
    """The single ERROR line about a deleted topic, and no traceback or loop of warnings."""
    lines = [line for line in text.splitlines() if "was deleted from Kafka" in line]
    assert len(lines) == 1, f"wanted one line about the deleted topic, got:\n{text[-3000:]}"
    assert " ERROR latentwatch.run: " in lines[0] and topic in lines[0] and "Recreate" in lines[0]
    assert "Traceback" not in text
    ours = [line for line in text.splitlines() if "WARNING latentwatch.run" in line]
    assert len(ours) <= 6, "a loop of warnings:\n" + "\n".join(ours[:20])
    return lines[0]


def _delete(admin, topic: str) -> None:
    admin.delete_topics([topic])[topic].result(timeout=30)
    deadline = time.monotonic() + 30
    while topic in admin.list_topics(timeout=10).topics:  # deletion is asynchronous on the broker
        assert time.monotonic() < deadline, f"{topic} still listed 30 s after its deletion"
        time.sleep(0.2)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_input_topic_deleted_mid_run(kafka_bootstrap, admin, make_topic, producer, model_dir, tmp_path,  # noqa: F811
                                     delivery):
    """The input topic deleted under a running pipeline: one ERROR line naming it and the fix,
    exit 2 (not librdkafka warnings forever); a restart says the topic does not exist; once it
    is recreated the same group reads it from the start (Kafka deleted the group's offsets with
    the topic) and the ledger of the new topic balances."""
    s = TimelineStream(make_topic)
    n = 4000
    log = tmp_path / "run.log"
    proc = start_pipeline(kafka_bootstrap, s, model_dir, log, "--delivery", delivery)
    try:
        url = wait_url(proc, log)
        s.produce(producer, n, bad_every=300, per_second=2000)  # stopped before the deletion:
        wait_metric(url, "latentwatch_batches_total", 3)  # the test producer would auto-create it
        mark = log.stat().st_size
        deleted_at = time.monotonic()
        _delete(admin, s.input)
        rc = proc.wait(timeout=120)  # librdkafka reports it after topic.metadata.propagation.max.ms (30 s)
        took = time.monotonic() - deleted_at
    finally:
        stop_process(proc)
    assert rc == 2
    _one_clear_line(log.read_text()[mark:], s.input)
    # Nothing skipped before the deletion: per partition, what was scored or dead-lettered is a
    # prefix of the partition's offsets (the rest went with the topic).
    old = s.ledger(kafka_bootstrap)
    for p in range(s.partitions):
        done = sorted({o for q, o, _ in old.scored if q == p} | {o for q, o, _ in old.dead if q == p})
        assert done == list(range(len(done))), f"partition {p}: gaps in what was processed"

    restart_log = tmp_path / "restart.log"
    again = start_pipeline(kafka_bootstrap, s, model_dir, restart_log, "--delivery", delivery)
    try:
        assert again.wait(timeout=90) == 2
    finally:
        stop_process(again)
    assert "do not exist" in restart_log.read_text() and s.input in restart_log.read_text()

    # Recreated with the same name: same group, fresh output topics for a clean ledger. More
    # readings per partition than before, so offsets left over from the old topic would skip some.
    fresh = TimelineStream(make_topic)
    fresh.group = s.group
    fresh.input = s.input
    create_topics(admin, {s.input: s.partitions}, exist_ok=False)
    m = n + 2000
    fresh.produce(producer, m, seed=5, bad_every=300)
    _drain_with_a_new_process(kafka_bootstrap, fresh, model_dir, log, delivery)
    led = settled_ledger(fresh, kafka_bootstrap)
    _assert_balanced(led, m, dead=len(fresh.bad))
    assert led.duplicates == 0
    RESULTS[f"input_deleted_{delivery}"] = {"exit": rc, "seconds_to_exit": round(took, 1),
                                            "readings_after_recreate": m, "lost": len(led.lost)}


@pytest.mark.parametrize(("which", "delivery"), [("alerts", "at-least-once"), ("dead", "exactly-once")])
def test_output_topic_deleted_mid_run(kafka_bootstrap, admin, make_topic, producer, model_dir, tmp_path,  # noqa: F811
                                      which, delivery):
    """An output topic (alerts, dead letters) deleted under a running pipeline: the batches that
    cannot be delivered are not committed, one ERROR line names the topic and the fix, exit 2;
    after recreating it a restart redoes them and nothing is lost."""
    s = TimelineStream(make_topic)
    log = tmp_path / "run.log"
    proc = start_pipeline(kafka_bootstrap, s, model_dir, log, "--delivery", delivery)
    try:
        wait_url(proc, log)
        s.produce(producer, 2000, bad_every=100)
        wait_drained(kafka_bootstrap, s, proc=proc)
        before = set(s.refs)  # processed, delivered, committed
        topic = getattr(s, which)
        mark = log.stat().st_size
        _delete(admin, topic)
        s.produce(producer, 2000, seed=2, bad_every=100)  # every batch has alerts and dead letters
        rc = proc.wait(timeout=120)
    finally:
        stop_process(proc)
    assert rc == 2
    _one_clear_line(log.read_text()[mark:], topic)
    assert committed_lag(kafka_bootstrap, s.input, s.group, s.partitions) > 0  # undeliverable: not committed

    create_topics(admin, {topic: 1}, exist_ok=False)
    _drain_with_a_new_process(kafka_bootstrap, s, model_dir, log, delivery)
    led = settled_ledger(s, kafka_bootstrap)
    new = s.refs - before  # what went to the deleted topic before is gone with it
    assert len(s.refs) == 4000 and not led.uncommitted
    assert not (led.lost & new), f"lost {len(led.lost & new)} readings"
    assert not led.missing_alerts(s.anomalies & new)
    assert {(p, o, 0) for p, o, _ in led.dead} >= s.bad & new
    if delivery == "exactly-once":
        assert led.duplicates == 0
    RESULTS[f"{which}_deleted_{delivery}"] = {"exit": rc, "readings_after": len(new), "lost": len(led.lost & new)}


@contextlib.contextmanager
def _small_disk(path: Path, size_mb: int):
    """A tmpfs of `size_mb` MiB mounted at `path` (needs root); unmounted at the end."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): needs root or CAP_SYS_ADMIN")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)  # still busy


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_broker_disk_full_mid_stream(tmp_path, model_dir, delivery):  # noqa: F811
    """The broker's log dir on a small tmpfs fills up while readings stream through: Kafka takes
    the dir offline and, having no other, shuts down. The pipeline keeps running, says Kafka is
    unreachable (not 20 librdkafka lines a second), commits nothing unacknowledged; once space
    is freed and the broker restarted on its data, it carries on and the ledger balances."""
    state = tmp_path / "broker"
    with _small_disk(state / "data", 64) as data:
        broker = PrivateBroker(state)
        broker.start()
        proc = None
        try:
            bs = broker.bootstrap
            s = TimelineStream(topic_maker(bs))
            producer = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5,
                                 "log_level": 0})
            s.produce(producer, 2000, bad_every=500)
            log = tmp_path / "run.log"
            proc = start_pipeline(bs, s, model_dir, log, "--delivery", delivery)
            url = wait_url(proc, log)
            wait_metric(url, "latentwatch_batches_total", 2)
            free = os.statvfs(data)
            filler = data / "filler"  # leaves 2 MiB: the stream fills that in seconds
            filler.write_bytes(b"\0" * (free.f_bavail * free.f_frsize - 2 * 1024 * 1024))
            mark = log.stat().st_size
            n = 30000
            feeder = threading.Thread(target=s.produce, args=(producer, n),
                                      kwargs={"seed": 2, "bad_every": 500, "per_second": 3000})
            feeder.start()
            deadline = time.monotonic() + 90
            while broker.status() is not None:
                assert time.monotonic() < deadline, "the broker did not stop with a full disk"
                time.sleep(0.2)
            assert "all log dirs" in broker.log_file.read_text()  # Kafka's reason: the dir failed
            down = time.monotonic()
            # The line comes when librdkafka reports all brokers down to the run loop, which may
            # be waiting in a commit that the dying broker never answered (socket.timeout.ms).
            while "is unreachable (all brokers down)" not in log.read_text()[mark:]:
                assert proc.poll() is None, "the pipeline died while the broker was down"
                assert time.monotonic() - down < 90, "no line saying Kafka is unreachable"
                time.sleep(0.5)
            said_after = time.monotonic() - down
            time.sleep(5)
            assert proc.poll() is None, "the pipeline died while the broker was down"
            outage = log.read_text()[mark:]
            assert "Traceback" not in outage
            lines = len(outage.splitlines())  # librdkafka alone logs ~20 reconnect failures a second
            assert lines < 30 + 2 * (time.monotonic() - down), f"{lines} lines in the outage"
            scored_during = scrape(url, "latentwatch_readings_scored_total")
            filler.unlink()  # space freed: the same broker, on its data, again
            broker.start()
            feeder.join(timeout=300)
            assert not feeder.is_alive()
            wait_drained(bs, s, proc=proc, timeout=240)
            assert scrape(url, "latentwatch_readings_scored_total") > scored_during  # same process
            assert stop_process(proc) == 0
            del producer
            led = settled_ledger(s, bs)
        finally:
            if proc is not None:
                stop_process(proc)
            broker.stop()
    _assert_balanced(led, 2000 + n, dead=len(s.bad))
    assert not led.missing_alerts(s.anomalies)
    if delivery == "exactly-once":
        assert led.duplicates == 0
    RESULTS[f"disk_full_{delivery}"] = {"readings": 2000 + n, "lost": len(led.lost), "duplicates": led.duplicates,
                                        "unreachable_said_after_s": round(said_after, 1)}


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
def test_sigterm_during_a_broker_outage_exits_within_the_shutdown_timeout(private_broker, tmp_path, model_dir,
                                                                          delivery):
    """Kafka dies with a batch in flight; SIGTERM must end the process within shutdown_timeout_s
    (plus start-to-exit slack), not when librdkafka gives up on the messages (300 s). Nothing of
    the batch in hand is committed: the ledger after a restart on the revived broker balances."""
    bs = private_broker.bootstrap
    s = TimelineStream(topic_maker(bs))
    producer = Producer({"bootstrap.servers": bs, "enable.idempotence": True, "linger.ms": 5, "log_level": 0})
    s.produce(producer, 2000, seed=1)
    log = tmp_path / "run.log"
    timeout_s = 4.0
    proc = start_pipeline(bs, s, model_dir, log, "--delivery", delivery,
                          env={"LATENTWATCH_SHUTDOWN_TIMEOUT_S": str(timeout_s)})
    try:
        url = wait_url(proc, log)
        wait_metric(url, "latentwatch_batches_total", 2)
        feeder = threading.Thread(target=s.produce, args=(producer, 3000),
                                  kwargs={"seed": 2, "per_second": 1500})
        feeder.start()
        time.sleep(0.5)
        private_broker.kill()
        time.sleep(2.0)  # batches now wait for acknowledgements that cannot come
        assert proc.poll() is None
        asked = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=timeout_s + 60)
        took = time.monotonic() - asked
    finally:
        stop_process(proc)
    RESULTS[f"sigterm_outage_{delivery}"] = {"exit_s": round(took, 2), "rc": rc}
    assert rc == 0, log.read_text()[-3000:]
    assert took <= timeout_s + 8, f"exited {took:.1f} s after SIGTERM (shutdown_timeout_s {timeout_s})"
    private_broker.start()
    feeder.join(timeout=180)
    del producer
    _drain_with_a_new_process(bs, s, model_dir, log, delivery)
    led = settled_ledger(s, bs)
    _assert_balanced(led, s.sent)
