"""`yoloprune data {oxford-hand,synth,check,show}`: make, validate and look at YOLO datasets."""

from __future__ import annotations

import argparse
import time


def _oxford_hand(args: argparse.Namespace) -> int:
    from yoloprune.data.oxford_hand import convert_oxford_hand

    summary = convert_oxford_hand(args.src, args.out, skip_bad=args.skip_bad)
    print(summary.format())
    return 0


def _synth(args: argparse.Namespace) -> int:
    from yoloprune.data.synth import generate_synthetic_dataset

    start = time.perf_counter()
    data_path = generate_synthetic_dataset(
        args.out, n_train=args.train, n_val=args.val, img_size=args.img_size, seed=args.seed,
        max_hands=args.max_hands, min_hand_scale=args.min_hand_scale,
    )
    seconds = time.perf_counter() - start
    total = args.train + args.val
    print(f"wrote {args.train} train + {args.val} val images ({total / max(seconds, 1e-9):.0f} images/s)")
    print(f"dataset spec: {data_path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from yoloprune.data.check import check_dataset

    report = check_dataset(args.data, skip_bad=args.skip_bad, decode_images=not args.no_decode)
    print(report.format())
    return 1 if report.problems else 0


def _show(args: argparse.Namespace) -> int:
    from yoloprune.data.show import render_sample_grid

    out = render_sample_grid(
        args.data,
        args.out,
        split=args.split,
        count=args.count,
        columns=args.columns,
        img_size=args.img_size,
        augment=args.augment,
        seed=args.seed,
        skip_bad=args.skip_bad,
        mosaic=args.mosaic,
    )
    print(f"wrote {out}")
    return 0


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _img_size(text: str) -> int:
    value = int(text)
    if value < 32 or value % 32:
        raise argparse.ArgumentTypeError(f"must be a positive multiple of 32, got {value}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser("data", help="make, check and view YOLO datasets")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    oxford = commands.add_parser(
        "oxford-hand",
        help="convert Oxford Hand (.mat annotations) to a YOLO dataset",
        description="Convert hand_dataset/{training,validation,test}_dataset to YOLO format: "
        "train = training + validation, valid = test.",
    )
    oxford.add_argument("src", help="the hand_dataset folder (or its parent)")
    oxford.add_argument("out", help="output dataset folder")
    oxford.add_argument("--skip-bad", action="store_true", help="log and skip unreadable images / .mat files")
    oxford.set_defaults(func=_oxford_hand)

    synth = commands.add_parser(
        "synth",
        help="generate the synthetic hand-detection dataset",
        description="Write a deterministic synthetic hand dataset (same seed -> identical files).",
    )
    synth.add_argument("out", help="output dataset folder")
    synth.add_argument("--train", type=_non_negative_int, default=1000, help="training images (default 1000)")
    synth.add_argument("--val", type=_non_negative_int, default=200, help="validation images (default 200)")
    synth.add_argument("--img-size", type=_img_size, default=256, help="image side in pixels (default 256)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--max-hands", type=int, default=6, help="most hands in one image (default 6)")
    synth.add_argument("--min-hand-scale", type=float, default=0.05,
                       help="smallest hand box side as a share of the image (default 0.05; larger = easier)")
    synth.set_defaults(func=_synth)

    check = commands.add_parser(
        "check",
        help="validate a dataset and print a report",
        description="Check that every listed image decodes and every label line is valid. "
        "Exit 0 when clean; the first problem is an error (exit 2) unless --skip-bad, "
        "which lists every problem and exits 1 if there are any.",
    )
    check.add_argument("data", help="the .data file")
    check.add_argument("--skip-bad", action="store_true", help="report every problem instead of stopping at the first")
    check.add_argument("--no-decode", action="store_true", help="do not decode images (faster; checks labels only)")
    check.set_defaults(func=_check)

    show = commands.add_parser("show", help="draw a grid of samples with their boxes into a PNG")
    show.add_argument("data", help="the .data file")
    show.add_argument("--out", required=True, help="output PNG path")
    show.add_argument("--split", choices=("train", "valid"), default="train")
    show.add_argument("--count", type=_at_least_one, default=16, help="samples to draw (default 16)")
    show.add_argument("--columns", type=_at_least_one, default=4, help="grid columns (default 4)")
    show.add_argument("--img-size", type=_img_size, default=256, help="letterbox size (default 256)")
    show.add_argument("--augment", action="store_true", help="show training augmentation")
    show.add_argument("--mosaic", type=float, default=0.0, help="mosaic probability with --augment")
    show.add_argument("--seed", type=int, default=0)
    show.add_argument("--skip-bad", action="store_true", help="log and skip bad images / labels")
    show.set_defaults(func=_show)
