"""Bootstrap intervals of mAP: per-image COCO matching pooled again, checked against faster-coco-eval."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from yoloprune.eval.bootstrap import (
    IOU_THRESHOLDS,
    MAX_DETECTIONS,
    RECALL_THRESHOLDS,
    bootstrap_difference_intervals,
    bootstrap_map_intervals,
    format_with_interval,
    match_detections,
    pooled_map,
)
from yoloprune.eval.evaluate import compute_detection_metrics, evaluate_model

CLASSES = 4  # the last class never has ground truth


def random_case(seed: int, images: int = 12) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Detections near ground truth with small to large offsets, far-off ones, tied scores, empty
    images, a class without ground truth and, now and then, an image with more than 100 detections."""
    rng = np.random.default_rng(seed)
    predictions, ground_truths = [], []
    for _ in range(images):
        count = int(rng.integers(0, 6))
        top_left = rng.uniform(0, 200, (count, 2))
        gt = np.hstack([rng.integers(0, CLASSES - 1, (count, 1)), top_left, top_left + rng.uniform(5, 60, (count, 2))])
        detections = int(rng.integers(101, 160)) if rng.random() < 0.2 else int(rng.integers(0, 15))
        if count:
            targets = gt[rng.integers(0, count, detections)]
            boxes = targets[:, 1:5] + rng.normal(0, rng.choice([1.0, 4.0, 12.0]), (detections, 4))
            classes = np.where(rng.random(detections) < 0.8, targets[:, 0], rng.integers(0, CLASSES, detections))
        else:
            corner = rng.uniform(0, 200, (detections, 2))
            boxes = np.hstack([corner, corner + rng.uniform(5, 60, (detections, 2))])
            classes = rng.integers(0, CLASSES, detections)
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1)
        scores = np.round(rng.uniform(0, 1, detections), int(rng.choice([1, 2, 6])))  # 1-2 decimals: many ties
        predictions.append(np.column_stack([boxes, scores, classes]))
        ground_truths.append(gt)
    return predictions, ground_truths


