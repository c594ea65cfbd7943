"""`yoloprune prune`: channel and layer pruning of a (sparse-trained) model, output as darknet cfg + weights."""

from __future__ import annotations

import argparse


def _layers_value(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block count or 'auto', got {text!r}") from None


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove low-|γ| channels and residual blocks; write pruned.cfg/.weights/.pt, plan.json, report.json",
        description="Network slimming: rank BN channels by |γ|, remove those under a global threshold (or "
        "as many as a FLOPs/params budget allows), optionally remove whole residual blocks, fold each "
        "removed channel's constant output into the layers that read it, and write the compact model as "
        "a darknet cfg + weights (plus a .pt checkpoint), with the plan in OUT/plan.json. "
        "Everything is written into a hidden folder beside OUT that replaces OUT only once complete, so "
        "an interrupted run leaves OUT as it was. An existing OUT is replaced as a whole, and only if it "
        "holds nothing but a previous run's files (plan.json, pruned.cfg, pruned.weights, pruned.pt, "
        "report.json, channels.png); otherwise prune refuses before doing any work.",
    )
    parser.add_argument("--cfg", help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    parser.add_argument("--weights", required=True, help="darknet .weights or yoloprune .pt of the model to prune")
    parser.add_argument(
        "--out", required=True,
        help="output folder; an existing one is replaced as a whole, and only if it holds just a previous prune's files",
    )
    parser.add_argument(
        "--mode",
        choices=("safe", "full"),
        default="full",
        help="safe: the classic rule (no conv feeding a shortcut, none before an upsample); "
        "full: every BN conv, shortcut-coupled convs pruned together (default)",
    )
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, help="fraction of candidate channels to remove, lowest |γ| first (e.g. 0.85)")
    amount.add_argument("--threshold", type=float, help="remove candidate channels with |γ| below this value")
    amount.add_argument("--target-flops", type=float, help="keep this fraction of the MACs (budget search, within 1%%)")
    amount.add_argument("--target-params", type=float, help="keep this fraction of the parameters (budget search, within 1%%)")
    amount.add_argument(
        "--max-map-drop",
        type=float,
        help="with --data: the most pruning whose valid mAP@0.5 stays within this of the unpruned model "
        "(bisection); an error naming the closest trial if removing the --layers blocks alone drops more",
    )
    parser.add_argument("--min-keep", type=float, default=1, help="channels each conv keeps at least: a fraction (< 1) or a count (default 1)")
    parser.add_argument("--round", dest="round_to", type=int, default=1, help="round kept channel counts up to a multiple of this (e.g. 8)")
    parser.add_argument(
        "--layers", type=_layers_value, default=0,
        help="also remove this many residual blocks (lowest mean |γ| of their second conv); "
        "'auto' with --max-map-drop: as many as keep mAP@0.5 within half the tolerance",
    )
    parser.add_argument(
        "--calibrate", type=int, default=None,
        help="recompute BN statistics of the pruned model on this many training images (default 256 with --data, else 0; 0 = off)",
    )
    parser.add_argument("--data", help="dataset .data file (for --calibrate and --max-map-drop)")
    parser.add_argument("--img-size", type=int, default=None, help="input size for MAC counts, calibration and evaluation (default: the cfg's width)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch for --calibrate / --max-map-drop (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--auto-steps", type=int, default=7, help="evaluations of the --max-map-drop bisection (default 7)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--plan-only", action="store_true", help="write just OUT/plan.json and print the plan, prune nothing")
    parser.set_defaults(func=run_prune)


def run_prune(args: argparse.Namespace) -> int:
    from dataclasses import fields

    from yoloprune.darknet.weights import load_model
    from yoloprune.prune.run import PruneSettings, run_pruning

    settings = PruneSettings(**{f.name: getattr(args, f.name) for f in fields(PruneSettings)})
    settings.validate()
    model = load_model(args.cfg, args.weights, settings.torch_device()).eval()
    outcome = run_pruning(model, settings, args.out, source=str(args.weights))
    print(outcome.plan.summary())
    if outcome.report is None:
        print(f"plan: {outcome.paths['plan.json']}")
        return 0
    report = outcome.report
    print(
        f"pruned: params {report['params_before']:,} -> {report['params_after']:,} (x{report['params_ratio']:.3f}), "
        f"MACs@{report.get('img_size', '')} {report['macs_before'] / 1e9:.3f} G -> {report['macs_after'] / 1e9:.3f} G (x{report['macs_ratio']:.3f})"
    )
    if outcome.auto is not None:
        print(f"mAP@0.5: {outcome.auto.map50_before:.4f} -> {outcome.auto.map50_after:.4f} (no finetune)")
    print(f"time: plan {report['plan_seconds']:.2f} s, apply {report['apply_seconds']:.2f} s")
    print("wrote: " + ", ".join(str(p) for p in outcome.paths.values()))
    return 0
