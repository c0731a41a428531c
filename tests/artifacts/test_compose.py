"""docker-compose.yml, the Dockerfile and the Grafana/Prometheus/Alertmanager files they mount:
the compose file is valid against the Compose Specification's JSON Schema (checked by a small
draft-07 validator below: `jsonschema` is not a dependency), everything it mounts or builds from
exists, and the pieces agree with each other (ports, host names, datasource uid, dashboard path)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA_CANDIDATES = [
    ROOT.parent / "shared" / "data" / "compose-spec" / "compose-spec.json",
    Path("/work/shared/data/compose-spec/compose-spec.json"),
]
DASHBOARD = ROOT / "dashboards" / "latentwatch.json"
GRAFANA = ROOT / "config" / "grafana" / "provisioning"


# ----------------------------------------------------------------------------- draft-07 subset
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}
_SUPPORTED = {"type", "properties", "patternProperties", "additionalProperties", "items", "oneOf",
              "anyOf", "allOf", "required", "enum", "uniqueItems", "minimum", "maximum", "pattern",
              "$ref", "description", "deprecated", "default", "$schema", "$id", "title",
              "definitions", "format", "const"}


def validate(instance, schema: dict, root: dict | None = None, path: str = "$") -> list[str]:
    """Errors of `instance` against a JSON Schema (the draft-07 keywords the compose schema
    uses). Unknown keywords raise, so the subset can't silently skip a rule."""
    root = root or schema
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: not allowed"]
    unknown = set(schema) - _SUPPORTED
    if unknown:
        raise NotImplementedError(f"schema keywords {unknown} at {path}")
    if "$ref" in schema:  # draft-07: siblings of $ref are ignored
        node = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            node = node[part]
        return validate(instance, node, root, path)
    errors: list[str] = []
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_TYPES[t](instance) for t in types):
            return [f"{path}: {instance!r} is not of type {types}"]
    if "enum" in schema and instance not in schema["enum"]:
        errors.append(f"{path}: {instance!r} not one of {schema['enum']}")
    if "const" in schema and instance != schema["const"]:
        errors.append(f"{path}: {instance!r} != {schema['const']!r}")
    if isinstance(instance, str) and "pattern" in schema and not re.search(schema["pattern"], instance):
        errors.append(f"{path}: {instance!r} does not match {schema['pattern']}")
    if _TYPES["number"](instance):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{path}: {instance} < {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{path}: {instance} > {schema['maximum']}")
    if isinstance(instance, dict):
        for key in schema.get("required", []):
            if key not in instance:
                errors.append(f"{path}: missing required {key!r}")
        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        for key, value in instance.items():
            matched = False
            if key in props:
                matched = True
                errors += validate(value, props[key], root, f"{path}.{key}")
            for pat, sub in patterns.items():
                if re.search(pat, key):
                    matched = True
                    errors += validate(value, sub, root, f"{path}.{key}")
            if not matched and "additionalProperties" in schema:
                errors += validate(value, schema["additionalProperties"], root, f"{path}.{key}")
    if isinstance(instance, list):
        if "items" in schema:
            for i, item in enumerate(instance):
                errors += validate(item, schema["items"], root, f"{path}[{i}]")
        if schema.get("uniqueItems"):
            seen = [json.dumps(x, sort_keys=True) for x in instance]
            if len(seen) != len(set(seen)):
                errors.append(f"{path}: items are not unique")
    if "allOf" in schema:
        for sub in schema["allOf"]:
            errors += validate(instance, sub, root, path)
    if "anyOf" in schema and not any(not validate(instance, s, root, path) for s in schema["anyOf"]):
        errors.append(f"{path}: matches none of anyOf")
    if "oneOf" in schema:
        passing = [s for s in schema["oneOf"] if not validate(instance, s, root, path)]
        if len(passing) != 1:
            errors.append(f"{path}: matches {len(passing)} of oneOf (need exactly 1)")
    return errors


@pytest.fixture(scope="module")
def schema() -> dict:
    for candidate in SCHEMA_CANDIDATES:
        if candidate.is_file():
            return json.loads(candidate.read_text())
    pytest.fail(f"compose JSON schema not found in {SCHEMA_CANDIDATES}")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def mounted_and_built_paths(compose: dict) -> list[Path]:
    """Every host path the compose file mounts (bind volumes) or builds from (context, dockerfile)."""
    paths = []
    for svc in compose["services"].values():
        build = svc.get("build")
        if build:
            ctx = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            paths.append(ctx)
            if isinstance(build, dict):
                paths.append(ctx / build.get("dockerfile", "Dockerfile"))
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if (isinstance(vol, dict) and vol.get("type") == "bind") or source.startswith((".", "/")):
                paths.append(ROOT / source)
    return paths


def bind_target(svc: dict, source: str) -> str:
    for vol in svc.get("volumes", []):
        parts = vol.split(":")
        if Path(parts[0]) == Path(source):
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


# ----------------------------------------------------------------------------- the tests
def test_validator_accepts_good_and_rejects_bad_documents(schema):
    """The homemade validator is strict enough to be trusted."""
    good = {"services": {"a": {"image": "x", "ports": ["1:1"], "depends_on": {"b": {"condition": "service_healthy"}}},
                         "b": {"image": "y", "healthcheck": {"test": ["CMD", "true"], "interval": "5s"}}}}
    assert validate(good, schema) == []
    bad_cases = [
        {"services": {"a": {"image": "x", "imagee": "typo"}}},                          # unknown key
        {"services": {"a": {"image": 5}}},                                             # wrong type
        {"services": {"a": {"depends_on": {"b": {"condition": "service_ready"}}}}},     # bad enum
        {"services": {"a": {"depends_on": {"b": {}}}}},                                # required
        {"servics": {}},                                                               # top-level typo
        {"services": {"a": {"ports": ["1:1", "1:1"]}}},                                # uniqueItems
    ]
    for bad in bad_cases:
        assert validate(bad, schema), bad


def test_compose_file_is_valid_against_the_compose_spec(compose, schema):
    errors = validate(compose, schema)
    assert errors == [], "\n".join(errors[:20])


def test_compose_has_the_stack(compose):
    services = compose["services"]
    for name in ("kafka", "prometheus", "alertmanager", "grafana", "pipeline", "simulator"):
        assert name in services, name
    assert services["pipeline"]["command"][0] == "run"
    assert services["simulator"]["command"][0] == "simulate"
    for name in ("pipeline", "simulator"):
        assert services[name]["build"]["context"] == "."
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
    # every depends_on target exists
    for name, svc in services.items():
        deps = svc.get("depends_on", {})
        for dep in deps if isinstance(deps, list) else deps.keys():
            assert dep in services, f"{name} depends on unknown service {dep}"


def test_every_mounted_or_built_path_exists(compose):
    paths = mounted_and_built_paths(compose)
    assert ROOT / "config/prometheus" in paths and ROOT / "dashboards" in paths
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    assert missing == []


def test_missing_mount_is_detected(compose):
    """Negative: the existence check notices a mount of a path the repo does not have."""
    broken = json.loads(json.dumps(compose))
    broken["services"]["grafana"]["volumes"].append("./config/grafana/nope:/etc/nope:ro")
    missing = [p for p in mounted_and_built_paths(broken) if not p.exists()]
    assert missing == [ROOT / "config/grafana/nope"]


def test_kafka_is_kraft_with_host_and_internal_listeners(compose):
    kafka = compose["services"]["kafka"]
    env = kafka["environment"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "broker" in env["KAFKA_PROCESS_ROLES"]
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    assert "localhost:9092" in advertised.values()
    internal = [addr for addr in advertised.values() if addr.startswith("kafka:")]
    assert internal, "no listener for containers"
    assert "9092:9092" in kafka["ports"]
    listeners = {x.split("://")[0] for x in env["KAFKA_LISTENERS"].split(",")}
    assert set(advertised) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} == listeners
    assert set(env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].replace(":", ",").split(",")[::2]) == listeners
    # the containers use the internal listener
    for name in ("pipeline", "simulator", "alert-forwarder"):
        assert compose["services"][name]["environment"]["LATENTWATCH_BOOTSTRAP"] in internal


