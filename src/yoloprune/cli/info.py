"""`yoloprune info CFG`: the layers of a model and what it costs."""

from __future__ import annotations

import argparse
import json

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.bench.settings import InfoSettings

    add_command(
        subparsers, "info", InfoSettings, run_info,
        help="layer table, params, size, MACs/BFLOPs (and optional latency) of a darknet cfg",
        description="Build the model from a darknet cfg (optionally with .weights or .pt) and print its "
        "layer table and totals at the cfg's own input size (or --img-size). MACs are multiply-adds of the "
        "convs; BFLOPs are 2 x MACs; darknet's printed total also counts maxpool and shortcut layers.",
    )


def run_info(args: argparse.Namespace) -> int:
    from yoloprune.bench.profile import measure_latency, profile_model
    from yoloprune.bench.settings import InfoSettings
    from yoloprune.darknet.weights import load_model

    settings = from_arguments(InfoSettings, args)
    model = load_model(settings.cfg, settings.weights)
    profile = profile_model(model, settings.img_size)
    latency = measure_latency(model, profile.input_hw, runs=settings.runs, threads=settings.threads) if settings.latency else None
    if settings.json:
        result = profile.to_dict() if settings.layers else profile.totals()
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
    print(f"\ncfg:     {settings.cfg or settings.weights}")
    height, width = profile.input_hw
    origin = "  (the cfg's [net] size)" if settings.img_size is None else ""
    print(f"input:   {height}x{width}{origin}")
    print(f"params:  {profile.params:,}  ({profile.params / 1e6:.2f} M)")
    print(f"size:    {profile.size_mb:.2f} MB (fp32)")
    print(f"MACs:    {profile.gmacs:.3f} G")
    print(f"BFLOPs:  {profile.bflops:.3f}   (2 x MACs: the convs, as darknet counts them)")
    print(f"darknet: {profile.bflops_darknet:.3f} BFLOPs   (darknet's printed total: the convs + maxpool and shortcut layers)")
    if latency is not None:
        print(f"latency: {latency.median_ms:.1f} ms median (p10 {latency.p10_ms:.1f}, p90 {latency.p90_ms:.1f}; batch 1, {latency.threads} threads, {latency.runs} runs)")
    return 0
