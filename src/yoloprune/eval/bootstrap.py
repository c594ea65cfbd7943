"""Bootstrap confidence intervals for mAP@0.5 and mAP@0.5:0.95 over the evaluated images.

The image is the sampling unit: resampling the evaluated images with replacement and recomputing
mAP shows how much the number would move on another image set of the same size from the same
source, with the model held fixed. A 95 % interval is the 2.5th-97.5th percentile range of the
resampled mAPs. It need not be centred on the reported mAP: interpolated precision is a running
maximum, which resampling noise lifts, so resampled mAPs tend to sit a little above it (about
+0.02 mAP@0.5 with 20 classes of ~40 boxes each), more so the fewer boxes a class has.

Recomputing mAP a thousand times is affordable because COCO matches detections to ground truth
within one image and class only: `match_detections` does that once, and a resample just pools the
stored matches again (`pooled_map`). A resample is a multiset of images; an image drawn k times
counts as k identical images, which is what faster-coco-eval reports for a data set holding k
copies of it.

COCO protocol details reproduced here (bbox, area range "all", maxDets 100), as faster-coco-eval
and pycocotools implement them:
- maxDets applies per image *and class*: that image's detections of the class, sorted by
  descending score with a stable sort, first 100 kept;
- IoU on (x, y, w, h) boxes with w = x2 - x1 and right edge x + w, no +1; no overlap when the
  intersection's width or height is <= 0;
- a detection, in score order, takes the not yet matched ground truth of highest IoU with IoU >=
  the threshold (capped at 1 - 1e-10); among equal best IoUs the one listed last wins;
- a box whose area w*h lies outside [0, 1e10] (an inverted box) is "ignored": such ground truth is
  not counted and only matched when no counted one qualifies, and a detection matched to it, or an
  unmatched detection outside the range, is neither a true nor a false positive;
- pooled over images, a class's detections are sorted by descending score with a stable sort, so
  ties keep image order, then the order within the image;
- precision tp / (tp + fp) (0 before the first counted detection), made non-increasing from the
  right, read at recall thresholds 0, 0.01, ..., 1 at the first detection whose recall reaches the
  threshold (0 when none does); AP is their mean;
- classes without ground truth in the sample are left out of the mean over classes (COCO's -1);
  with no ground truth at all the mAP is reported as 0.0, as `compute_detection_metrics` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from yoloprune.eval.image_boxes import checked_image_boxes

# The same arrays as faster-coco-eval's Params (np.linspace values, not rounded decimals): recall
# and IoU are compared against them exactly.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, 101)
MAX_DETECTIONS = 100
AREA_RANGE_ALL = (0.0, 1e5**2)
# Bounds the (resamples, detections) arrays of one class to about 16 MiB each.
_CHUNK_ELEMENTS = 1 << 21
_RESAMPLES_PER_BATCH = 100


@dataclass
class DetectionMatches:
    """COCO matching results of every kept detection, image by image.

    Detections are stored image after image, each image's in descending score order (stable).
    `true_positive[j, t]` and `counted[j, t]` refer to IoU threshold `IOU_THRESHOLDS[t]`; a detection
    that is not counted is ignored by COCO (neither true nor false positive).
    `ground_truth_counts[i, c]`: counted ground-truth boxes of class c in image i.
    """

    image: np.ndarray
    cls: np.ndarray
    score: np.ndarray
    true_positive: np.ndarray
    counted: np.ndarray
    ground_truth_counts: np.ndarray

    @property
    def images(self) -> int:
        return len(self.ground_truth_counts)


def _coco_iou(detections_xyxy: np.ndarray, ground_truths_xyxy: np.ndarray) -> np.ndarray:
    """(D, G) IoU computed as COCO does on (x, y, w, h) boxes, so that values at a threshold agree."""
    dx, dy = detections_xyxy[:, 0], detections_xyxy[:, 1]
    dw, dh = detections_xyxy[:, 2] - dx, detections_xyxy[:, 3] - dy
    gx, gy = ground_truths_xyxy[:, 0], ground_truths_xyxy[:, 1]
    gw, gh = ground_truths_xyxy[:, 2] - gx, ground_truths_xyxy[:, 3] - gy
    inter_w = np.minimum((dx + dw)[:, None], (gx + gw)[None]) - np.maximum(dx[:, None], gx[None])
    inter_h = np.minimum((dy + dh)[:, None], (gy + gh)[None]) - np.maximum(dy[:, None], gy[None])
    overlap = (inter_w > 0) & (inter_h > 0)
    intersection = np.where(overlap, inter_w * inter_h, 0.0)
    union = (dw * dh)[:, None] + (gw * gh)[None] - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=overlap)


def _outside_area_range(boxes_xyxy: np.ndarray) -> np.ndarray:
    area = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    return (area < AREA_RANGE_ALL[0]) | (area > AREA_RANGE_ALL[1])


def _greedy_match(iou: np.ndarray, gt_ignored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching of one image and class at every IoU threshold at once.

    `iou` rows are detections in descending score order. Returns (matched, matched_to_ignored),
    both (D, T).
    """
    num_detections, num_ground_truths = iou.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]
    matched = np.zeros((num_detections, len(IOU_THRESHOLDS)), dtype=bool)
    matched_to_ignored = np.zeros_like(matched)
    if num_ground_truths == 0:
        return matched, matched_to_ignored
    taken = np.zeros((len(IOU_THRESHOLDS), num_ground_truths), dtype=bool)
    # A detection below the lowest threshold with every ground truth matches nothing: skip the loop.
    for d in np.flatnonzero(iou.max(axis=1) >= thresholds[0, 0]):
        eligible = ~taken & (iou[d] >= thresholds)
        regular = eligible & ~gt_ignored
        # Counted ground truth comes first; an ignored one is taken only when no counted one qualifies.
        eligible = np.where(regular.any(axis=1, keepdims=True), regular, eligible)
        found = np.flatnonzero(eligible.any(axis=1))
        if found.size == 0:
            continue
        candidate_iou = np.where(eligible, iou[d], -1.0)
        is_best = candidate_iou == candidate_iou.max(axis=1, keepdims=True)
        last_best = num_ground_truths - 1 - np.argmax(is_best[:, ::-1], axis=1)
        taken[found, last_best[found]] = True
        matched[d, found] = True
        matched_to_ignored[d, found] = gt_ignored[last_best[found]]
    return matched, matched_to_ignored


