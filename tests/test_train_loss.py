"""YOLOv3 loss: it trains, it is invariant to target order, and the ignore threshold masks objectness."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from yoloprune.darknet.model import Darknet
from yoloprune.train.loss import YoloLoss

NANO_CFG = Path(__file__).resolve().parents[1] / "configs" / "yolov3-hand-nano.cfg"


def _fixed_batch(img_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, img_size, img_size, generator=generator)
    targets = torch.tensor(
        [
            [0, 0, 0.50, 0.50, 0.30, 0.40],
            [1, 0, 0.20, 0.30, 0.10, 0.12],
            [1, 0, 0.70, 0.65, 0.50, 0.30],
            [3, 0, 0.40, 0.60, 0.20, 0.60],
        ]
    )
    return images, targets


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = Darknet(str(NANO_CFG)).train()
    loss_fn = YoloLoss.for_model(model)
    images, targets = _fixed_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        loss, parts = loss_fn(model(images), targets, images.shape[2:])
        assert set(parts) == {"box", "obj", "cls"}
        assert all(torch.isfinite(value) for value in parts.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_loss_does_not_depend_on_target_order_and_handles_no_targets():
    torch.manual_seed(0)
    model = Darknet(str(NANO_CFG)).train()
    loss_fn = YoloLoss.for_model(model)
    images, targets = _fixed_batch()
    heads = model(images)
    loss, _ = loss_fn(heads, targets, images.shape[2:])
    shuffled, _ = loss_fn(heads, targets[torch.tensor([2, 0, 3, 1])], images.shape[2:])
    assert torch.allclose(loss, shuffled, rtol=1e-5)
    empty_loss, empty_parts = loss_fn(heads, torch.zeros((0, 6)), images.shape[2:])
    assert torch.isfinite(empty_loss) and float(empty_parts["box"]) == 0.0 and float(empty_parts["obj"]) > 0


def _single_head_loss(ignore_thresh: float, anchor_iou_thresh: float | None = None) -> YoloLoss:
    anchors = [torch.tensor([[16.0, 16.0], [40.0, 40.0]])]
    return YoloLoss(anchors, num_classes=2, ignore_thresh=ignore_thresh, anchor_iou_thresh=anchor_iou_thresh)


def test_ignore_threshold_removes_objectness_loss_of_good_negatives():
    # One 4x4 head over a 64 px image (stride 16). The target (class 1) sits in cell (1, 1) and
    # matches anchor 1 best. The prediction of anchor 0 in the neighbouring cell (1, 2) is made to
    # decode onto nearly the same box, so it is a negative that the ignore threshold must spare.
    img_size, grid = 64, 4
    target = torch.tensor([[0, 1, 0.375, 0.375, 0.5, 0.5]])  # centre (24, 24) px, 32x32 px
    raw = torch.zeros(1, 2, grid, grid, 7)
    # Anchor 0 is 16 px: exp(tw) = 2 makes 32 px. Cell x=2 spans 32..48 px; a centre at 24 px is out of
    # reach (sigmoid in (0, 1)), so aim at 32.5 px: still IoU ≈ 0.6 with the target.
    raw[0, 0, 1, 2, 0] = torch.logit(torch.tensor(0.5 / 16))
    raw[0, 0, 1, 2, 1] = torch.logit(torch.tensor(0.5))
    raw[0, 0, 1, 2, 2:4] = torch.log(torch.tensor(2.0))
    raw.requires_grad_(True)
    for ignore_thresh, expect_ignored in ((0.5, True), (1.0, False)):
        raw.grad = None
        loss, _ = _single_head_loss(ignore_thresh)(([raw]), target, (img_size, img_size))
        loss.backward()
        obj_grad = raw.grad[..., 4]
        assert (obj_grad[0, 0, 1, 2] == 0) == expect_ignored
        assert obj_grad[0, 0, 3, 3] != 0  # a far-away negative always counts
        assert obj_grad[0, 1, 1, 1] != 0  # the positive always counts


@pytest.mark.parametrize("anchor_iou_thresh, expected_positive_anchors", [(None, {1}), (0.1, {0, 1})])
def test_targets_go_to_the_best_anchor_and_optionally_to_others_above_threshold(anchor_iou_thresh, expected_positive_anchors):
    img_size, grid = 64, 4
    target = torch.tensor([[0, 0, 0.375, 0.375, 0.5, 0.5]])  # 32x32 px: wh-IoU 0.25 with anchor 0, 0.64 with anchor 1
    raw = torch.zeros(1, 2, grid, grid, 7, requires_grad=True)
    loss, _ = _single_head_loss(ignore_thresh=1.0, anchor_iou_thresh=anchor_iou_thresh)([raw], target, (img_size, img_size))
    loss.backward()
    box_grad_anchors = {a for a in range(2) if raw.grad[0, a, 1, 1, :4].abs().sum() > 0}
    assert box_grad_anchors == expected_positive_anchors
    assert raw.grad[..., :4].abs().sum() == sum(raw.grad[0, a, 1, 1, :4].abs().sum() for a in range(2))
