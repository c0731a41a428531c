"""A broker with TLS and SASL/SCRAM listeners for the security tests (a pytest plugin,
tests/conftest.py lists it): certificates made with openssl at test time, the documented
`kafka:` config sections for each listener, and a check that no secret leaked into output.

One broker serves the whole test run (session scope), so the security tests of the pipeline and
of the other commands share it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.processes import PrivateBroker

USER = "alice"
PASSWORD = f"alice-secret-{uuid.uuid4().hex[:12]}"  # unique: any occurrence in output is a leak
KEYSTORE_PASSWORD = f"ks-{uuid.uuid4().hex[:12]}"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_certs(d: Path) -> dict[str, Path]:
    """A CA, a broker certificate it signs (SAN 127.0.0.1/localhost) in a PKCS12 keystore, and a
    second, unrelated CA (what an untrusted certificate looks like from the client's side)."""
    d.mkdir(parents=True, exist_ok=True)
    for ca in ("ca", "rogue-ca"):
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{ca}.key", "-out", f"{ca}.pem",
                 "-days", "2", "-subj", f"/CN=latentwatch-test-{ca}", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "broker.key", "-out", "broker.csr",
             "-subj", "/CN=localhost", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "broker.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "broker.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", "ca.pem",
             "-out", "broker.p12", "-name", "broker", "-passout", f"pass:{KEYSTORE_PASSWORD}", cwd=d)
    return {"ca": d / "ca.pem", "rogue": d / "rogue-ca.pem", "keystore": d / "broker.p12"}


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory):
    """A broker with PLAINTEXT (tests' own clients), TLS (SSL) and SCRAM (SASL_SSL) listeners;
    the SCRAM user is created when the data dir is formatted."""
    from latentwatch.pipeline.devtools.local_kafka import free_port

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    base = tmp_path_factory.mktemp("secure")
    certs = make_certs(base / "certs")
    ports = {"TLS": free_port(), "SCRAM": free_port()}
    while ports["SCRAM"] == ports["TLS"]:
        ports["SCRAM"] = free_port()
    broker = PrivateBroker(
        base / "broker",
        extra_listeners={"TLS": ("SSL", ports["TLS"]), "SCRAM": ("SASL_SSL", ports["SCRAM"])},
        extra_properties={
            "ssl.keystore.location": str(certs["keystore"]),
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.password": KEYSTORE_PASSWORD,
            "ssl.key.password": KEYSTORE_PASSWORD,
            "ssl.client.auth": "none",
            "sasl.enabled.mechanisms": "SCRAM-SHA-256",
            "listener.name.scram.scram-sha-256.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        },
        format_args=["--add-scram", f"SCRAM-SHA-256=[name={USER},password={PASSWORD}]"],
    )
    broker.start()
    try:
        yield {"plain": broker.bootstrap, "tls": f"127.0.0.1:{ports['TLS']}",
               "scram": f"127.0.0.1:{ports['SCRAM']}", **certs}
    finally:
        broker.stop()


def client_config(b: dict, kind: str, password: str = PASSWORD, ca: str = "ca") -> dict:
    """The documented `kafka:` section of a config file for the TLS or the SCRAM listener."""
    kafka = {"bootstrap_servers": b[kind], "security_protocol": "SSL", "ssl_ca_location": str(b[ca])}
    if kind == "scram":
        kafka.update(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256", sasl_username=USER,
                     sasl_password=password)
    return {"kafka": kafka}


def write_config(tmp_path: Path, cfg: dict) -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def assert_no_secret(text: str) -> None:
    assert PASSWORD not in text, "the SASL password appears in the output"
    assert KEYSTORE_PASSWORD not in text


def cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    """`latentwatch ARGS` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "latentwatch.pipeline.cli", *args], capture_output=True, text=True,
                          check=False, timeout=timeout, env=dict(os.environ, **(env or {})))
