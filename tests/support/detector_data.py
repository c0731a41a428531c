"""Synthetic multichannel sensor data with injected anomalies, shared by the detector tests."""

from __future__ import annotations

import numpy as np


def normal_data(n: int, channels: int = 6, seed: int = 0) -> np.ndarray:
    """Channels driven by two smooth latent signals plus a little noise: correlated, with dynamics."""
    rng = np.random.default_rng(seed)
    t = np.arange(n, dtype=np.float64)
    phase = rng.uniform(0, 2 * np.pi, 2)
    factors = np.stack([np.sin(2 * np.pi * t / 50 + phase[0]), np.sin(2 * np.pi * t / 23 + phase[1])], axis=1)
    mixing = np.random.default_rng(1234).normal(size=(2, channels))  # same sensor physics for every seed
    X = factors @ mixing + 0.05 * rng.normal(size=(n, channels)) + np.arange(channels)
    return X.astype(np.float32)


def inject(X: np.ndarray, kind: str, seed: int = 0, segments: int = 6, length: int = 20):
    """A copy of `X` with `segments` anomalies of `kind`, and the [n] 0/1 labels."""
    rng = np.random.default_rng(seed)
    X = X.copy()
    labels = np.zeros(len(X), dtype=np.int8)
    std = X.std(axis=0)
    starts = np.linspace(100, len(X) - length - 10, segments).astype(int)
    for s in starts:
        c = int(rng.integers(X.shape[1]))
        seg = slice(s, s + length)
        if kind == "spike":
            seg = slice(s, s + 1)
            X[seg, c] += 6 * std[c]
        elif kind == "level_shift":
            X[seg, c] += 3 * std[c]
        elif kind == "stuck":
            X[seg, c] = X[s, c]
        elif kind == "broken_correlation":  # one channel follows a different, plausible trajectory
            X[seg, c] = X[s + 25: s + 25 + length, c] if s + 25 + length < len(X) else X[s - 25 - length: s - 25, c]
        else:
            raise ValueError(kind)
        labels[seg] = 1
    return X, labels


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    pos, neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))
