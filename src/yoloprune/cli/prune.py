"""`yoloprune prune`: channel and layer pruning of a (sparse-trained) model, output as darknet cfg + weights."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command, add_model_arguments
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.prune.settings import PruneSettings

    parser = add_command(
        subparsers, "prune", PruneSettings, run_prune,
        help="remove low-|γ| channels and residual blocks; write pruned.cfg/.weights/.pt, plan.json, report.json",
        description="Network slimming: rank BN channels by |γ|, remove those under a global threshold (or "
        "as many as a FLOPs/params budget or a measured latency target allows), optionally remove whole residual blocks, fold each "
        "removed channel's constant output into the layers that read it, and write the compact model as "
        "a darknet cfg + weights (plus a .pt checkpoint), with the plan in OUT/plan.json. "
        "Everything is written into a hidden folder beside OUT that replaces OUT only once complete, so "
        "an interrupted run leaves OUT as it was. An existing OUT is replaced as a whole, and only if it "
        "holds nothing but a previous run's files (plan.json, pruned.cfg, pruned.weights, pruned.pt, "
        "report.json, channels.png); otherwise prune refuses before doing any work.",
    )
    add_model_arguments(parser, weights_help="darknet .weights or yoloprune .pt of the model to prune")
    parser.add_argument(
        "--out", required=True,
        help="output folder; an existing one is replaced as a whole, and only if it holds just a previous prune's files",
    )


def run_prune(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.prune.run import run_pruning
    from yoloprune.prune.settings import PruneSettings
    from yoloprune.settings import resolve_device
    from yoloprune.viz.channels import plot_channels

    settings = from_arguments(PruneSettings, args)
    model = load_model(args.cfg, args.weights, resolve_device(settings.device)).eval()
    outcome = run_pruning(model, settings, args.out, source=str(args.weights))
    if outcome.report is not None:
        outcome.paths["channels.png"] = plot_channels(outcome.report, outcome.paths["report.json"].with_name("channels.png"))
    print(outcome.plan.summary())
    if outcome.report is None:
        print(f"plan: {outcome.paths['plan.json']}")
        return 0
    report = outcome.report
    print(
        f"pruned: params {report.params_before:,} -> {report.params_after:,} (x{report.params_ratio:.3f}), "
        f"MACs@{report.img_size} {report.macs_before / 1e9:.3f} G -> {report.macs_after / 1e9:.3f} G (x{report.macs_ratio:.3f})"
    )
    if outcome.auto is not None:
        auto = outcome.auto
        both = "" if auto.map_before is None else f", mAP@0.5:0.95: {auto.map_before:.4f} -> {auto.map_after:.4f}"
        print(f"valid mAP@0.5: {auto.map50_before:.4f} -> {auto.map50_after:.4f}{both} (no finetune)")
    if report.latency is not None:
        lat = report.latency
        print(
            f"latency ({lat['runtime']}, {lat['threads']} threads): measured x{lat['measured_ratio']:.3f} "
            f"({lat['measured_ms_before']:.2f} -> {lat['measured_ms_after']:.2f} ms, {lat['runs']} interleaved runs each)"
        )
        steps = "; ".join(f"MACs x{a['macs_ratio']:.3f}: x{a['measured_ratio']:.3f}" for a in report.settings.get("latency_attempts", []))
        if steps:
            print(f"latency search (--latency-steps): {steps}")
    if report.folding is not None:
        print(
            f"folding, valid mAP@0.5: removed channels' γ set to 0 {report.folding['map50_zeroed_gamma']:.4f}, "
            f"compact model {report.folding['map50_compact']:.4f} (before BN re-calibration)"
        )
    print(f"time: plan {report.plan_seconds:.2f} s, apply {report.apply_seconds:.2f} s")
    print("wrote: " + ", ".join(str(p) for p in outcome.paths.values()))
    return 0
