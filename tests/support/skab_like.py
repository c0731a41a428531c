"""Synthetic SKAB-shaped files (SKAB itself is GPL and never copied here): SKAB's column layout
and `;` separator, 400 normal training rows, then a test part with one labelled shifted segment.
Shared by the selection and defaults-benchmark tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.support.detector_data import normal_data

FOLDERS = ("valve1", "valve2", "other")
ROWS = 560  # 400 training rows (SKAB's protocol) + 160 test rows


def write_skab_file(path: Path, X: np.ndarray, labels: np.ndarray) -> None:
    names = ["Accelerometer1RMS", "Current", "Pressure", "Temperature"]
    lines = [";".join(["datetime", *names, "anomaly", "changepoint"])]
    for i, (row, y) in enumerate(zip(X, labels)):
        lines.append(";".join([f"2020-03-09 10:{i // 60 % 60:02d}:{i % 60:02d}", *(f"{v:.6g}" for v in row),
                               f"{float(y)}", "0.0"]))
    path.write_text("\n".join(lines) + "\n")


def make_file(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normal signals; in the test part one segment with a shifted channel (size varies by seed)."""
    rng = np.random.default_rng(seed)
    X = normal_data(ROWS, channels=4, seed=seed)
    labels = np.zeros(ROWS, dtype=np.int8)
    start = 400 + int(rng.integers(20, 60))
    stop = start + int(rng.integers(40, 80))
    X[start:stop, seed % 4] += (0.5 + seed % 3) * X[:400, seed % 4].std()
    labels[start:stop] = 1
    return X, labels
