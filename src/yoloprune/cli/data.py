"""`yoloprune data {voc,coco,yolo,oxford-hand,synth,check,show,anchors}`: import, make, validate and
look at YOLO datasets, and fit a cfg's anchors to one."""

from __future__ import annotations

import argparse
import time

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def _oxford_hand(args: argparse.Namespace) -> int:
    from yoloprune.data.oxford_hand import convert_oxford_hand

    summary = convert_oxford_hand(args.src, args.out, skip_bad=args.skip_bad, reference_split=args.reference_split)
    print(summary.format())
    return 0


def _import(args: argparse.Namespace) -> int:
    settings = from_arguments(args.settings_class, args)
    start = time.perf_counter()
    summary = settings.run()
    print(summary.format())
    print(f"imported in {time.perf_counter() - start:.1f} s; check it with: yoloprune data check {summary.data_path}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from yoloprune.data.settings import SynthSettings

    settings = from_arguments(SynthSettings, args)
    start = time.perf_counter()
    data_path = settings.generate()
    seconds = time.perf_counter() - start
    counts = f"{settings.train} train + {settings.val} val" + (f" + {settings.test} test" if settings.test else "")
    total = settings.train + settings.val + settings.test
    print(f"wrote {counts} images ({total / max(seconds, 1e-9):.0f} images/s)")
    print(f"dataset spec: {data_path}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from yoloprune.data.check import check_dataset

    report = check_dataset(args.data, skip_bad=args.skip_bad, decode_images=not args.no_decode)
    print(report.format())
    return 1 if report.problems else 0


def _show(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from yoloprune.data.settings import ShowSettings
    from yoloprune.data.show import render_sample_grid

    options = asdict(from_arguments(ShowSettings, args))
    out = render_sample_grid(options.pop("data"), options.pop("out"), **options)
    print(f"wrote {out}")
    return 0


def _anchors(args: argparse.Namespace) -> int:
    from yoloprune.data.anchors import run_anchor_fit
    from yoloprune.data.settings import AnchorSettings

    settings = from_arguments(AnchorSettings, args)
    print(run_anchor_fit(settings).format())
    if settings.out:
        print(f"wrote {settings.out}")
    return 0


IMPORT_COMMON = (
    "Boxes reaching past the image are clipped to it, degenerate ones (no width or height) skipped; "
    "both are counted with the files named (import.txt in OUT names them all). A malformed file, a missing "
    "image or a --classes name the dataset lacks stops the import with one line naming the file, and OUT is "
    "left as it was: the dataset is built beside it and renamed into place when complete. An existing OUT is "
    "replaced only if it holds nothing but a previous import. The source is only read."
)


def _register_importers(commands) -> None:
    from yoloprune.data.settings import CocoImportSettings, VocImportSettings, YoloImportSettings

    add_command(
        commands, "voc", VocImportSettings, _import, help="import a Pascal VOC dataset (LabelImg's XML)",
        description="Import ROOT/Annotations/*.xml with ROOT/JPEGImages/. The split published in "
        "ImageSets/Main/{train,val,test}.txt is kept; without train.txt and val.txt there the images are split "
        "by --fractions. Boxes: VOC's 1-based inclusive pixel corners, [xmin - 1, xmax] in image coordinates; "
        "difficult boxes are kept as ordinary boxes (and counted). " + IMPORT_COMMON,
    )
    add_command(
        commands, "coco", CocoImportSettings, _import, help="import a COCO instances .json and its images",
        description="Import a COCO instances file (bbox [x, y, width, height] in pixels from the top-left "
        "corner; classes = the categories in id order) with the folder its file_name entries are relative "
        "to, split by --fractions. Crowd regions (iscrowd 1), which COCO's evaluation ignores, are dropped and "
        "counted: the labels here have no ignore flag. " + IMPORT_COMMON,
    )
    add_command(
        commands, "yolo", YoloImportSettings, _import, help="import an Ultralytics / Roboflow YOLO dataset (data.yaml)",
        description="Import the train / val / test splits a data.yaml names, as published. A split folder "
        "written in the yaml that does not exist (an absolute path of another machine) is looked up by its "
        "trailing components beside the yaml (e.g. valid/images), and the summary says which folder was "
        "used. " + IMPORT_COMMON,
    )


def register(subparsers) -> None:
    from yoloprune.data.settings import AnchorSettings, ShowSettings, SynthSettings

    parser = subparsers.add_parser("data", help="import, make, check and view YOLO datasets")
    commands = parser.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")
    _register_importers(commands)

    oxford = commands.add_parser(
        "oxford-hand",
        help="convert Oxford Hand (.mat annotations) to a YOLO dataset",
        description="Convert hand_dataset/{training,validation,test}_dataset to YOLO format, keeping the "
        "official splits: train = training, valid = validation (model selection), test = test (held out "
        "for the reported scores). --reference-split writes the Oxford Hand reference project's split instead.",
    )
    oxford.add_argument("src", help="the hand_dataset folder (or its parent)")
    oxford.add_argument("out", help="output dataset folder")
    oxford.add_argument("--skip-bad", action="store_true", help="log and skip unreadable images / .mat files")
    oxford.add_argument(
        "--reference-split", action="store_true",
        help="the reference project's split, for comparable numbers: train = training + validation, "
        "valid = test, no test split (the reference selects and reports on the same images, so its "
        "scores are optimistic)",
    )
    oxford.set_defaults(func=_oxford_hand)

    add_command(
        commands, "synth", SynthSettings, _synth,
        help="generate the synthetic hand-detection dataset",
        description="Write a deterministic synthetic hand dataset (same seed -> identical files).",
    )

    check = commands.add_parser(
        "check",
        help="validate a dataset and print a report",
        description="Check that every listed image of every split (train, valid, and test when the .data "
        "has one) decodes and every label line is valid. "
        "Exit 0 when clean; the first problem is an error (exit 2) unless --skip-bad, "
        "which lists every problem and exits 1 if there are any.",
    )
    check.add_argument("data", help="the .data file")
    check.add_argument("--skip-bad", action="store_true", help="report every problem instead of stopping at the first")
    check.add_argument("--no-decode", action="store_true", help="do not decode images (faster; checks labels only)")
    check.set_defaults(func=_check)

    add_command(
        commands, "show", ShowSettings, _show, help="draw a grid of samples with their boxes into a PNG",
        description="Draw the first samples of a split (or augmented draws with --augment) with their boxes into one PNG.",
    )

    add_command(
        commands, "anchors", AnchorSettings, _anchors, help="fit anchors to a dataset's boxes and write them into a cfg",
        description="Cluster the boxes of a split, letterboxed to the input size, into anchors (k-means with 1 - IoU "
        "as the distance, as darknet's calc_anchors), print them with their mean best IoU (and the cfg's own "
        "anchors' for comparison), and with --out write the cfg with every [yolo] layer's anchors replaced.",
    )
