"""Detection metrics under the COCO protocol, computed by faster-coco-eval.

`compute_detection_metrics` takes boxes already in one pixel space (per image: detections
`[x1, y1, x2, y2, score, cls]`, ground truth `[cls, x1, y1, x2, y2]`), builds the COCO ground-truth
and result sets in memory and runs `COCOeval_faster` (bbox, 101-point interpolated AP, up to 100
detections per image, COCO's area ranges).

Reported numbers:
- `map50`: AP at IoU 0.5, averaged over the classes that have ground truth (COCO "AP50");
- `map`: AP averaged over IoU 0.50:0.05:0.95 (COCO "AP");
- `precision`, `recall`, `f1`: the operating point of best F1 on COCO's precision-recall curve at
  IoU 0.5 — for each class the recall threshold r (0, 0.01, ..., 1) maximising 2pr/(p+r), with p
  COCO's interpolated precision at r; then precision and recall averaged over classes. COCO's
  interpolated precision at r is reached by some real confidence threshold at a recall ≥ r, so
  the pair is an achievable detector setting (recall read to the curve's 0.01 grid), the one a
  user would pick for deployment; at a low evaluation `conf` it is unaffected by the many
  low-score detections that the mAP protocol asks for.
- `ar100`: COCO's average recall with 100 detections per image over IoU 0.50:0.95;
- `map50_ci`, `map_ci` (only when asked for): 95 % percentile bootstrap intervals of `map50` and
  `map` over the evaluated images (see `yoloprune.eval.bootstrap`), else None.
`evaluate_model` runs a model over a data loader and scores it in the letterboxed input-pixel space.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from typing import Iterable, Sequence

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from tqdm import tqdm

from yoloprune.eval.bootstrap import bootstrap_map_intervals, match_detections
from yoloprune.eval.boxes import cxcywh_to_xyxy
from yoloprune.eval.image_boxes import checked_image_boxes
from yoloprune.eval.nms import non_max_suppression

log = logging.getLogger(__name__)


@dataclass
class DetectionMetrics:
    map50: float
    map: float
    map75: float
    precision: float
    recall: float
    f1: float
    ar100: float
    images: int
    ground_truths: int
    detections: int
    map50_ci: tuple[float, float] | None = None
    map_ci: tuple[float, float] | None = None
    # The per-image matches the intervals came from (kept for paired comparisons between models
    # scored on the same images, `bootstrap.bootstrap_difference_intervals`); not part of the record.
    matches: object = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "matches"}
        for name in ("map50_ci", "map_ci"):
            if values[name] is not None:
                values[name] = list(values[name])  # JSON has lists, not tuples
        return values


def _xyxy_to_coco(box: list[float]) -> list[float]:
    return [box[0], box[1], box[2] - box[0], box[3] - box[1]]


def _best_f1_precision_recall(precision_curve: np.ndarray, recall_thresholds: np.ndarray) -> tuple[float, float, float]:
    """Class-averaged (precision, recall, F1) at each class's best-F1 point of a (R, K) PR curve."""
    points: list[tuple[float, float, float]] = []
    for class_curve in precision_curve.T:
        if np.all(class_curve < 0):  # COCO marks classes without ground truth with -1
            continue
        p = np.clip(class_curve, 0.0, None)
        denominator = p + recall_thresholds
        f1 = np.divide(2 * p * recall_thresholds, denominator, out=np.zeros_like(p), where=denominator > 0)
        best = int(np.argmax(f1))
        points.append((float(p[best]), float(recall_thresholds[best]), float(f1[best])) if f1[best] > 0 else (0.0, 0.0, 0.0))
    if not points:
        return 0.0, 0.0, 0.0
    precision, recall, f1 = np.mean(np.asarray(points), axis=0)
    return float(precision), float(recall), float(f1)


def _discard(*_args, **_kwargs) -> None:
    """faster-coco-eval prints progress and its summary table through this; we return numbers instead."""


def _coco_annotations(
    predictions_per_image: Sequence, ground_truths_per_image: Sequence, num_classes: int
) -> tuple[list[dict], list[dict]]:
    """COCO ground-truth and detection annotations of every image; image, category and annotation ids
    are 1-based."""
    gt_annotations: list[dict] = []
    dt_annotations: list[dict] = []
    for image_idx, (predictions, ground_truths) in enumerate(zip(predictions_per_image, ground_truths_per_image)):
        predictions, ground_truths = checked_image_boxes(predictions, ground_truths, num_classes, image_idx)
        for row in ground_truths.tolist():
            bbox = _xyxy_to_coco(row[1:5])
            gt_annotations.append(
                {"id": len(gt_annotations) + 1, "image_id": image_idx + 1, "category_id": int(row[0]) + 1, "bbox": bbox, "area": bbox[2] * bbox[3], "iscrowd": 0}
            )
        for row in predictions.tolist():
            bbox = _xyxy_to_coco(row[:4])
            dt_annotations.append(
                {
                    "id": len(dt_annotations) + 1,  # COCO reserves id 0 for "unmatched"
                    "image_id": image_idx + 1,
                    "category_id": int(row[5]) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "score": row[4],
                    "iscrowd": 0,
                }
            )
    return gt_annotations, dt_annotations


