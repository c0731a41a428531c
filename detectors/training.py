"""The training loop shared by the autoencoders, made to learn from a few hundred readings of a
drifting process: seeded, early-stopped on interleaved validation blocks, with input noise,
weight decay and a learning-rate schedule; progress through `logging` and an optional callback.

Validation split (`split_blocks`): the windows are cut into about 20 contiguous blocks and every
~1/val_fraction-th block, spread over the whole range, is held out; training windows that share
readings with a held-out block are left out (purged). A time-ordered tail would differ from the
rest on a drifting process (validation loss rises at once, training stops after an epoch or two);
a random split would leak near-duplicates of validation windows into training.
"""

from __future__ import annotations

import copy
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

# callback(epoch, train_loss, val_loss); val_loss is nan when there is no validation split.
ProgressCallback = Callable[[int, float, float], None]
MAX_BLOCKS = 20


@dataclass
class TrainingReport:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, val) per epoch
    validation_rows: int = 0  # windows held out for early stopping (and the threshold)
    validation_index: np.ndarray | None = None  # which windows (indices into the fit windows)
    train_index: np.ndarray | None = None  # the windows trained on (held-out blocks and their seams excluded)
    pca_val_loss: float = float("nan")  # PCA with the same latent size on the same split, for comparison
    calibration: str = "blocks"  # where the held-out scores came from: one set of blocks, or cross-fitted folds


