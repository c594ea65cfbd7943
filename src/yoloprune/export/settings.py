"""How `export` writes a model: its defaults and checks, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.errors import SettingsError
from yoloprune.settings import check_img_size, is_whole, option, require

EXPORT_FORMATS = ("onnx", "darknet")
# Largest accepted difference between ONNX Runtime's and PyTorch's decoded outputs, with the box
# columns measured as a share of the input size and the probabilities as they are. An absolute
# tolerance on pixel coordinates would depend on the input size: float32 accumulation order alone
# moves a box by ~1e-3 px at 96 px on one CPU and more at 416 px.
PARITY_TOLERANCE = 1e-4
MIN_OPSET = 13  # the oldest opset the export is checked with
DEFAULT_CALIB_IMAGES = 256


@dataclass
class ExportSettings:
    out: str = option(help="output path (.onnx; for darknet the stem of .cfg/.weights)")
    format: str = option("onnx", choices=EXPORT_FORMATS, help="onnx (one file, parity-checked) or darknet (cfg + weights)")
    img_size: int | None = option(None, help="input size for ONNX, a multiple of 32", default_text="the cfg's width")
    opset: int = option(17, help=f"ONNX opset (>= {MIN_OPSET})")
    dynamic_batch: bool = option(False, help="ONNX: make the batch dimension dynamic")
    tolerance: float = option(
        PARITY_TOLERANCE,
        help="ONNX: largest difference from PyTorch allowed, boxes as a share of the input size, probabilities as they are",
    )
    int8: bool = option(
        False,
        help="ONNX: quantize to INT8 (ONNX Runtime static quantization, QDQ, calibrated on --calib-data); OUT is the INT8 "
        "model and the parity-checked float32 export it was made from is kept beside it (m.onnx -> m.fp32.onnx)",
    )
    calib_data: str | None = option(
        None, help="--int8: darknet .data file whose train images, letterboxed as eval reads them, calibrate the activation ranges",
    )
    calib_images: int = option(DEFAULT_CALIB_IMAGES, help="--int8: calibration images, drawn from the train list in a fixed shuffled order (all of it when shorter)")

    def __post_init__(self) -> None:
        require(self.format in EXPORT_FORMATS, "format", " or ".join(EXPORT_FORMATS), self.format)
        check_img_size(self.img_size)
        require(is_whole(self.opset) and self.opset >= MIN_OPSET, "opset", f">= {MIN_OPSET}", self.opset)
        require(self.tolerance >= 0, "tolerance", ">= 0", self.tolerance)
        require(is_whole(self.calib_images) and self.calib_images >= 1, "calib_images", "a whole number >= 1", self.calib_images)
        if self.int8 and self.format != "onnx":
            raise SettingsError("int8", f"quantizes the ONNX export: it needs `format` onnx, got {self.format}")
        if self.int8 and self.calib_data is None:
            raise SettingsError("calib_data", "required with `int8`: the .data file whose train images calibrate the INT8 activation ranges")
        if self.calib_data is not None and not self.int8:
            raise SettingsError("calib_data", "only used with `int8`")
