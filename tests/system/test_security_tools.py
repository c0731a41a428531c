"""Security for every command that talks to Kafka, not only `run`: `simulate`, `replay`,
`alerts tail` and `alerts forward` reach the TLS and SASL/SCRAM listeners through the same
`kafka` settings (config file, LATENTWATCH_* environment, flags, in that increasing order of
precedence), and no secret shows in their output, even with -v."""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from tests.support.harness import read_topic
from tests.support.processes import topic_maker
from tests.support.records import alert_record
from tests.support.secure import PASSWORD, assert_no_secret, cli, client_config, write_config

KINDS = ["tls", "scram"]


def produce_alerts(bootstrap: str, topic: str, sensors: list[str]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for n, sensor in enumerate(sensors):
        p.produce(topic, key=sensor.encode(), value=json.dumps(alert_record(sensor, "critical", n=n)).encode())
    assert p.flush(30) == 0


@pytest.mark.parametrize("kind", KINDS)
def test_simulate_over_tls_and_scram(secure_broker, tmp_path, kind):
    b = secure_broker
    topic = topic_maker(b["plain"])(prefix="sim")
    cfg = write_config(tmp_path, client_config(b, kind))
    r = cli("-v", "simulate", "--config", str(cfg), "--topic", topic, "--count", "40", "--rate", "0",
            "--sensors", "4", "--seed", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 delivered, 0 failed" in r.stderr
    assert len(read_topic(b["plain"], topic, expected=40)) == 40
    assert_no_secret(r.stdout + r.stderr)


@pytest.mark.parametrize("kind", KINDS)
def test_replay_over_tls_and_scram_with_secrets_from_the_environment(secure_broker, tmp_path, kind):
    """The config file names the wrong bootstrap address and, for SCRAM, no password: the
    --bootstrap flag and LATENTWATCH_KAFKA__SASL_PASSWORD win over it."""
    b = secure_broker
    topic = topic_maker(b["plain"])(prefix="replay")
    csv = tmp_path / "pump.csv"
    csv.write_text("timestamp,temp,flow\n" + "".join(
        f"2026-11-21T10:00:{i:02d}Z,{20 + i * 0.1:.1f},{3 + i * 0.01:.2f}\n" for i in range(12)))
    section = client_config(b, kind)
    section["kafka"]["bootstrap_servers"] = "127.0.0.1:1"
    section["kafka"].pop("sasl_password", None)
    cfg = write_config(tmp_path, section)
    r = cli("-v", "replay", str(csv), "--config", str(cfg), "--bootstrap", b[kind], "--topic", topic,
            "--as-fast-as-possible", env={"LATENTWATCH_KAFKA__SASL_PASSWORD": PASSWORD})
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(read_topic(b["plain"], topic, expected=12)) == 12
    assert_no_secret(r.stdout + r.stderr)


@pytest.mark.parametrize("kind", KINDS)
def test_alerts_tail_over_tls_and_scram(secure_broker, tmp_path, kind):
    b = secure_broker
    topic = topic_maker(b["plain"])(prefix="alerts")
    produce_alerts(b["plain"], topic, ["pump-1", "pump-2", "pump-3"])
    cfg = write_config(tmp_path, client_config(b, kind))
    r = cli("-v", "alerts", "tail", "--config", str(cfg), "--topic", topic, "--from-beginning", "--json",
            "--max-messages", "3", "--timeout", "60")
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [a["sensor_id"] for a in lines] == ["pump-1", "pump-2", "pump-3"]
    assert_no_secret(r.stdout + r.stderr)


@pytest.mark.parametrize("kind", ["scram"])
def test_alerts_tail_settings_from_the_environment_only(secure_broker, kind):
    """No flag and no config file: the LATENTWATCH_KAFKA__* variables alone configure the client."""
    b = secure_broker
    topic = topic_maker(b["plain"])(prefix="alerts")
    produce_alerts(b["plain"], topic, ["pump-9"])
    env = {f"LATENTWATCH_KAFKA__{key.upper()}": str(value) for key, value in client_config(b, kind)["kafka"].items()}
    r = cli("alerts", "tail", "--topic", topic, "--from-beginning", "--max-messages", "1", "--timeout", "60",
            env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "pump-9" in r.stdout
    assert_no_secret(r.stdout + r.stderr)


class _StubAlertmanager:
    """Just enough of Alertmanager's API v2: POST /api/v2/alerts, answered 200, bodies kept."""

    def __init__(self):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                received.extend(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("kind", KINDS)
def test_alerts_forward_over_tls_and_scram(secure_broker, tmp_path, kind):
    b = secure_broker
    topic = topic_maker(b["plain"])(prefix="alerts")
    produce_alerts(b["plain"], topic, ["fan-1", "fan-2"])
    cfg = write_config(tmp_path, client_config(b, kind))
    group = f"fwd-{uuid.uuid4().hex[:8]}"
    am = _StubAlertmanager()
    try:
        r = cli("-v", "alerts", "forward", "--config", str(cfg), "--alertmanager", am.url, "--topic", topic,
                "--group-id", group, "--batch-wait", "0.5", "--max-batches", "1")
    finally:
        am.close()
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(a["labels"]["sensor"] for a in am.received) == ["fan-1", "fan-2"]
    c = Consumer({"bootstrap.servers": b["plain"], "group.id": group})
    try:
        assert [tp.offset for tp in c.committed([TopicPartition(topic, 0)], timeout=15)] == [2]
    finally:
        c.close()
    assert_no_secret(r.stdout + r.stderr)


def test_bench_over_scram(secure_broker, tmp_path):
    """The benchmark's own clients and the pipeline processes it starts reach a SCRAM cluster
    (the smallest run that still starts a pipeline process)."""
    b = secure_broker
    cfg = write_config(tmp_path, client_config(b, "scram"))
    out = tmp_path / "results"
    r = cli("bench", "--config", str(cfg), "--quick", "--workloads", "single", "--readings", "2000",
            "--skip", "model,naive,latency", "--out", str(out), "--stem", "scram", timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "scram.json").read_text())
    assert res["broker"]["kind"] == "external"
    single = res["workloads"]["single"]
    assert single["ceiling_bare"]["readings_per_s"] > 0 and single["pipeline"]["readings_per_s"] > 0
    assert single["pipeline"]["exit_code"] == 0
    assert_no_secret(r.stdout + r.stderr)