def seed_everything(seed: int) -> None:
    """Same seed, same CPU weights and batches: `fit` twice gives the same model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_blocks(n: int, val_fraction: float, window: int = 1, holdout: str = "blocks",
                 fold: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices of `n` windows: interleaved blocks, seams purged (see module doc);
    `holdout="tail"`: the last `val_fraction` of the readings' count in windows, the rest trains
    (the protocol `evaluate.SETTINGS` was measured with; no purge). `fold` (0 .. folds-1, folds =
    round(1 / val_fraction)): hold out blocks fold, fold + folds, fold + 2 folds, ... instead, so
    the folds together hold out every block once (cross-fitted calibration, `calibrate.py`)."""
    idx = np.arange(n)
    if val_fraction <= 0 or n < 10:
        return idx, idx[:0]
    if holdout == "tail":
        n_val = int((n + window - 1) * val_fraction)
        return idx[:n - n_val], idx[n - n_val:]
    if holdout != "blocks":
        raise ValueError(f"holdout must be 'blocks' or 'tail', got {holdout!r}")
    length = max(4 * window, -(-n // MAX_BLOCKS))
    blocks = -(-n // length)
    n_val = min(max(1, round(blocks * val_fraction)), blocks - 1) if blocks > 1 else 0
    if n_val == 0:  # one block: fall back to the tail
        cut = n - max(1, int(n * val_fraction))
        return idx[:max(cut - (window - 1), 1)], idx[cut:]
    if fold is not None:
        chosen = np.arange(fold, blocks, n_folds(val_fraction))
    else:
        chosen = np.unique(((np.arange(n_val) + 0.5) * blocks / n_val).astype(int).clip(0, blocks - 1))
    val = np.zeros(n, bool)
    near = np.zeros(n, bool)
    for b in chosen:
        lo, hi = b * length, min((b + 1) * length, n)
        val[lo:hi] = True
        near[max(lo - (window - 1), 0):min(hi + window - 1, n)] = True
    return idx[~near], idx[val]


def n_folds(val_fraction: float) -> int:
    """Folds of cross-fitted calibration: each holds out about `val_fraction` of the blocks."""
    return max(2, round(1 / val_fraction))


def pca_loss(train: np.ndarray, val: np.ndarray, k: int) -> float:
    """Validation MSE of PCA with `k` components fitted on `train` (windows, flattened)."""
    if len(val) == 0 or len(train) == 0:
        return float("nan")
    a = train.reshape(len(train), -1).astype(np.float64)
    b = val.reshape(len(val), -1).astype(np.float64)
    center = a.mean(axis=0)
    _, _, vt = np.linalg.svd(a - center, full_matrices=False)
    v = vt[:max(min(k, vt.shape[0]), 1)]
    d = b - center
    return float(np.mean((d - d @ v.T @ v) ** 2))


def fit_autoencoder(
    net: nn.Module,
    windows: np.ndarray,
    *,
    epochs: int = 100,
    batch_size: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    noise: float = 0.1,
    val_fraction: float = 0.2,
    patience: int = 15,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: ProgressCallback | None = None,
    latent_dim: int | None = None,
    holdout: str = "blocks",
    fold: int | None = None,
) -> TrainingReport:
    """Train `net` (whose forward maps `[b, w, c]` to `(latent, reconstruction)`) to reconstruct
    standardised `windows` from a noisy copy (Gaussian, `noise` standard units); AdamW with
    `weight_decay`; the learning rate halves when the validation loss stalls for patience/3
    epochs; keep the weights of the best validation epoch. `batch_size=None`: about 16 steps an
    epoch (16-256 windows a batch), so a few hundred windows still give the optimiser steps."""
    started = time.perf_counter()
    device = torch.device(device)
    windows = np.ascontiguousarray(windows, dtype=np.float32)
    train_idx, val_idx = split_blocks(len(windows), val_fraction, windows.shape[1], holdout, fold)
    if len(train_idx) == 0:
        raise ValueError("no training windows: need more readings than the window length")
    pca_val = pca_loss(windows[train_idx], windows[val_idx], latent_dim) if latent_dim else float("nan")
    train = torch.from_numpy(windows[train_idx]).to(device)
    val = torch.from_numpy(windows[val_idx]).to(device)
    batch_size = batch_size or int(np.clip(len(train) // 16, 16, 256))
    net.to(device).train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(patience // 3, 1))
    gen = torch.Generator().manual_seed(seed)
    best = (float("inf"), 0, copy.deepcopy(net.state_dict()))
    history: list[tuple[float, float]] = []
    bad_epochs = 0
    epoch = 0
    for epoch in range(1, epochs + 1):
        net.train()
        order = torch.randperm(len(train), generator=gen).to(device)
        total = 0.0
        for start in range(0, len(train), batch_size):
            batch = train[order[start:start + batch_size]]
            noisy = batch + noise * torch.randn(batch.shape, generator=gen).to(device) if noise > 0 else batch
            _, recon = net(noisy)
            loss = torch.mean((recon - batch) ** 2)
            penalty = getattr(net, "penalty", None)  # e.g. a VAE's KL term, set by its forward in training
            if penalty is not None:
                loss = loss + penalty
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        train_loss = total / len(train)
        val_loss = _evaluate(net, val, 2048) if len(val) else float("nan")
        history.append((train_loss, val_loss))
        # one line per epoch: a caller with a progress callback prints its own, so ours goes to DEBUG
        log.log(logging.DEBUG if callback else logging.INFO, "epoch %d/%d  train loss %.5f  val loss %.5f",
                epoch, epochs, train_loss, val_loss)
        if callback is not None:
            callback(epoch, train_loss, val_loss)
        monitored = val_loss if len(val) else train_loss
        sched.step(monitored)
        if monitored < best[0] - 1e-7:
            best = (monitored, epoch, copy.deepcopy(net.state_dict()))
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= patience:
                log.info("early stop at epoch %d (best epoch %d)", epoch, best[1])
                break
    net.load_state_dict(best[2])
    net.eval()
    if getattr(net, "penalty", None) is not None:
        net.penalty = None  # holds the last batch's autograd graph
    return TrainingReport(epoch, best[1], best[0], time.perf_counter() - started, history, len(val_idx),
                          val_idx, train_idx, pca_val)


def _evaluate(net: nn.Module, data: torch.Tensor, batch_size: int) -> float:
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            _, recon = net(batch)
            total += torch.sum(torch.mean((recon - batch) ** 2, dim=(1, 2))).item()
    return total / len(data)
