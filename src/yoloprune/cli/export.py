"""`yoloprune export`: ONNX (checked by ONNX Runtime) or darknet cfg + weights."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model to ONNX (parity-checked) or darknet cfg + weights",
        description="ONNX: one file, the eval-mode output (decoded boxes), checked against PyTorch with "
        "ONNX Runtime (fails above --tolerance). darknet: OUT.cfg + OUT.weights, loadable by OpenCV DNN.",
    )
    parser.add_argument("--cfg", help="darknet .cfg (optional when --weights is a .pt)")
    parser.add_argument("--weights", required=True, help="darknet .weights or yoloprune .pt")
    parser.add_argument("--format", choices=("onnx", "darknet"), default="onnx")
    parser.add_argument("--out", required=True, help="output path (.onnx; for darknet the stem of .cfg/.weights)")
    parser.add_argument("--img-size", type=int, default=None, help="input size for ONNX (default: the cfg's width)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13, default 17)")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: make the batch dimension dynamic")
    parser.add_argument(
        "--tolerance", type=float, default=None,
        help="ONNX: largest difference from PyTorch allowed, boxes as a share of the input size, probabilities "
        "as they are (default: export.onnx.PARITY_TOLERANCE, 1e-4)",
    )
    parser.set_defaults(func=run_export)


def run_export(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.errors import ExportError

    model = load_model(args.cfg, args.weights).eval()
    if args.format == "darknet":
        from yoloprune.export.darknet import export_darknet

        cfg_path, weights_path = export_darknet(model, args.out)
        print(f"wrote {cfg_path} and {weights_path}")
        return 0
    from yoloprune.export.onnx import PARITY_TOLERANCE, export_onnx

    if args.opset < 13:
        raise ExportError(f"--opset must be >= 13, got {args.opset}")
    img_size = args.img_size or model.cfg.net.width
    if img_size % 32:
        raise ExportError(f"--img-size must be a multiple of 32, got {img_size}")
    result = export_onnx(model, args.out, img_size, args.opset, args.dynamic_batch, tolerance=PARITY_TOLERANCE if args.tolerance is None else args.tolerance)
    print(f"wrote {result.path} (opset {result.opset}, input 1x3x{img_size}x{img_size}"
          f"{', dynamic batch' if result.dynamic_batch else ''}); parity error vs PyTorch: {result.parity_error:.2e} (boxes / input size)")
    return 0
