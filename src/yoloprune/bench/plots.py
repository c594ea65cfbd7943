"""Figures of network slimming: how BN γ evolves under sparsity training, and what pruning kept.

From a training run's metrics.csv:
  (a) gamma_quantiles.png — the 0/25/50/75/100 % quantiles of |γ| per epoch (log scale);
  (b) gamma_traces.png    — every γ of the first considered BN layer, one line per channel;
  (c) gamma_hist.png      — the distribution of |γ| per epoch as a heat map (log-spaced bins).
From a prune run's report.json:
  (d) channels.png        — channels per layer before and after pruning (prune.report.plot_channels).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from yoloprune.errors import YoloPruneError
from yoloprune.fileio import atomic_output


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _epochs(rows: list[dict]) -> np.ndarray:
    return np.array([row["epoch"] for row in rows], dtype=float)


def plot_gamma_quantiles(rows: list[dict], path: str | Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = _epochs(rows)
    for q, style in zip((0, 25, 50, 75, 100), (":", "--", "-", "--", ":")):
        values = np.array([row[f"gamma_q{q}"] for row in rows], dtype=float)
        ax.plot(epochs, np.maximum(values, 1e-8), style, marker="o", markersize=3, label=f"{q} %")
    small = [row.get("gamma_frac_small") for row in rows]
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|γ| (log scale)")
    title = "Quantiles of |γ| over the considered BN layers"
    if small[-1] is not None:
        title += f"\n|γ| < 0.01 at the last epoch: {small[-1]:.1%} of channels"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="quantile", loc="lower left")
    return _save(fig, Path(path))


def plot_gamma_traces(rows: list[dict], path: str | Path) -> Path:
    plt = _pyplot()
    traces = np.array([row["gamma_first"] for row in rows], dtype=float)  # (epochs, channels)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(_epochs(rows), traces, linewidth=1, alpha=0.8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("γ")
    ax.set_title(f"γ of each channel of layer {rows[-1].get('gamma_first_layer', '?')} (first considered BN layer)")
    ax.grid(True, alpha=0.3)
    return _save(fig, Path(path))


def plot_gamma_histograms(rows: list[dict], path: str | Path) -> Path:
    """Heat map: x = epoch, y = |γ| bin (log-spaced edges stored with the counts), colour = fraction of channels."""
    plt = _pyplot()
    edges = np.array(rows[-1]["gamma_hist_edges"], dtype=float)
    if edges[0] <= 0:  # the first bin starts at 0, which a log axis cannot show: draw it one decade wide
        edges[0] = edges[1] / 10
    counts = np.array([row["gamma_hist"] for row in rows], dtype=float)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    epochs = _epochs(rows)
    x_edges = np.concatenate([epochs - 0.5, [epochs[-1] + 0.5]])
    mesh = ax.pcolormesh(x_edges, edges, fractions.T, cmap="magma", shading="flat")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|γ| (log scale; the lowest bin holds everything below it)")
    ax.set_title("Distribution of |γ| per epoch")
    fig.colorbar(mesh, ax=ax, label="fraction of channels")
    return _save(fig, Path(path))


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure the run directory has data for: γ figures from metrics.csv, channels from report.json."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    written: list[Path] = []
    metrics_path = run_dir / "metrics.csv"
    report_path = run_dir / "report.json"
    if not metrics_path.exists() and not report_path.exists():
        raise YoloPruneError(f"{run_dir}: neither metrics.csv (a training run) nor report.json (a prune run) found")
    if metrics_path.exists():
        from yoloprune.train.trainer import read_metrics_csv

        rows = [row for row in read_metrics_csv(metrics_path) if row.get("gamma_q50") is not None]
        if not rows:
            raise YoloPruneError(f"{metrics_path}: no γ statistics in any row (was it written by yoloprune train?)")
        written.append(plot_gamma_quantiles(rows, out_dir / "gamma_quantiles.png"))
        if all(row.get("gamma_first") for row in rows):
            written.append(plot_gamma_traces(rows, out_dir / "gamma_traces.png"))
        if all(row.get("gamma_hist") for row in rows):
            written.append(plot_gamma_histograms(rows, out_dir / "gamma_hist.png"))
    if report_path.exists():
        from yoloprune.prune.report import plot_channels

        try:
            report = json.loads(report_path.read_text())
        except json.JSONDecodeError as error:
            raise YoloPruneError(f"{report_path}:{error.lineno}: not valid JSON ({error.msg})") from None
        target = out_dir / "channels.png"
        plot_channels(report, target)
        written.append(target)
    return written
