"""`yoloprune export`: ONNX (checked by ONNX Runtime) or darknet cfg + weights."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.export.settings import ExportSettings

    add_command(
        subparsers, "export", ExportSettings, run_export, model=True,
        help="export a model to ONNX (parity-checked) or darknet cfg + weights",
        description="ONNX: one file, the eval-mode output (decoded boxes), checked against PyTorch with "
        "ONNX Runtime (fails above --tolerance). darknet: OUT.cfg + OUT.weights, loadable by OpenCV DNN.",
    )


def run_export(args: argparse.Namespace) -> int:
    from yoloprune.darknet.weights import load_model
    from yoloprune.export.settings import ExportSettings

    settings = from_arguments(ExportSettings, args)
    model = load_model(args.cfg, args.weights).eval()
    if settings.format == "darknet":
        from yoloprune.export.darknet import export_darknet

        cfg_path, weights_path = export_darknet(model, settings.out)
        print(f"wrote {cfg_path} and {weights_path}")
        return 0
    from yoloprune.export.onnx import export_onnx

    img_size = settings.img_size or model.cfg.net.width
    result = export_onnx(model, settings.out, img_size, settings.opset, settings.dynamic_batch, tolerance=settings.tolerance)
    print(f"wrote {result.path} (opset {result.opset}, input 1x3x{img_size}x{img_size}"
          f"{', dynamic batch' if result.dynamic_batch else ''}); parity error vs PyTorch: {result.parity_error:.2e} (boxes / input size)")
    return 0
