"""One connection config for every command: the shared --bootstrap/--config flags, their
precedence, the local-broker fallback, and the client configs built from the `kafka` tree."""

from __future__ import annotations

import pytest

from latentwatch.pipeline.cli.main import build_parser
from latentwatch.pipeline.errors import UserError
from latentwatch.pipeline.kafka import clients, logs

# Every command that talks to Kafka, with the arguments it needs besides the connection.
COMMANDS = {
    "run": ["run"],
    "config show": ["config", "show"],
    "simulate": ["simulate", "--topic", "t"],
    "replay": ["replay", "x.csv", "--topic", "t"],
    "alerts tail": ["alerts", "tail"],
    "alerts forward": ["alerts", "forward", "--alertmanager", "http://am:9093"],
    "demo": ["demo"],
}


def _settings(argv):
    from latentwatch.pipeline.cli.connection import connection_settings

    return connection_settings(build_parser().parse_args(argv), local_fallback=False)


@pytest.fixture
def clean_env(monkeypatch):
    for var in ("LATENTWATCH_BOOTSTRAP", "LATENTWATCH_CONFIG", "LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS",
                "LATENTWATCH_KAFKA__SASL_PASSWORD", "LATENTWATCH_KAFKA__SECURITY_PROTOCOL"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_takes_flags_over_env_over_file(command, clean_env, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("kafka:\n  bootstrap_servers: file:1\n  security_protocol: SASL_SSL\n"
                   "  sasl_mechanism: SCRAM-SHA-256\n  sasl_username: u\n  sasl_password: from-file\n")
    argv = COMMANDS[command]
    s = _settings([*argv, "--config", str(cfg)])
    assert s.kafka.bootstrap_servers == "file:1" and s.kafka.sasl_password.get_secret_value() == "from-file"
    clean_env.setenv("LATENTWATCH_KAFKA__SASL_PASSWORD", "from-env")
    clean_env.setenv("LATENTWATCH_BOOTSTRAP", "env:2")
    s = _settings([*argv, "--config", str(cfg)])
    assert s.kafka.bootstrap_servers == "env:2" and s.kafka.sasl_password.get_secret_value() == "from-env"
    s = _settings([*argv, "--config", str(cfg), "--bootstrap", "flag:3"])
    assert s.kafka.bootstrap_servers == "flag:3" and s.kafka.security_protocol == "SASL_SSL"


def test_tools_fall_back_to_the_local_broker_only_when_no_address_is_configured(clean_env):
    from latentwatch.pipeline.cli import connection

    args = build_parser().parse_args(["alerts", "tail"])
    clean_env.setattr(connection, "local_broker_address", lambda: "127.0.0.1:5555")
    assert connection.connection_settings(args).kafka.bootstrap_servers == "127.0.0.1:5555"
    clean_env.setenv("LATENTWATCH_KAFKA__SECURITY_PROTOCOL", "SSL")  # no address: still the fallback
    assert connection.connection_settings(args).kafka.bootstrap_servers == "127.0.0.1:5555"
    clean_env.setenv("LATENTWATCH_BOOTSTRAP", "env:1")  # configured: no fallback
    assert connection.connection_settings(args).kafka.bootstrap_servers == "env:1"


def test_no_address_anywhere_is_one_clear_error(clean_env, monkeypatch):
    from latentwatch.pipeline.devtools import local_kafka

    monkeypatch.setattr(local_kafka.LocalBroker, "status", lambda self: None)
    from latentwatch.pipeline.cli.connection import connection_settings

    with pytest.raises(UserError, match="no Kafka address: pass --bootstrap"):
        connection_settings(build_parser().parse_args(["simulate", "--topic", "t"]))


def _secure():
    from latentwatch.pipeline.config import load_settings

    return load_settings(None, {"kafka.bootstrap_servers": "b:9093", "kafka.security_protocol": "SASL_SSL",
                                "kafka.sasl_mechanism": "SCRAM-SHA-512", "kafka.sasl_username": "u",
                                "kafka.sasl_password": "pw", "kafka.ssl_ca_location": "/ca.pem",
                                "kafka.consumer": {"fetch.min.bytes": 7, "group.id": "not-mine"},
                                "kafka.producer": {"transactional.id": "run-only", "linger.ms": 9}})


@pytest.mark.parametrize("build", [
    lambda s: clients.client_config(s),
    lambda s: clients.admin_config(s),
    lambda s: clients.tool_consumer_config(s, {"group.id": "mine"}),
    lambda s: clients.tool_producer_config(s),
    lambda s: clients.consumer_config(s),
    lambda s: clients.producer_config(s),
])
def test_every_client_config_carries_the_security_settings(build):
    conf = build(_secure())
    assert conf["bootstrap.servers"] == "b:9093" and conf["security.protocol"] == "SASL_SSL"
    assert conf["sasl.mechanisms"] == "SCRAM-SHA-512" and conf["sasl.password"] == "pw"
    assert conf["ssl.ca.location"] == "/ca.pem" and conf["logger"] is logs.LIBRDKAFKA_LOG


def test_tool_configs_take_the_passthrough_but_keep_their_own_role():
    s = _secure()
    consumer = clients.tool_consumer_config(s, {"group.id": "mine"})
    assert consumer["fetch.min.bytes"] == 7 and consumer["group.id"] == "mine"
    producer = clients.tool_producer_config(s)
    assert producer["linger.ms"] == 9 and "transactional.id" not in producer
    assert producer["enable.idempotence"] is True


def test_subscriber_configs_come_from_the_settings():
    from latentwatch.pipeline.subscribers.alertmanager import forwarder_consumer_config
    from latentwatch.pipeline.subscribers.alert_reader import tail_consumer_config

    tail = tail_consumer_config(_secure())
    assert tail["security.protocol"] == "SASL_SSL" and tail["group.id"].startswith("latentwatch-tail-")
    fwd = forwarder_consumer_config(_secure(), "fwd")
    assert fwd["sasl.username"] == "u" and fwd["group.id"] == "fwd" and fwd["isolation.level"] == "read_committed"


def test_alerts_tail_follows_the_configured_alerts_topic(clean_env, tmp_path, monkeypatch):
    """Without --topic, `alerts tail` reads the pipeline's alerts topic of the same config."""
    from latentwatch.pipeline.cli.main import main
    from latentwatch.pipeline.subscribers import alert_reader

    seen = []
    monkeypatch.setattr(alert_reader, "tail", lambda settings, topic, *a, **kw: seen.append(topic) or 0)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("topics:\n  alerts: prod-alerts\n")
    assert main(["alerts", "tail", "--config", str(cfg), "--bootstrap", "b:1"]) == 0
    assert main(["alerts", "tail", "--config", str(cfg), "--bootstrap", "b:1", "--topic", "other"]) == 0
    assert main(["alerts", "tail", "--bootstrap", "b:1"]) == 0
    assert seen == ["prod-alerts", "other", "anomaly-alerts"]
