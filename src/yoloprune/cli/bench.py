"""`yoloprune bench`: models side by side, as a Markdown table and JSON."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.bench.settings import BenchSettings

    add_command(
        subparsers, "bench", BenchSettings, run_bench,
        help="compare models: params, MB, MACs, CPU latency (PyTorch and ONNX Runtime), mAP",
        description="Benchmark models against the first one. Latency: batch 1, median of --runs after "
        "warm-up, models timed interleaved (A B A B ...) with the same thread count in both runtimes.",
    )


def run_bench(args: argparse.Namespace) -> int:
    from yoloprune.bench.benchmark import bench_and_write
    from yoloprune.bench.settings import BenchSettings

    _, table = bench_and_write(from_arguments(BenchSettings, args))
    print(table)
    return 0
