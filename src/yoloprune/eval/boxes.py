"""Box geometry shared by NMS, evaluation and the loss: format conversion and overlap measures.

Formats: `xyxy` = corners (x1, y1, x2, y2); `cxcywh` = centre and size. Coordinates are in whatever
unit the caller uses (pixels or normalised); the functions never mix units.
"""

from __future__ import annotations

import math

import torch

IOU_KINDS = ("iou", "giou", "diou", "ciou")


def cxcywh_to_xyxy(boxes_cxcywh: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    half_w, half_h = w / 2, h / 2
    return torch.stack((cx - half_w, cy - half_h, cx + half_w, cy + half_h), dim=-1)


def bbox_iou_pairwise(
    a: torch.Tensor,
    b: torch.Tensor,
    x1y1x2y2: bool = False,
    kind: str = "iou",
    eps: float = 1e-7,
) -> torch.Tensor:
    """Overlap of box `a[i]` with box `b[i]` for equal-length sets (..., 4) -> (...); the shapes
    broadcast, so `a[:, None]` against `b[None]` gives the matrix of every pair.

    Boxes are cxcywh unless `x1y1x2y2`. `kind`:
    - "iou": intersection over union;
    - "giou": IoU minus the share of the enclosing box that the union leaves empty;
    - "diou": IoU minus squared centre distance over the squared enclosing-box diagonal;
    - "ciou": DIoU minus an aspect-ratio consistency term α·v. α is computed without gradient:
      it is a weight on v, and differentiating through it would push boxes to change IoU in
      order to shrink the weight rather than to match the target's aspect ratio.
    All are differentiable and lie in [-1, 1] (IoU in [0, 1]).
    """
    if kind not in IOU_KINDS:
        raise ValueError(f"kind must be one of {IOU_KINDS}, got {kind!r}")
    if x1y1x2y2:
        a_xyxy, b_xyxy = a, b
    else:
        a_xyxy, b_xyxy = cxcywh_to_xyxy(a), cxcywh_to_xyxy(b)
    ax1, ay1, ax2, ay2 = a_xyxy.unbind(-1)
    bx1, by1, bx2, by2 = b_xyxy.unbind(-1)
    a_w, a_h = ax2 - ax1, ay2 - ay1
    b_w, b_h = bx2 - bx1, by2 - by1
    inter_w = (torch.minimum(ax2, bx2) - torch.maximum(ax1, bx1)).clamp(min=0)
    inter_h = (torch.minimum(ay2, by2) - torch.maximum(ay1, by1)).clamp(min=0)
    intersection = inter_w * inter_h
    union = a_w * a_h + b_w * b_h - intersection + eps
    iou = intersection / union
    if kind == "iou":
        return iou
    enclose_w = torch.maximum(ax2, bx2) - torch.minimum(ax1, bx1)
    enclose_h = torch.maximum(ay2, by2) - torch.minimum(ay1, by1)
    if kind == "giou":
        enclose_area = enclose_w * enclose_h + eps
        return iou - (enclose_area - union) / enclose_area
    diagonal_sq = enclose_w**2 + enclose_h**2 + eps
    centre_dist_sq = ((ax1 + ax2 - bx1 - bx2) ** 2 + (ay1 + ay2 - by1 - by2) ** 2) / 4
    diou = iou - centre_dist_sq / diagonal_sq
    if kind == "diou":
        return diou
    v = (4 / math.pi**2) * (torch.atan(b_w / (b_h + eps)) - torch.atan(a_w / (a_h + eps))) ** 2
    with torch.no_grad():
        alpha = v / (1 - iou + v + eps)
    return diou - alpha * v
