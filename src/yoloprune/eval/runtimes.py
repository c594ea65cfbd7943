"""Score a model in the runtime it will be deployed with: PyTorch, ONNX Runtime or OpenCV DNN.

The wrappers make an ONNX Runtime session or an OpenCV DNN net look like `Darknet` in eval mode to
`evaluate_model`: called on a letterboxed float batch `(N, 3, H, W)` they return `(N, boxes, 5 +
classes)` — cx, cy, w, h in input pixels, objectness, class probabilities — with the boxes in the
model's order (heads in cfg order, then anchor, row, column). Letterboxing, NMS and COCO scoring
stay yoloprune's, so two backends' scores differ only by what their runtimes compute.
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import torch

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, load_cfg
from yoloprune.darknet.cost import count_cfg_params
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import is_checkpoint_path, load_model, read_darknet_header
from yoloprune.errors import CfgError, SettingsError, WeightsError
from yoloprune.export.onnx import create_ort_session
from yoloprune.export.quantize import is_quantized_onnx

log = logging.getLogger(__name__)

ONNX_SUFFIX = ".onnx"


class RuntimeModel:
    """What `evaluate_model` uses of a model besides calling it: `num_classes` and the train/eval
    switch, a no-op here (an exported network has only its inference mode)."""

    training = False
    num_classes: int
    description: str
    native_size: int | None  # the input size it was built for (None: any)

    def eval(self) -> "RuntimeModel":
        return self

    def train(self, mode: bool = True) -> "RuntimeModel":
        return self

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(images.detach().cpu().float().numpy())
        return torch.from_numpy(self.run(batch)).to(images.device)

    def run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OnnxRuntimeModel(RuntimeModel):
    """An `.onnx` written by `export_onnx` (input `(N, 3, H, W)`, output `(N, boxes, 5 + classes)`)."""

    def __init__(self, path: str | Path, img_size: int | None = None):
        import onnxruntime

        self.path = Path(path)
        if not self.path.is_file():
            raise WeightsError("ONNX model not found", self.path)
        try:
            self.session = create_ort_session(self.path)
        except Exception as error:  # ORT raises its own pybind exception types for bad files
            raise WeightsError(f"not a readable ONNX model ({_first_line(error)})", self.path) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4 or len(outputs) != 1 or len(outputs[0].shape) != 3:
            raise WeightsError(
                f"expected one (N, 3, H, W) input and one (N, boxes, 5 + classes) output as `yoloprune export` writes, "
                f"got {[i.shape for i in inputs]} -> {[o.shape for o in outputs]}", self.path,
            )
        shape = inputs[0].shape
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        # A dimension exported as fixed is an int, a dynamic one a name.
        self.fixed_batch = shape[0] if isinstance(shape[0], int) else None
        self.fixed_hw = tuple(shape[2:]) if all(isinstance(v, int) for v in shape[2:]) else None
        self.native_size = self.fixed_hw[1] if self.fixed_hw else None
        if img_size is not None:
            self._check_size((img_size, img_size))
        columns = outputs[0].shape[-1]
        if not isinstance(columns, int):  # a dynamic-batch export loses the output's static shape: run it once
            probe_hw = self.fixed_hw or (img_size or 416,) * 2
            probe = np.zeros((self.fixed_batch or 1, shape[1] if isinstance(shape[1], int) else 3, *probe_hw), np.float32)
            columns = self.session.run([self.output_name], {self.input_name: probe})[0].shape[-1]
        if columns < 6:
            raise WeightsError(f"the output has {columns} columns per box, expected 5 + classes", self.path)
        self.num_classes = columns - 5
        # An INT8 export (`export --int8`) scores differently from its float32 model: the report says which ran.
        precision = ", INT8" if is_quantized_onnx(self.path) else ""
        self.description = f"ONNX Runtime {onnxruntime.__version__} (CPUExecutionProvider{precision})"

    def _check_size(self, hw: tuple[int, int]) -> None:
        if self.fixed_hw is not None and tuple(hw) != self.fixed_hw:
            raise SettingsError(
                "img_size", f"{self.path} takes a fixed {self.fixed_hw[0]}x{self.fixed_hw[1]} input, the images are "
                f"{hw[0]}x{hw[1]}: set `img_size` to {self.fixed_hw[0]} or export again at this size",
            )

    def run(self, batch: np.ndarray) -> np.ndarray:
        self._check_size(batch.shape[2:])
        # An export without --dynamic-batch takes batches of exactly its size (1): run the batch in
        # chunks of that size, padding the last with blank images whose outputs are dropped.
        step = self.fixed_batch or len(batch)
        outputs = []
        for start in range(0, len(batch), step):
            chunk = batch[start : start + step]
            real = len(chunk)
            if real < step:
                chunk = np.concatenate([chunk, np.zeros((step - real, *chunk.shape[1:]), chunk.dtype)])
            (output,) = self.session.run([self.output_name], {self.input_name: chunk})
            outputs.append(output[:real])
        return np.concatenate(outputs)


class OpenCvDarknetModel(RuntimeModel):
    """A darknet cfg + `.weights` run by OpenCV DNN (`readNetFromDarknet`), fed the letterboxed batch as
    it is: no second resize, scaling or channel swap (those belong to `blobFromImage`, not used here).

    OpenCV's darknet importer gives every BatchNorm epsilon 1e-6 where darknet and yoloprune use 1e-5;
    that is part of what OpenCV computes, so it stays in the score. It matters where BN running
    variances are small, as in finetuned pruned models."""

    def __init__(self, cfg_path: str | Path, weights_path: str | Path):
        self.cfg_path, self.weights_path = Path(cfg_path), Path(weights_path)
        cfg = load_cfg(self.cfg_path)  # CfgError with file and line for a cfg yoloprune cannot build
        weights = _read_checked_weights(cfg, self.weights_path)
        cfg_text = opencv_cfg_text(self.cfg_path.read_text(encoding="utf-8"))
        try:
            self.net = cv2.dnn.readNetFromDarknet(np.frombuffer(cfg_text.encode(), np.uint8), np.frombuffer(weights, np.uint8))
        except cv2.error as error:
            raise CfgError(f"OpenCV DNN cannot load this cfg + weights ({_first_line(error)})", self.cfg_path) from None
        yolo_blocks = [cfg.layers[idx] for idx in cfg.yolo_indices]
        self.native_size = cfg.net.width
        self.num_classes = yolo_blocks[0].classes
        self.anchors_per_head = [len(block.mask) for block in yolo_blocks]
        # OpenCV names each [yolo] layer by its cfg index.
        self.output_names = [f"yolo_{idx}" for idx in cfg.yolo_indices]
        if sorted(self.output_names) != sorted(self.net.getUnconnectedOutLayersNames()):
            raise CfgError(
                f"OpenCV DNN reads other output layers ({list(self.net.getUnconnectedOutLayersNames())}) "
                f"than the cfg's [yolo] layers ({self.output_names})", self.cfg_path,
            )
        self.description = f"OpenCV DNN {cv2.__version__} (CPU)"

    def run(self, batch: np.ndarray) -> np.ndarray:
        # The [yolo] layers normalise boxes by the input blob's size, so any letterboxed size works.
        self.net.setInput(batch)
        outputs = self.net.forward(self.output_names)
        n, _, height, width = batch.shape
        heads = []
        for output, anchors in zip(outputs, self.anchors_per_head):
            # OpenCV's rows run over row, column, then anchor; the model's over anchor, row, column.
            rows = output.reshape(n, -1, anchors, output.shape[-1]).transpose(0, 2, 1, 3)
            heads.append(rows.reshape(n, -1, output.shape[-1]))
        decoded = np.concatenate(heads, axis=1).astype(np.float32, copy=True)
        decoded[..., [0, 2]] *= width  # OpenCV gives boxes as a share of the input width / height
        decoded[..., [1, 3]] *= height
        # OpenCV's class columns hold objectness x class probability; the model's the probability.
        # Where objectness is 0 the product is 0 too and stays (the score, their product, is 0 either way).
        objectness = decoded[..., 4:5]
        np.divide(decoded[..., 5:], objectness, out=decoded[..., 5:], where=objectness > 0)
        return decoded


def opencv_cfg_text(text: str) -> str:
    """The cfg text with OpenCV's own post-processing switched off in every [yolo] section.

    OpenCV's [yolo] layer zeroes class scores under its `thresh` (0.2 unless the cfg sets one) and
    runs NMS when the cfg sets `nms_threshold`; the evaluation applies its own score threshold and
    NMS, as for PyTorch, so OpenCV gets `thresh=0` and no `nms_threshold`. The file is unchanged."""
    lines, section = [], ""
    for line in text.splitlines():
        content = line.split("#")[0].split(";")[0].strip()  # darknet's two comment marks
        if content.startswith("["):
            section = content.strip("[]").strip().lower()
            lines += [line, "thresh=0"] if section == "yolo" else [line]
        elif not (section == "yolo" and content.split("=")[0].strip().lower() in ("thresh", "nms_threshold")):
            lines.append(line)
    return "\n".join(lines) + "\n"


def _read_checked_weights(cfg: DarknetCfg, path: Path) -> bytes:
    """The `.weights` bytes, checked to hold exactly the cfg's values: OpenCV itself loads a truncated
    file without a word and runs on whatever memory follows."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise WeightsError(f"cannot read weights: {error.strerror or error}", path) from None
    _, offset = read_darknet_header(data, path)
    # per conv: count_cfg_params has kernel + (BN γ, β or bias); the file also holds BN's mean and variance
    needed = count_cfg_params(cfg) + sum(2 * block.filters for block in cfg.layers if isinstance(block, ConvBlock) and block.batch_normalize)
    held, remainder = divmod(len(data) - offset, 4)
    if held != needed or remainder:
        raise WeightsError(f"the cfg {cfg.path} needs {needed} float32 values, the file holds {(len(data) - offset) / 4:g}", path)
    return data