def _match_image(predictions: np.ndarray, ground_truths: np.ndarray) -> tuple[np.ndarray, ...]:
    """Kept detections of one image in descending score order: (cls, score, true_positive, counted)."""
    order = np.argsort(-predictions[:, 4], kind="stable")
    predictions = predictions[order]
    kept_parts, tp_parts, counted_parts = [], [], []
    for cls in np.unique(predictions[:, 5]):
        in_class = np.flatnonzero(predictions[:, 5] == cls)[:MAX_DETECTIONS]
        detections = predictions[in_class, :4]
        class_gt = ground_truths[ground_truths[:, 0] == cls, 1:5]
        gt_ignored = _outside_area_range(class_gt)
        matched, matched_to_ignored = _greedy_match(_coco_iou(detections, class_gt), gt_ignored)
        unmatched_outside = ~matched & _outside_area_range(detections)[:, None]
        kept_parts.append(in_class)
        tp_parts.append(matched & ~matched_to_ignored)
        counted_parts.append(~matched_to_ignored & ~unmatched_outside)
    if not kept_parts:
        empty = np.zeros((0, len(IOU_THRESHOLDS)), dtype=bool)
        return np.zeros(0, dtype=np.int64), np.zeros(0), empty, empty
    kept = np.concatenate(kept_parts)
    # Back to one score order for the image: a stable sort over the image keeps each class's order.
    back = np.argsort(kept, kind="stable")
    kept = kept[back]
    true_positive, counted = np.concatenate(tp_parts)[back], np.concatenate(counted_parts)[back]
    return predictions[kept, 5].astype(np.int64), predictions[kept, 4], true_positive, counted


