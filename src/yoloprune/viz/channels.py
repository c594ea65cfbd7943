"""channels.png: each conv layer's channels before and after pruning, from a `PruneReport`."""

from __future__ import annotations

from pathlib import Path

from yoloprune.prune.report import PruneReport
from yoloprune.viz.figure import pyplot, save_png


def plot_channels(report: PruneReport, path: str | Path) -> Path:
    """Bar chart of each conv layer's channels before (light) and after (dark) pruning."""
    rows = report.layers
    positions = list(range(len(rows)))
    fig, ax = pyplot().subplots(figsize=(max(8.0, 0.16 * len(rows)), 4.0))
    ax.bar(positions, [row.channels_before for row in rows], color="#bcd4ea", label="before")
    ax.bar(positions, [row.channels_after for row in rows], color="#1f5b94", label="after")
    step = max(1, len(rows) // 25)
    ax.set_xticks(positions[::step], [str(row.layer) for row in rows][::step], fontsize=7)
    ax.set_xlabel("conv layer (cfg index)")
    ax.set_ylabel("channels")
    title = f"{report.mode} pruning: params x{report.params_ratio:.3f}, MACs x{report.macs_ratio:.3f}"
    if report.removed_blocks:
        title += f", {len(report.removed_blocks)} residual blocks removed"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path, bbox_inches=None)
