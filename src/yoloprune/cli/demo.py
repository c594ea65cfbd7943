"""`yoloprune demo`: the whole chain on the embedded synthetic dataset, ending in report.md."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="synthetic data -> baseline -> sparse training -> prune -> finetune -> bench -> figures -> report.md",
        description="Run the whole network-slimming chain on a generated hand dataset and write OUT/report.md "
        "with the baseline / pruned / finetuned table and the figures. The default profile is sized for a "
        "2-core CPU (about 20 min); --quick takes a few minutes on tiny data; --full is the seed-scale run "
        "(yolov3-hand.cfg at 416 px) for a GPU. Re-running reuses the dataset and resumes each training.",
    )
    parser.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="profile", const="quick", help="tiny data and few epochs (smoke run)")
    size.add_argument("--full", action="store_const", dest="profile", const="full", help="seed-scale run: yolov3-hand.cfg at 416 px (GPU)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.set_defaults(func=run_demo_command, profile="default")


def run_demo_command(args: argparse.Namespace) -> int:
    from yoloprune.demo import run_demo

    result = run_demo(args.out, args.profile, args.device, args.workers)
    print(result.report_md.read_text())
    print(f"report: {result.report_md}  ({result.seconds / 60:.1f} min)")
    return 0
