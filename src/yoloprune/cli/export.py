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
        "ONNX Runtime (fails above --tolerance). With --int8 OUT is that model statically quantized by ONNX Runtime "
        "(QDQ; activations uint8, weights int8 per channel; the head convs and box decoding stay float32), its activation "
        "ranges calibrated on --calib-images train images of --calib-data; the float32 model stays beside it as "
        "OUT's stem + .fp32.onnx. darknet: OUT.cfg + OUT.weights, loadable by OpenCV DNN.",
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
    img_size = settings.img_size or model.cfg.net.width
    if settings.int8:
        return _export_int8(model, settings, img_size)
    from yoloprune.export.onnx import export_onnx

    result = export_onnx(model, settings.out, img_size, settings.opset, settings.dynamic_batch, tolerance=settings.tolerance)
    print(_wrote_onnx(result, img_size))
    return 0


def _export_int8(model, settings, img_size: int) -> int:
    from yoloprune.export.quantize import export_int8

    result = export_int8(
        model, settings.out, settings.calib_data, img_size, settings.calib_images, settings.opset, settings.dynamic_batch, settings.tolerance,
    )
    print(_wrote_onnx(result.fp32, img_size))
    fp32_mb, int8_mb = result.fp32.path.stat().st_size / 1e6, result.path.stat().st_size / 1e6
    print(f"wrote {result.path} (INT8, QDQ, calibrated on {result.calibration_images} image(s); {result.float_nodes} head and decode "
          f"nodes left float32); {fp32_mb:.2f} MB -> {int8_mb:.2f} MB")
    return 0


def _wrote_onnx(result, img_size: int) -> str:
    return (f"wrote {result.path} (opset {result.opset}, input 1x3x{img_size}x{img_size}"
            f"{', dynamic batch' if result.dynamic_batch else ''}); parity error vs PyTorch: {result.parity_error:.2e} (boxes / input size)")
