"""The test suite's root: the support plugins every tier shares, and CI's strict-skip rule.

Tiers (each its own folder; `make test-fast` runs the first):
  unit/         no broker, no external process but our own CLI; fast
  integration/  the shared real Kafka broker, the pipeline in-process
  system/       real processes: the pipeline, brokers of their own, faults, fuzz, security, demo, bench,
                the CLI's train and score; and slow in-process scale checks (400k sensor ids)
  artifacts/    shipped files checked by the real tools: compose, dashboard, rules, metrics
Support code lives in tests/support/ (pytest plugins and plain modules), so no test module imports
another (tests/unit/test_layout.py checks it).
"""

from __future__ import annotations

import os

import pytest

pytest.register_assert_rewrite("tests.support")

pytest_plugins = [
    "tests.support.kafka",
    "tests.support.registry",
    "tests.support.prom",
    "tests.support.secure",
    "tests.support.streams",
    "tests.support.cluster",
    "tests.support.torch_threads",
]

# With LATENTWATCH_STRICT_SKIPS=1 (.ci/run sets it) a skipped test fails, unless it waits for
# something CI machines do not have: a GPU, or SKAB's data (GPL, never in the repo). Everything
# else a test may skip on (Prometheus, Alertmanager, a tmpfs for the disk-full broker) CI installs
# or can do, so a skip there means a real-broker test quietly did not run.
ALLOWED_IN_CI = ("needs CUDA", "SKAB data not present")

# `make test` runs the suite on pytest-xdist workers (most of its time is waiting on brokers and
# processes, not CPU). Each worker starts its own brokers on first use; tests on the 3-node
# cluster or the TLS/SCRAM broker stay on one worker each, so those brokers start once.
SHARED_BROKERS = {"kafka_cluster": "cluster", "cluster": "cluster", "secure_broker": "secure"}


# The demo's tests check that no demo process is left behind: one worker, one demo at a time.
# The cluster module's CLI test starts a 3-node cluster of its own: not beside the shared one.
ONE_AT_A_TIME = {"tests/system/test_demo.py": "demo", "tests/system/test_cluster.py": "cluster",
                 "tests/system/test_failover.py": "cluster"}
# Modules whose module-scoped fixture trains models (or fills a topic): spread over the workers,
# each worker built its own copy. test_detectors' training took 237-256 s of setup on each of three
# workers in a full run (CI's log); kept on one worker, it is built once.
ONE_AT_A_TIME.update({m: m for m in ("tests/unit/test_detectors.py", "tests/system/test_cli_detect.py",
                                      "tests/unit/test_drift.py", "tests/unit/test_score_parts.py",
                                      "tests/integration/test_retrain.py")})


# Until 2026-11-30 no group took effect, for two reasons: pytest-xdist's worker reads the
# xdist_group markers in its own pytest_collection_modifyitems, which ran before this one (a
# plugin registered later runs first; hence tryfirst), and it groups by suffixing
# `item._nodeid`, which pytest 9 no longer reads (nodeid comes from `item._id`; hence
# pytest<9 in pyproject.toml). So test_detectors' models were trained on all three workers
# (125-265 s of setup each) and two demos ran side by side.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        group = next((g for name, g in SHARED_BROKERS.items() if name in getattr(item, "fixturenames", ())),
                     ONE_AT_A_TIME.get(item.nodeid.split("::")[0]))
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and os.environ.get("LATENTWATCH_STRICT_SKIPS") == "1":
        reason = str(report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr)
        if not any(allowed in reason for allowed in ALLOWED_IN_CI):
            report.outcome = "failed"
            report.longrepr = f"skipped in CI (LATENTWATCH_STRICT_SKIPS=1): {reason}"

