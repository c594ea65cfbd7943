"""`yoloprune eval`: COCO-protocol mAP of a model on a dataset's valid list;
`yoloprune detect`: draw a model's detections on images."""

from __future__ import annotations

import argparse
import json


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cfg", "--model_def", dest="cfg", help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    parser.add_argument("--weights", "--weights_path", dest="weights", required=True, help="darknet .weights or yoloprune .pt")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, or auto (cuda when available; default)")


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "eval",
        help="mAP@0.5, mAP@0.5:0.95, precision, recall on the valid list of a .data (COCO protocol)",
        description="Evaluate a model on the `valid` image list of a .data file with faster-coco-eval "
        "(COCO protocol: 101-point AP, 100 detections per image). Precision and recall are the best-F1 "
        "point of the IoU-0.5 precision-recall curve, averaged over classes.",
    )
    _add_model_arguments(evaluate)
    evaluate.add_argument("--data", "--data_config", dest="data", required=True, help="dataset .data file")
    evaluate.add_argument("--img-size", "--img_size", dest="img_size", type=int, default=416, help="square input size, a multiple of 32 (default 416)")
    evaluate.add_argument("--batch", "--batch_size", dest="batch", type=int, default=8, help="images per batch (default 8)")
    evaluate.add_argument("--conf", "--conf_thres", dest="conf", type=float, default=0.001, help="score threshold before NMS (default 0.001)")
    evaluate.add_argument("--iou", "--nms_thres", dest="iou", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    evaluate.add_argument("--workers", type=int, default=0, help="data loader worker processes (default 0)")
    evaluate.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and bad label files instead of stopping")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object: map50, map, precision, recall, images, ...")
    evaluate.set_defaults(func=run_eval)

    detect = subparsers.add_parser(
        "detect",
        help="draw a model's detections on an image or a folder of images",
        description="Letterbox each image, run the model and NMS, and write the image with its boxes and "
        "scores drawn to --out under the same file name.",
    )
    _add_model_arguments(detect)
    detect.add_argument("--source", required=True, help="an image file or a folder of images")
    detect.add_argument("--out", required=True, help="output folder (must not be the source folder)")
    detect.add_argument("--img-size", "--img_size", dest="img_size", type=int, default=416, help="square input size, a multiple of 32 (default 416)")
    detect.add_argument("--conf", "--conf_thres", dest="conf", type=float, default=0.25, help="score threshold (default 0.25)")
    detect.add_argument("--iou", "--nms_thres", dest="iou", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    detect.add_argument("--names", help="class names file (one a line) for the labels; default: class ids")
    detect.set_defaults(func=run_detect)


def _check_common(args: argparse.Namespace) -> None:
    from yoloprune.errors import YoloPruneError

    if args.img_size <= 0 or args.img_size % 32:
        raise YoloPruneError(f"--img-size must be a positive multiple of 32, got {args.img_size}")
    if not 0.0 <= args.conf <= 1.0 or not 0.0 <= args.iou <= 1.0:
        raise YoloPruneError(f"--conf and --iou must lie in [0, 1], got {args.conf} and {args.iou}")


def _resolve_device(name: str):
    import torch

    from yoloprune.errors import YoloPruneError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise YoloPruneError(f"--device {name!r} is not a device name (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise YoloPruneError(f"--device {name}: CUDA is not available on this machine")
    return device


def run_eval(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.data.dataset import create_dataloader, load_data_spec
    from yoloprune.errors import DataError, YoloPruneError
    from yoloprune.eval.evaluate import evaluate_model

    _check_common(args)
    if args.batch <= 0 or args.workers < 0:
        raise YoloPruneError(f"--batch must be positive and --workers non-negative, got {args.batch} and {args.workers}")
    device = _resolve_device(args.device)
    spec = load_data_spec(args.data)
    model = load_model(args.cfg, args.weights, device)
    if model.num_classes != spec.classes:
        raise DataError(f"dataset has {spec.classes} classes, the model ({args.cfg or args.weights}) predicts {model.num_classes}", spec.path)
    loader = create_dataloader(
        spec.valid, args.img_size, args.batch, augment=False, workers=args.workers, shuffle=False,
        skip_bad=args.skip_bad, num_classes=spec.classes, pin_memory=device.type == "cuda",
    )
    metrics = evaluate_model(model, loader, conf_thres=args.conf, iou_thres=args.iou, device=device, progress=True)
    if args.json:
        print(json.dumps(metrics.to_dict()))
        return 0
    print(f"data:          {spec.path} (valid: {spec.valid})")
    print(f"model:         {args.weights}" + (f"  cfg {args.cfg}" if args.cfg else ""))
    print(f"images:        {metrics.images}   ground truths: {metrics.ground_truths}   detections: {metrics.detections}")
    print(f"mAP@0.5:       {metrics.map50:.4f}")
    print(f"mAP@0.5:0.95:  {metrics.map:.4f}")
    print(f"precision:     {metrics.precision:.4f}   recall: {metrics.recall:.4f}   F1: {metrics.f1:.4f}  (best-F1 point, IoU 0.5)")
    print(f"AR@100:        {metrics.ar100:.4f}")
    return 0


def run_detect(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.data.spec import read_class_names
    from yoloprune.eval.detect import detect_images, name_class

    _check_common(args)
    device = _resolve_device(args.device)
    class_names = read_class_names(args.names) if args.names else None
    model = load_model(args.cfg, args.weights, device)
    count = 0
    for result in detect_images(model, args.source, args.out, args.img_size, args.conf, args.iou, device, class_names):
        count += 1
        summary = ", ".join(
            f"{name_class(int(cls), class_names)} {score:.2f}"
            for *_, score, cls in result.detections[:5]
        )
        more = f", +{len(result.detections) - 5} more" if len(result.detections) > 5 else ""
        print(f"{result.source_path}: {len(result.detections)} detections{': ' + summary + more if summary else ''} -> {result.output_path}")
    return 0