def match_detections(predictions_per_image: Sequence, ground_truths_per_image: Sequence, num_classes: int) -> DetectionMatches:
    """Match every image's detections to its ground truth under the COCO protocol, once.

    Same inputs as `compute_detection_metrics`: per image (K, 6) `[x1, y1, x2, y2, score, cls]` and
    (M, 5) `[cls, x1, y1, x2, y2]`, arrays or tensors, in one pixel space.
    """
    if len(predictions_per_image) != len(ground_truths_per_image):
        raise ValueError(f"{len(predictions_per_image)} prediction sets for {len(ground_truths_per_image)} ground-truth sets")
    per_image = []
    ground_truth_counts = np.zeros((len(ground_truths_per_image), num_classes), dtype=np.int64)
    for image_idx, (predictions, ground_truths) in enumerate(zip(predictions_per_image, ground_truths_per_image)):
        predictions, ground_truths = checked_image_boxes(predictions, ground_truths, num_classes, image_idx)
        counted_gt = ground_truths[~_outside_area_range(ground_truths[:, 1:5]), 0].astype(np.int64)
        ground_truth_counts[image_idx] = np.bincount(counted_gt, minlength=num_classes)
        per_image.append(_match_image(predictions, ground_truths))
    sizes = [len(classes) for classes, *_ in per_image]
    # An image without detections leads the list so that the arrays get their dtype and width even
    # when no image is given.
    no_detections = _match_image(np.zeros((0, 6)), np.zeros((0, 5)))
    cls, score, true_positive, counted = (np.concatenate(parts) for parts in zip(no_detections, *per_image))
    return DetectionMatches(
        image=np.repeat(np.arange(len(per_image), dtype=np.int64), sizes),
        cls=cls,
        score=score,
        true_positive=true_positive,
        counted=counted,
        ground_truth_counts=ground_truth_counts,
    )


def _class_average_precision(true_positive: np.ndarray, counted: np.ndarray, copies: np.ndarray, gt_total: np.ndarray) -> np.ndarray:
    """(B, T) AP of one class for B samples; detections in pooled score order.

    `copies[b, j]`: how many times detection j's image is in sample b; `gt_total[b] > 0`.
    A detection present k times stands for k consecutive entries of COCO's pooled list.
    Precision is needed at the last copy of each true positive only: it rises along a run of true
    positives and never rises elsewhere, so the envelope from the right at any entry is the
    maximum over the true positives from there on, and every recall threshold is first reached at
    one of them.
    """
    ap = np.zeros((copies.shape[0], true_positive.shape[1]))
    same_counted_at_all_thresholds = bool(np.all(counted == counted[:, :1]))
    counted_sum = np.cumsum(copies * counted[:, 0], axis=1) if same_counted_at_all_thresholds else None
    for t in range(true_positive.shape[1]):
        hits = np.flatnonzero(true_positive[:, t])
        if hits.size == 0:
            continue
        if not same_counted_at_all_thresholds:
            counted_sum = np.cumsum(copies * counted[:, t], axis=1)
        tp_sum = np.cumsum(copies[:, hits], axis=1)
        counted_at_hits = counted_sum[:, hits]
        precision = np.divide(tp_sum, counted_at_hits, out=np.zeros_like(tp_sum), where=counted_at_hits > 0)
        envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
        # Recall thresholds r > 0 newly reached at each true positive; r = 0 is read at the first
        # entry, where the envelope is the maximum over the whole list.
        reached = np.searchsorted(RECALL_THRESHOLDS[1:], tp_sum / gt_total[:, None], side="right")
        newly_reached = np.diff(reached, axis=1, prepend=0)
        ap[:, t] = (envelope[:, 0] + np.sum(envelope * newly_reached, axis=1)) / len(RECALL_THRESHOLDS)
    return ap


