"""Scoring fast path: a trained windowed network run as a chain of dense matrix products.

A 1-D convolution over a window of fixed length W (zero padding at the window's edges) is a
linear map of the flattened window, so the window autoencoder is exactly an MLP on the
`[W * channels]` vector: conv1 -> (W*C x W*H), conv2 -> (W*H x W*H), the bottleneck Linear, the
expand Linear, conv3, conv4. The matrices are read off the trained weights once (a convolution
of a one-hot input is its weight entry, exactly), and scoring is a few `addmm` calls with
in-place ReLUs on the time-major windows as they come, no transposes. A convolution's matrix
is block-banded; on a CPU it is cut into bands of output positions so the zero blocks are
skipped: 217k FLOPs a window executed at W=8, C=16, H=32, k=5, against 254k as the convolutions
are written. Profile of the network (one thread, 32k windows): 79 % of the time in
`mkldnn_convolution` on length-8 inputs. Measured in one process on the 2-core bench machine,
one thread (bench/model_stage.py, 2026-12-02): best 162k vs 130k windows/s, 0.57 vs 0.45 of a
`torch.mm` float32 rate timed in the same run; alternating call by call on 16,384 windows, best
1.64x, median 1.09x (the machine was shared; an earlier quiet A/B gave 1.18-1.2x best and median).
PCA keeps its own two products: a dense form with the centring folded
into the biases scored 0.95-0.98x its windows/s (W=8, 2 components, alternating, best and
median of 10): PCA is bound by the elementwise passes (standardise, residual, square, mean),
not by its matrix products, and stays at ~1.6-1.8M windows/s, ~0.03 of the matmul roofline.

Scores equal the network's within float32 rounding (only the order of the sums differs);
`DenseForm.build` checks that on a probe batch and returns None (the network is used) if not.
The same code runs on CUDA (plain tensor products; autocast applies as for the network).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

PROBE_ROWS = 64  # windows of the build-time check against the network
# Bands pay per call (a GEMM per band): one thread, W=8, per call, network / one band / 8 bands:
# 1 window 898 / 490 / 625 us, 64: 3.3 / 1.8 / 2.6 ms, 256: 6.2 / 5.5 / 4.4 ms, 4096: 99 / 94 /
# 51 ms (best of 5, 2 cores under load ~7). Below this many windows, one band a layer.
BAND_MIN_ROWS = 256
PROBE_RTOL = 1e-4  # relative to the typical error: float32 summation-order noise is ~1e-6


def _conv_matrix(conv: nn.Conv1d, window: int, time_major_in: bool, time_major_out: bool) -> torch.Tensor:
    """The `[in, out]` matrix of `conv` (no bias) on flattened length-`window` inputs.

    Flattened layouts: channel-major (`c * window + t`, what `nn.Flatten` of `[b, c, w]` gives)
    or time-major (`t * c_in + c`, the detector's `[b, window, channels]` windows)."""
    c_in = conv.in_channels
    eye = torch.eye(c_in * window, dtype=conv.weight.dtype, device=conv.weight.device)
    basis = eye.view(-1, window, c_in).transpose(1, 2) if time_major_in else eye.view(-1, c_in, window)
    out = F.conv1d(basis, conv.weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    if out.shape[-1] != window:
        raise ValueError(f"convolution changes the window length ({window} -> {out.shape[-1]})")
    if time_major_out:
        out = out.transpose(1, 2)
    return out.reshape(c_in * window, -1).contiguous()


def _conv_bias(conv: nn.Conv1d, window: int, time_major_out: bool) -> torch.Tensor:
    b = conv.bias.detach()
    return b.repeat(window) if time_major_out else b.repeat_interleave(window)


class DenseForm:
    """`layers`: `(parts, relu)` in order, each part `(lo, hi, matrix, bias)`: the layer's output
    is the concatenation of `input[:, lo:hi] @ matrix + bias` over its parts. A convolution's
    matrix is block-banded (an output position sees `kernel` input positions), so it is cut into
    `groups` bands of output positions, each multiplied by the input columns it sees only: the
    dropped blocks are exact zeros. The latent is the output of layer `latent_at`; the last
    layer's output is the reconstruction. Every activation is time-major (`t * width + unit`)."""

    def __init__(self, layers: list, latent_at: int, whole: list | None = None):
        self.layers, self.latent_at = layers, latent_at
        self.whole = whole or layers  # one band a layer: for small batches


    @classmethod
    def of(cls, net: nn.Module, window: int, groups: int = 2) -> "DenseForm | None":
        """The dense form of a conv autoencoder (networks.py's `_ConvNet`, `_VAENet`), else None.
        Those two classes say which they are in their own `DENSE_FORM` ("conv", "vae"; not
        inherited: a subclass is another network), so this module needs no import of networks.py,
        which imports it."""
        kind = type(net).__dict__.get("DENSE_FORM")
        if kind not in ("conv", "vae"):
            return None
        vae = kind == "vae"
        with torch.no_grad():
            trunk = net.features if vae else net.encoder[:-1]
            head = net.encoder if vae else net.encoder[-1]
            conv1, conv2 = trunk[0], trunk[2]
            expand, (conv3, conv4) = net.expand[0], (net.decoder[0], net.decoder[2])
            hidden = conv2.out_channels
            # Flatten / view of [b, hidden, window] are channel-major: permute to time-major.
            head_w = head.weight.detach().view(-1, hidden, window).transpose(1, 2).reshape(len(head.weight), -1)
            exp_w = expand.weight.detach().view(hidden, window, -1).transpose(0, 1).reshape(hidden * window, -1)
            exp_b = expand.bias.detach().view(hidden, window).t().reshape(-1)
            conv = lambda c: (_conv_matrix(c, window, True, True), _conv_bias(c, window, True))
            dense = [(*conv(conv1), True), (*conv(conv2), True),
                     (head_w.t().contiguous(), head.bias.detach().clone(), False),
                     (exp_w.t().contiguous(), exp_b.contiguous(), True),
                     (*conv(conv3), True), (*conv(conv4), False)]
            conv_layers = {0, 1, 4, 5}
            layers = [(_bands(m, b, window, groups if i in conv_layers else 1), relu)
                      for i, (m, b, relu) in enumerate(dense)]
            whole = [(_bands(m, b, window, 1), relu) for m, b, relu in dense] if groups > 1 else None
        return cls(layers, latent_at=2, whole=whole)

    @classmethod
    def build(cls, net: nn.Module, window: int, channels: int, groups: int = 1) -> "DenseForm | None":
        """`of(net)`, checked against the network on a probe batch (None when it differs)."""
        try:
            form = cls.of(net, window, groups)
        except (ValueError, AttributeError, IndexError, TypeError) as exc:
            log.debug("no dense form for %s: %s", type(net).__name__, exc)
            return None
        if form is None:
            return None
        dev = form.layers[0][0][0][2].device
        x = torch.randn(BAND_MIN_ROWS, window, channels, generator=torch.Generator().manual_seed(0)).to(dev)
        with torch.inference_mode():
            z_net, r_net = net(x)
            for rows in (BAND_MIN_ROWS, PROBE_ROWS):  # the banded form, then the one-band form
                z, r = form.forward(x[:rows].reshape(rows, -1))
                if (float((z - z_net[:rows]).abs().max()) > PROBE_RTOL * 10 * (float(z_net.abs().mean()) + 1e-12)
                        or float((r.view_as(r_net[:rows]) - r_net[:rows]).abs().max())
                        > PROBE_RTOL * 10 * (float(r_net.abs().mean()) + 1e-12)):
                    log.warning("dense form of %s differs from the network: scoring with the network",
                                type(net).__name__)
                    return None
        return form

    def forward(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """`flat` [n, window * channels] standardised, time-major -> (latent, reconstruction flat)."""
        h, latent = flat, None
        for i, (parts, relu) in enumerate(self.layers if len(flat) >= BAND_MIN_ROWS else self.whole):
            outs = [torch.addmm(b, h[:, lo:hi], m) for lo, hi, m, b in parts]
            h = outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)
            if relu:
                h.relu_()
            if i == self.latent_at:
                latent = h
        return latent, h


def _bands(m: torch.Tensor, b: torch.Tensor, window: int, groups: int) -> list:
    """Cut `m` [in, out] (time-major both sides) into `groups` bands of output positions, each
    with the contiguous range of input rows that has a non-zero entry in its columns."""
    if groups <= 1:
        return [(0, m.shape[0], m.contiguous(), b.contiguous())]
    width = m.shape[1] // window
    cuts = sorted({round(g * window / groups) for g in range(groups + 1)})
    parts = []
    for a, z in zip(cuts, cuts[1:]):
        cols = slice(a * width, z * width)
        rows = torch.nonzero(m[:, cols].abs().sum(dim=1)).flatten()
        lo, hi = (int(rows.min()), int(rows.max()) + 1) if len(rows) else (0, 1)
        parts.append((lo, hi, m[lo:hi, cols].contiguous(), b[cols].contiguous()))
    return parts
