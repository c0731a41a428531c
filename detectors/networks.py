"""The models: a point-wise MLP autoencoder, a windowed 1-D convolutional autoencoder (and its
variational form, whose latent mean is the latent vector), and PCA as the linear baseline. All share `TorchDetector`, which owns standardisation, devices and
batched scoring, so each model only says how to build (and, for PCA, fit) its network.

Score of a reading = mean over channels of the squared reconstruction error in standard units;
`channel_error` holds the per-channel terms, so an alert can say which sensor channel is off.
Windowed models can average the error over the last `score_last` readings of each window: a
smoother score that is still a pure function of the window (no state between `score` calls).

After `calibrate` (which `calibrate.fit_and_calibrate`, hence `latentwatch train`, calls) the score
is the mean of two parts scaled on held-out normal data, reconstruction error and latent
Mahalanobis distance (`latent.py`), and `Scores.parts` holds both. Without it (a bare `fit`, a
checkpoint from before) the score is the reconstruction error alone, as it always was.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod

import numpy as np
import torch
from torch import nn

from latentwatch.detectors.base import Detector, Scores, sliding_windows
from latentwatch.detectors.fastpath import DenseForm
from latentwatch.detectors.latent import DEFAULT_USE, ScoreParts
from latentwatch.detectors.scaler import Standardiser
from latentwatch.detectors.training import (ProgressCallback, TrainingReport, fit_autoencoder, seed_everything,
                                             split_blocks)

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu" / "cuda" / "cuda:N" force one."""
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use 'auto' or 'cpu'")
    if name != "cpu" and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use 'auto', 'cpu' or 'cuda'")
    return torch.device(name)


