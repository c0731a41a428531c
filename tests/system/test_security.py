"""Security: the pipeline over TLS and SASL/SCRAM (a broker of its own, certificates made with
openssl at test time), clear one-line failures for a wrong password or an untrusted certificate,
no secret in any output (even with -v), untrusted checkpoints cannot run code, /metrics binds
where configured."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import urllib.request
import uuid

import pytest
from confluent_kafka import Producer
from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.metrics import PipelineMetrics

from tests.support.processes import (
    TimelineStream,
    start_pipeline,
    stop_process,
    topic_maker,
    wait_drained,
    wait_url,
)
from tests.support.secure import PASSWORD, USER, assert_no_secret, cli, client_config, write_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.mark.parametrize("kind", ["tls", "scram"])
def test_pipeline_over_tls_and_scram_end_to_end(secure_broker, model_dir, tmp_path, kind):  # noqa: F811
    """`latentwatch -v run --config` with the documented security settings scores every reading;
    the password is nowhere in its debug output or in `config show`."""
    b = secure_broker
    s = TimelineStream(topic_maker(b["plain"]))
    producer = Producer({"bootstrap.servers": b["plain"], "enable.idempotence": True})
    s.produce(producer, 800, bad_every=200)
    del producer
    cfg = write_config(tmp_path, client_config(b, kind))
    log = tmp_path / "run.log"
    # -v, and librdkafka's own debug output too (its configuration dump and SASL handshake)
    debug = '{"debug": "security,conf,broker", "session.timeout.ms": 6000, "heartbeat.interval.ms": 1000}'
    proc = start_pipeline(b[kind], s, model_dir, log, "--config", str(cfg), verbose=True,
                          env={"LATENTWATCH_KAFKA__CONSUMER": debug,
                               "LATENTWATCH_KAFKA__PRODUCER": '{"debug": "security,conf"}'})
    try:
        url = wait_url(proc, log)
        wait_drained(b["plain"], s, proc=proc)
        assert urllib.request.urlparse(url).hostname == "127.0.0.1"  # the default bind address
        other = other_local_address()
        if other:
            port = urllib.request.urlparse(url).port
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=3).close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=40) == 0
    finally:
        stop_process(proc)
    led = s.ledger(b["plain"])
    assert len(led.inputs) == 800 and not led.lost and not led.uncommitted and led.duplicates == 0
    assert len(led.scored) == 800 - len(s.bad)
    output = log.read_text()
    assert "DEBUG latentwatch.librdkafka" in output  # debug logging really was on
    if kind == "scram":
        assert "SCRAM-SHA-256" in output  # the handshake was logged, without the password
    assert_no_secret(output)
    for fmt in ([], ["--json"]):
        shown = cli("config", "show", "--config", str(cfg), *fmt)
        assert shown.returncode == 0, shown.stderr
        assert_no_secret(shown.stdout + shown.stderr)
        if kind == "scram":
            assert "**********" in shown.stdout and USER in shown.stdout
    # The same secret given through the environment is masked too.
    shown = cli("-v", "config", "show", env={"LATENTWATCH_KAFKA__SASL_PASSWORD": PASSWORD,
                                             "LATENTWATCH_KAFKA__PRODUCER": f'{{"sasl.password": "{PASSWORD}"}}'})
    assert shown.returncode == 0 and "**********" in shown.stdout
    assert_no_secret(shown.stdout + shown.stderr)


@pytest.mark.parametrize("case", ["wrong_password", "unknown_user", "untrusted_tls", "untrusted_scram",
                                  "plaintext_to_tls"])
def test_refused_connection_is_one_clear_line_and_exit_2(secure_broker, model_dir, tmp_path, case):  # noqa: F811
    """Wrong credentials or an untrusted certificate: exit 2 with one line naming what to check,
    well before the start-up timeout (120 s here; the command may take 90 s at most)."""
    b = secure_broker
    cfg = {
        "wrong_password": client_config(b, "scram", password="not-" + PASSWORD),
        "unknown_user": client_config(b, "scram"),
        "untrusted_tls": client_config(b, "tls", ca="rogue"),
        "untrusted_scram": client_config(b, "scram", ca="rogue"),
        "plaintext_to_tls": {"kafka": {"bootstrap_servers": b["tls"]}},
    }[case]
    if case == "unknown_user":
        cfg["kafka"]["sasl_username"] = "mallory"
    path = write_config(tmp_path, cfg)
    topic = f"in-{uuid.uuid4().hex[:6]}"
    # A plaintext client on a TLS port sees no refusal, only a broker that never answers: that is
    # the "cannot reach" path, which gives up after the start-up timeout (5 s here).
    timeout_s = "5" if case == "plaintext_to_tls" else "120"
    r = cli("-v", "run", "--config", str(path), "--model", model_dir, "--input-topic", topic,
            env={"LATENTWATCH_STARTUP_TIMEOUT_S": timeout_s}, timeout=90)
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("latentwatch: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr
    if case == "plaintext_to_tls":
        assert "cannot reach Kafka" in errors[0]
    else:
        assert "refused us" in errors[0] and "kafka." in errors[0]
    assert_no_secret(r.stdout + r.stderr)


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # unpickling would create the marker file


def test_malicious_checkpoint_cannot_run_code(model_dir, tmp_path):  # noqa: F811
    """A model directory whose weights.pt carries a pickle with a code-running __reduce__:
    `latentwatch run` refuses it in one line (exit 2) and the code never runs."""
    import torch

    evil = tmp_path / "evil-model"
    shutil.copytree(model_dir, evil)
    marker = tmp_path / "pwned"
    torch.save({"encoder.0.weight": _Evil(str(marker))}, evil / "weights.pt")
    r = cli("run", "--model", str(evil), "--bootstrap", "127.0.0.1:1")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "weights.pt" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    import pickle

    (evil / "weights.pt").write_bytes(pickle.dumps(_Evil(str(marker))))  # a bare pickle
    r = cli("run", "--model", str(evil), "--bootstrap", "127.0.0.1:1")
    assert r.returncode == 2 and not marker.exists()


def other_local_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    try:
        out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, timeout=10,
                             check=False).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    for addr in out:
        if "." in addr and not addr.startswith("127."):
            return addr
    return None


def test_metrics_bind_where_configured():
    """Default 127.0.0.1: not reachable on another local address; 0.0.0.0 (configured) is."""
    host = load_settings(None, {}).metrics.host
    assert host == "127.0.0.1"
    server, _ = PipelineMetrics().serve(0, host)
    try:
        assert server.server_address[0] == "127.0.0.1"
        port = server.server_port
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
        other = other_local_address()
        if other is None:
            pytest.skip("no non-loopback address to probe from (bound address checked above)")
        with pytest.raises(OSError):
            socket.create_connection((other, port), timeout=3).close()
    finally:
        server.shutdown()
        server.server_close()
    exposed, _ = PipelineMetrics().serve(0, "0.0.0.0")
    try:
        body = urllib.request.urlopen(f"http://{other}:{exposed.server_port}/metrics", timeout=5).read()
        assert b"latentwatch_" in body
    finally:
        exposed.shutdown()
        exposed.server_close()
