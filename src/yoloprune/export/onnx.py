"""ONNX export with a parity check against PyTorch, run by ONNX Runtime at export time."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from yoloprune.darknet.model import Darknet
from yoloprune.errors import ExportError
from yoloprune.export.settings import PARITY_TOLERANCE
from yoloprune.fileio import atomic_output

log = logging.getLogger(__name__)

BOX_COLUMNS = 4  # cx, cy, w, h in input pixels; then objectness and class probabilities


@dataclass
class OnnxExport:
    path: Path
    parity_error: float  # see `parity_error`
    opset: int
    dynamic_batch: bool


def export_onnx(
    model: Darknet,
    path: str | Path,
    img_size: int = 416,
    opset: int = 17,
    dynamic_batch: bool = False,
    check: bool = True,
    tolerance: float = PARITY_TOLERANCE,
) -> OnnxExport:
    """Write `model` (eval mode: decoded boxes `(N, anchors, 5 + classes)`) as one ONNX file.

    The output is compared with PyTorch's on a random image through ONNX Runtime; a `parity_error`
    above `tolerance` raises ExportError and leaves no file behind.
    """
    path = Path(path)
    model = model.eval()
    device = next(model.parameters()).device
    example = torch.rand(1, model.cfg.net.channels, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
    dynamic_axes = {"images": {0: "batch"}, "boxes": {0: "batch"}} if dynamic_batch else None
    with atomic_output(path) as tmp:
        with warnings.catch_warnings():
            # The TorchScript-based exporter is the one that needs no extra packages (onnxscript);
            # it handles every layer type Darknet uses.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(tmp),
                dynamo=False,
                opset_version=opset,
                input_names=["images"],
                output_names=["boxes"],
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        error = check_onnx_parity(model, tmp, example) if check else float("nan")
        if check and not error <= tolerance:
            raise ExportError(
                f"ONNX output differs from PyTorch by {error:.3g} (boxes as a share of the {img_size}-px input; > {tolerance:g}); file not written",
                path,
            )
    log.debug("wrote %s (opset %d, parity error vs PyTorch %.2e)", path, opset, error)
    return OnnxExport(path, error, opset, dynamic_batch)


def create_ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # Worker threads that spin after a run keep the cores busy while the next model (or PyTorch) is
    # timed: on 2 cores, two copies of one model timed interleaved read three times apart with
    # spinning and alike without. Latency comparisons need the cores free between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def parity_error(reference: np.ndarray, candidate: np.ndarray, img_hw: tuple[int, int]) -> float:
    """Largest difference between two decoded outputs `(N, boxes, 5 + classes)`: box columns divided
    by the input height/width (a share of the image), probabilities as they are."""
    scale = np.ones(reference.shape[-1], dtype=np.float64)
    scale[[0, 2]], scale[[1, 3]] = img_hw[1], img_hw[0]
    reference, candidate = reference / scale, candidate / scale
    # An untrained model can overflow exp() in the box decoding; matching infinities are agreement.
    finite = np.isfinite(reference)
    if not np.array_equal(finite, np.isfinite(candidate)) or not np.array_equal(reference[~finite], candidate[~finite]):
        return float("inf")
    return float(np.abs(candidate[finite] - reference[finite]).max(initial=0.0))


def check_onnx_parity(model: Darknet, onnx_path: str | Path, example: torch.Tensor) -> float:
    """`parity_error` between ONNX Runtime's and PyTorch's outputs on `example`."""
    session = create_ort_session(onnx_path)
    (ort_out,) = session.run(["boxes"], {"images": example.cpu().numpy()})
    with torch.no_grad():
        torch_out = model(example).cpu().numpy()
    return parity_error(torch_out, ort_out, (example.shape[2], example.shape[3]))
