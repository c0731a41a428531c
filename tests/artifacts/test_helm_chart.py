"""The Helm chart at deploy/helm/latentwatch, checked with the real tools: `helm lint --strict`
and `helm template` for each values file under ci/, every rendered object decoded strictly into
the real API types (deploy/helm/check: k8s.io/api, KEDA, prometheus-operator), the rendered
pipeline.yaml loaded by the pipeline's own Settings, and the chart's copies of the repo's files
identical to their sources. helm and the checker come from the Go module proxy
(scripts/install-system-deps); without Go or helm these tests skip, which fails CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "latentwatch"
CHECK = ROOT / "deploy" / "helm" / "check"
VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
COPIES = {  # the chart's copy -> its source
    CHART / "files" / "pipeline.yaml": ROOT / "config" / "pipeline.yaml",
    CHART / "files" / "latentwatch.rules.yml": ROOT / "config" / "prometheus" / "rules" / "latentwatch.rules.yml",
    CHART / "files" / "latentwatch.json": ROOT / "dashboards" / "latentwatch.json",
}


def _go() -> str | None:
    return shutil.which("go") or next((p for p in ("/usr/local/go/bin/go",) if os.access(p, os.X_OK)), None)


def _helm() -> str | None:
    """The helm that scripts/install-system-deps pins (GOPATH/bin), else one on PATH."""
    go = _go()
    if go:
        gopath = subprocess.run([go, "env", "GOPATH"], capture_output=True, text=True, check=False).stdout.strip()
        pinned = Path(gopath or Path.home() / "go") / "bin" / "helm"
        if pinned.exists():
            return str(pinned)
    return shutil.which("helm")


@pytest.fixture(scope="module")
def helm() -> str:
    path = _helm()
    if path is None:
        pytest.skip("helm missing: run scripts/install-system-deps (go install helm.sh/helm/v3/cmd/helm)")
    return path


@pytest.fixture(scope="module")
def checker(tmp_path_factory) -> str:
    go = _go()
    if go is None:
        pytest.skip("Go missing: the strict decoder deploy/helm/check is a Go program")
    out = tmp_path_factory.mktemp("check") / "check"
    built = subprocess.run([go, "build", "-o", str(out), "."], cwd=CHECK, capture_output=True, text=True,
                           timeout=1800, check=False)
    assert built.returncode == 0, built.stderr[-3000:]
    return str(out)


def _template(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, "template", "lw", str(CHART), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def _render(helm: str, values: Path, *args: str) -> str:
    r = _template(helm, "-f", str(values), *args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _objects(rendered: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def _check(checker: str, rendered: str) -> subprocess.CompletedProcess:
    return subprocess.run([checker], input=rendered, capture_output=True, text=True, timeout=60, check=False)


def test_chart_copies_are_identical_to_their_sources():
    for copy, source in COPIES.items():
        assert copy.read_bytes() == source.read_bytes(), (
            f"{copy.relative_to(ROOT)} differs from {source.relative_to(ROOT)}: run deploy/helm/sync-files")


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_lint_strict(helm, values):
    r = subprocess.run([helm, "lint", str(CHART), "--strict", "-f", str(values)], capture_output=True,
                       text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_every_rendered_object_decodes_strictly(helm, checker, values):
    rendered = _render(helm, values)
    r = _check(checker, rendered)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{len(_objects(rendered))} objects decoded strictly" in r.stdout


def test_all_optional_parts_render(helm):
    kinds = sorted(o["kind"] for o in _objects(_render(helm, CHART / "ci" / "all-values.yaml")))
    assert kinds == sorted(["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "PodMonitor",
                            "PrometheusRule", "ScaledObject", "Secret", "ServiceAccount", "TriggerAuthentication"])
    minimal = sorted(o["kind"] for o in _objects(_render(helm, CHART / "ci" / "minimal-values.yaml")))
    assert minimal == ["ConfigMap", "Deployment", "PodDisruptionBudget", "ServiceAccount"]


def test_the_strict_check_fails_on_a_misspelt_field_or_a_wrong_type(helm, checker):
    rendered = _render(helm, CHART / "ci" / "all-values.yaml")
    misspelt = rendered.replace("  maxReplicaCount:", "  maxReplicasCount:", 1)
    r = _check(checker, misspelt)
    assert r.returncode == 1 and "ScaledObject/lw-latentwatch" in r.stderr and "maxReplicasCount" in r.stderr
    wrong_type = rendered.replace("periodSeconds: 5\n", "periodSeconds: five\n", 1)
    r = _check(checker, wrong_type)
    assert r.returncode == 1 and "Deployment/lw-latentwatch" in r.stderr
    unknown = rendered + "---\napiVersion: v1\nkind: Pod\nmetadata: {name: x}\n"
    assert _check(checker, unknown).returncode == 1


def _by_kind(objects: list[dict], kind: str, suffix: str = "") -> dict:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix or "latentwatch")]
    return obj


@pytest.mark.parametrize("values", VALUES, ids=lambda p: p.name)
def test_rendered_pipeline_yaml_is_a_valid_configuration(helm, values, tmp_path):
    """The ConfigMap's pipeline.yaml loads with the pipeline's own Settings (extra keys forbidden),
    the grace period outlasts shutdown_timeout_s, probes point at /healthz and /readyz."""
    from latentwatch.pipeline.config import load_settings

    objects = _objects(_render(helm, values))
    text = _by_kind(objects, "ConfigMap")["data"]["pipeline.yaml"]
    (tmp_path / "pipeline.yaml").write_text(text)
    settings = load_settings(str(tmp_path / "pipeline.yaml"))
    assert settings.metrics.host == "0.0.0.0" and settings.model.path == "/models/model"
    assert "password" not in text  # secrets come from the Secret, as environment variables
    pod = _by_kind(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.shutdown_timeout_s
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["ports"][0]["containerPort"] == settings.metrics.port
    # the transactional.id is named per pod (downward API), not by a hostname pods may share
    env = {e["name"]: e for e in container["env"]}
    assert env["LATENTWATCH_INSTANCE_ID"]["value"] == "$(POD_NAMESPACE)/$(POD_NAME)"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_rules_and_dashboard_are_the_repo_files(helm):
    objects = _objects(_render(helm, CHART / "ci" / "all-values.yaml"))
    rules = yaml.safe_load(COPIES[CHART / "files" / "latentwatch.rules.yml"].read_text())
    assert _by_kind(objects, "PrometheusRule")["spec"] == rules
    dashboard = _by_kind(objects, "ConfigMap", "-dashboard")
    assert json.loads(dashboard["data"]["latentwatch.json"]) == json.loads((ROOT / "dashboards" / "latentwatch.json").read_text())
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    monitor = _by_kind(objects, "PodMonitor")
    pod_labels = _by_kind(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[monitor["spec"]["jobLabel"]] == "latentwatch"  # the rules' job="latentwatch"


def test_scaled_object_bounds_and_anti_flapping(helm):
    objects = _objects(_render(helm, CHART / "ci" / "all-values.yaml"))
    so = _by_kind(objects, "ScaledObject")["spec"]
    assert so["maxReplicaCount"] <= 12  # the input topic's partitions in all-values.yaml
    (trigger,) = so["triggers"]
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == "plant-7"
    assert trigger["metadata"]["topic"] == "plant-7.readings" and trigger["metadata"]["allowIdleConsumers"] == "false"
    behavior = so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in _by_kind(objects, "Deployment")["spec"]  # KEDA owns the count


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "autoscaling.keda.enabled=true", "--set", "autoscaling.keda.inputPartitions=3",
      "--set", "autoscaling.keda.maxReplicas=4"], "must not exceed the input topic's partitions"),
    (["--set", "terminationGracePeriodSeconds=30"], "must be longer than shutdown_timeout_s"),
    (["--set", "kafka.saslMechanism=PLAIN", "--set", "kafka.saslUsername=u"], "need a Secret"),
    ([], "kafka.bootstrapServers is required"),
    (["--set", "autoscaling.keda.maxReplica=3"], "additional properties 'maxReplica' not allowed"),  # values.schema.json
    (["--set", "kafka.securityProtocol=SASL_TLS"], "kafka/securityProtocol"),
])
def test_chart_refuses_unsafe_values(helm, args, message):
    base = [] if not args else ["--set", "kafka.bootstrapServers=k:9092"]
    r = _template(helm, *base, *args)
    assert r.returncode != 0 and message in r.stderr


def test_readme_worked_example_renders_and_decodes(helm, checker, tmp_path):
    """The SASL_SSL example of README's "Scaling out" is a working set of values."""
    import re

    text = (ROOT / "README.md").read_text()
    (block,) = re.findall(r"<<'VALUES'\n(.*?)\nVALUES\n", text, flags=re.DOTALL)
    values = tmp_path / "values-prod.yaml"
    values.write_text(block)
    rendered = _render(helm, values)
    r = _check(checker, rendered)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {o["kind"] for o in _objects(rendered)}
    assert {"ScaledObject", "TriggerAuthentication", "PodMonitor", "PrometheusRule"} <= kinds
    assert "Secret" not in kinds  # an existing Secret, made with kubectl
