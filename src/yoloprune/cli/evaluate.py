"""`yoloprune eval`: COCO-protocol mAP of a model on a dataset split;
`yoloprune detect`: draw a model's detections on images."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.eval.settings import DetectSettings, EvalSettings

    evaluate = add_command(
        subparsers, "eval", EvalSettings, run_eval, model=True,
        help="mAP@0.5, mAP@0.5:0.95, precision, recall on a split of a .data (COCO protocol)",
        description="Evaluate a model on an image list of a .data file (--split; default test when the .data has one, else valid) with "
        "faster-coco-eval (COCO protocol: 101-point AP, 100 detections per image). Precision and recall "
        "are the best-F1 point of the IoU-0.5 precision-recall curve, averaged over classes. The model runs in PyTorch "
        "(.pt or darknet .weights), ONNX Runtime (--weights an .onnx from export) or OpenCV DNN (--backend opencv, "
        "--cfg and darknet .weights); letterboxing, NMS and scoring are the same for all three.",
        weights_help="darknet .weights, yoloprune .pt, or an .onnx written by export",
    )
    evaluate.add_argument("--json", action="store_true", help="print one JSON object: backend, runtime, map50, map, precision, recall, images, ...")

    add_command(
        subparsers, "detect", DetectSettings, run_detect, model=True,
        help="draw a model's detections on an image or a folder of images",
        description="Letterbox each image, run the model and NMS, and write the image with its boxes and "
        "scores drawn to --out under the same file name.",
    )


def run_eval(args: argparse.Namespace) -> int:
    from yoloprune.eval.bootstrap import format_with_interval
    from yoloprune.eval.runtimes import describe_runtime, load_eval_model, native_input_size, resolve_backend
    from yoloprune.eval.settings import EvalSettings
    from yoloprune.eval.validator import Validator
    from yoloprune.settings import resolve_device

    settings = from_arguments(EvalSettings, args)
    backend = resolve_backend(args.cfg, args.weights, settings.backend)  # a bad combination stops before the data is read
    model = load_eval_model(args.cfg, args.weights, backend, resolve_device(settings.device), settings.img_size)
    if settings.img_size is None:  # the size the model was built for: scoring at another one is a different model
        settings = replace(settings, img_size=native_input_size(model))
    validator = Validator(settings)
    runtime = describe_runtime(model, validator.device)
    metrics = validator(model)
    if args.json:
        print(json.dumps({"backend": backend, "runtime": runtime, **metrics.to_dict()}))
        return 0
    print(f"data:          {validator.spec.path} ({validator.split}: {validator.list_file})")
    print(f"model:         {args.weights}" + (f"  cfg {args.cfg}" if args.cfg else ""))
    print(f"runtime:       {backend}: {runtime}")
    print(f"images:        {metrics.images}   ground truths: {metrics.ground_truths}   detections: {metrics.detections}")
    print(f"mAP@0.5:       {format_with_interval(metrics.map50, metrics.map50_ci)}{_interval_text(metrics.map50_ci)}")
    print(f"mAP@0.5:0.95:  {format_with_interval(metrics.map, metrics.map_ci)}{_interval_text(metrics.map_ci)}")
    print(f"precision:     {metrics.precision:.4f}   recall: {metrics.recall:.4f}   F1: {metrics.f1:.4f}  (best-F1 point, IoU 0.5)")
    print(f"AR@100:        {metrics.ar100:.4f}")
    return 0


def _interval_text(interval) -> str:
    return "" if interval is None else f"   (95 % bootstrap interval over images: {interval[0]:.4f} to {interval[1]:.4f})"


def run_detect(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.data.spec import read_class_names
    from yoloprune.eval.detect import detect_images, name_class
    from yoloprune.eval.settings import DetectSettings
    from yoloprune.settings import resolve_device

    settings = from_arguments(DetectSettings, args)
    device = resolve_device(settings.device)
    class_names = read_class_names(settings.names) if settings.names else None
    model = load_model(args.cfg, args.weights, device)
    img_size = settings.img_size or model.cfg.net.width
    results = detect_images(model, settings.source, settings.out, img_size, settings.conf, settings.iou, device, class_names)
    for result in results:
        summary = ", ".join(f"{name_class(int(cls), class_names)} {score:.2f}" for *_, score, cls in result.detections[:5])
        more = f", +{len(result.detections) - 5} more" if len(result.detections) > 5 else ""
        print(f"{result.source_path}: {len(result.detections)} detections{': ' + summary + more if summary else ''} -> {result.output_path}")
    return 0
