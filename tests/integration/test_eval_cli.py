"""`yoloprune eval` and `yoloprune detect` end to end on generated files, and detect's box mapping."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yoloprune.cli import main
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.data.spec import write_dataset_spec
from yoloprune.eval.detect import detect_image


def save_tiny_model(path: Path, classes: int) -> Path:
    torch.manual_seed(0)
    model = Darknet.from_text(build_yolov3_cfg_text(0.03125, classes=classes, img_size=64, stage_depths=(1, 1, 1, 1, 1)))
    save_checkpoint(path, model)
    return path


def write_tiny_dataset(root: Path, classes: int = 2) -> Path:
    """Three images (one without a label file) with rectangles and their labels; returns the .data path."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    images = []
    for idx, (height, width) in enumerate([(60, 80), (72, 48), (64, 64)]):
        image = np.full((height, width, 3), 40, np.uint8)
        path = root / "images" / f"img{idx}.png"
        lines = []
        for _ in range(idx):  # image 0 has no labels at all
            x1, y1 = int(rng.integers(0, width // 2)), int(rng.integers(0, height // 2))
            x2, y2 = x1 + width // 3, y1 + height // 3
            cv2.rectangle(image, (x1, y1), (x2, y2), (200, 180, 30), -1)
            cls = int(rng.integers(0, classes))
            lines.append(f"{cls} {(x1 + x2) / 2 / width:.6f} {(y1 + y2) / 2 / height:.6f} {(x2 - x1) / width:.6f} {(y2 - y1) / height:.6f}\n")
        cv2.imwrite(str(path), image)
        if lines:
            (root / "labels" / f"img{idx}.txt").write_text("".join(lines))
        images.append(path)
    return write_dataset_spec(root, "tiny", [f"thing{i}" for i in range(classes)], images, images)


def test_eval_cli_prints_json_and_summary(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    weights = save_tiny_model(tmp_path / "model.pt", classes=2)
    args = ["eval", "--weights", str(weights), "--data", str(data), "--img-size", "64", "--batch", "2", "--device", "cpu"]
    assert main(args + ["--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"map50", "map", "precision", "recall", "images"} <= set(result)
    assert result["images"] == 3 and result["ground_truths"] == 3
    assert all(0.0 <= result[k] <= 1.0 for k in ("map50", "map", "precision", "recall"))
    assert main(args) == 0
    summary = capsys.readouterr().out
    assert "mAP@0.5:" in summary and "recall" in summary


def test_eval_cli_rejects_a_dataset_with_other_classes(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data", classes=2)
    weights = save_tiny_model(tmp_path / "model.pt", classes=3)
    assert main(["eval", "--weights", str(weights), "--data", str(data), "--img-size", "64", "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "tiny.data" in error and "classes" in error


def test_detect_cli_writes_each_image_under_its_name(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    weights = save_tiny_model(tmp_path / "model.pt", classes=2)
    source, out = tmp_path / "data" / "images", tmp_path / "out"
    args = ["detect", "--weights", str(weights), "--source", str(source), "--img-size", "64", "--conf", "0.01", "--device", "cpu"]
    assert main(args + ["--out", str(out), "--names", str(data.with_suffix(".names"))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("detections" in line for line in lines)
    for image_path in sorted(source.iterdir()):
        written = cv2.imread(str(out / image_path.name))
        assert written is not None and written.shape == cv2.imread(str(image_path)).shape
    assert main(args + ["--out", str(source)]) == 2  # never overwrite the inputs
    assert "refusing" in capsys.readouterr().err


class BrightRegionModel(torch.nn.Module):
    """A stand-in detector: one box around the input pixels brighter than 0.9, class 0, score 1."""

    num_classes = 1

    def forward(self, images):
        rows, cols = torch.nonzero(images[0, 0] > 0.9, as_tuple=True)
        x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
        box = torch.tensor([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, 1.0, 1.0])
        return box.view(1, 1, 6)


@pytest.mark.parametrize("height, width", [(90, 200), (150, 60)])
def test_detect_maps_boxes_back_to_the_original_image(height, width):
    image = np.zeros((height, width, 3), np.uint8)
    x1, y1, x2, y2 = width // 4, height // 3, width // 4 + width // 3, height // 3 + height // 2
    image[y1:y2, x1:x2] = 255
    detections = detect_image(BrightRegionModel(), image, img_size=64, conf_thres=0.5, iou_thres=0.5)
    assert detections.shape == (1, 6)
    # Resizing to 64 px moves edges by at most a pixel of the letterboxed image.
    tolerance = max(height, width) / 64 + 1
    np.testing.assert_allclose(detections[0, :4], [x1, y1, x2, y2], atol=tolerance)
