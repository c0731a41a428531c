"""Configuration precedence, secret masking, and the CLI surface."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from latentwatch.pipeline.config import load_settings
from latentwatch.pipeline.errors import UserError


def test_flags_beat_env_beat_file_beat_defaults(tmp_path, monkeypatch):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("group_id: from-file\ntopics:\n  input: file-in\n  alerts: file-alerts\n"
                   "batch:\n  max_readings: 10\nkafka:\n  consumer:\n    fetch.min.bytes: 7\n")
    monkeypatch.setenv("LATENTWATCH_TOPICS__INPUT", "env-in")
    monkeypatch.setenv("LATENTWATCH_GROUP_ID", "from-env")
    s = load_settings(str(cfg), {"group_id": "from-flag", "topics.alerts": None})
    assert s.group_id == "from-flag"
    assert s.topics.input == "env-in"
    assert s.topics.alerts == "file-alerts"
    assert s.batch.max_readings == 10
    assert s.topics.dead_letter == "sensor-readings.dlq"
    assert s.kafka.consumer == {"fetch.min.bytes": 7}


def test_example_config_loads(repo_root):
    s = load_settings(str(repo_root / "config" / "pipeline.yaml"))
    assert s.model.path == "models/pump" and s.kafka.producer["linger.ms"] == 2


def test_secrets_are_masked_but_reach_librdkafka(monkeypatch):
    monkeypatch.setenv("LATENTWATCH_KAFKA__SASL_PASSWORD", "hunter2-secret")
    s = load_settings(None, {"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "SCRAM-SHA-512",
                             "kafka.sasl_username": "lw"})
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s.masked())
    conf = s.kafka.client_config()
    assert conf["sasl.password"] == "hunter2-secret" and conf["sasl.mechanisms"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "lw" and conf["security.protocol"] == "SASL_SSL"


@pytest.mark.parametrize("content, needle", [
    ("batch:\n  max_readings: -3\n", "batch.max_readings"),
    ("delivery: sometimes\n", "delivery"),
    ("nonsense_key: 1\n", "nonsense_key"),
    ("kafka: [unclosed\n", "not valid YAML"),
])
def test_bad_config_is_one_clear_error(tmp_path, content, needle):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(content)
    with pytest.raises(UserError, match=needle):
        load_settings(str(cfg))


def _cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_config_show_masks_secrets_and_shows_precedence(tmp_path):
    env = dict(os.environ, LATENTWATCH_KAFKA__SASL_PASSWORD="s3cret-value", LATENTWATCH_GROUP_ID="g-env")
    r = _cli("config", "show", "--group-id", "g-flag", env=env)
    assert r.returncode == 0, r.stderr
    assert "s3cret-value" not in r.stdout + r.stderr
    assert "sasl_password: '**********'" in r.stdout and "group_id: g-flag" in r.stdout


def test_missing_config_file_is_one_line(tmp_path):
    r = _cli("config", "show", "--config", str(tmp_path / "nope.yaml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_help_lists_every_subcommand_on_one_line_and_run_help_names_env_vars():
    r = _cli("--help")
    assert r.returncode == 0
    lines = r.stdout.splitlines()
    for cmd in ("broker", "run", "config", "schema", "train", "score", "evaluate", "simulate", "replay",
                "report", "alerts", "demo", "bench", "models"):
        line = next((ln for ln in lines if ln.strip().startswith(cmd + " ")), None)
        assert line is not None, f"{cmd} missing from --help"
        assert len(line.split(None, 1)) == 2, f"{cmd} has no one-line description"
        following = lines[lines.index(line) + 1]
        assert not following.startswith(" " * 12), f"{cmd}'s description wraps onto a second line"
    run = _cli("run", "--help").stdout
    for var in ("LATENTWATCH_MODEL__PATH", "LATENTWATCH_KAFKA__BOOTSTRAP_SERVERS", "LATENTWATCH_TOPICS__INPUT",
                "LATENTWATCH_GROUP_ID", "LATENTWATCH_METRICS__PORT", "LATENTWATCH_CONFIG"):
        assert var in run


def test_schema_prints_json():
    import json

    r = _cli("schema")
    assert set(json.loads(r.stdout)) == {"reading", "batch"}


def test_a_shadow_model_that_does_not_load_is_one_line_naming_it(tmp_path):
    from latentwatch.detectors import QuantileThreshold, make_detector
    from latentwatch.detectors.checkpoint import save, summarise_training_data
    from tests.support.detector_data import normal_data

    X = normal_data(200, seed=0)
    names = [f"c{i}" for i in range(X.shape[1])]
    det = make_detector("pca", device="cpu", latent_dim=2).fit(X, channels=names)
    save(tmp_path / "m", det, QuantileThreshold(0.99).fit(det.score(X[:, None, :]).score),
         summarise_training_data(X, names))
    r = _cli("run", "--model", str(tmp_path / "m"), "--shadow", str(tmp_path / "nope"),
             "--bootstrap", "127.0.0.1:1")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "shadow model" in lines[0] and "nope" in lines[0], r.stderr


def test_config_show_masks_an_oauthbearer_config_holding_a_client_secret():
    s = load_settings(None, {"kafka.consumer": {"sasl.oauthbearer.config": "clientId=lw clientSecret=s3cr3t-x"},
                             "kafka.producer": {"sasl.oauthbearer.client.secret": "s3cr3t-y",
                                                "sasl.oauthbearer.extensions": "logicalCluster=lkc-1,token=s3cr3t-z"}})
    shown = str(s.masked())
    assert "s3cr3t" not in shown
    assert s.kafka.consumer["sasl.oauthbearer.config"].endswith("s3cr3t-x")  # still reaches librdkafka


def test_run_help_states_the_defaults_the_settings_have():
    import re

    from latentwatch.pipeline.cli.run import RUN_FLAGS
    from latentwatch.pipeline.config import Settings

    s = Settings()
    for flag, (path, _, text) in RUN_FLAGS.items():
        said = re.search(r"\(default (\d+(?:\.\d+)?)[;)]", text)
        if said is None:
            continue
        value = s
        for part in path.split("."):
            value = getattr(value, part)
        assert float(said.group(1)) == float(value), f"{flag} says default {said.group(1)}, the setting is {value}"


def test_config_show_masks_schema_registry_credentials():
    from latentwatch.pipeline.config import Settings
    from latentwatch.pipeline.kafka.registry import client_config

    s = Settings(schema_registry={"url": "https://svc:url-pass-1@registry:8081/apis/ccompat/v7",
                                  "basic_auth_user_info": "svc:basic-pass-2", "bearer_token": "bearer-tok-3",
                                  "ssl_ca_location": "/etc/ca.pem"})
    shown = str(s.masked())
    for secret in ("url-pass-1", "basic-pass-2", "bearer-tok-3"):
        assert secret not in shown and secret not in repr(s)
    assert "registry:8081/apis/ccompat/v7" in shown and "/etc/ca.pem" in shown
    conf = client_config(s.schema_registry)  # the client still gets them
    assert conf["basic.auth.user.info"] == "svc:basic-pass-2" and conf["bearer.auth.token"] == "bearer-tok-3"
