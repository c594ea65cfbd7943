"""How a model is scored (`EvalSettings`) and how detections are drawn (`DetectSettings`): the
defaults and checks of the `eval` and `detect` commands, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.settings import check_img_size, is_whole, option, require, resolve_device

SPLITS = ("train", "valid", "test")
# Where the model runs: auto picks PyTorch for .pt/.weights and ONNX Runtime for .onnx
# (`yoloprune.eval.runtimes`); opencv runs a darknet cfg + .weights in OpenCV DNN.
BACKENDS = ("auto", "torch", "onnxruntime", "opencv")


@dataclass
class EvalSettings:
    """How a model is scored: which images, at which size, with which post-processing."""

    data: str = option(help="dataset .data file", aliases=("--data_config",))
    split: str | None = option(
        None, choices=SPLITS, help="image list of the .data file to score on", default_text="test when the .data has one, else valid",
    )
    img_size: int | None = option(
        None, aliases=("--img_size",), help="square input size, a multiple of 32", default_text="the model's: the cfg's width, or the ONNX file's input",
    )
    batch: int = option(8, aliases=("--batch_size",), help="images per batch")
    conf: float = option(0.001, aliases=("--conf_thres",), help="score threshold before NMS")
    iou: float = option(0.6, aliases=("--nms_thres",), help="NMS IoU threshold")
    workers: int = option(0, help="data loader worker processes")
    skip_bad: bool = option(False, help="leave out unreadable images and bad label files instead of stopping")
    device: str = option("auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")
    backend: str = option(
        "auto", choices=BACKENDS,
        help="runtime of the model: torch, onnxruntime (an .onnx from `export`), opencv (OpenCV DNN on --cfg + darknet .weights); "
        "auto: onnxruntime for .onnx, else torch",
    )
    intervals: bool = option(
        True, flag="--no-intervals", help="leave out the 95 %% bootstrap intervals of the mAPs (1000 resamples of the images, about a second)",
    )

    def __post_init__(self) -> None:
        self.data = str(self.data)
        require(self.split is None or self.split in SPLITS, "split", " or ".join(SPLITS), self.split)
        if self.img_size is not None:
            check_img_size(self.img_size)
        require(is_whole(self.batch) and self.batch >= 1, "batch", "a whole number >= 1", self.batch)
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
        check_score_thresholds(self.conf, self.iou)
        resolve_device(self.device)
        require(self.backend in BACKENDS, "backend", " or ".join(BACKENDS), self.backend)


def check_score_thresholds(conf: float, iou: float) -> None:
    """Post-processing thresholds are probabilities / overlaps: both in [0, 1]."""
    require(0.0 <= conf <= 1.0, "conf", "in [0, 1]", conf)
    require(0.0 <= iou <= 1.0, "iou", "in [0, 1]", iou)


@dataclass
class DetectSettings:
    """Which images to draw detections on, and the post-processing of a picture (not of a score)."""

    source: str = option(help="an image file or a folder of images")
    out: str = option(help="output folder (must not be the source folder)")
    img_size: int | None = option(None, aliases=("--img_size",), help="square input size, a multiple of 32", default_text="the cfg's width")
    conf: float = option(0.25, aliases=("--conf_thres",), help="score threshold")
    iou: float = option(0.45, aliases=("--nms_thres",), help="NMS IoU threshold")
    names: str | None = option(None, help="class names file (one a line) for the labels; default: class ids")
    device: str = option("auto", help="cpu, cuda, cuda:N, or auto (cuda when available)")

    def __post_init__(self) -> None:
        if self.img_size is not None:
            check_img_size(self.img_size)
        check_score_thresholds(self.conf, self.iou)
        resolve_device(self.device)
