"""All the figures a run folder has data for: the γ figures of a training run (metrics.csv), the
channels chart of a prune run (report.json)."""

from __future__ import annotations

from pathlib import Path

from yoloprune.errors import YoloPruneError
from yoloprune.prune.report import PruneReport
from yoloprune.train.metrics import read_metrics_csv
from yoloprune.viz.channels import plot_channels
from yoloprune.viz.gamma import plot_gamma_figures


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure the run directory has data for, written into `out_dir` (default: `run_dir`)."""
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir
    metrics_path, report_path = run_dir / "metrics.csv", run_dir / "report.json"
    if not metrics_path.exists() and not report_path.exists():
        raise YoloPruneError(f"{run_dir}: neither metrics.csv (a training run) nor report.json (a prune run) found")
    written: list[Path] = []
    if metrics_path.exists():
        rows = [row for row in read_metrics_csv(metrics_path) if row.get("gamma_q50") is not None]
        if not rows:
            raise YoloPruneError(f"{metrics_path}: no γ statistics in any row (was it written by yoloprune train?)")
        written += plot_gamma_figures(rows, out_dir)
    if report_path.exists():
        written.append(plot_channels(PruneReport.load(report_path), out_dir / "channels.png"))
    return written