def grid_case(seed: int, images: int = 10, inverted: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Boxes on a coarse integer grid: IoUs equal across ground truths and exactly at thresholds
    (1/2, 3/5, 2/3, ...), quarter-step scores; optionally some boxes inverted (x2 < x1), which COCO
    ignores."""
    rng = np.random.default_rng(seed)
    predictions, ground_truths = [], []
    for _ in range(images):
        count, detections = int(rng.integers(0, 7)), int(rng.integers(0, 15))
        corner, size = rng.integers(0, 10, (count, 2)) * 4.0, rng.integers(1, 5, (count, 2)) * 4.0
        gt = np.hstack([rng.integers(0, CLASSES, (count, 1)), corner, corner + size])
        corner, size = rng.integers(0, 10, (detections, 2)) * 4.0, rng.integers(1, 5, (detections, 2)) * 4.0
        boxes = np.hstack([corner, corner + size])
        if inverted:
            flip = rng.random(detections) < 0.2
            boxes[flip] = boxes[flip][:, [2, 1, 0, 3]]
            flip = rng.random(count) < 0.2
            gt[flip, 1:5] = gt[flip][:, [3, 2, 1, 4]]
        scores = rng.integers(0, 4, detections) / 4
        predictions.append(np.column_stack([boxes, scores, rng.integers(0, CLASSES, detections)]))
        ground_truths.append(gt)
    return predictions, ground_truths


def realistic_case(seed: int, images: int, classes: int = 5, detections: int = 40) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A mediocre detector: a quarter of the detections near objects with high scores, the rest
    scattered with low scores."""
    rng = np.random.default_rng(seed)
    predictions, ground_truths = [], []
    for _ in range(images):
        count = int(rng.integers(1, 8))
        top_left = rng.uniform(0, 500, (count, 2))
        gt = np.hstack([rng.integers(0, classes, (count, 1)), top_left, top_left + rng.uniform(10, 150, (count, 2))])
        hits = gt[rng.integers(0, count, detections // 4)]
        corner = rng.uniform(0, 500, (detections - len(hits), 2))
        scattered = np.hstack([corner, corner + rng.uniform(10, 150, corner.shape)])
        boxes = np.vstack([hits[:, 1:5] + rng.normal(0, 6, (len(hits), 4)), scattered])
        scores = np.concatenate([rng.beta(5, 2, len(hits)), rng.beta(1, 6, len(corner))])
        classes_column = np.concatenate([hits[:, 0], rng.integers(0, classes, len(corner))])
        predictions.append(np.column_stack([boxes, scores, classes_column]))
        ground_truths.append(gt)
    return predictions, ground_truths


def coco_maps(predictions, ground_truths, num_classes=CLASSES) -> tuple[float, float]:
    metrics = compute_detection_metrics(predictions, ground_truths, num_classes)
    return metrics.map50, metrics.map


def test_thresholds_are_faster_coco_evals():
    from faster_coco_eval.core.cocoeval import Params

    params = Params(iouType="bbox")
    assert np.array_equal(IOU_THRESHOLDS, params.iouThrs) and np.array_equal(RECALL_THRESHOLDS, params.recThrs)
    assert MAX_DETECTIONS == params.maxDets[-1]


@pytest.mark.parametrize("first_seed", range(0, 60, 10))
def test_all_images_once_equals_faster_coco_eval(first_seed):
    for seed in range(first_seed, first_seed + 10):
        predictions, ground_truths = random_case(seed)
        expected = coco_maps(predictions, ground_truths)
        assert pooled_map(match_detections(predictions, ground_truths, CLASSES)) == pytest.approx(expected, abs=1e-12), seed


@pytest.mark.parametrize("inverted", [False, True])
def test_exact_iou_ties_and_ignored_boxes_equal_faster_coco_eval(inverted):
    for seed in range(40):
        predictions, ground_truths = grid_case(seed, inverted=inverted)
        expected = coco_maps(predictions, ground_truths)
        assert pooled_map(match_detections(predictions, ground_truths, CLASSES)) == pytest.approx(expected, abs=1e-12), seed


def test_equal_iou_goes_to_the_ground_truth_listed_last():
    ground_truth = [np.array([[0, 0, 0, 10, 10], [0, 5, 0, 15, 10]], float)]
    # The first detection overlaps both boxes with IoU 0.6; COCO gives it the second, which leaves
    # the first box to the second detection, a copy of it.
    predictions = [np.array([[2.5, 0, 12.5, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]], float)]
    assert pooled_map(match_detections(predictions, ground_truth, 1))[0] == pytest.approx(1.0)
    assert coco_maps(predictions, ground_truth, 1)[0] == pytest.approx(1.0)


def test_random_cases_cover_what_they_claim():
    predictions, ground_truths = zip(*(random_case(seed) for seed in range(10)))
    predictions, ground_truths = sum(predictions, []), sum(ground_truths, [])
    assert any(len(gt) == 0 for gt in ground_truths)
    assert not any((gt[:, 0] == CLASSES - 1).any() for gt in ground_truths)
    assert any((p[:, 5] == CLASSES - 1).any() for p in predictions)
    assert any(np.bincount(p[:, 5].astype(int), minlength=CLASSES).max() > MAX_DETECTIONS for p in predictions)
    assert any(len(np.unique(p[:, 4])) < len(p) for p in predictions)


def test_only_the_top_100_detections_per_image_and_class_count():
    ground_truth = [np.array([[0, 0, 0, 10, 10], [1, 50, 50, 60, 60]], float)]
    miss = [100, 100, 110, 110, 0.9]
    # Class 0's hit ranks 101st in its class and is cut; class 1's ranks 51st in its class, 151st in
    # the image, and counts.
    predictions = [np.array([miss + [0]] * 100 + [miss + [1]] * 50 + [[0, 0, 10, 10, 0.5, 0], [50, 50, 60, 60, 0.5, 1]], float)]
    matches = match_detections(predictions, ground_truth, 2)
    assert np.bincount(matches.cls).tolist() == [MAX_DETECTIONS, 51]
    assert pooled_map(matches)[0] == pytest.approx((0 + 1 / 51) / 2)
    assert pooled_map(matches) == pytest.approx(coco_maps(predictions, ground_truth, 2), abs=1e-12)


def test_duplicated_images_equal_faster_coco_eval_on_the_duplicated_data_set():
    rng = np.random.default_rng(7)
    for seed in range(15):
        predictions, ground_truths = random_case(seed)
        # Scores distinct within an image, shared across images: an image's copies are then ranked as
        # COCO ranks them (see `pooled_map` for ties inside one image).
        for p in predictions:
            p[:, 4] = rng.choice(np.arange(1, 201) / 200, len(p), replace=False)
        indices = np.sort(rng.integers(0, len(ground_truths), 2 * len(ground_truths)))
        expected = coco_maps([predictions[i] for i in indices], [ground_truths[i] for i in indices])
        matches = match_detections(predictions, ground_truths, CLASSES)
        assert pooled_map(matches, indices) == pytest.approx(expected, abs=1e-12), seed
        assert pooled_map(matches, rng.permutation(indices)) == pooled_map(matches, indices)


def test_interval_contains_the_point_estimate_and_narrows_with_more_images():
    widths = {}
    for images in (50, 200):
        predictions, ground_truths = realistic_case(0, images)
        metrics = compute_detection_metrics(predictions, ground_truths, 5, intervals=True, resamples=300)
        assert metrics.map50_ci[0] < metrics.map50 < metrics.map50_ci[1]
        assert metrics.map_ci[0] < metrics.map < metrics.map_ci[1]
        widths[images] = (metrics.map50_ci[1] - metrics.map50_ci[0], metrics.map_ci[1] - metrics.map_ci[0])
    # 4x the images: about half the width (1/sqrt(4)); allow for the bootstrap's own noise.
    assert widths[200][0] < 0.75 * widths[50][0] and widths[200][1] < 0.75 * widths[50][1]


def test_intervals_are_deterministic_for_a_seed():
    matches = match_detections(*realistic_case(1, 40), 5)
    first = bootstrap_map_intervals(matches, resamples=200, seed=3)
    assert bootstrap_map_intervals(matches, resamples=200, seed=3) == first
    assert bootstrap_map_intervals(matches, resamples=200, seed=4) != first
    narrower = bootstrap_map_intervals(matches, resamples=200, seed=3, level=0.5)
    assert first["map_ci"][0] <= narrower["map_ci"][0] <= narrower["map_ci"][1] <= first["map_ci"][1]


def test_bad_bootstrap_settings_raise():
    matches = match_detections(*realistic_case(1, 5), 5)
    with pytest.raises(ValueError, match="resamples"):
        bootstrap_map_intervals(matches, resamples=0)
    with pytest.raises(ValueError, match="level"):
        bootstrap_map_intervals(matches, level=1.0)
    with pytest.raises(ValueError, match="image indices"):
        pooled_map(matches, [0, 5])


def test_metrics_carry_intervals_only_when_asked_and_keep_their_values():
    predictions, ground_truths = realistic_case(2, 30)
    plain = compute_detection_metrics(predictions, ground_truths, 5)
    with_intervals = compute_detection_metrics(predictions, ground_truths, 5, intervals=True, resamples=100, seed=1)
    assert plain.map50_ci is None and plain.map_ci is None
    assert plain.to_dict()["map_ci"] is None
    values = with_intervals.to_dict()
    assert {**values, "map50_ci": None, "map_ci": None} == plain.to_dict()  # the point values are unchanged
    assert isinstance(values["map50_ci"], list) and len(values["map50_ci"]) == 2
    assert json.loads(json.dumps(values))["map_ci"] == values["map_ci"]
    expected = bootstrap_map_intervals(match_detections(predictions, ground_truths, 5), resamples=100, seed=1)
    assert with_intervals.map50_ci == expected["map50_ci"] and with_intervals.map_ci == expected["map_ci"]


def test_no_ground_truth_gives_zero_intervals():
    predictions = [np.array([[0, 0, 10, 10, 0.9, 1]], float)] * 3
    metrics = compute_detection_metrics(predictions, [np.zeros((0, 5))] * 3, CLASSES, intervals=True, resamples=20)
    assert metrics.map50_ci == metrics.map_ci == (0.0, 0.0)


class OneImageModel(torch.nn.Module):
    """Outputs one decoded box `[cx, cy, w, h, obj, class scores]` per image, the same every call."""

    num_classes = 1

    def forward(self, images):
        box = torch.tensor([16.0, 16.0, 8.0, 8.0, 0.9, 1.0])
        return box.expand(len(images), 1, 6)


def test_evaluate_model_passes_intervals_through():
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.25, 0.25], [1, 0, 0.1, 0.1, 0.1, 0.1]])  # image 0 found, image 1 missed
    batches = [(torch.zeros(2, 3, 32, 32), targets, ["a.jpg", "b.jpg"])] * 3
    metrics = evaluate_model(OneImageModel(), batches, progress=False, intervals=True)
    assert metrics.map50_ci is not None and metrics.map50_ci[0] <= metrics.map50 <= metrics.map50_ci[1]
    assert evaluate_model(OneImageModel(), batches, progress=False).map50_ci is None


