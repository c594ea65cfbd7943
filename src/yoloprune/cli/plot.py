"""`yoloprune plot RUN_DIR`: the γ figures of a training run, the channel figure of a prune run."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "plot",
        help="draw the sparsity figures (|γ| quantiles, γ traces, |γ| histograms) or the channels-per-layer chart",
        description="RUN_DIR with metrics.csv (from `yoloprune train`): gamma_quantiles.png, gamma_traces.png, "
        "gamma_hist.png. RUN_DIR with report.json (from `yoloprune prune`): channels.png.",
    )
    parser.add_argument("run_dir", help="a train --out or prune --out directory")
    parser.add_argument("--out", help="folder for the PNGs (default: RUN_DIR)")
    parser.set_defaults(func=run_plot)


def run_plot(args: argparse.Namespace) -> int:
    from yoloprune.viz import plot_run

    for path in plot_run(args.run_dir, args.out):
        print(f"wrote {path}")
    return 0
