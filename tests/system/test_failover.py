"""Failover on the three-node cluster (tests/support/cluster.py), audited with the ledger: the
pipeline runs as a real process through each fault, never restarted, and afterwards every input
reading is scored or dead-lettered, every injected anomaly alerted, none scored twice under
exactly-once. Each scenario reports the longest gap in committed progress (printed at the end of
the module; a figure, not an assertion).

- the node leading every partition of the input, alerts, dead-letter and latent topics is
  SIGKILLed while traffic flows and brought back;
- a rolling restart: each node in turn stopped cleanly, restarted, caught up, while traffic flows;
- the controller quorum loses its leader (SIGKILL): the other two elect a new one, and metadata
  changes still go through, while traffic flows.

The topics are replicated three times with min.insync.replicas=2; the pipeline keeps acks=all.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from confluent_kafka import KafkaException, Producer

from tests.support.cluster import (
    ProgressWatch,
    leader_assigned_topic_maker,
    leaders,
    replicated_topic_maker,
    unexplained_by_warm_up,
)
from tests.support.processes import (
    TimelineStream,
    settled_ledger,
    start_pipeline,
    stop_process,
    wait_drained,
    wait_url,
)
from tests.support.streams import scrape, wait_metric

pytestmark = pytest.mark.slow
RESULTS: dict[str, dict] = {}
DELIVERY = ["at-least-once", "exactly-once"]


@pytest.fixture(scope="module", autouse=True)
def _print_figures():
    yield
    if RESULTS:
        print("\nfailover figures (longest gap in committed progress, s):")
        for name, figures in RESULTS.items():
            print(f"  {name}: {figures}")


class Feeder:
    """Paced traffic on a stream until stopped: chunks of 200 readings at `rate` readings/s."""

    def __init__(self, stream: TimelineStream, producer: Producer, rate: float = 400):
        self.stream, self.producer, self.rate = stream, producer, rate
        self._go = threading.Event()
        self._go.set()
        self._thread = threading.Thread(target=self._run)

    def _run(self):
        chunk = 100
        while self._go.is_set():
            self.stream.produce(self.producer, 200, seed=chunk, bad_every=400, per_second=self.rate)
            chunk += 1

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._go.clear()
        self._thread.join(timeout=300)
        assert not self._thread.is_alive(), "the test producer could not deliver"


def _retrying(read, *args, attempts: int = 10):
    """Reading the topics back right after a fault: a leader that moves back to its preferred
    node (leader.imbalance.check.interval.seconds) makes a watermark query fail once."""
    for attempt in range(attempts):
        try:
            return read(*args)
        except KafkaException:
            if attempt == attempts - 1:
                raise
            time.sleep(2)
    return None


def _producer(bootstrap: str) -> Producer:
    return Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "log_level": 0})


def _run_through(cluster, stream, model_dir, tmp_path, delivery, fault, name: str, window: int = 1) -> None:
    """Start the pipeline on `stream`, run `fault(feeder)` while traffic flows, drain, stop it,
    and audit the ledger; record the longest gap in committed progress. With a windowed model
    (`window` > 1) readings a sensor's warm-up explains are not lost (see unexplained_by_warm_up)."""
    bs = cluster.bootstrap
    producer = _producer(bs)
    stream.produce(producer, 1000, seed=1, bad_every=400)
    log = tmp_path / "run.log"
    proc = start_pipeline(bs, stream, model_dir, log, "--delivery", delivery)
    try:
        url = wait_url(proc, log)
        wait_metric(url, "latentwatch_batches_total", 2)
        watch = ProgressWatch(url).start()
        with Feeder(stream, producer) as feeder:
            time.sleep(1.0)
            figures = fault(feeder) or {}
            time.sleep(1.0)
            assert proc.poll() is None, "the pipeline exited during the fault"
        scored = scrape(url, "latentwatch_readings_scored_total")
        wait_drained(bs, stream, proc=proc, timeout=240)
        watch.stop()
        assert scrape(url, "latentwatch_readings_scored_total") >= scored
        warming = scrape(url, "latentwatch_readings_warming_up_total")
        assert stop_process(proc) == 0
    finally:
        stop_process(proc)
    assert "Traceback" not in log.read_text()
    del producer
    led = _retrying(settled_ledger, stream, bs)
    n = stream.sent
    assert len(led.inputs) == n
    assert not led.uncommitted, f"{len(led.uncommitted)} readings never committed"
    lost = led.lost
    if window > 1:
        warm = lost - _retrying(unexplained_by_warm_up, lost, bs, stream.input, window)
        assert len(warm) <= warming, f"{len(warm)} unscored readings, {warming} counted warming up"
        figures["warming_up"] = len(warm)
        lost = lost - warm
    assert not lost, f"lost {len(lost)} readings: {sorted(lost)[:5]}"
    assert {(p, o, 0) for p, o, _ in led.dead} == stream.bad
    assert not (led.missing_alerts(stream.anomalies) - led.lost), "anomalies scored without an alert"
    if delivery == "exactly-once":
        assert led.duplicates == 0, f"{led.duplicates} readings scored twice"
    model = "window 8" if window > 1 else "mlp"
    RESULTS[f"{name} {delivery} {model}"] = {"readings": n, "lost": 0, "duplicates": led.duplicates,
                                              "longest_commit_gap_s": watch.longest_gap(), **figures}


