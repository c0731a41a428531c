"""One PyTorch intra-op thread in the test process, as the pipeline itself runs on a CPU
(pipeline/runner.py): the tests' models are small, and on 2 shared cores a second torch thread
mostly spins waiting for a core another process holds. Measured on the unit tier's training
modules (test_detectors, test_checkpoint, test_score_parts, test_fastpath, test_drift,
test_cross_calibration) with other sessions' tests running: 57 s of CPU with 2 threads, 32 s
with 1, and the wall time fell too (46 -> 28 s). Under heavier load the 2-thread figure grew
to 4x (test_detectors' module fixture: 4.7 s idle, 86 s at load 5).

Set before each test's setup (so module fixtures that train get it too), and again after any
test that changed it; processes the tests start are not affected."""

from __future__ import annotations

import sys

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    torch = sys.modules.get("torch")  # never imported here: the artifact tier has no torch
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)
