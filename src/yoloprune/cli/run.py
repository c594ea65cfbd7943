"""`yoloprune run`: the whole chain on a dataset and a darknet cfg, ending in OUT/delivered/ and report.md."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.pipelines.run.settings import RunSettings

    add_command(
        subparsers, "run", RunSettings, run_command,
        help="baseline (or --weights) -> sparse training -> prune -> recover -> OUT/delivered/ -> bench -> report.md",
        description="Prune a detector on your dataset: train the cfg from scratch (anchors fitted, classes set to the "
        ".data's) unless --weights gives the trained baseline, train it under the BN-γ penalty, prune to the profile's "
        "mAP tolerance on the valid split, recover (--recover), and deliver the model in OUT/delivered/ (cfg, .weights, "
        ".pt, parity-checked ONNX). OUT/report.md compares it with the baseline on --split (paired intervals), with every "
        "stage's command. Re-running reuses every stage still valid and resumes each training.",
    )


def run_command(args: argparse.Namespace) -> int:
    from yoloprune.pipelines.run.settings import RunSettings
    from yoloprune.pipelines.run.stages import run_on_data

    result = run_on_data(from_arguments(RunSettings, args))
    print(result.report_md.read_text())
    print(f"delivered: {result.delivered.folder}  report: {result.report_md}  ({result.seconds / 60:.1f} min)")
    return 0
