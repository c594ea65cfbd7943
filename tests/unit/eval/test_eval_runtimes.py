"""`eval` in ONNX Runtime and OpenCV DNN scores like PyTorch: same letterboxed batches, same NMS and
COCO scoring, only the runtime differs. The oracle is the PyTorch model the exports were written from.

The model is untrained but not degenerate: default initialisation, head convs scaled up, and BN
statistics measured on the test images, so its scores depend on the image. The labels are two in
three of each image's best detections, jittered: the mAPs are neither 0 nor 1 and depend on both box
positions and score order.

OpenCV's darknet importer normalises with BN epsilon 1e-6 where darknet and yoloprune use 1e-5, so
OpenCV is held to a copy of the PyTorch model with OpenCV's epsilon: that isolates the wrapper (box
order, scaling, scores) from the epsilon, which is OpenCV's own and stays in its score.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from yoloprune.cli import main
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.data.dataset import image_loader
from yoloprune.data.spec import load_data_spec, write_dataset_spec
from yoloprune.errors import SettingsError, WeightsError
from yoloprune.eval.nms import non_max_suppression
from yoloprune.eval.runtimes import OnnxRuntimeModel, OpenCvDarknetModel, load_eval_model, opencv_cfg_text, resolve_backend
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator
from yoloprune.export.darknet import export_darknet
from yoloprune.export.onnx import export_onnx

SIZE = 64  # images are written at this size, so letterboxing leaves them as they are
CLASSES = 2
MAP_TOLERANCE = 1e-3  # half of what the demo allows between runtimes
OPENCV_BN_EPS = 1e-6  # what OpenCV's darknet importer gives every BatchNorm


def _write_images(root: Path, count: int) -> list[Path]:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    paths = []
    for idx in range(count):
        image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        for _ in range(3):
            x1, y1 = (int(v) for v in rng.integers(0, SIZE - 16, 2))
            w, h = (int(v) for v in rng.integers(8, 32, 2))
            cv2.rectangle(image, (x1, y1), (x1 + w, y1 + h), tuple(int(c) for c in rng.integers(0, 256, 3)), -1)
        paths.append(root / "images" / f"img{idx}.png")
        cv2.imwrite(str(paths[-1]), image)
    return paths


def _image_dependent_model(images: torch.Tensor) -> Darknet:
    torch.manual_seed(0)
    model = Darknet.from_text(build_yolov3_cfg_text(0.0625, classes=CLASSES, img_size=SIZE, stage_depths=(1, 1, 1, 1, 1)))
    with torch.no_grad():
        for idx in model.yolo_indices:  # larger score logits: scores spread over (0, 1) instead of near the prior
            rows = model.layers[idx - 1].conv.weight.view(model.layers[idx].num_anchors, 5 + CLASSES, -1)
            rows[:, 4:].mul_(3.0)  # not the box rows: exp() of large logits makes boxes far larger than the image
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None  # running statistics = those of the batch, not a blend with the defaults
        model.train()
        model(images)
    return model.eval()


def _with_bn_eps(model: Darknet, eps: float) -> Darknet:
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = eps
    return twin


def _write_labels_from(model: Darknet, images: torch.Tensor, paths: list[str], root: Path) -> None:
    rng = np.random.default_rng(1)
    with torch.no_grad():
        detections = non_max_suppression(model(images), conf_thres=0.001, iou_thres=0.6)
    for image_detections, path in zip(detections, paths):
        inside = image_detections[(image_detections[:, :4] >= 0).all(dim=1) & (image_detections[:, :4] <= SIZE).all(dim=1)]
        lines = []
        for x1, y1, x2, y2, _score, cls in [row for rank, row in enumerate(inside[:12].tolist()) if rank % 3 != 1]:
            jitter = rng.normal(0, 0.05, 4) * np.array([x2 - x1, y2 - y1] * 2)  # a share of the box: IoU stays high
            x1, y1, x2, y2 = np.clip(np.array([x1, y1, x2, y2]) + jitter, 0, SIZE)
            if x2 - x1 > 1 and y2 - y1 > 1:
                lines.append(f"{int(cls)} {(x1 + x2) / 2 / SIZE:.6f} {(y1 + y2) / 2 / SIZE:.6f} {(x2 - x1) / SIZE:.6f} {(y2 - y1) / SIZE:.6f}\n")
        (root / "labels" / f"{Path(path).stem}.txt").write_text("".join(lines))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A dataset, the PyTorch model, its .pt, static- and dynamic-batch ONNX and darknet exports, and
    the metrics of the PyTorch model and of its copy with OpenCV's BN epsilon (the oracles)."""
    root = tmp_path_factory.mktemp("runtimes")
    paths = _write_images(root / "data", 7)
    data = write_dataset_spec(root / "data", "rt", [f"c{i}" for i in range(CLASSES)], paths, paths)
    ((images, _, image_paths),) = image_loader(load_data_spec(data), "valid", SIZE, len(paths))  # the letterboxed images
    model = _image_dependent_model(images)
    _write_labels_from(model, images, image_paths, root / "data")
    save_checkpoint(root / "model.pt", model)
    export_onnx(model, root / "static.onnx", SIZE)  # the default export: a fixed batch of 1
    export_onnx(model, root / "dynamic.onnx", SIZE, dynamic_batch=True)
    cfg, weights = export_darknet(model, root / "dark")
    # batch 4 over 7 images: full and partial batches
    settings = EvalSettings(data=str(data), img_size=SIZE, batch=4, device="cpu", intervals=False)
    validator = Validator(settings, progress=False)
    opencv_twin = _with_bn_eps(model, OPENCV_BN_EPS)
    return SimpleNamespace(
        root=root, data=data, model=model, pt=root / "model.pt", static=root / "static.onnx", dynamic=root / "dynamic.onnx",
        cfg=cfg, weights=weights, validator=validator, reference=validator(model),
        opencv_twin=opencv_twin, opencv_reference=validator(opencv_twin),
    )


