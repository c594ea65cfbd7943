"""`yoloprune info CFG`: the layers of a model and what it costs."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="layer table, params, size, MACs/BFLOPs (and optional latency) of a darknet cfg",
        description="Build the model from a darknet cfg (optionally with .weights or .pt) and print its "
        "layer table and totals. MACs are multiply-adds; darknet's BFLOPs are 2 x MACs.",
    )
    parser.add_argument("cfg", nargs="?", help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    parser.add_argument("--weights", help="darknet .weights or yoloprune .pt to load (checks that it matches the cfg)")
    parser.add_argument("--img-size", type=int, default=416, help="square input size in pixels (default 416)")
    parser.add_argument("--json", action="store_true", help="print one JSON object: params, size_mb, gmacs, bflops (+ latency)")
    parser.add_argument("--layers", action="store_true", help="with --json: include the per-layer rows")
    parser.add_argument("--latency", action="store_true", help="also measure CPU latency (batch 1, median)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for --latency (default: torch's)")
    parser.add_argument("--runs", type=int, default=20, help="timed runs for --latency (default 20)")
    parser.set_defaults(func=run_info)


def run_info(args: argparse.Namespace) -> int:
    from yoloprune.bench.profile import measure_latency, profile_model
    from yoloprune.darknet.weights import load_model
    from yoloprune.errors import CfgError

    if args.img_size <= 0 or args.img_size % 32:
        raise CfgError(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    model = load_model(args.cfg, args.weights)
    profile = profile_model(model, args.img_size)
    latency = measure_latency(model, args.img_size, runs=args.runs, threads=args.threads) if args.latency else None
    if args.json:
        result = profile.to_dict() if args.layers else profile.totals()
        if latency is not None:
            result.update(latency_ms=latency.median_ms, latency_threads=latency.threads)
        print(json.dumps(result))
        return 0
    print(f"{'idx':>4} {'type':<14} {'in':>6} {'out':>6} {'output':>11} {'params':>11} {'MMACs':>10}")
    for layer in profile.layers:
        extra = ""
        block = model.cfg.layers[layer.index]
        if layer.kind == "convolutional":
            extra = f"  {block.size}x{block.size}/{block.stride}{' bn' if block.batch_normalize else ''} {block.activation}"
        elif layer.kind in ("route", "shortcut"):
            extra = "  <- " + ", ".join(str(j) for j in model.cfg.inputs_of(layer.index))
        hw = f"{layer.out_hw[0]}x{layer.out_hw[1]}"
        print(f"{layer.index:>4} {layer.kind:<14} {layer.in_channels:>6} {layer.out_channels:>6} {hw:>11} {layer.params:>11,} {layer.macs / 1e6:>10.2f}{extra}")
    print(f"\ncfg:     {args.cfg or args.weights}")
    print(f"input:   {args.img_size}x{args.img_size}")
    print(f"params:  {profile.params:,}  ({profile.params / 1e6:.2f} M)")
    print(f"size:    {profile.size_mb:.2f} MB (fp32)")
    print(f"MACs:    {profile.gmacs:.3f} G   (darknet BFLOPs = 2 x MACs = {profile.bflops:.3f})")
    if latency is not None:
        print(f"latency: {latency.median_ms:.1f} ms median (p10 {latency.p10_ms:.1f}, p90 {latency.p90_ms:.1f}; batch 1, {latency.threads} threads, {latency.runs} runs)")
    return 0
