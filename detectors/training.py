"""The training loop shared by the autoencoders: seeded, early-stopped on a time-ordered
validation tail, progress reported through `logging` and an optional callback.

The validation split is the *last* part of the data (not a random sample): readings are a time
series, and a random split would leak near-duplicates of validation windows into training.
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


@dataclass
class TrainingReport:
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    seconds: float
    history: list[tuple[float, float]] = field(default_factory=list)  # (train, val) per epoch
    validation_rows: int = 0  # the last rows of the data held out for early stopping


def seed_everything(seed: int) -> None:
    """Same seed, same CPU weights and batches: `fit` twice gives the same model."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit_autoencoder(
    net: nn.Module,
    windows: np.ndarray,
    *,
    epochs: int = 50,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.2,
    patience: int = 8,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: ProgressCallback | None = None,
) -> TrainingReport:
    """Train `net` (whose forward maps `[b, w, c]` to `(latent, reconstruction)`) to reconstruct
    standardised `windows`; keep the weights of the best validation epoch."""
    started = time.perf_counter()
    device = torch.device(device)
    data = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
    n_val = int(len(data) * val_fraction) if len(data) >= 10 else 0
    train, val = data[: len(data) - n_val], data[len(data) - n_val:]
    if len(train) == 0:
        raise ValueError("no training windows: need more readings than the window length")
    train, val = train.to(device), val.to(device)
    net.to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
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
            _, recon = net(batch)
            loss = torch.mean((recon - batch) ** 2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(batch)
        train_loss = total / len(train)
        val_loss = _evaluate(net, val, batch_size * 8) if len(val) else float("nan")
        history.append((train_loss, val_loss))
        log.info("epoch %d/%d  train loss %.5f  val loss %.5f", epoch, epochs, train_loss, val_loss)
        if callback is not None:
            callback(epoch, train_loss, val_loss)
        monitored = val_loss if len(val) else train_loss
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
    return TrainingReport(epoch, best[1], best[0], time.perf_counter() - started, history, n_val)


def _evaluate(net: nn.Module, data: torch.Tensor, batch_size: int) -> float:
    net.eval()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            _, recon = net(batch)
            total += torch.sum(torch.mean((recon - batch) ** 2, dim=(1, 2))).item()
    return total / len(data)
