"""How BN γ evolves under sparsity training, from a training run's metrics rows (metrics.csv):

  gamma_quantiles.png — the 0/25/50/75/100 % quantiles of |γ| per epoch (log scale), and on a second
                        axis the share of the penalised MACs whose |γ| is below the sparsity-target
                        threshold (`sparse_macs_share`), where the rows have it;
  gamma_traces.png    — every γ of the first considered BN layer, one line per channel;
  gamma_hist.png      — the distribution of |γ| per epoch as a heat map (log-spaced bins).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from yoloprune.viz.figure import pyplot, save_png


def _epochs(rows: list[dict]) -> np.ndarray:
    return np.array([row["epoch"] for row in rows], dtype=float)


def plot_gamma_quantiles(rows: list[dict], path: str | Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
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
    _plot_sparse_share(ax, epochs, rows)
    return save_png(fig, path)


def _plot_sparse_share(ax, epochs: np.ndarray, rows: list[dict]) -> None:
    """The sparse MACs share per epoch on a right-hand axis (0-100 %), when every row has it
    (runs from before the column have none)."""
    shares = [row.get("sparse_macs_share") for row in rows]
    if any(share is None for share in shares):
        return
    right = ax.twinx()
    right.plot(epochs, 100 * np.array(shares, dtype=float), color="black", linewidth=1.5, marker="s", markersize=3, label="MACs share")
    right.set_ylim(0, 100)
    right.set_ylabel("penalised MACs with |γ| below the threshold (%)")
    right.legend(loc="lower right")


def plot_gamma_traces(rows: list[dict], path: str | Path) -> Path:
    traces = np.array([row["gamma_first"] for row in rows], dtype=float)  # (epochs, channels)
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    ax.plot(_epochs(rows), traces, linewidth=1, alpha=0.8)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("γ")
    ax.set_title(f"γ of each channel of layer {rows[-1].get('gamma_first_layer', '?')} (first considered BN layer)")
    ax.grid(True, alpha=0.3)
    return save_png(fig, path)


def plot_gamma_histograms(rows: list[dict], path: str | Path) -> Path:
    """Heat map: x = epoch, y = |γ| bin (log-spaced edges stored with the counts), colour = fraction of channels."""
    edges = np.array(rows[-1]["gamma_hist_edges"], dtype=float)
    if edges[0] <= 0:  # the first bin starts at 0, which a log axis cannot show: draw it one decade wide
        edges[0] = edges[1] / 10
    counts = np.array([row["gamma_hist"] for row in rows], dtype=float)
    fractions = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    epochs = _epochs(rows)
    x_edges = np.concatenate([epochs - 0.5, [epochs[-1] + 0.5]])
    mesh = ax.pcolormesh(x_edges, edges, fractions.T, cmap="magma", shading="flat")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("|γ| (log scale; the lowest bin holds everything below it)")
    ax.set_title("Distribution of |γ| per epoch")
    fig.colorbar(mesh, ax=ax, label="fraction of channels")
    return save_png(fig, path)


def plot_gamma_figures(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """Each of the three figures the rows have data for, into `out_dir`."""
    out_dir = Path(out_dir)
    written = [plot_gamma_quantiles(rows, out_dir / "gamma_quantiles.png")]
    if all(row.get("gamma_first") for row in rows):
        written.append(plot_gamma_traces(rows, out_dir / "gamma_traces.png"))
    if all(row.get("gamma_hist") for row in rows):
        written.append(plot_gamma_histograms(rows, out_dir / "gamma_hist.png"))
    return written