def _runtime(exported, which: str):
    if which == "opencv":
        return load_eval_model(exported.cfg, exported.weights, "opencv")
    return load_eval_model(None, getattr(exported, which), "auto", img_size=SIZE)


def _assert_same_score(metrics, reference) -> None:
    assert (metrics.images, metrics.ground_truths, metrics.detections) == (reference.images, reference.ground_truths, reference.detections)
    assert abs(metrics.map50 - reference.map50) <= MAP_TOLERANCE
    assert abs(metrics.map - reference.map) <= MAP_TOLERANCE


def test_the_reference_score_is_informative(exported):
    reference = exported.reference
    assert reference.ground_truths >= 20 and reference.detections > reference.ground_truths
    assert 0.3 < reference.map50 < 0.9 and 0.1 < reference.map < reference.map50


@pytest.mark.parametrize("which", ["static", "dynamic", "opencv"])
def test_every_runtime_scores_like_pytorch(exported, which):
    model = _runtime(exported, which)
    assert model.num_classes == CLASSES
    _assert_same_score(exported.validator(model), exported.opencv_reference if which == "opencv" else exported.reference)


@pytest.mark.parametrize("batch", [1, 3])
def test_runtime_outputs_match_pytorch_box_for_box(exported, batch):
    images = torch.rand(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(batch))
    runtimes = {
        "static": (OnnxRuntimeModel(exported.static), exported.model),
        "dynamic": (OnnxRuntimeModel(exported.dynamic), exported.model),
        "opencv": (OpenCvDarknetModel(exported.cfg, exported.weights), exported.opencv_twin),
    }
    for name, (runtime, oracle) in runtimes.items():
        with torch.no_grad():
            expected = oracle(images).numpy()
        output = runtime(images).numpy()
        assert output.shape == expected.shape, name
        # float32 from other kernels: boxes (up to thousands of pixels here) relative to their size, probabilities absolute
        np.testing.assert_allclose(output[..., :4], expected[..., :4], rtol=1e-4, atol=1e-2, err_msg=name)
        np.testing.assert_allclose(output[..., 4:], expected[..., 4:], rtol=0, atol=1e-4, err_msg=name)


