"""`yoloprune bench`: models side by side, as a Markdown table and JSON."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="compare models: params, MB, MACs, CPU latency (PyTorch and ONNX Runtime), mAP",
        description="Benchmark models against the first one. Latency: batch 1, median of --runs after "
        "warm-up, models timed interleaved (A B A B ...) with the same thread count in both runtimes.",
    )
    parser.add_argument("--model", action="append", required=True, metavar="NAME=CFG:WEIGHTS",
                        help="a model to compare (repeat); NAME=CFG:WEIGHTS, NAME=CFG or NAME=CHECKPOINT.pt")
    parser.add_argument("--data", help=".data file: also evaluate mAP on its valid split")
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--runs", type=int, default=20, help="timed runs per model (default 20)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for both runtimes (default: torch's)")
    parser.add_argument("--batch", type=int, default=8, help="batch size for the mAP evaluation")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--json", dest="json_out", metavar="OUT", help="write the results as JSON")
    parser.add_argument("--md", dest="md_out", metavar="OUT", help="write the Markdown table")
    parser.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from yoloprune.bench.benchmark import ModelSpec, benchmark_models, format_markdown
    from yoloprune.errors import YoloPruneError
    from yoloprune.fileio import atomic_write_text

    if args.img_size <= 0 or args.img_size % 32:
        raise YoloPruneError(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    specs = [ModelSpec.parse(text) for text in args.model]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise YoloPruneError(f"model names must be unique, got {names}")
    result = benchmark_models(specs, args.img_size, args.data, args.runs, args.warmup, args.threads, args.batch, args.workers)
    table = format_markdown(result)
    print(table)
    if args.md_out:
        atomic_write_text(args.md_out, table)
    if args.json_out:
        atomic_write_text(args.json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    return 0
