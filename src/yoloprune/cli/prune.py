"""`yoloprune prune`: channel and layer pruning of a (sparse-trained) model, output as darknet cfg + weights."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "prune",
        help="remove low-|γ| channels and residual blocks; write pruned.cfg/.weights/.pt, plan.json, report.json",
        description="Network slimming: rank BN channels by |γ|, remove those under a global threshold (or "
        "as many as a FLOPs/params budget allows), optionally remove whole residual blocks, fold each "
        "removed channel's constant output into the layers that read it, and write the compact model as "
        "a darknet cfg + weights (plus a .pt checkpoint). The plan is written to OUT/plan.json first.",
    )
    parser.add_argument("--cfg", help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    parser.add_argument("--weights", required=True, help="darknet .weights or yoloprune .pt of the model to prune")
    parser.add_argument("--out", required=True, help="output folder")
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
        help="with --data: the most pruning whose valid mAP@0.5 stays within this of the unpruned model (bisection)",
    )
    parser.add_argument("--min-keep", type=float, default=1, help="channels each conv keeps at least: a fraction (< 1) or a count (default 1)")
    parser.add_argument("--round", dest="round_to", type=int, default=1, help="round kept channel counts up to a multiple of this (e.g. 8)")
    parser.add_argument("--layers", type=int, default=0, help="also remove this many residual blocks (lowest mean |γ| of their second conv)")
    parser.add_argument("--calibrate", type=int, default=0, help="recompute BN statistics of the pruned model on this many training images (needs --data)")
    parser.add_argument("--data", help="dataset .data file (for --calibrate and --max-map-drop)")
    parser.add_argument("--img-size", type=int, default=None, help="input size for MAC counts, calibration and evaluation (default: the cfg's width)")
    parser.add_argument("--batch", type=int, default=8, help="images per batch for --calibrate / --max-map-drop (default 8)")
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    parser.add_argument("--auto-steps", type=int, default=7, help="evaluations of the --max-map-drop bisection (default 7)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N (default cpu)")
    parser.add_argument("--plan-only", action="store_true", help="write OUT/plan.json and print it, change nothing")
    parser.set_defaults(func=run_prune)


def _check_arguments(args: argparse.Namespace) -> None:
    from yoloprune.errors import YoloPruneError

    def fail(message: str) -> None:
        raise YoloPruneError(message)

    if args.ratio is not None and not 0 <= args.ratio <= 1:
        fail(f"--ratio must lie in [0, 1], got {args.ratio}")
    for name in ("target_flops", "target_params"):
        value = getattr(args, name)
        if value is not None and not 0 < value <= 1:
            fail(f"--{name.replace('_', '-')} must lie in (0, 1], got {value}")
    if args.threshold is not None and args.threshold < 0:
        fail(f"--threshold must be >= 0, got {args.threshold}")
    if args.max_map_drop is not None and (args.max_map_drop < 0 or not args.data):
        fail("--max-map-drop needs a non-negative value and --data")
    if args.min_keep < 0 or (args.min_keep >= 1 and args.min_keep != int(args.min_keep)):
        fail(f"--min-keep must be a fraction in [0, 1) or a whole count, got {args.min_keep}")
    if args.round_to < 1 or args.layers < 0 or args.calibrate < 0 or args.batch < 1 or args.auto_steps < 1:
        fail("--round, --batch and --auto-steps must be >= 1; --layers and --calibrate >= 0")
    if args.calibrate and not args.data:
        fail("--calibrate needs --data (its training images)")
    if args.img_size is not None and (args.img_size <= 0 or args.img_size % 32):
        fail(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    nothing = all(getattr(args, k) is None for k in ("ratio", "threshold", "target_flops", "target_params", "max_map_drop"))
    if nothing and not args.layers:
        fail("say how much to prune: --ratio, --threshold, --target-flops, --target-params, --max-map-drop or --layers")


def run_prune(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    import torch

    from yoloprune.darknet.weights import load_model
    from yoloprune.errors import YoloPruneError
    from yoloprune.prune.apply import prune_model
    from yoloprune.prune.channel import plan_channel_prune
    from yoloprune.prune.layer import plan_layer_prune
    from yoloprune.prune.report import write_prune_outputs

    _check_arguments(args)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise YoloPruneError(f"--device {args.device!r} is not a device name") from None
    out_dir = Path(args.out)
    model = load_model(args.cfg, args.weights, device).eval()
    img_size = args.img_size or model.cfg.net.width
    start = time.perf_counter()
    blocks = plan_layer_prune(model, args.layers)
    common = dict(min_keep=args.min_keep, round_to=args.round_to, img_size=img_size, removed_blocks=blocks)
    auto_result = None
    if args.max_map_drop is not None:
        from yoloprune.prune.auto import make_map50_evaluator, search_max_pruning

        evaluate = make_map50_evaluator(args.data, img_size, args.batch, device, args.workers)
        recalibrate = _make_recalibrator(args, img_size, device) if args.calibrate else None
        auto_result = search_max_pruning(model, evaluate, args.max_map_drop, args.mode, steps=args.auto_steps, recalibrate=recalibrate, **common)
        plan = auto_result.plan
    else:
        plan = plan_channel_prune(
            model, args.mode, ratio=args.ratio, threshold=args.threshold, target_flops=args.target_flops, target_params=args.target_params, **common
        )
    plan.settings["source"] = str(args.weights)
    plan_seconds = time.perf_counter() - start
    plan.save(out_dir / "plan.json")
    print(plan.summary())
    if args.plan_only:
        print(f"plan: {out_dir / 'plan.json'}")
        return 0
    pruned, report = prune_model(model, plan)
    report["plan_seconds"] = plan_seconds
    if args.calibrate:
        report["calibrated_images"] = _make_recalibrator(args, img_size, device)(pruned)
    if auto_result is not None:
        report["auto"] = auto_result.to_dict()
    paths = write_prune_outputs(out_dir, pruned, report, plan)
    print(
        f"pruned: params {report['params_before']:,} -> {report['params_after']:,} (x{report['params_ratio']:.3f}), "
        f"MACs@{img_size} {report['macs_before'] / 1e9:.3f} G -> {report['macs_after'] / 1e9:.3f} G (x{report['macs_ratio']:.3f})"
    )
    if auto_result is not None:
        print(f"mAP@0.5: {auto_result.map50_before:.4f} -> {auto_result.map50_after:.4f} (no finetune)")
    print(f"time: plan {plan_seconds:.2f} s, apply {report['apply_seconds']:.2f} s")
    print("wrote: " + ", ".join(str(p) for p in [out_dir / "plan.json", *paths.values()]))
    return 0


def _make_recalibrator(args: argparse.Namespace, img_size: int, device):
    from yoloprune.data.dataset import create_dataloader, load_data_spec
    from yoloprune.prune.calibrate import recalibrate_batchnorm

    spec = load_data_spec(args.data)

    def recalibrate(model) -> int:
        loader = create_dataloader(spec.train, img_size, args.batch, augment=False, workers=args.workers, shuffle=True, skip_bad=True, seed=0)
        return recalibrate_batchnorm(model, loader, args.calibrate, device)

    return recalibrate
