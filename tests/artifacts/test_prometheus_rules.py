"""The Prometheus config and alert rules under config/prometheus pass promtool's offline checks,
the rule unit tests pass, and those checks are able to fail (a broken rule, or a rule that no
longer fires, makes promtool exit non-zero)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "config" / "prometheus"
RULES = PROM_DIR / "rules" / "latentwatch.rules.yml"
RULE_TESTS = PROM_DIR / "rules" / "latentwatch.rules.test.yml"
ALERTS = [
    "LatentwatchDown",
    "LatentwatchConsumerLagGrowing",
    "LatentwatchDeadLetterRatioHigh",
    "LatentwatchEndToEndLatencyHigh",
    "LatentwatchAnomalyRateSpike",
    "LatentwatchModelStale",
    "LatentwatchManySensorsSilent",
]

PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool missing: `make system-deps` (Debian package prometheus)"
)


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *map(str, args)], check=False, capture_output=True, text=True, timeout=60
    )


def test_check_config_passes():
    res = promtool("check", "config", PROM_DIR / "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 rule files found" in res.stdout


def test_check_rules_passes_and_has_every_alert():
    res = promtool("check", "rules", RULES)
    assert res.returncode == 0, res.stdout + res.stderr
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert sorted(r["alert"] for r in rules) == sorted(ALERTS)
    for r in rules:
        assert r.get("for"), r["alert"]
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]


def test_rule_unit_tests_pass():
    res = promtool("test", "rules", RULE_TESTS)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_rule_unit_tests_cover_every_alert_firing_and_not_firing():
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    fired, quiet = set(), set()
    for t in tests:
        for case in t["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert fired == set(ALERTS)
    assert quiet == set(ALERTS)


def test_check_rules_fails_on_a_broken_rule(tmp_path):
    broken = tmp_path / "latentwatch.rules.yml"
    text = RULES.read_text()
    # a PromQL syntax error in one expression
    broken.write_text(text.replace('up{job="latentwatch"} == 0', 'up{job="latentwatch" == 0', 1))
    assert broken.read_text() != text
    res = promtool("check", "rules", broken)
    assert res.returncode != 0
    assert "parse" in (res.stdout + res.stderr).lower()


@pytest.mark.parametrize("alert", ALERTS)
def test_rule_unit_tests_fail_when_a_rule_never_fires(tmp_path, alert):
    """Mutation check: replace one alert's expression with one that never matches; the unit
    tests must notice (so they really exercise each rule firing)."""
    data = yaml.safe_load(RULES.read_text())
    for g in data["groups"]:
        for r in g["rules"]:
            if r["alert"] == alert:
                r["expr"] = "vector(1) == 0"
    (tmp_path / "latentwatch.rules.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    res = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert res.returncode != 0
    assert re.search(rf"alertname: {alert}\b", res.stdout + res.stderr), res.stdout + res.stderr


def test_rule_unit_tests_fail_when_a_threshold_is_loosened(tmp_path):
    """Mutation check for 'not firing': a latency objective of 0.1 s instead of 1 s makes the
    healthy-latency case fire, which the unit tests reject."""
    text = RULES.read_text()
    mutated = text.replace(") > 1\n", ") > 0.1\n", 1)
    assert mutated != text
    (tmp_path / "latentwatch.rules.yml").write_text(mutated)
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    res = promtool("test", "rules", tmp_path / RULE_TESTS.name)
    assert res.returncode != 0
    assert "LatentwatchEndToEndLatencyHigh" in res.stdout + res.stderr