def resolve_backend(cfg: str | Path | None, weights: str | Path | None, backend: str = "auto") -> str:
    """The runtime that scores `weights` (`auto`: onnxruntime for an .onnx, else torch); SettingsError
    naming the file for a combination that cannot run."""
    is_onnx = weights is not None and Path(weights).suffix.lower() == ONNX_SUFFIX
    if backend == "auto":
        return "onnxruntime" if is_onnx else "torch"
    if is_onnx and backend != "onnxruntime":
        raise SettingsError("backend", f"{weights} is an ONNX model: it runs with onnxruntime (or auto), not {backend}")
    if backend == "onnxruntime" and not is_onnx:
        raise SettingsError("backend", f"onnxruntime runs an .onnx file, not {weights}: write one with `yoloprune export --format onnx`")
    if backend == "opencv":
        if weights is None or is_checkpoint_path(weights):
            raise SettingsError(
                "backend", f"opencv runs a darknet cfg + .weights, not {weights}: write them with `yoloprune export --format darknet`",
            )
        if cfg is None:
            raise SettingsError("backend", f"opencv needs the darknet cfg of {weights}: pass it with --cfg")
    return backend


def load_eval_model(
    cfg: str | Path | None, weights: str | Path | None, backend: str = "auto", device: str | torch.device = "cpu",
    img_size: int | None = None,
):
    """A model for `evaluate_model` / `Validator`: a `Darknet` on `device` for torch, else a
    `RuntimeModel` (on the CPU). `img_size` is checked against an ONNX model's fixed input size."""
    backend = resolve_backend(cfg, weights, backend)
    if backend == "torch":
        return load_model(cfg, weights, device)
    if backend == "onnxruntime":
        if cfg is not None:
            log.warning("%s carries its network: the cfg %s is not used", weights, cfg)
        return OnnxRuntimeModel(weights, img_size)
    return OpenCvDarknetModel(cfg, weights)


def native_input_size(model) -> int:
    """The input size `model` was built for: its cfg's width, or an ONNX file's fixed input size."""
    size = model.cfg.net.width if isinstance(model, Darknet) else model.native_size
    if size is None:
        raise SettingsError("img_size", f"{model.path} takes any input size: give one (--img-size)")
    return size


def describe_runtime(model, device: str | torch.device) -> str:
    """Which runtime (and version) scores `model`, for the report."""
    return model.description if isinstance(model, RuntimeModel) else f"PyTorch {torch.__version__} on {device}"


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
