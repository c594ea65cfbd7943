"""YOLOv3 loss: it trains, it is invariant to target order, and the ignore threshold masks objectness."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from helpers import ROOT, conv, random_darknet
from yoloprune.darknet.model import Darknet
from yoloprune.train.loss import YoloLoss

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"


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


def _one_head_cfg(scale_x_y: float, new_coords: int) -> str:
    """Two stride-2 convs and one two-anchor, two-class head on a 64 px input (16x16 grid). darknet's
    new_coords heads read a conv with a logistic activation; classic ones a linear conv."""
    activation = "logistic" if new_coords else "linear"
    head = (
        f"[convolutional]\nfilters=14\nsize=1\nactivation={activation}\n\n"
        f"[yolo]\nmask=0,1\nanchors=12,16, 40,28\nclasses=2\nnum=2\nscale_x_y={scale_x_y}\nnew_coords={new_coords}\n"
    )
    return "[net]\nwidth=64\nheight=64\n\n" + conv(8, 3, stride=2) + "\n" + conv(16, 3, stride=2) + "\n" + head


@pytest.mark.parametrize("scale_x_y, new_coords", [(1.1, 0), (2.0, 1)], ids=["classic", "new_coords"])
def test_loss_decodes_boxes_as_the_model_and_darknet(scale_x_y, new_coords):
    model = random_darknet(_one_head_cfg(scale_x_y, new_coords), std=0.1)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model.forward_heads(x)[0]  # (2, 2, 16, 16, 7)
        inference = model(x)[..., :4]  # input pixels
    in_cells = YoloLoss.for_model(model).decode_boxes(0, raw, (64, 64))
    stride = 64 / 16
    assert torch.allclose(in_cells.reshape(2, -1, 4) * stride, inference, rtol=1e-5, atol=1e-4)
    # darknet's forward_yolo_layer and get_yolo_box, by hand, in grid cells
    image, anchor, row, col = 1, 1, 3, 5
    t = raw[image, anchor, row, col, :4].tolist()
    anchor_w, anchor_h = 40 / stride, 28 / stride
    if new_coords:  # no sigmoid in the [yolo] layer; sizes (2t)²·anchor
        xy, wh = t[:2], [4 * t[2] ** 2 * anchor_w, 4 * t[3] ** 2 * anchor_h]
    else:
        xy, wh = [1 / (1 + math.exp(-v)) for v in t[:2]], [math.exp(t[2]) * anchor_w, math.exp(t[3]) * anchor_h]
    expected = [xy[0] * scale_x_y - 0.5 * (scale_x_y - 1) + col, xy[1] * scale_x_y - 0.5 * (scale_x_y - 1) + row, *wh]
    assert in_cells[image, anchor, row, col].tolist() == pytest.approx(expected, rel=1e-5)


def test_a_new_coords_head_trains():
    torch.manual_seed(0)
    model = Darknet.from_text(_one_head_cfg(2.0, 1)).train()
    loss_fn = YoloLoss.for_model(model)
    assert loss_fn.codings[0].new_coords
    images, targets = _fixed_batch()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        loss, parts = loss_fn(model(images), targets, images.shape[2:])
        assert all(torch.isfinite(value) for value in parts.values())
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("scale_x_y", [1.0, 1.05, 1.5, 2.0])
def test_neighbour_cells_are_exactly_the_cells_whose_centre_range_holds_the_box_centre(scale_x_y):
    """Oracle: a cell (its own or one of the four edge neighbours) is a positive exactly when the box
    centre, measured from that cell's corner, lies inside the range a centre decoded with this
    scale_x_y can take, [-(s-1)/2, (s+1)/2]; checked cell by cell, with no reference to how the loss
    picks them."""
    from yoloprune.darknet.model import BoxCoding
    from yoloprune.train.loss import _with_neighbour_cells

    generator = torch.Generator().manual_seed(1)
    grid_w, grid_h = 5, 4
    gxy = torch.rand(200, 2, generator=generator) * torch.tensor([grid_w, grid_h])
    cell_x, cell_y = gxy[:, 0].long(), gxy[:, 1].long()
    target_idx, anchor_idx = torch.arange(200), torch.zeros(200, dtype=torch.long)
    got_t, got_a, got_x, got_y = _with_neighbour_cells(target_idx, anchor_idx, gxy, cell_x, cell_y, BoxCoding(scale_x_y), grid_w, grid_h)
    low, high = -(scale_x_y - 1) / 2, (scale_x_y + 1) / 2
    expected = set()
    for t in range(200):
        for dx, dy in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
            x, y = int(cell_x[t]) + dx, int(cell_y[t]) + dy
            offset_x, offset_y = float(gxy[t, 0]) - x, float(gxy[t, 1]) - y
            if 0 <= x < grid_w and 0 <= y < grid_h and low < offset_x < high and low < offset_y < high:
                expected.add((t, x, y))
    got = {(int(t), int(x), int(y)) for t, x, y in zip(got_t, got_x, got_y)}
    assert got == expected
    assert len(got) == len(got_t)  # no cell twice
    assert (got_a == 0).all()
    if scale_x_y == 2.0:
        assert len(got) > 2.5 * 200  # about three cells per box away from the borders


def test_neighbour_cells_train_the_box_of_every_reachable_cell():
    """Through the whole loss: the cells whose box outputs receive a gradient are the positives. With
    scale_x_y = 2 and a centre in the lower-left quarter of its cell, they are its own cell, the one
    on its left and the one below, on each matched anchor; without neighbour cells only its own."""
    from yoloprune.darknet.model import BoxCoding

    anchors = [torch.tensor([[16.0, 16.0]])]  # one head, one anchor: every box matches it
    target = torch.tensor([[0, 0, (2 + 0.3) / 8, (5 + 0.8) / 8, 0.2, 0.2]])  # cell (2, 5) of an 8x8 grid
    positives = {}
    for neighbours in (False, True):
        loss_fn = YoloLoss(anchors, num_classes=1, codings=[BoxCoding(2.0)], neighbour_cells=neighbours, ignore_thresh=1.0)
        raw = torch.randn(1, 1, 8, 8, 6, generator=torch.Generator().manual_seed(0)).requires_grad_()
        loss, _ = loss_fn([raw], target, (64, 64))
        loss.backward()
        box_grad = raw.grad[0, 0, :, :, :4].abs().sum(-1)  # (H, W)
        positives[neighbours] = {(int(x), int(y)) for y, x in box_grad.nonzero().tolist()}
    assert positives[False] == {(2, 5)}
    assert positives[True] == {(2, 5), (1, 5), (2, 6)}