def _map_per_threshold(matches: DetectionMatches, image_copies: np.ndarray) -> np.ndarray:
    """(B, T) mAP over classes at each IoU threshold, for B samples given as copies per image (B, I)."""
    gt_total = image_copies @ matches.ground_truth_counts
    ap_sum = np.zeros((len(image_copies), len(IOU_THRESHOLDS)))
    for cls in range(gt_total.shape[1]):
        samples = np.flatnonzero(gt_total[:, cls] > 0)
        if samples.size == 0:
            continue
        in_class = np.flatnonzero(matches.cls == cls)
        pooled = in_class[np.argsort(-matches.score[in_class], kind="stable")]
        true_positive, counted, det_image = matches.true_positive[pooled], matches.counted[pooled], matches.image[pooled]
        chunk = max(1, _CHUNK_ELEMENTS // max(1, len(pooled)))
        for start in range(0, len(samples), chunk):
            rows = samples[start : start + chunk]
            copies = image_copies[rows][:, det_image]
            ap_sum[rows] += _class_average_precision(true_positive, counted, copies, gt_total[rows, cls])
    classes_with_gt = np.count_nonzero(gt_total > 0, axis=1)[:, None]
    return np.divide(ap_sum, classes_with_gt, out=np.zeros_like(ap_sum), where=classes_with_gt > 0)


def pooled_map(matches: DetectionMatches, image_indices: Sequence[int] | np.ndarray | None = None) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of a multiset of images, all images once by default.

    Public API, kept on purpose: the mAP of any subset or resample of the evaluated images without
    running COCO again; the bootstrap computes the same thing for many resamples at once.

    The order of `image_indices` does not matter: equal scores of different images are ranked by
    image index. Matches faster-coco-eval on a data set holding the images with their copies side by
    side, except where an image has two detections of one class with the same score: COCO then
    ranks copy after copy, this ranks detection after detection, which can shift AP slightly.
    """
    if image_indices is None:
        image_copies = np.ones((1, matches.images))
    else:
        image_indices = np.asarray(image_indices, dtype=np.int64)
        if image_indices.size and (image_indices.min() < 0 or image_indices.max() >= matches.images):
            raise ValueError(f"image indices must lie in [0, {matches.images})")
        image_copies = np.bincount(image_indices, minlength=matches.images)[None].astype(np.float64)
    per_threshold = _map_per_threshold(matches, image_copies)[0]
    return float(per_threshold[0]), float(per_threshold.mean())


def _copies_per_image(draws: np.ndarray, images: int) -> np.ndarray:
    """(B, I) how often each image was drawn, from (B, I) drawn image indices."""
    offsets = np.arange(len(draws))[:, None] * images
    return np.bincount((draws + offsets).ravel(), minlength=len(draws) * images).reshape(len(draws), images).astype(np.float64)


def _check_bootstrap(resamples: int, level: float) -> None:
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def _resampled_maps(matches: DetectionMatches, resamples: int, seed: int) -> np.ndarray:
    """(resamples, IoU thresholds) APs of image resamples drawn from `seed`: the same seed and image
    count give the same draws, which is what pairs two models scored on the same images."""
    rng = np.random.default_rng(seed)
    per_threshold = []
    for start in range(0, resamples, _RESAMPLES_PER_BATCH):
        draws = rng.integers(0, matches.images, size=(min(_RESAMPLES_PER_BATCH, resamples - start), matches.images))
        per_threshold.append(_map_per_threshold(matches, _copies_per_image(draws, matches.images)))
    return np.concatenate(per_threshold)


def _percentile_intervals(per_threshold: np.ndarray, level: float, suffix: str) -> dict:
    tail = (1 - level) / 2

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, [tail, 1 - tail])
        return float(low), float(high)

    return {f"map50{suffix}": interval(per_threshold[:, 0]), f"map{suffix}": interval(per_threshold.mean(axis=1))}


def bootstrap_map_intervals(matches: DetectionMatches, resamples: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Percentile bootstrap intervals over images: {"map50_ci": (low, high), "map_ci": (low, high)}.

    Each resample draws as many images as were evaluated, with replacement (numpy Generator seeded
    with `seed`, so a fixed seed gives the same intervals).
    """
    _check_bootstrap(resamples, level)
    if matches.images == 0:
        return {"map50_ci": (0.0, 0.0), "map_ci": (0.0, 0.0)}
    return _percentile_intervals(_resampled_maps(matches, resamples, seed), level, "_ci")


def bootstrap_difference_intervals(
    matches: DetectionMatches, reference: DetectionMatches, resamples: int = 1000, seed: int = 0, level: float = 0.95,
) -> dict:
    """Paired intervals of mAP(`matches`) − mAP(`reference`), two models scored on the same images:
    {"map50_delta_ci": ..., "map_delta_ci": ...}. Every resample draws the same images for both, so
    the image-to-image variation they share cancels; an interval holding 0 is no measurable change.
    Far narrower than comparing the two models' own intervals, which ignores that pairing."""
    _check_bootstrap(resamples, level)
    if matches.images != reference.images:
        raise ValueError(f"paired intervals need the same images: {matches.images} vs {reference.images}")
    if matches.images == 0:
        return {"map50_delta_ci": (0.0, 0.0), "map_delta_ci": (0.0, 0.0)}
    difference = _resampled_maps(matches, resamples, seed) - _resampled_maps(reference, resamples, seed)
    return _percentile_intervals(difference, level, "_delta_ci")


def format_with_interval(value: float, interval: tuple[float, float] | None, digits: int = 4) -> str:
    """`value ± half-width of interval`, e.g. "0.2860 ± 0.0120"; just the value without an interval.

    A percentile interval need not be centred on the value; the ± shows half its width all the same,
    as a size of the uncertainty, not as the interval's exact ends.
    """
    if interval is None:
        return f"{value:.{digits}f}"
    half_width = (interval[1] - interval[0]) / 2
    return f"{value:.{digits}f} ± {half_width:.{digits}f}"
