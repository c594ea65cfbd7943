"""`yoloprune demo`: `run` on the embedded synthetic dataset, controls included, ending in report.md."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.pipelines.demo_settings import DemoSettings

    parser = add_command(
        subparsers, "demo", DemoSettings, run_demo_command,
        help="synthetic data -> baseline -> sparse training -> prune -> recover -> bench -> figures -> report.md",
        description="Run the whole network-slimming chain (`yoloprune run`, controls included) on a generated hand "
        "dataset and write OUT/report.md with the delivered model against the baseline, every model's row, the figures "
        "and the command lines that reproduce each stage; the delivered model is in OUT/delivered/. Re-running reuses "
        "the dataset and every stage still valid, and resumes each training.",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick", help="--profile quick")
    size.add_argument("--full", action="store_const", dest="profile", const="full", help="--profile full")


def run_demo_command(args: argparse.Namespace) -> int:
    from yoloprune.pipelines.demo import run_demo
    from yoloprune.pipelines.demo_settings import DemoSettings

    settings = from_arguments(DemoSettings, args)
    result = run_demo(settings.out, settings.profile, settings.device, settings.workers, settings.split, settings.model, settings.recover)
    print(result.report_md.read_text())
    print(f"report: {result.report_md}  ({result.seconds / 60:.1f} min)")
    return 0
