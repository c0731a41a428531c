"""A small fleet for unit tests: assets of one kind, each channel a mix of 3 shared slow process
factors plus the asset's own operating point and a slightly different mix (issue 28's setting,
small enough for a unit test; devtools/simulate.py's fleet mode is the full one)."""

from __future__ import annotations

import numpy as np


def fleet(assets: int = 6, n: int = 3000, channels: int = 6, seed: int = 0, spread: float = 3.0,
          noise: float = 0.1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X [assets*n, C] float32, sensor_ids [assets*n], offsets [assets, C]); asset after asset,
    each in time order. Set points differ between assets by ~`spread` x one asset's std."""
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(3, channels))
    offsets = rng.normal(size=(assets, channels)) * spread
    X, ids = [], []
    for a in range(assets):
        f = np.zeros((n, 3))
        e = rng.normal(size=(n, 3)) * 0.15
        for t in range(1, n):  # AR(1): slow process factors
            f[t] = 0.98 * f[t - 1] + e[t]
        mix = W + 0.3 * rng.normal(size=W.shape)
        X.append(f @ mix + offsets[a] + noise * rng.normal(size=(n, channels)))
        ids += [f"asset-{a:02d}"] * n
    return np.concatenate(X).astype(np.float32), np.asarray(ids), offsets