def test_format_with_interval_shows_the_half_width():
    assert format_with_interval(0.286, (0.274, 0.298)) == "0.2860 ± 0.0120"
    assert format_with_interval(0.286, (0.27, 0.31)) == "0.2860 ± 0.0200"  # asymmetric: half the width still
    assert format_with_interval(0.286, None) == "0.2860"
    assert format_with_interval(0.5, (0.4, 0.6), digits=2) == "0.50 ± 0.10"


def test_paired_difference_intervals_pair_the_images():
    """A model against itself differs by exactly 0; swapping the two mirrors the interval; a model
    that lost some of its best detections is measurably worse, and the paired interval is narrower
    than the two models' own intervals would suggest."""
    predictions, ground_truths = realistic_case(3, 200)
    weaker = [p[p[:, 4] < np.quantile(p[:, 4], 0.97)] if len(p) else p for p in predictions]  # drops each image's top 3 %
    matches, weaker_matches = (match_detections(p, ground_truths, 5) for p in (predictions, weaker))
    assert bootstrap_difference_intervals(matches, matches, resamples=200) == {"map50_delta_ci": (0.0, 0.0), "map_delta_ci": (0.0, 0.0)}
    down = bootstrap_difference_intervals(weaker_matches, matches, resamples=300)
    up = bootstrap_difference_intervals(matches, weaker_matches, resamples=300)
    assert down["map50_delta_ci"] == pytest.approx((-up["map50_delta_ci"][1], -up["map50_delta_ci"][0]))
    point = pooled_map(weaker_matches)[0] - pooled_map(matches)[0]
    assert down["map50_delta_ci"][0] <= point <= down["map50_delta_ci"][1] < 0
    own = [bootstrap_map_intervals(m, resamples=300)["map50_ci"] for m in (matches, weaker_matches)]
    paired_width = down["map50_delta_ci"][1] - down["map50_delta_ci"][0]
    assert paired_width < 0.5 * sum(high - low for low, high in own)
    with pytest.raises(ValueError, match="same images"):
        bootstrap_difference_intervals(match_detections(predictions[:10], ground_truths[:10], 5), matches)
