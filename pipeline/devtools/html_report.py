"""An offline picture of what a model sees in one file: where readings land in latent space, how
the score moves against the threshold and the true anomalies, and which channels drive the
strongest alerts. One self-contained HTML file (PNGs embedded as base64) plus the PNG files.

matplotlib is optional (the `report` extra); it is imported only here, with the Agg backend via
`matplotlib.figure.Figure` (no pyplot global state, safe in threads and without a display).
"""

from __future__ import annotations

import base64
import html
import io
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from latentwatch.pipeline.errors import UserError

MAX_SCATTER = 20_000  # latent points drawn; flagged and labelled points are always kept


@dataclass
class ReportData:
    """Everything a report shows, aligned per scored reading."""

    latent: np.ndarray  # [n, k]
    channel_error: np.ndarray  # [n, channels]
    score: np.ndarray  # [n]
    threshold: np.ndarray  # [n] the threshold each score is compared against
    channels: list[str]
    times: np.ndarray | None = None  # [n] epoch seconds; None = reading index
    labels: np.ndarray | None = None  # [n] bool, true anomalies when the file has them
    alarm: np.ndarray | None = None  # [n] bool, the alarm rule's decision (instant or EWMA), as `score` flags

    @property
    def flagged(self) -> np.ndarray:
        """What `score` calls anomalous (the alarm rule), so both count the same; without the
        rule's decision, the instant limit alone."""
        if self.alarm is not None:
            return self.alarm
        return np.nan_to_num(self.score, nan=-np.inf) > self.threshold


def _require_matplotlib():
    # matplotlib's first import builds its font cache and says so at INFO through the root
    # handler the CLI installs ("generated new fontManager"): noise in the report's output.
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("install the report extra: pip install 'latentwatch[report]'") from None
    return Figure


def pca2(latent: np.ndarray) -> tuple[np.ndarray, float]:
    """Project `[n, k]` onto its first two principal axes (numpy SVD); also the variance share."""
    Z = np.asarray(latent, dtype=np.float64)
    Z = Z - Z.mean(axis=0)
    _, s, vt = np.linalg.svd(Z, full_matrices=False)
    proj = Z @ vt[:2].T
    if proj.shape[1] < 2:
        proj = np.column_stack([proj, np.zeros(len(proj))])
    total = float((s ** 2).sum())
    return proj, (float((s[:2] ** 2).sum()) / total if total > 0 else 1.0)


def segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """[(start, end_exclusive)] of the runs of True in `mask`."""
    edges = np.diff(np.r_[0, np.asarray(mask, dtype=np.int8), 0])
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _xaxis(d: ReportData):
    if d.times is None:
        return np.arange(len(d.score)), "reading"
    return (np.asarray(d.times) * 1000).astype("datetime64[ms]"), "time (UTC)"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def plot_latent(d: ReportData) -> bytes:
    Figure = _require_matplotlib()
    from matplotlib.colors import LogNorm, Normalize

    proj, share = pca2(d.latent)
    flagged = d.flagged
    keep = np.zeros(len(proj), bool)
    keep[:: max(1, len(proj) // MAX_SCATTER)] = True
    keep |= flagged | (d.labels if d.labels is not None else False)
    fig = Figure(figsize=(8, 6.5))
    ax = fig.add_subplot()
    lo, hi = np.nanpercentile(d.score, [1, 99.5])
    norm = LogNorm(lo, hi) if lo > 0 else Normalize(lo, hi)  # scores are heavy-tailed
    order = np.flatnonzero(keep)[np.argsort(d.score[keep])]  # high scores drawn on top
    sc = ax.scatter(proj[order, 0], proj[order, 1], c=d.score[order], cmap="viridis", norm=norm,
                    s=12, linewidths=0, alpha=0.85)
    fig.colorbar(sc, ax=ax, label="anomaly score (clipped to 1st-99.5th percentile)")
    if d.labels is not None and d.labels.any():
        ax.scatter(proj[d.labels, 0], proj[d.labels, 1], s=46, facecolors="none", edgecolors="black",
                   linewidths=0.8, label=f"true anomaly ({int(d.labels.sum())})")
    if flagged.any():
        ax.scatter(proj[flagged, 0], proj[flagged, 1], marker="x", s=14, c="red", linewidths=0.8, alpha=0.8,
                   label=f"flagged ({int(flagged.sum())})")
    ax.set_title(f"Latent space: first two principal components ({share:.0%} of latent variance)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="best", framealpha=0.9)
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_score(d: ReportData) -> bytes:
    Figure = _require_matplotlib()
    x, xlabel = _xaxis(d)
    fig = Figure(figsize=(13, 4.6))
    ax = fig.add_subplot()
    if d.labels is not None:
        # at least 0.2 % of the axis each side, so a one-reading anomaly stays visible
        half = max(np.median(np.diff(x)) / 2, (x[-1] - x[0]) / 500) if len(x) > 1 else 0.5
        for i, (a, b) in enumerate(segments(d.labels)):
            ax.axvspan(x[a] - half, x[b - 1] + half, color="tab:orange", alpha=0.3, lw=0,
                       label="true anomaly" if i == 0 else None)
    f = d.flagged
    ax.plot(x, d.score, lw=0.9, color="tab:blue", label="score")
    if f.any():  # the flagged stretches of the same line in red; isolated ones as dots
        ax.plot(x, np.where(f, d.score, np.nan), lw=1.1, color="red", label=f"flagged ({int(f.sum())})")
        lone = f & ~np.r_[False, f[:-1]] & ~np.r_[f[1:], False]
        ax.scatter(x[lone], d.score[lone], s=10, color="red", zorder=3)
    ax.plot(x, d.threshold, lw=1.3, ls="--", color="black", label="threshold")
    both = np.r_[d.score, d.threshold]
    both = both[np.isfinite(both)]
    if len(both) and both.min() > 0 and both.max() / both.min() > 50:
        ax.set_yscale("log")  # scores far above (or below) the threshold stay readable
    ax.set_title("Anomaly score over time")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("score")
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=9)  # outside: never hides data
    ax.grid(alpha=0.3)
    fig.autofmt_xdate() if d.times is not None else None
    return _png(fig)


def top_alerts(d: ReportData, top: int) -> np.ndarray:
    """The `top` highest-scoring flagged readings (any readings if none is flagged), at least
    n / (4 * top) readings apart, so one long anomaly does not fill every panel."""
    pool = d.flagged & np.isfinite(d.score)
    if not pool.any():
        pool = np.isfinite(d.score)
    sep = max(1, len(d.score) // (4 * max(top, 1)))
    score = np.where(pool, d.score, -np.inf)
    picks: list[int] = []
    while len(picks) < top and np.isfinite(score.max(initial=-np.inf)):
        i = int(np.argmax(score))
        picks.append(i)
        score[max(0, i - sep + 1):i + sep] = -np.inf
    return np.array(picks, dtype=np.int64)


def plot_channels(d: ReportData, top: int = 6) -> bytes:
    Figure = _require_matplotlib()
    idx = top_alerts(d, top)
    cols = min(3, max(1, len(idx)))
    rows = max(1, -(-len(idx) // cols))
    C = len(d.channels)
    fig = Figure(figsize=(4.8 * cols, 0.9 + rows * (0.9 + 0.28 * C)), layout="constrained")
    x, _ = _xaxis(d)
    for j, i in enumerate(idx):
        ax = fig.add_subplot(rows, cols, j + 1)
        err = d.channel_error[i]
        colors = np.where(err == err.max(), "tab:red", "tab:gray")
        ax.barh(np.arange(C), err, color=colors)
        ax.set_yticks(np.arange(C), d.channels, fontsize=8)
        ax.invert_yaxis()
        when = str(x[i]).replace("T", " ")[:19]
        truth = "" if d.labels is None else (" - true anomaly" if d.labels[i] else " - labelled normal")
        ax.set_title(f"#{j + 1} {when}\nscore {d.score[i]:.3g}{truth}", fontsize=9)
        ax.tick_params(axis="x", labelsize=8)
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Reconstruction error per channel for the top alerts", fontsize=11)
    return _png(fig)


def render(d: ReportData, top: int = 6) -> dict[str, bytes]:
    """{"latent" | "score" | "channels": PNG bytes}."""
    if len(d.score) == 0:
        raise UserError("nothing to report: no scored readings (is the file shorter than the model's window?)")
    return {"latent": plot_latent(d), "score": plot_score(d), "channels": plot_channels(d, top)}


def summary(d: ReportData) -> dict[str, str]:
    f = d.flagged
    rule = "instant or EWMA rule" if d.alarm is not None else "instant limit"
    out = {"readings scored": str(len(d.score)), f"flagged ({rule}, as score counts)": f"{int(f.sum())} ({f.mean():.2%})",
           "instant limit (median)": f"{np.median(d.threshold):.4g}"}
    if d.labels is not None:
        tp = int((f & d.labels).sum())
        out["true anomalies"] = str(int(d.labels.sum()))
        out["precision / recall (per reading)"] = (f"{tp / max(f.sum(), 1):.2f} / {tp / max(d.labels.sum(), 1):.2f}")
    return out


def write_report(pngs: dict[str, bytes], out_html, png_prefix=None, title: str = "latentwatch report",
                 facts: dict[str, str] | None = None) -> list[Path]:
    """Write the PNG files (`PREFIX-<name>.png`) and one HTML embedding them; returns the paths."""
    out_html = Path(out_html)
    prefix = str(png_prefix) if png_prefix else str(out_html.with_suffix(""))
    paths = []
    for name, data in pngs.items():
        p = Path(f"{prefix}-{name}.png")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        paths.append(p)
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in (facts or {}).items())
    imgs = "".join(f'<h2>{html.escape(name)}</h2><img alt="{html.escape(name)}" '
                   f'src="data:image/png;base64,{base64.b64encode(data).decode()}">' for name, data in pngs.items())
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(
        f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title><style>"
        "body{font-family:sans-serif;max-width:1500px;margin:2em auto;padding:0 1em}"
        "img{max-width:100%}th{text-align:left;padding-right:1em}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><table>{rows}</table>{imgs}</body></html>\n", encoding="utf-8")
    return [out_html, *paths]


def report_from_files(model_dir, data_csv, out_html, png_prefix=None, top: int = 6) -> list[Path]:
    """Load the model, score the file, write the report: the `latentwatch report` command."""
    _require_matplotlib()
    from latentwatch.detectors.checkpoint import CheckpointError, load
    from latentwatch.detectors.recipe import flag_series
    from latentwatch.pipeline.devtools.replay import read_csv

    try:
        model = load(model_dir, device="auto")
    except CheckpointError as exc:
        raise UserError(str(exc)) from None
    det = model.detector
    table = read_csv(data_csv, channels=list(det.channels))
    w = det.window
    flags = flag_series(det, model.threshold, model.alarm, table.X, baselines=model.baselines,
                        own_rule=model.own_alarm)  # as `score` flags the unnamed sensor "": the same counts
    scores = flags.scored
    labels = None
    if table.labels:
        col = table.labels.get("anomaly")
        hit = (np.nan_to_num(col) != 0) if col is not None else np.array([k != "normal" for k in table.truth()])
        labels = hit[w - 1:]
    d = ReportData(scores.latent, scores.channel_error, scores.score,
                   np.asarray(model.threshold.thresholds(scores.score), dtype=np.float64), list(det.channels),
                   table.times[w - 1:], labels, flags.anomaly[w - 1:])
    facts = {"model": f"{model.name} {model.version} ({det.kind}, window {w})", "data": str(data_csv),
             **summary(d)}
    return write_report(render(d, top), out_html, png_prefix, f"latentwatch report: {Path(data_csv).name}", facts)