def test_opencv_gets_its_thresholds_switched_off():
    text = "[net]\nwidth=64\n\n[yolo]\nclasses=2\nthresh = .25\nnms_threshold=0.4\n# thresh=0.5\n\n[convolutional]\nthresh=1\n"
    written = opencv_cfg_text(text)
    yolo_section = written.split("[yolo]")[1].split("[convolutional]")[0]
    assert [line for line in yolo_section.splitlines() if line.split("=")[0].strip() in ("thresh", "nms_threshold")] == ["thresh=0"]
    assert written.endswith("[convolutional]\nthresh=1\n")  # other sections keep their keys


@pytest.mark.parametrize(
    "cfg, weights, backend, named",
    [
        (None, "model.pt", "opencv", "model.pt"),
        (None, "dark.weights", "opencv", "dark.weights"),  # OpenCV needs the cfg
        ("dark.cfg", "model.onnx", "opencv", "model.onnx"),
        (None, "model.onnx", "torch", "model.onnx"),
        ("dark.cfg", "dark.weights", "onnxruntime", "dark.weights"),
    ],
)
def test_combinations_that_cannot_run_are_named(cfg, weights, backend, named):
    with pytest.raises(SettingsError) as caught:
        resolve_backend(cfg, weights, backend)
    assert caught.value.setting == "backend" and named in str(caught.value)


def test_auto_picks_the_runtime_by_suffix():
    assert resolve_backend(None, "a.onnx") == "onnxruntime"
    assert resolve_backend(None, "a.pt") == resolve_backend("a.cfg", "a.weights") == "torch"


def test_file_problems_name_the_file(exported, tmp_path):
    with pytest.raises(SettingsError, match="static.onnx.*fixed 64x64"):
        load_eval_model(None, exported.static, img_size=96)
    truncated = tmp_path / "truncated.weights"
    truncated.write_bytes(exported.weights.read_bytes()[:-40])
    with pytest.raises(WeightsError, match="truncated.weights"):  # OpenCV itself would load it silently
        load_eval_model(exported.cfg, truncated, "opencv")
    not_onnx = tmp_path / "garbage.onnx"
    not_onnx.write_bytes(b"not a model")
    with pytest.raises(WeightsError, match="garbage.onnx"):
        load_eval_model(None, not_onnx)


def test_eval_cli_reports_the_runtime(exported, capsys):
    common = ["--data", str(exported.data), "--img-size", str(SIZE), "--batch", "4", "--device", "cpu", "--no-intervals"]
    scores = {}
    for name, model_args in {
        "torch": ["--weights", str(exported.pt)],
        "onnxruntime": ["--weights", str(exported.static)],
        "opencv": ["--cfg", str(exported.cfg), "--weights", str(exported.weights), "--backend", "opencv"],
    }.items():
        assert main(["eval", *model_args, *common, "--json"]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["backend"] == name
        scores[name] = result["map50"]
    # the CLI scores what the library scores
    assert scores["torch"] == pytest.approx(exported.reference.map50, abs=1e-9)
    assert abs(scores["onnxruntime"] - exported.reference.map50) <= MAP_TOLERANCE
    assert abs(scores["opencv"] - exported.opencv_reference.map50) <= MAP_TOLERANCE

    assert main(["eval", "--weights", str(exported.static), *common]) == 0
    assert "runtime:       onnxruntime: ONNX Runtime" in capsys.readouterr().out

    assert main(["eval", "--weights", str(exported.pt), "--backend", "opencv", *common]) == 2
    error = capsys.readouterr().err
    assert "--backend" in error and "model.pt" in error and len(error.strip().splitlines()) == 1
    assert main(["eval", "--weights", str(exported.static), *common[:2], "--img-size", "96", "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "--img-size" in error and "static.onnx" in error
