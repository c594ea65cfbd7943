"""INT8 ONNX export: ONNX Runtime's static quantization (QDQ format) of the float32 export, with the
activation ranges calibrated on training images letterboxed as `eval` reads them.

- The head convs and the decode tail after them (sigmoid, exp, grid and anchor arithmetic) stay
  float32: quantized, the tail would put pixel boxes and probabilities into one 8-bit tensor, whose
  step of about half a pixel ruins the boxes. Keeping the head convs float32 as well brings
  mAP@0.5:0.95 back to float32's at no measurable cost in latency.
- Activations QUInt8, weights QInt8 per channel, with `reduce_range` (7-bit weights): what
  `quantize_static`'s documentation advises for x86 CPUs without VNNI, whose U8S8 kernels can
  saturate 16-bit intermediate sums otherwise. S8S8, the quantization guide's general first
  choice, ran slower than float32 on such a CPU.

docs/int8.md has the measurements behind both choices.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import onnx

from yoloprune.data.dataset import image_loader
from yoloprune.data.spec import load_data_spec
from yoloprune.errors import ExportError
from yoloprune.export.onnx import OnnxExport, create_ort_session, export_onnx
from yoloprune.export.settings import PARITY_TOLERANCE
from yoloprune.fileio import atomic_output

log = logging.getLogger(__name__)

FP32_SUFFIX = ".fp32.onnx"
# Op types that only a quantized model holds: QDQ pairs, or the fused integer ops of QOperator models.
QUANTIZED_OP_TYPES = frozenset({
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger",
})
PROGRESS_STEPS = 8  # calibration progress lines per run
INPUT_NAME = "images"  # what `export_onnx` names the model's input


@dataclass
class Int8Export:
    path: Path
    fp32: OnnxExport  # the parity-checked float32 export that was quantized
    calibration_images: int
    float_nodes: int  # nodes left in float32: the head convs and the decode tail


def fp32_path_for(out: str | Path) -> Path:
    """Where the float32 export of an INT8 model at `out` goes: `m.onnx` -> `m.fp32.onnx`."""
    out = Path(out)
    return out.with_name(out.stem + FP32_SUFFIX)


class CalibrationImages:
    """The first `count` images of the shuffled (fixed-seed) train list of `data`, letterboxed to
    `img_size` by `image_loader` as `eval` reads them, fed one at a time as ONNX Runtime's
    calibration data.

    ONNX Runtime takes any object with `get_next` as a CalibrationDataReader (its subclass hook), so
    this module does not import onnxruntime until it quantizes. Opening the dataset checks it: a bad
    .data file or image list raises DataError naming the file before anything is written."""

    def __init__(self, data: str | Path, img_size: int, count: int):
        loader = image_loader(load_data_spec(data), "train", img_size, batch=1, shuffle=True)
        self.count = min(count, len(loader.dataset))
        self._batches = islice(iter(loader), self.count)
        self._seen = 0
        log.info("calibrating INT8 ranges on %d training image(s) of %s at %d px", self.count, data, img_size)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)  # (images, targets, paths)
        if batch is None:
            return None
        self._seen += 1
        if self._seen % max(1, self.count // PROGRESS_STEPS) == 0 or self._seen == self.count:
            log.info("calibration: %d/%d images", self._seen, self.count)
        return {INPUT_NAME: batch[0].numpy()}


def export_int8(
    model, path: str | Path, calib_data: str | Path, img_size: int = 416, calib_images: int = 256, opset: int = 17,
    dynamic_batch: bool = False, tolerance: float = PARITY_TOLERANCE,
) -> Int8Export:
    """Write the float32 export of `model` (parity-checked, at `fp32_path_for(path)`) and its INT8
    quantization at `path`. The calibration data is opened first, so a bad `calib_data` leaves both
    paths untouched; a failed quantization leaves `path` untouched."""
    path = Path(path)
    images = CalibrationImages(calib_data, img_size, calib_images)
    fp32 = export_onnx(model, fp32_path_for(path), img_size, opset, dynamic_batch, tolerance=tolerance)
    float_nodes = quantize_onnx(fp32.path, path, images)
    return Int8Export(path, fp32, images.count, float_nodes)


def quantize_onnx(fp32_path: str | Path, out: str | Path, calibration) -> int:
    """Quantize the float32 ONNX model at `fp32_path` into `out` (written atomically), calibrated on
    `calibration` (a CalibrationDataReader); returns how many nodes were left in float32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="yoloprune-int8-") as tmp:
        # The documented pre-processing: shape inference and graph optimisation (conv + BN fusion)
        # before quantization rather than during it.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))
        float_nodes = head_and_decode_nodes(onnx.load(str(prepared)))
        with atomic_output(out) as tmp_out:
            quantize_static(
                str(prepared), str(tmp_out), calibration, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=float_nodes,
                calibrate_method=CalibrationMethod.MinMax,
            )
            _check_runs(tmp_out, out)
    return len(float_nodes)


def head_and_decode_nodes(model) -> list[str]:
    """Names of the nodes from which no Conv is reachable: the head convs and everything after them
    (the decode tail), which stay float32 (see the module docstring for why)."""
    nodes = list(model.graph.node)
    consumers: dict[str, list[int]] = {}
    for index, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(index)
    feeds_conv = [False] * len(nodes)
    for index in reversed(range(len(nodes))):  # ONNX lists nodes in topological order: consumers come later
        feeds_conv[index] = any(
            nodes[user].op_type == "Conv" or feeds_conv[user] for output in nodes[index].output for user in consumers.get(output, [])
        )
    return [node.name for node, feeds in zip(nodes, feeds_conv) if not feeds]


def _check_runs(quantized: Path, out: str | Path) -> None:
    """Open the quantized model in ONNX Runtime: a model it cannot load is not written."""
    try:
        create_ort_session(quantized)
    except Exception as error:  # ORT raises its own pybind exception types
        raise ExportError(f"ONNX Runtime cannot load the quantized model ({error}); file not written", out) from None


def is_quantized_onnx(path: str | Path) -> bool:
    """Whether the ONNX model at `path` computes in integers (holds QDQ pairs or quantized ops)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in QUANTIZED_OP_TYPES for node in graph.node)
