"""How `export` writes a model: its defaults and checks, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.settings import check_img_size, is_whole, option, require

EXPORT_FORMATS = ("onnx", "darknet")
# Largest accepted difference between ONNX Runtime's and PyTorch's decoded outputs, with the box
# columns measured as a share of the input size and the probabilities as they are. An absolute
# tolerance on pixel coordinates would depend on the input size: float32 accumulation order alone
# moves a box by ~1e-3 px at 96 px on one CPU and more at 416 px.
PARITY_TOLERANCE = 1e-4
MIN_OPSET = 13  # the oldest opset the export is checked with


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

    def __post_init__(self) -> None:
        require(self.format in EXPORT_FORMATS, "format", " or ".join(EXPORT_FORMATS), self.format)
        check_img_size(self.img_size)
        require(is_whole(self.opset) and self.opset >= MIN_OPSET, "opset", f">= {MIN_OPSET}", self.opset)
        require(self.tolerance >= 0, "tolerance", ">= 0", self.tolerance)
