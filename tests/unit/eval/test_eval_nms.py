"""NMS against a brute-force greedy reference, and the box geometry shared with the loss."""

from __future__ import annotations

import math

import pytest
import torch

from yoloprune.eval.boxes import bbox_iou_pairwise, cxcywh_to_xyxy
from yoloprune.eval.nms import nms_indices, non_max_suppression


def random_predictions(seed: int, images: int = 3, anchors: int = 150, classes: int = 3) -> torch.Tensor:
    """Decoded-model-like output: boxes crowded into a small field so that many overlap."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(images, anchors, 2, generator=generator, dtype=torch.float64) * 100
    sizes = 5 + torch.rand(images, anchors, 2, generator=generator, dtype=torch.float64) * 40
    objectness = torch.rand(images, anchors, 1, generator=generator, dtype=torch.float64)
    class_probs = torch.rand(images, anchors, classes, generator=generator, dtype=torch.float64)
    return torch.cat([centres, sizes, objectness, class_probs], dim=-1)


def reference_iou(a, b) -> float:
    inter_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    inter_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    intersection = inter_w * inter_h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - intersection
    return intersection / union


def reference_nms(prediction: list[list[float]], conf_thres: float, iou_thres: float, max_det: int, multi_label: bool):
    """Textbook greedy NMS, one box at a time, in plain Python."""
    candidates = []
    for cx, cy, w, h, objectness, *class_probs in prediction:
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
        scored = [(objectness * p, c) for c, p in enumerate(class_probs)]
        if not multi_label:
            best_class = max(range(len(class_probs)), key=lambda c: class_probs[c])
            scored = [scored[best_class]]
        candidates += [(box, score, c) for score, c in scored if score > conf_thres]
    candidates.sort(key=lambda item: -item[1])
    kept = []
    for box, score, c in candidates:
        if all(kept_c != c or reference_iou(kept_box, box) <= iou_thres for kept_box, _, kept_c in kept):
            kept.append((box, score, c))
    return [box + [score, float(c)] for box, score, c in kept[:max_det]]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("iou_thres", [0.3, 0.6])
@pytest.mark.parametrize("multi_label", [False, True])
def test_nms_matches_brute_force_greedy(seed, iou_thres, multi_label):
    predictions = random_predictions(seed)
    conf_thres, max_det = 0.05, 40
    results = non_max_suppression(predictions, conf_thres, iou_thres, max_det=max_det, multi_label=multi_label)
    assert len(results) == predictions.shape[0]
    for prediction, result in zip(predictions, results):
        expected = reference_nms(prediction.tolist(), conf_thres, iou_thres, max_det, multi_label)
        assert result.shape == (len(expected), 6)
        if expected:
            torch.testing.assert_close(result, torch.tensor(expected, dtype=result.dtype))


def test_nms_never_suppresses_across_classes():
    boxes_xyxy = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [1, 1, 10, 10]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert nms_indices(boxes_xyxy, scores, 0.5, groups=torch.tensor([0, 1, 1])).tolist() == [0, 1]
    assert nms_indices(boxes_xyxy, scores, 0.5).tolist() == [0]


def test_nms_candidate_cap_keeps_the_full_results_best_survivors():
    predictions = random_predictions(seed=7, images=1, anchors=300)
    full = non_max_suppression(predictions, 0.01, 0.5, max_det=300)[0]
    capped = non_max_suppression(predictions, 0.01, 0.5, max_det=300, max_candidates=60)[0]
    # Survivors among the 60 best candidates are exactly the full result's detections scoring that high.
    assert 0 < len(capped) <= 60
    torch.testing.assert_close(capped, full[: len(capped)])
    assert len(full) == len(capped) or full[len(capped), 4] <= capped[-1, 4]


def test_nms_handles_nothing_above_threshold_and_empty_batches():
    predictions = random_predictions(seed=0)
    predictions[..., 4] = 0.0
    assert all(r.shape == (0, 6) for r in non_max_suppression(predictions, 0.01, 0.5))
    assert non_max_suppression(torch.zeros(0, 10, 7)) == []
    with pytest.raises(ValueError):
        non_max_suppression(torch.zeros(10, 7))


def test_cxcywh_to_xyxy_corners():
    boxes_cxcywh = torch.tensor([[10.0, 20.0, 4.0, 6.0], [0.5, 0.5, 1.0, 0.2]], dtype=torch.float64)
    expected = torch.tensor([[8.0, 17.0, 12.0, 23.0], [0.0, 0.4, 1.0, 0.6]], dtype=torch.float64)
    torch.testing.assert_close(cxcywh_to_xyxy(boxes_cxcywh), expected)


def test_pairwise_iou_broadcasts_to_a_matrix():
    """Boxes (N, 1, 4) against (1, M, 4) give the (N, M) IoU matrix, as the INT8 test matches detections."""
    generator = torch.Generator().manual_seed(0)
    a = cxcywh_to_xyxy(torch.rand(20, 4, generator=generator, dtype=torch.float64) * 50 + 1)
    b = cxcywh_to_xyxy(torch.rand(30, 4, generator=generator, dtype=torch.float64) * 50 + 1)
    matrix = bbox_iou_pairwise(a[:, None], b[None], x1y1x2y2=True, kind="iou", eps=0.0)
    assert matrix.shape == (20, 30)
    expected = torch.tensor([[reference_iou(x, y) for y in b.tolist()] for x in a.tolist()], dtype=torch.float64)
    torch.testing.assert_close(matrix, expected)
    torch.testing.assert_close(bbox_iou_pairwise(b[:, None], a[None], x1y1x2y2=True, kind="iou", eps=0.0), matrix.T)


@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_overlap_measures_bounds_and_identity(kind):
    generator = torch.Generator().manual_seed(1)
    a = torch.rand(200, 4, generator=generator, dtype=torch.float64) * 50 + 1  # cxcywh
    b = torch.rand(200, 4, generator=generator, dtype=torch.float64) * 50 + 1
    values = bbox_iou_pairwise(a, b, kind=kind)
    iou = bbox_iou_pairwise(a, b, kind="iou")
    assert values.shape == (200,)
    assert torch.all(values <= iou + 1e-12) and torch.all(values >= -1) and torch.all(values <= 1)
    torch.testing.assert_close(bbox_iou_pairwise(a, a, kind=kind), torch.ones(200, dtype=torch.float64))
    same_in_xyxy = bbox_iou_pairwise(cxcywh_to_xyxy(a), cxcywh_to_xyxy(b), x1y1x2y2=True, kind=kind)
    torch.testing.assert_close(same_in_xyxy, values)


def test_penalised_measures_rank_disjoint_boxes_by_distance():
    near = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[12.0, 0.0, 22.0, 10.0]])
    far = torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([[50.0, 0.0, 60.0, 10.0]])
    for kind in ("giou", "diou", "ciou"):
        near_value = bbox_iou_pairwise(*near, x1y1x2y2=True, kind=kind)
        far_value = bbox_iou_pairwise(*far, x1y1x2y2=True, kind=kind)
        assert far_value < near_value < 0


def test_ciou_is_differentiable_and_penalises_aspect_mismatch():
    target = torch.tensor([[20.0, 20.0, 10.0, 10.0]])
    wide = torch.tensor([[20.0, 20.0, 20.0, 5.0]], requires_grad=True)  # same area, other aspect
    ciou = bbox_iou_pairwise(wide, target, kind="ciou")
    diou = bbox_iou_pairwise(wide, target, kind="diou")
    assert ciou < diou  # same centre, so the gap is the aspect-ratio term
    (1 - ciou).sum().backward()
    assert wide.grad is not None and torch.isfinite(wide.grad).all()
    assert wide.grad[0, 2] > 0 and wide.grad[0, 3] < 0  # loss falls by narrowing and heightening
    with pytest.raises(ValueError):
        bbox_iou_pairwise(target, target, kind="siou")
    assert not math.isnan(float(ciou.detach()))
