"""A clone without ../shared: every test that needs SKAB is skipped with the reason CI allows,
none errors or fails (tests/support/skab.py)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.skab import REPO

SKAB_TESTS = ["tests/integration/test_skab_replay.py", "tests/integration/test_replay.py::test_skab_file_replays_as_is",
              "tests/system/test_cli_detect.py::test_skab_evaluate_smoke"]


def test_tests_needing_skab_skip_with_the_allowed_reason_when_it_is_absent(tmp_path):
    env = dict(os.environ, LATENTWATCH_TEST_SKAB=str(tmp_path / "no-skab"), LATENTWATCH_STRICT_SKIPS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *SKAB_TESTS],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:]  # strict skips: any other reason would fail
    assert "4 skipped" in r.stdout, r.stdout[-3000:]
    assert r.stdout.count("SKAB data not present") >= 3
