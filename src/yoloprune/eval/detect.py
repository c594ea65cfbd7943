"""Detection on image files: letterbox, run the model, NMS, map boxes back, draw them.

Preprocessing is the evaluation loader's (same letterbox, RGB in [0, 1]), so a model sees the
same input here as when it was scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from yoloprune.data.dataset import read_image
from yoloprune.data.spec import IMAGE_SUFFIXES
from yoloprune.data.transforms import letterbox, unletterbox_boxes_xyxy
from yoloprune.errors import DataError
from yoloprune.eval.nms import non_max_suppression
from yoloprune.fileio import atomic_write_bytes


# Distinct, saturated BGR colours; class k takes colour k mod len.
PALETTE_BGR = (
    (56, 56, 255), (151, 157, 255), (31, 112, 255), (29, 178, 255), (49, 210, 207), (10, 249, 72),
    (23, 204, 146), (134, 219, 61), (52, 147, 26), (187, 212, 0), (168, 153, 44), (255, 194, 0),
    (147, 69, 52), (255, 115, 100), (236, 24, 0), (255, 56, 132), (133, 0, 82), (255, 56, 203),
)


@dataclass
class ImageDetections:
    source_path: Path
    output_path: Path
    detections: np.ndarray  # (K, 6) [x1, y1, x2, y2, score, cls] in original image pixels


def list_source_images(source: str | Path) -> list[Path]:
    """The image files of `source`: the file itself, or the images directly inside a folder (sorted)."""
    source = Path(source)
    if source.is_file():
        return [source]
    if source.is_dir():
        images = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder", source)
        return images
    raise DataError("source not found: expected an image file or a folder of images", source)


def detect_image(
    model: torch.nn.Module,
    image_bgr: np.ndarray,
    img_size: int,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    device: str | torch.device = "cpu",
    max_det: int = 300,
) -> np.ndarray:
    """Detections (K, 6) `[x1, y1, x2, y2, score, cls]` in the pixels of `image_bgr` (HWC uint8 BGR)."""
    boxed_bgr, placement = letterbox(image_bgr, img_size)
    chw_rgb = np.ascontiguousarray(boxed_bgr[:, :, ::-1].transpose(2, 0, 1))
    images = torch.from_numpy(chw_rgb).to(device).float().div_(255.0).unsqueeze(0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            detections = non_max_suppression(model(images), conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)[0]
    finally:
        model.train(was_training)
    detections = detections.detach().cpu().float().numpy()
    if len(detections):
        height, width = image_bgr.shape[:2]
        boxes_xyxy = unletterbox_boxes_xyxy(detections[:, :4], placement)
        boxes_xyxy[:, [0, 2]] = boxes_xyxy[:, [0, 2]].clip(0, width)
        boxes_xyxy[:, [1, 3]] = boxes_xyxy[:, [1, 3]].clip(0, height)
        detections[:, :4] = boxes_xyxy
    return detections


def name_class(class_id: int, class_names: list[str] | None) -> str:
    """The class's name when known, else its id."""
    return class_names[class_id] if class_names and 0 <= class_id < len(class_names) else str(class_id)


def draw_detections(image_bgr: np.ndarray, detections: np.ndarray, class_names: list[str] | None = None) -> np.ndarray:
    """A copy of `image_bgr` with each detection's box and `name score` label drawn on it."""
    canvas = image_bgr.copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = 0.4 * thickness
    for x1, y1, x2, y2, score, cls in detections:
        class_id = int(cls)
        colour = PALETTE_BGR[class_id % len(PALETTE_BGR)]
        top_left, bottom_right = (int(round(x1)), int(round(y1))), (int(round(x2)), int(round(y2)))
        cv2.rectangle(canvas, top_left, bottom_right, colour, thickness, cv2.LINE_AA)
        label = f"{name_class(class_id, class_names)} {score:.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        # Label above the box, or inside it when the box touches the top edge.
        text_top = top_left[1] - text_h - baseline if top_left[1] - text_h - baseline >= 0 else top_left[1]
        cv2.rectangle(canvas, (top_left[0], text_top), (top_left[0] + text_w, text_top + text_h + baseline), colour, -1)
        cv2.putText(canvas, label, (top_left[0], text_top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return canvas


def write_image(path: Path, image_bgr: np.ndarray) -> None:
    """Encode by the file's suffix and write atomically."""
    ok, encoded = cv2.imencode(path.suffix or ".jpg", image_bgr)
    if not ok:
        raise DataError(f"cannot encode an image as {path.suffix!r}", path)
    atomic_write_bytes(path, encoded.tobytes())


def detect_images(
    model: torch.nn.Module,
    source: str | Path,
    out_dir: str | Path,
    img_size: int,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    device: str | torch.device = "cpu",
    class_names: list[str] | None = None,
) -> Iterator[ImageDetections]:
    """Detect on every image of `source`, writing each with its boxes drawn to `out_dir` under its
    own name; yields one result per image as it is written."""
    out_dir = Path(out_dir)
    images = list_source_images(source)
    out_resolved = out_dir.resolve()
    if any(image.parent.resolve() == out_resolved for image in images):
        raise DataError("output folder is the source folder: refusing to overwrite the input images", out_dir)
    for image_path in images:
        image_bgr = read_image(image_path)
        detections = detect_image(model, image_bgr, img_size, conf_thres, iou_thres, device)
        output_path = out_dir / image_path.name
        write_image(output_path, draw_detections(image_bgr, detections, class_names))
        yield ImageDetections(image_path, output_path, detections)