def _coco_scores(images: list[dict], categories: list[dict], gt_annotations: list[dict], dt_annotations: list[dict]) -> dict[str, float]:
    """The metrics of `DetectionMetrics` from one `COCOeval_faster` run (ground truth must not be empty)."""
    coco_gt = COCO({"images": images, "categories": categories, "annotations": gt_annotations}, print_function=_discard)
    coco_dt = COCO({"images": images, "categories": categories, "annotations": dt_annotations}, print_function=_discard)
    evaluator = COCOeval_faster(coco_gt, coco_dt, iouType="bbox", print_function=_discard)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    stats = evaluator.stats_as_dict
    params = evaluator.params
    iou50_idx = int(np.argmin(np.abs(params.iouThrs - 0.5)))
    area_all_idx = params.areaRngLbl.index("all")
    # eval["precision"] is [IoU threshold, recall threshold, class, area range, max detections].
    precision_curve = evaluator.eval["precision"][iou50_idx, :, :, area_all_idx, -1]
    precision, recall, f1 = _best_f1_precision_recall(precision_curve, np.asarray(params.recThrs))

    def _stat(name: str) -> float:
        return max(0.0, float(stats[name]))  # -1 means "no data"; with ground truth it cannot occur

    return {
        "map50": _stat("AP_50"),
        "map": _stat("AP_all"),
        "map75": _stat("AP_75"),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "ar100": _stat("AR_third"),  # AR with maxDets = 100, the last of COCO's [1, 10, 100]
    }


def compute_detection_metrics(
    predictions_per_image: Sequence,
    ground_truths_per_image: Sequence,
    num_classes: int,
    intervals: bool = False,
    resamples: int = 1000,
    seed: int = 0,
) -> DetectionMetrics:
    """COCO-protocol metrics for detections and ground truth given per image, in the same pixel space.

    `predictions_per_image[i]`: (K, 6) `[x1, y1, x2, y2, score, cls]`; `ground_truths_per_image[i]`:
    (M, 5) `[cls, x1, y1, x2, y2]` (tensors or arrays; either may be empty). Images without ground
    truth still count: their detections are false positives. With no ground truth at all the AP is
    undefined; every metric is then reported as 0.0 (and `ground_truths` says why).
    `intervals`: also bootstrap `map50_ci` and `map_ci` from `resamples` image resamples drawn with
    `seed`; the point values are faster-coco-eval's either way.
    """
    if len(predictions_per_image) != len(ground_truths_per_image):
        raise ValueError(f"{len(predictions_per_image)} prediction sets for {len(ground_truths_per_image)} ground-truth sets")
    images = [{"id": image_idx + 1} for image_idx in range(len(ground_truths_per_image))]
    categories = [{"id": class_id + 1, "name": str(class_id)} for class_id in range(num_classes)]
    gt_annotations, dt_annotations = _coco_annotations(predictions_per_image, ground_truths_per_image, num_classes)
    counts = {"images": len(images), "ground_truths": len(gt_annotations), "detections": len(dt_annotations)}
    interval_fields = {}
    if intervals:
        matches = match_detections(predictions_per_image, ground_truths_per_image, num_classes)
        interval_fields = {**bootstrap_map_intervals(matches, resamples=resamples, seed=seed), "matches": matches}
    if not gt_annotations:
        log.warning("no ground-truth boxes in %d images: mAP is undefined, reported as 0", len(images))
        return DetectionMetrics(map50=0.0, map=0.0, map75=0.0, precision=0.0, recall=0.0, f1=0.0, ar100=0.0, **counts, **interval_fields)
    return DetectionMetrics(**_coco_scores(images, categories, gt_annotations, dt_annotations), **counts, **interval_fields)


def evaluate_model(
    model: torch.nn.Module,
    dataloader: Iterable,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    device: str | torch.device = "cpu",
    progress: bool = True,
    max_det: int = 300,
    num_classes: int | None = None,
    intervals: bool = False,
) -> DetectionMetrics:
    """Run `model` (eval mode, no grad) over batches `(images, targets, paths)` and score it.

    `targets` rows are `[img_idx, cls, cx, cy, w, h]` normalised to the letterboxed input; both
    they and the detections are compared in input pixels. The model's train/eval mode is restored.
    `num_classes` defaults to `model.num_classes`; `intervals` adds bootstrap intervals of the mAPs.
    """
    if num_classes is None:
        num_classes = model.num_classes
    predictions_per_image: list[torch.Tensor] = []
    ground_truths_per_image: list[torch.Tensor] = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for images, targets, _paths in tqdm(dataloader, desc="eval", unit="batch", disable=not progress, leave=False):
                images = images.to(device, non_blocking=True).float()
                detections = non_max_suppression(model(images), conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det)
                height, width = images.shape[2], images.shape[3]
                targets = targets.detach().cpu().float()
                gt_boxes_xyxy = cxcywh_to_xyxy(targets[:, 2:6]) * torch.tensor([width, height, width, height], dtype=torch.float32)
                for image_idx, image_detections in enumerate(detections):
                    in_image = targets[:, 0] == image_idx
                    predictions_per_image.append(image_detections.detach().cpu())
                    ground_truths_per_image.append(torch.cat([targets[in_image, 1:2], gt_boxes_xyxy[in_image]], dim=1))
    finally:
        model.train(was_training)
    return compute_detection_metrics(predictions_per_image, ground_truths_per_image, num_classes, intervals=intervals)
