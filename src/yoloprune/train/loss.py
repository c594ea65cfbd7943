"""YOLOv3 loss on the raw head maps `(N, A, H, W, 5 + C)` of a `Darknet` in training mode.

Target assignment: each ground-truth box goes to the grid cell holding its centre, on the anchor
(over all heads) whose width/height best matches it (IoU of the two boxes placed at one centre);
with `anchor_iou_thresh` set, also to every other anchor whose wh-IoU exceeds it, which gives
more positives per box and trains faster on small datasets. With `neighbour_cells`, each of those
positives is repeated in the adjacent cells (left/right, up/down) whose predicted centre can still
reach the box centre: with `scale_x_y=2` a cell's centre spans [-0.5, 1.5] cells, so a centre in
the left half of its cell is reachable from the cell on its left too (YOLOv5's assignment, up to
three cells per anchor). A head whose centres cannot leave their cell (`scale_x_y=1`) gets none.

Terms (each a mean, so the weights below are comparable across image and batch sizes):
- box: 1 - CIoU between the decoded prediction and its target, over positives. IoU-family losses
  are scale-invariant and optimise the overlap that mAP measures; CIoU adds a centre-distance term
  that still has a gradient when boxes do not overlap, and an aspect-ratio term. Classic MSE on
  (tx, ty, tw, th) needs a hand-tuned size weighting and converges more slowly.
- obj: BCE over all cells of each head, mean over the cells that count. Positives have as target
  their detached IoU (`obj_iou_ratio` = 1, the default; 0 gives target 1), so that confidence ranks
  boxes by localisation quality and a duplicate on a second anchor scores lower than the best box
  (with target 1 the overfit test's precision halves), and weight `obj_pos_weight`: a 256 px image has ~4000 cells and a handful
  of positives, and without the weight the all-negative answer dominates the gradient for
  thousands of steps, longer than a CPU training budget. Negatives whose decoded box overlaps any
  ground truth of their image by more than `ignore_thresh` are left out (they are reasonable
  detections; punishing them fights the box term). Heads are weighted by `head_balance` (finer
  grids hold many more negatives, so their mean is smaller).
- cls: BCE over the class logits of positives (one-hot targets).

Boxes are decoded as the model's [yolo] layers decode them (`BoxCoding`: `scale_x_y`, and darknet's
`new_coords=1`, whose heads output probabilities and (2t)²-sized boxes rather than logits and exp(t)).

`total = (box_weight·box + obj_weight·obj + cls_weight·cls + extra terms) · batch_size`, i.e. a sum
over images, so the learning rate does not depend on the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yoloprune.darknet.model import BoxCoding
from yoloprune.eval.boxes import bbox_iou_pairwise

# Per-head objectness weights, finest grid first, used when a model has exactly three heads.
THREE_HEAD_BALANCE = (4.0, 1.0, 0.4)
# exp(t) of the size logits is clamped here: a diverging early step must not produce inf boxes.
MAX_SIZE_LOGIT = 6.0


def _clamp_keep_grad(logits: torch.Tensor, maximum: float) -> torch.Tensor:
    """Clamp the value but pass the gradient straight through, so an oversized box is still pulled back."""
    return logits - (logits - logits.clamp(max=maximum)).detach()


def _raw_boxes(raw: torch.Tensor) -> torch.Tensor:
    """The raw box values with the size clamped for exp(t); new_coords sizes, probabilities, never reach it."""
    return torch.cat((raw[..., :2], _clamp_keep_grad(raw[..., 2:4], MAX_SIZE_LOGIT)), dim=-1)


def _bce(raw: torch.Tensor, target: torch.Tensor, coding: BoxCoding, reduction: str = "none") -> torch.Tensor:
    """BCE of objectness or class scores, whether the head outputs logits or (new_coords) probabilities."""
    return F.binary_cross_entropy_with_logits(coding.logits(raw), target, reduction=reduction)


def _with_neighbour_cells(
    target_idx: torch.Tensor, anchor_idx: torch.Tensor, gxy: torch.Tensor, cell_x: torch.Tensor, cell_y: torch.Tensor,
    coding: BoxCoding, grid_w: int, grid_h: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positives plus their copies in the left/right and upper/lower neighbour cell whose
    centre range (`coding.scale_x_y` around the cell: [-(s-1)/2, (s+1)/2] cells) holds the box centre."""
    reach = (coding.scale_x_y - 1) / 2  # how far outside its own cell a centre can go
    if reach <= 0:
        return target_idx, anchor_idx, cell_x, cell_y
    frac = gxy - torch.stack((cell_x, cell_y), 1).float()  # the centre within its cell, [0, 1]
    limits = torch.tensor([grid_w - 1, grid_h - 1], device=gxy.device)
    cells = torch.stack((cell_x, cell_y), 1)
    copies = [(target_idx, anchor_idx, cells)]
    for axis in (0, 1):
        for step, near in ((-1, frac[:, axis] < reach), (1, frac[:, axis] > 1 - reach)):
            moved = cells[near].clone()
            moved[:, axis] += step
            inside = (moved[:, axis] >= 0) & (moved[:, axis] <= limits[axis])
            copies.append((target_idx[near][inside], anchor_idx[near][inside], moved[inside]))
    target_idx, anchor_idx, cells = (torch.cat(parts) for parts in zip(*copies))
    return target_idx, anchor_idx, cells[:, 0], cells[:, 1]


