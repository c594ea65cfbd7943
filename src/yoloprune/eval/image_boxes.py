"""One image's detections and ground truth as checked float64 arrays: the input that both the
COCO scoring (`evaluate`) and the bootstrap (`bootstrap`) read, checked the same way for both."""

from __future__ import annotations

import numpy as np
import torch


def _as_array(boxes, columns: int, what: str, image_idx: int) -> np.ndarray:
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(boxes, dtype=np.float64)
    if array.size == 0:
        return np.zeros((0, columns))
    if array.ndim != 2 or array.shape[1] != columns:
        raise ValueError(f"{what} of image {image_idx} must have shape (K, {columns}), got {array.shape}")
    return array


def _check_classes(classes: np.ndarray, num_classes: int, what: str, image_idx: int) -> None:
    if classes.size and (classes.min() < 0 or classes.max() >= num_classes or np.any(classes != np.round(classes))):
        raise ValueError(f"{what} of image {image_idx} has class ids {np.unique(classes).tolist()}, expected integers in [0, {num_classes})")


def checked_image_boxes(predictions, ground_truths, num_classes: int, image_idx: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's detections (K, 6) and ground truth (M, 5) as float64 arrays, shapes and class
    ids checked (ValueError naming the image)."""
    predictions = _as_array(predictions, 6, "predictions", image_idx)
    ground_truths = _as_array(ground_truths, 5, "ground truth", image_idx)
    _check_classes(predictions[:, 5], num_classes, "predictions", image_idx)
    _check_classes(ground_truths[:, 0], num_classes, "ground truth", image_idx)
    return predictions, ground_truths