@pytest.mark.parametrize("window", [1, 8], ids=["mlp", "window8"])
@pytest.mark.parametrize("delivery", DELIVERY)
def test_leader_of_input_and_alerts_sigkilled_and_back(cluster, request, tmp_path, delivery, window):
    model_dir = request.getfixturevalue("windowed_model_dir" if window > 1 else "model_dir")
    victim = next(n for n in (1, 2, 3) if n != cluster.quorum_leader())  # a partition leader, not the controller
    stream = TimelineStream(leader_assigned_topic_maker(cluster.bootstrap, victim))
    topics = [stream.input, stream.alerts, stream.dead, stream.latent]
    assert set(leaders(cluster.bootstrap, topics).values()) == {victim}

    def fault(feeder):
        cluster.node(victim).kill()
        down = time.monotonic()
        deadline = down + 60
        while victim in leaders(cluster.bootstrap, topics).values():  # the controller moves them
            assert time.monotonic() < deadline, "leadership did not move off the killed node"
            time.sleep(0.2)
        moved = time.monotonic() - down
        time.sleep(3)  # traffic on the new leaders, one replica short
        cluster.start_node(victim)
        cluster.wait_in_sync(topics=topics)
        return {"leaders_moved_after_s": round(moved, 1)}

    _run_through(cluster, stream, model_dir, tmp_path, delivery, fault, "leader SIGKILL", window)


@pytest.mark.parametrize("delivery", DELIVERY)
def test_rolling_restart_of_all_three_brokers(cluster, model_dir, tmp_path, delivery):
    stream = TimelineStream(replicated_topic_maker(cluster.bootstrap))
    topics = [stream.input, stream.alerts, stream.dead, stream.latent]

    def fault(feeder):
        for node_id in (1, 2, 3):
            cluster.node(node_id).stop()  # SIGTERM: a controlled shutdown moves its leaders first
            cluster.start_node(node_id)
            cluster.wait_in_sync(topics=topics)  # caught up before the next one goes
        return {}

    _run_through(cluster, stream, model_dir, tmp_path, delivery, fault, "rolling restart")


@pytest.mark.parametrize("delivery", DELIVERY)
def test_controller_quorum_loses_its_leader(cluster, model_dir, tmp_path, delivery):
    from confluent_kafka.admin import AdminClient, NewTopic

    stream = TimelineStream(replicated_topic_maker(cluster.bootstrap))

    def fault(feeder):
        old = cluster.quorum_leader()
        assert old is not None
        cluster.node(old).kill()
        deadline = time.monotonic() + 60
        while cluster.quorum_leader() in (old, None):  # the two left elect a new active controller
            assert time.monotonic() < deadline, "no new controller elected"
            time.sleep(0.2)
        new = cluster.quorum_leader()
        # Metadata changes still go through with two of three voters: a topic can be made on
        # the two brokers that are up, once the new controller has fenced the dead one (until
        # then a broker may name the dead node as the controller to send the request to).
        while old in AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0}).list_topics(
                timeout=10).brokers:
            assert time.monotonic() < deadline + 60, "the dead node was never fenced"
            time.sleep(0.2)
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap, "log_level": 0})
        made = f"while-down-{uuid.uuid4().hex[:6]}"
        admin.create_topics([NewTopic(made, 1, 2)], request_timeout=60)[made].result(timeout=90)
        assert leaders(cluster.bootstrap, [made])[(made, 0)] not in (old, -1)
        admin.delete_topics([made])[made].result(timeout=30)
        time.sleep(3)
        cluster.start_node(old)
        return {"old_controller": old, "new_controller": new}

    _run_through(cluster, stream, model_dir, tmp_path, delivery, fault, "controller loss")