class TorchDetector(Detector):
    """Standardise, run a torch network that maps `[b, window, channels]` to
    `(latent [b, k], reconstruction [b, window, channels])`, turn its error into `Scores`."""

    kind = "torch"
    chunk_rows = 65536  # windows per network call: bounds memory on huge inputs, amortises overhead
    # On a CPU the activations of a chunk should stay in cache: the bench's model stage (MLP, 16
    # channels, one thread) scored 2.41M readings/s in calls of 4,096, 1.72M in 16,384 and 1.26M
    # in 65,536. Rows are independent, so chunking changes no score.
    cpu_chunk_rows = 4096
    dense_scoring = True  # False: score with the network itself (the reference the tests compare to)

    def __init__(self, *, latent_dim: int, window: int = 1, device: str = "auto",
                 precision: str = "float32", score_last: int = 1, **hparams):
        if window < 1:
            raise ValueError("window must be >= 1")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}")
        if not 1 <= score_last <= window:
            raise ValueError(f"score_last must be between 1 and the window ({window})")
        self.latent_dim, self.window, self.precision, self.score_last = latent_dim, window, precision, score_last
        self.hparams = hparams
        self.device = str(resolve_device(device))
        self.channels: list[str] = []
        self.scaler: Standardiser | None = None
        self.net: nn.Module | None = None
        self.training_report: TrainingReport | None = None
        self.parts: ScoreParts | None = None  # set by `calibrate`: the score becomes the two-part index
        self._pinned: torch.Tensor | None = None
        self._dense: DenseForm | None = None

    # -- what a subclass provides -------------------------------------------------------------
    @abstractmethod
    def _build_net(self, n_channels: int) -> nn.Module:
        """An untrained network for `n_channels` channels."""

    def config(self) -> dict:
        """Constructor arguments that rebuild this model (saved in the checkpoint)."""
        return {"latent_dim": self.latent_dim, "window": self.window, "precision": self.precision,
                "score_last": self.score_last, **self.hparams}

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, X: np.ndarray, channels: list[str] | None = None, *, val_fraction: float = 0.2,
            seed: int = 0, callback: ProgressCallback | None = None, **training) -> "TorchDetector":
        """Learn normal behaviour from `X` `[n, channels]` (time order, raw units); `training`
        options (epochs, batch_size, lr, weight_decay, noise, patience, holdout) go to `fit_autoencoder`."""
        X = self._prepare_fit(X, channels)
        seed_everything(seed)
        self.net = self._build_net(len(self.channels))
        windows = sliding_windows(self.scaler.transform(X), self.window)
        self.training_report = fit_autoencoder(
            self.net, windows, val_fraction=val_fraction, seed=seed, device=self.device, callback=callback,
            latent_dim=self.latent_dim, **training)
        return self._ready()

    def calibrate(self, fit_windows: np.ndarray, held_out_windows: np.ndarray,
                  use: tuple[str, ...] = DEFAULT_USE) -> "TorchDetector":
        """Fit the latent distribution on `fit_windows` (raw units, the windows trained on) and scale
        both score parts on `held_out_windows` (normal, not trained on); the score becomes the mean
        of the parts in `use` (`latent.PARTS` for both), and `Scores.parts` reports both."""
        self.parts = None
        fit, held = self.score(fit_windows), self.score(held_out_windows)
        self.parts = ScoreParts.fit(fit.latent, fit.score, held.latent, held.score, use)
        return self

    def _prepare_fit(self, X: np.ndarray, channels: list[str] | None) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"fit expects [n, channels], got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("training data contains NaN or infinite values")
        if len(X) < self.window + 1:
            raise ValueError(f"need more than {self.window} readings to fit, got {len(X)}")
        self.channels = list(channels) if channels is not None else [f"ch{i}" for i in range(X.shape[1])]
        if len(self.channels) != X.shape[1]:
            raise ValueError(f"{len(self.channels)} channel names for {X.shape[1]} columns")
        self.scaler = Standardiser.fit(X)
        self.parts = None  # a refit model has new latents: calibrate again
        return X

    def restore(self, channels: list[str], scaler: Standardiser, state_dict: dict) -> "TorchDetector":
        """Rebuild a fitted model from checkpoint parts (strict: every tensor must match)."""
        self.channels, self.scaler = list(channels), scaler
        self.net = self._build_net(len(self.channels))
        self.net.load_state_dict(state_dict, strict=True)
        return self._ready()

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_fitted()
        return {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}

    # -- devices ------------------------------------------------------------------------------
    def to(self, device: str) -> "TorchDetector":
        self.device = str(resolve_device(device))
        return self._ready() if self.net is not None else self

    def _ready(self) -> "TorchDetector":
        dev = torch.device(self.device)
        self.net.to(dev).eval()
        self._mean = torch.from_numpy(self.scaler.mean).to(dev)
        self._std = torch.from_numpy(self.scaler.std).to(dev)
        self._pinned = None
        # Scoring runs the network's dense form where it has one (fastpath.py: same scores); on a
        # CPU a convolution's matrix is cut into bands (fewer zero blocks; 1.2x over one band,
        # W=8), on CUDA one GEMM a layer (fewer launches).
        groups = 1 if dev.type == "cuda" else min(self.window, 8)
        self._dense = DenseForm.build(self.net, self.window, len(self.channels), groups) if self.dense_scoring else None
        return self

    # -- scoring ------------------------------------------------------------------------------
    def score(self, windows: np.ndarray) -> Scores:
        """Score `windows` `[n, window, channels]` (`[n, channels]` is accepted when window == 1)."""
        self._check_fitted()
        w = np.asarray(windows)
        if w.ndim == 2 and self.window == 1:
            w = w[:, None, :]
        if w.ndim != 3 or w.shape[1:] != (self.window, len(self.channels)):
            raise ValueError(f"expected windows [n, {self.window}, {len(self.channels)}], got {w.shape}")
        if w.dtype != np.float32:
            w = w.astype(np.float32)
        n = len(w)
        chunk = self.chunk_rows if torch.device(self.device).type == "cuda" else self.cpu_chunk_rows
        if n <= chunk:  # the streaming case: one network call, no extra copies
            latent, error = self._score_chunk(w)
        else:
            latent = np.empty((n, self.latent_dim), np.float32)
            error = np.empty((n, len(self.channels)), np.float32)
            for start in range(0, n, chunk):
                stop = min(start + chunk, n)
                latent[start:stop], error[start:stop] = self._score_chunk(w[start:stop])
        recon = error.mean(axis=1, dtype=np.float32)
        if self.parts is None:
            return Scores(latent, error, recon, {"reconstruction": recon})
        parts, score = self.parts.combine(recon, latent)
        return Scores(latent, error, score, parts)

    def _score_chunk(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dev = torch.device(self.device)
        with torch.inference_mode():
            x = _from_numpy(w)
            if dev.type == "cuda":
                x = self._pin(x).to(dev, non_blocking=True)
            x = (x - self._mean) / self._std
            net = self.net if self._dense is None else lambda x: self._dense.forward(x.reshape(len(x), -1))
            if dev.type == "cuda" and self.precision != "float32":
                with torch.autocast("cuda", dtype=PRECISIONS[self.precision]):
                    latent, recon = net(x)
                latent, recon = latent.float(), recon.float().view_as(x)
            else:
                latent, recon = net(x)
                recon = recon.view_as(x)
            sq = (recon - x) ** 2
            error = sq[:, -1, :] if self.score_last == 1 else sq[:, -self.score_last:, :].mean(dim=1)
            return latent.cpu().numpy(), error.cpu().numpy()

    def _pin(self, x: torch.Tensor) -> torch.Tensor:
        """Copy into a reused page-locked buffer so the host-to-GPU copy is asynchronous."""
        if self._pinned is None or self._pinned.numel() < x.numel():
            self._pinned = torch.empty(max(x.numel(), 1 << 16), dtype=torch.float32, pin_memory=True)
        buf = self._pinned[: x.numel()].view(x.shape)
        buf.copy_(x)
        return buf

    def _check_fitted(self) -> None:
        if self.net is None or self.scaler is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() or load a checkpoint")


def _from_numpy(a: np.ndarray) -> torch.Tensor:
    """Zero-copy view of `a` (read-only sliding windows included; scoring never writes to it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "array is not writable": we only read
        try:
            return torch.from_numpy(a)
        except ValueError:  # negative strides
            return torch.from_numpy(np.ascontiguousarray(a))


# --- the networks ----------------------------------------------------------------------------
class _MLPNet(nn.Module):
    def __init__(self, n_in: int, hidden: list[int], latent: int, shape: tuple[int, int]):
        super().__init__()
        sizes = [n_in, *hidden]
        enc: list[nn.Module] = []
        for a, b in zip(sizes, sizes[1:]):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc, nn.Linear(sizes[-1], latent))
        dec: list[nn.Module] = []
        back = [latent, *reversed(hidden)]
        for a, b in zip(back, back[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        self.decoder = nn.Sequential(*dec, nn.Linear(back[-1], n_in))
        self.shape = shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.reshape(len(x), -1))
        return z, self.decoder(z).reshape(len(x), *self.shape)


class _ConvNet(nn.Module):
    """Two 1-D convolutions over time (channels as feature maps) into a dense bottleneck, and back."""

    DENSE_FORM = "conv"  # fastpath.DenseForm.of reads this layout off the weights

    def __init__(self, channels: int, window: int, hidden: int, latent: int, kernel: int):
        super().__init__()
        pad = kernel // 2
        self.window, self.hidden = window, hidden
        self.encoder = nn.Sequential(
            nn.Conv1d(channels, hidden, kernel, padding=pad), nn.ReLU(),
            nn.Conv1d(hidden, hidden, kernel, padding=pad), nn.ReLU(),
            nn.Flatten(), nn.Linear(hidden * window, latent))
        self.expand = nn.Sequential(nn.Linear(latent, hidden * window), nn.ReLU())
        self.decoder = nn.Sequential(
            nn.Conv1d(hidden, hidden, kernel, padding=pad), nn.ReLU(),
            nn.Conv1d(hidden, channels, kernel, padding=pad))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(x.transpose(1, 2))  # [b, c, w]
        h = self.expand(z).view(len(x), self.hidden, self.window)
        return z, self.decoder(h).transpose(1, 2)


class _VAENet(_ConvNet):
    """The conv autoencoder with a Gaussian latent: the encoder gives a mean and a log-variance;
    training decodes a sample (reparameterised) and sets `penalty`, the KL divergence from N(0, I)
    per window, x `beta`, divided by the window's values (the reconstruction loss is a mean over
    them); evaluation decodes the mean, so scoring is deterministic and the latent vector is the mean."""

    DENSE_FORM = "vae"  # fastpath.DenseForm.of: the conv trunk in `features`, the mean head in `encoder`

    def __init__(self, channels: int, window: int, hidden: int, latent: int, kernel: int, beta: float):
        super().__init__(channels, window, hidden, latent, kernel)
        self.logvar = nn.Linear(hidden * window, latent)
        self.encoder, self.features = self.encoder[-1], self.encoder[:-1]  # mean head; shared conv trunk
        self.beta, self.values = beta, window * channels
        self.penalty: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.features(x.transpose(1, 2))
        mu = self.encoder(h)
        z = mu
        if self.training:
            logvar = self.logvar(h).clamp(-10, 10)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            kl = -0.5 * torch.sum(1 + logvar - mu**2 - logvar.exp(), dim=1).mean()
            self.penalty = self.beta * kl / self.values
        out = self.expand(z).view(len(x), self.hidden, self.window)
        return mu, self.decoder(out).transpose(1, 2)


class _PCANet(nn.Module):
    """Projection onto the top-k principal axes of the (flattened, standardised) windows."""

    def __init__(self, n_in: int, latent: int, shape: tuple[int, int]):
        super().__init__()
        self.register_buffer("center", torch.zeros(n_in))
        self.register_buffer("components", torch.zeros(latent, n_in))
        self.shape = shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = x.reshape(len(x), -1) - self.center
        z = flat @ self.components.T
        return z, (z @ self.components + self.center).reshape(len(x), *self.shape)


# --- the models ------------------------------------------------------------------------------
class MLPAutoencoder(TorchDetector):
    """Point-wise (window=1) dense autoencoder: catches readings whose channels disagree."""

    kind = "mlp"

    def __init__(self, latent_dim: int = 4, hidden: list[int] | int = 64, window: int = 1, **kw):
        hidden = [hidden] if isinstance(hidden, int) else list(hidden)
        super().__init__(latent_dim=latent_dim, window=window, hidden=hidden, **kw)

    def _build_net(self, n_channels: int) -> nn.Module:
        shape = (self.window, n_channels)
        return _MLPNet(self.window * n_channels, self.hparams["hidden"], self.latent_dim, shape)


class WindowAutoencoder(TorchDetector):
    """1-D convolutional autoencoder over the last `window` readings of one sensor: sees temporal
    context, so it catches stuck channels, drifts and broken dynamics a point model cannot."""

    kind = "window"

    def __init__(self, window: int = 32, latent_dim: int = 8, hidden: int = 32, kernel: int = 5, **kw):
        super().__init__(latent_dim=latent_dim, window=window, hidden=hidden, kernel=kernel, **kw)

    def _build_net(self, n_channels: int) -> nn.Module:
        h = self.hparams
        return _ConvNet(n_channels, self.window, h["hidden"], self.latent_dim, h["kernel"])


class VariationalAutoencoder(TorchDetector):
    """The window autoencoder as a VAE (Kingma & Welling 2014): same conv encoder and decoder, a
    Gaussian latent regularised towards N(0, I) by a KL term weighted `beta`; the latent mean is the
    latent vector (scores, alerts, the latent distance). Scoring decodes the mean: deterministic."""

    kind = "vae"

    def __init__(self, window: int = 32, latent_dim: int = 8, hidden: int = 32, kernel: int = 5, beta: float = 1.0,
                 **kw):
        super().__init__(latent_dim=latent_dim, window=window, hidden=hidden, kernel=kernel, beta=beta, **kw)

    def _build_net(self, n_channels: int) -> nn.Module:
        h = self.hparams
        return _VAENet(n_channels, self.window, h["hidden"], self.latent_dim, h["kernel"], float(h["beta"]))


class PCADetector(TorchDetector):
    """Linear baseline: reconstruction from the top principal components (the Q / SPE statistic).
    `latent_dim=None` keeps the fewest components that explain `variance` of the training data."""

    kind = "pca"

    def __init__(self, latent_dim: int | None = None, window: int = 1, variance: float = 0.9, **kw):
        super().__init__(latent_dim=latent_dim or 0, window=window, variance=variance, **kw)

    def _build_net(self, n_channels: int) -> nn.Module:
        return _PCANet(self.window * n_channels, self.latent_dim, (self.window, n_channels))

    def fit(self, X: np.ndarray, channels: list[str] | None = None, *, val_fraction: float = 0.0,
            holdout: str = "blocks", fold: int | None = None, **_training_options) -> "PCADetector":
        """Exact fit by SVD (training options such as epochs are accepted and ignored). With
        `val_fraction`, the same interleaved blocks as the autoencoders are held out (not fitted on)."""
        if holdout == "tail" and val_fraction > 0:  # standardise on the fitted rows only, as evaluate.SETTINGS was measured
            self._prepare_fit(X[:len(X) - int(len(X) * val_fraction)], channels)
            X = np.asarray(X, dtype=np.float32)
        else:
            X = self._prepare_fit(X, channels)
        flat = sliding_windows(self.scaler.transform(X), self.window).reshape(-1, self.window * X.shape[1])
        train_idx, val_idx = split_blocks(len(flat), val_fraction, self.window, holdout, fold)
        self.training_report = TrainingReport(0, 0, float("nan"), 0.0, [], len(val_idx), val_idx, train_idx)
        flat = flat[train_idx]
        center = flat.mean(axis=0, dtype=np.float64)
        _, s, vt = np.linalg.svd(flat - center, full_matrices=False)
        if not self.latent_dim:
            explained = np.cumsum(s**2) / max(np.sum(s**2), 1e-12)
            self.latent_dim = int(np.searchsorted(explained, self.hparams["variance"]) + 1)
        self.latent_dim = min(self.latent_dim, vt.shape[0])
        self.net = self._build_net(X.shape[1])
        self.net.center.copy_(torch.from_numpy(center.astype(np.float32)))
        self.net.components.copy_(torch.from_numpy(vt[: self.latent_dim].astype(np.float32)))
        return self._ready()


MODELS: dict[str, type[TorchDetector]] = {m.kind: m for m in (MLPAutoencoder, WindowAutoencoder, VariationalAutoencoder,
                                                               PCADetector)}


def make_detector(kind: str, **config) -> TorchDetector:
    """`make_detector("window", window=32, device="cpu")` -> an unfitted model of that kind."""
    if kind not in MODELS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(MODELS)}")
    return MODELS[kind](**config)