def test_prometheus_scrapes_the_pipeline_service(compose):
    services = compose["services"]
    target = bind_target(services["prometheus"], "./config/prometheus")
    assert f"--config.file={target}/prometheus.yml" in services["prometheus"]["command"]
    prom = yaml.safe_load((ROOT / "config/prometheus/prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "latentwatch")
    (host_port,) = job["static_configs"][0]["targets"]
    host, port = host_port.split(":")
    assert host in services
    assert f"--metrics-port={port}" in services[host]["command"]
    assert services[host]["environment"]["LATENTWATCH_METRICS__HOST"] == "0.0.0.0"
    for rule_file in prom["rule_files"]:
        assert (ROOT / "config/prometheus" / rule_file).is_file()
    (am,) = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am.split(":")[0] in services
    am_target = bind_target(services["alertmanager"], "./config/alertmanager")
    assert f"--config.file={am_target}/alertmanager.yml" in services["alertmanager"]["command"]
    assert (ROOT / "config/alertmanager/alertmanager.yml").is_file()


def test_grafana_provisioning_matches_mounts_and_dashboard(compose):
    grafana = compose["services"]["grafana"]
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert bind_target(grafana, "./config/grafana/provisioning") == "/etc/grafana/provisioning"
    dash_mount = bind_target(grafana, "./dashboards")

    providers = yaml.safe_load((GRAFANA / "dashboards/latentwatch.yaml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dash_mount
    assert env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"] == f"{dash_mount}/{DASHBOARD.name}"

    datasources = yaml.safe_load((GRAFANA / "datasources/prometheus.yaml").read_text())
    (ds,) = datasources["datasources"]
    assert ds["type"] == "prometheus" and ds["uid"]
    assert ds["url"].split("//")[1].split(":")[0] in compose["services"]

    dashboard = json.loads(DASHBOARD.read_text())
    uids = set()

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("datasource"), dict) and node["datasource"].get("type") == "prometheus":
                uids.add(node["datasource"]["uid"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(dashboard)
    assert uids == {ds["uid"]}


def test_dockerfile_builds_the_package():
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"pip install .*/app|pip install \.", text)
    assert re.search(r'^ENTRYPOINT \["latentwatch"\]', text, re.MULTILINE)
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    # what `pip install .` needs is not excluded from the build context
    for needed in ("pyproject.toml", "README.md", "pipeline", "detectors"):
        assert needed not in ignored and (ROOT / needed).exists(), needed
    assert {".git", ".venv"} <= ignored


@pytest.mark.skipif(shutil.which("amtool") is None, reason="amtool missing (Debian prometheus-alertmanager)")
def test_alertmanager_config_is_valid(tmp_path):
    res = subprocess.run(["amtool", "check-config", str(ROOT / "config/alertmanager/alertmanager.yml")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    broken = tmp_path / "alertmanager.yml"
    broken.write_text((ROOT / "config/alertmanager/alertmanager.yml").read_text().replace("receiver: default", "receiver: nobody"))
    res = subprocess.run(["amtool", "check-config", str(broken)], check=False, capture_output=True, text=True, timeout=60)
    assert res.returncode != 0


def test_pipeline_runs_the_model_the_trainer_writes(compose):
    services = compose["services"]
    model_flag = next(a for a in services["pipeline"]["command"] if a.startswith("--model="))
    model_path = model_flag.split("=", 1)[1]
    volume = lambda svc: next(v for v in services[svc]["volumes"] if v.startswith("models:"))
    mount = volume("pipeline").split(":")[1]
    assert model_path.startswith(mount + "/")
    assert volume("trainer").split(":")[1] == mount
    assert f"--out {model_path}" in services["trainer"]["command"][0]
    assert "models" in compose["volumes"]
    assert services["pipeline"]["depends_on"]["trainer"]["condition"] == "service_completed_successfully"
    # the trainer learns the plant the simulator streams: same seed
    sim_seed = next(a for a in services["simulator"]["command"] if a.startswith("--seed="))
    assert f"seed={sim_seed.split('=')[1]})" in services["trainer"]["command"][0]