@dataclass
class LossWeights:
    box: float = 0.05
    obj: float = 1.0
    cls: float = 0.5


class YoloLoss(nn.Module):
    """`loss(heads, targets, img_hw) -> (total, {"box", "obj", "cls"})`.

    `targets` is the data contract's `(M, 6)` float tensor `[img_idx, cls, cx, cy, w, h]`, normalised
    to the input image. Anchors come from the model's `[yolo]` layers (input pixels), and so does
    each head's box coding (default: classic YOLOv3 decoding for every head).
    """

    def __init__(
        self,
        anchors_per_head: list[torch.Tensor],
        num_classes: int,
        weights: LossWeights | None = None,
        ignore_thresh: float = 0.7,
        anchor_iou_thresh: float | None = 0.25,
        obj_iou_ratio: float = 1.0,
        obj_pos_weight: float = 20.0,
        head_balance: tuple[float, ...] | None = None,
        box_kind: str = "ciou",
        codings: list[BoxCoding] | None = None,
        neighbour_cells: bool = False,
    ):
        super().__init__()
        self.anchors_per_head = [a.detach().float().cpu().clone() for a in anchors_per_head]
        self.codings = list(codings) if codings is not None else [BoxCoding()] * len(anchors_per_head)
        if len(self.codings) != len(self.anchors_per_head):
            raise ValueError(f"{len(self.codings)} box codings for {len(self.anchors_per_head)} heads")
        self.num_classes = num_classes
        self.weights = weights or LossWeights()
        self.ignore_thresh = ignore_thresh
        self.anchor_iou_thresh = anchor_iou_thresh
        self.obj_iou_ratio = obj_iou_ratio
        self.obj_pos_weight = obj_pos_weight
        self.head_balance = head_balance
        self.box_kind = box_kind
        self.neighbour_cells = neighbour_cells

    @classmethod
    def for_model(cls, model: nn.Module, **options) -> "YoloLoss":
        """Loss for a `Darknet` (or a DDP/EMA wrapper's `.module`); `ignore_thresh` defaults to the cfg's."""
        model = getattr(model, "module", model)
        if "ignore_thresh" not in options:
            first_yolo = model.cfg.layers[model.yolo_indices[0]]
            options["ignore_thresh"] = float(first_yolo.extra.get("ignore_thresh", 0.7))
        anchors = [yolo.anchors for yolo in model.yolo_layers]
        return cls(anchors, model.num_classes, codings=[yolo.coding for yolo in model.yolo_layers], **options)

    def decode_boxes(self, head_idx: int, raw: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
        """Every prediction's box `(N, A, H, W, 4)` as the loss sees it: centre (from the grid's
        corner) and size in grid cells of head `head_idx`."""
        _, num_anchors, grid_h, grid_w, _ = raw.shape
        grid_y, grid_x = torch.meshgrid(torch.arange(grid_h, device=raw.device), torch.arange(grid_w, device=raw.device), indexing="ij")
        anchors = self._anchors_grid(head_idx, raw, img_hw).view(1, num_anchors, 1, 1, 2)
        boxes = self.codings[head_idx].boxes(_raw_boxes(raw), anchors)
        return torch.cat((boxes[..., :2] + torch.stack((grid_x, grid_y), dim=-1), boxes[..., 2:]), dim=-1)

    def _anchors_grid(self, head_idx: int, raw: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
        """Head `head_idx`'s anchors `(A, 2)` in its grid cells."""
        grid_h, grid_w = raw.shape[2:4]
        anchors_px = self.anchors_per_head[head_idx].to(raw.device)
        return anchors_px / torch.tensor([img_hw[1] / grid_w, img_hw[0] / grid_h], device=raw.device)

    # ------------------------------------------------------------------------------------ assignment

    def _balance(self, heads: list[torch.Tensor]) -> list[float]:
        if self.head_balance is not None:
            return list(self.head_balance)
        if len(heads) != len(THREE_HEAD_BALANCE):
            return [1.0] * len(heads)
        # Finest grid (most cells) gets the largest weight, whatever order the cfg lists heads in.
        order = sorted(range(len(heads)), key=lambda k: -heads[k].shape[2] * heads[k].shape[3])
        balance = [1.0] * len(heads)
        for rank, k in enumerate(order):
            balance[k] = THREE_HEAD_BALANCE[rank]
        return balance

    def _anchor_matches(self, targets: torch.Tensor, img_hw: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Boolean (M, total_anchors): which anchors (all heads concatenated) each target goes to."""
        all_anchors = torch.cat(self.anchors_per_head).to(device)  # (T, 2) pixels
        target_wh = targets[:, 4:6] * torch.tensor([img_hw[1], img_hw[0]], device=device, dtype=targets.dtype)
        inter = torch.minimum(target_wh[:, None, :], all_anchors[None]).prod(-1)
        union = target_wh.prod(-1)[:, None] + all_anchors.prod(-1)[None] - inter
        wh_iou = inter / union.clamp(min=1e-9)
        matches = F.one_hot(wh_iou.argmax(1), all_anchors.shape[0]).bool()
        if self.anchor_iou_thresh is not None:
            matches |= wh_iou > self.anchor_iou_thresh
        return matches

    @staticmethod
    def _padded_boxes(targets: torch.Tensor, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Ground truth as (N, max_per_image, 4) normalised cxcywh plus a validity mask (N, max)."""
        img_idx = targets[:, 0].long()
        counts = torch.bincount(img_idx, minlength=batch_size)
        width = max(int(counts.max()) if counts.numel() else 0, 1)
        order = torch.argsort(img_idx, stable=True)
        sorted_img = img_idx[order]
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(order), device=targets.device) - starts[sorted_img]
        boxes = targets.new_zeros(batch_size, width, 4)
        valid = torch.zeros(batch_size, width, dtype=torch.bool, device=targets.device)
        boxes[sorted_img, slot] = targets[order, 2:6]
        valid[sorted_img, slot] = True
        return boxes, valid

    def _head_positives(
        self, head_idx: int, head_matches: torch.Tensor, targets: torch.Tensor, grid_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, ...]:
        """The positives of head `head_idx` from its (M, A) anchor matches: per positive, the target's
        row, the anchor, the cell (x, y) and the target's centre in grid cells; under `neighbour_cells`
        also the neighbouring cells that reach the centre."""
        grid_h, grid_w = grid_hw
        target_idx, anchor_idx = head_matches.nonzero(as_tuple=True)
        gxy = targets[target_idx, 2:4] * torch.tensor([grid_w, grid_h], device=targets.device)
        cell_x = gxy[:, 0].long().clamp(0, grid_w - 1)
        cell_y = gxy[:, 1].long().clamp(0, grid_h - 1)
        if self.neighbour_cells:
            target_idx, anchor_idx, cell_x, cell_y = _with_neighbour_cells(
                target_idx, anchor_idx, gxy, cell_x, cell_y, self.codings[head_idx], grid_w, grid_h
            )
            gxy = targets[target_idx, 2:4] * torch.tensor([grid_w, grid_h], device=targets.device)
        return target_idx, anchor_idx, cell_x, cell_y, gxy

    # ------------------------------------------------------------------------------------ forward

    def forward(
        self, heads: list[torch.Tensor], targets: torch.Tensor, img_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = heads[0].device
        batch_size = heads[0].shape[0]
        targets = targets.to(device=device, dtype=torch.float32)
        matches = self._anchor_matches(targets, img_hw, device)
        gt_boxes, gt_valid = self._padded_boxes(targets, batch_size)
        balance = self._balance(heads)

        box_sum = torch.zeros((), device=device)
        cls_sum = torch.zeros((), device=device)
        num_positives = 0
        obj_loss = torch.zeros((), device=device)
        anchor_offset = 0
        for head_idx, raw in enumerate(heads):
            raw = raw.float()
            n, num_anchors, grid_h, grid_w, _ = raw.shape
            coding = self.codings[head_idx]
            anchors_grid = self._anchors_grid(head_idx, raw, img_hw)
            head_matches = matches[:, anchor_offset : anchor_offset + num_anchors]
            anchor_offset += num_anchors

            target_idx, anchor_idx, cell_x, cell_y, gxy = self._head_positives(head_idx, head_matches, targets, (grid_h, grid_w))
            matched = targets[target_idx]
            img_idx = matched[:, 0].long()
            gwh = matched[:, 4:6] * torch.tensor([grid_w, grid_h], device=device)

            obj_target = torch.zeros(raw.shape[:4], device=device)
            obj_weight = torch.ones(raw.shape[:4], device=device)
            obj_weight[self._ignored(head_idx, raw, img_hw, gt_boxes, gt_valid)] = 0.0

            if len(target_idx):
                pred = raw[img_idx, anchor_idx, cell_y, cell_x]  # (P, 5 + C)
                pred_box = coding.boxes(_raw_boxes(pred), anchors_grid[anchor_idx])  # centre relative to its cell
                cell_xy = torch.stack((cell_x, cell_y), 1).float()
                overlap = bbox_iou_pairwise(pred_box, torch.cat((gxy - cell_xy, gwh), 1), kind=self.box_kind)
                box_sum = box_sum + (1.0 - overlap).sum()
                num_positives += len(target_idx)

                quality = overlap.detach().clamp(min=0)
                obj_value = (1.0 - self.obj_iou_ratio) + self.obj_iou_ratio * quality
                obj_target[img_idx, anchor_idx, cell_y, cell_x] = obj_value
                obj_weight[img_idx, anchor_idx, cell_y, cell_x] = self.obj_pos_weight

                class_target = F.one_hot(matched[:, 1].long(), self.num_classes).float()
                cls_sum = cls_sum + _bce(pred[:, 5:], class_target, coding, reduction="sum") / self.num_classes

            obj_bce = _bce(raw[..., 4], obj_target, coding)
            obj_loss = obj_loss + balance[head_idx] * (obj_bce * obj_weight).sum() / obj_weight.sum().clamp(min=1.0)

        denominator = max(num_positives, 1)
        parts = {"box": box_sum / denominator, "obj": obj_loss, "cls": cls_sum / denominator}
        total = (self.weights.box * parts["box"] + self.weights.obj * parts["obj"] + self.weights.cls * parts["cls"]) * batch_size
        return total, {name: value.detach() for name, value in parts.items()}

    def _ignored(
        self, head_idx: int, raw: torch.Tensor, img_hw: tuple[int, int], gt_boxes: torch.Tensor, gt_valid: torch.Tensor
    ) -> torch.Tensor:
        """Cells whose decoded box overlaps some ground truth of its image above `ignore_thresh`."""
        n, num_anchors, grid_h, grid_w, _ = raw.shape
        if self.ignore_thresh >= 1.0 or not gt_valid.any():
            return torch.zeros(raw.shape[:4], dtype=torch.bool, device=raw.device)
        with torch.no_grad():
            grid_size = torch.tensor([grid_w, grid_h, grid_w, grid_h], device=raw.device, dtype=raw.dtype)
            pred_boxes = (self.decode_boxes(head_idx, raw, img_hw) / grid_size).view(n, -1, 1, 4)
            iou = bbox_iou_pairwise(pred_boxes, gt_boxes[:, None], kind="iou")  # (N, cells, max_gt)
            iou = iou.masked_fill(~gt_valid[:, None], 0.0)
            return (iou.max(-1).values > self.ignore_thresh).view(n, num_anchors, grid_h, grid_w)
