"""Output-level knowledge distillation for finetuning a pruned detector.

The unpruned (teacher) and pruned (student) models share their heads: same anchors, same grids,
same output layout, because pruning never touches the convs that feed a [yolo] layer. So the
student can be taught, cell by cell, to reproduce the teacher's raw predictions:
- objectness: BCE of the student's logits against the teacher's probability, on every cell;
- classes and box: BCE towards the teacher's class probabilities, squared error on the box terms
  (sigmoid xy offsets, log-space wh), both weighted by the teacher's objectness so that the
  thousands of background cells do not drown the few cells that hold an object.
The term is added to the ordinary detection loss, which keeps the ground truth in charge.

A `new_coords` head (scaled-YOLOv4, YOLOv7; `darknet.model.BoxCoding`) outputs probabilities and
offsets already (its conv ends in a logistic), so its raw values are not logits: they are taken as
they are, and turned into logits only where the BCE needs them.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from yoloprune.darknet.cfg import DarknetCfg, YoloBlock
from yoloprune.darknet.network import infer_output_hw
from yoloprune.errors import WeightsError


def head_layout(cfg: DarknetCfg, img_size: int) -> list[tuple]:
    """Per [yolo] layer: (anchors, grid height, grid width, outputs per anchor, the anchor sizes)."""
    sizes = infer_output_hw(cfg, (img_size, img_size))
    return [
        (len(block.mask), *sizes[idx], 5 + block.classes, block.masked_anchors)
        for idx, block in enumerate(cfg.layers)
        if isinstance(block, YoloBlock)
    ]


def check_teacher_heads(teacher_cfg: DarknetCfg, student_cfg: DarknetCfg, img_size: int, teacher_path: str | Path | None = None) -> None:
    """Refuse, before any training step, a teacher whose heads the student cannot be taught to copy."""
    teacher_heads, student_heads = head_layout(teacher_cfg, img_size), head_layout(student_cfg, img_size)
    if teacher_heads != student_heads:
        def describe(layout: list[tuple]) -> str:
            return ", ".join(f"{a}x{h}x{w}x{d} anchors {list(anchors)}" for a, h, w, d, anchors in layout)

        raise WeightsError(
            f"teacher heads [{describe(teacher_heads)}] differ from the student's [{describe(student_heads)}] at {img_size} px: "
            "distillation needs the same [yolo] layers (anchors x grid x outputs)",
            teacher_path,
        )


class OutputDistillation:
    """A Trainer extra loss term: `(images, student_heads, targets) -> (loss, parts)`."""

    def __init__(self, teacher: nn.Module, weight: float = 1.0):
        self.teacher = teacher.eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)
        self.weight = weight

    def __call__(self, images: torch.Tensor, heads: list[torch.Tensor], targets: torch.Tensor):
        with torch.no_grad():
            teacher_heads = self.teacher.forward_heads(images)
        if len(teacher_heads) != len(heads) or any(t.shape != s.shape for t, s in zip(teacher_heads, heads)):
            raise ValueError("teacher and student heads differ in shape: distillation needs the same [yolo] layers")
        obj_loss = box_loss = cls_loss = images.new_zeros(())
        for student, teacher, yolo in zip(heads, teacher_heads, self.teacher.yolo_layers):
            student, teacher, coding = student.float(), teacher.float(), yolo.coding
            teacher_obj = coding.scores(teacher[..., 4])
            obj_loss = obj_loss + F.binary_cross_entropy_with_logits(coding.logits(student[..., 4]), teacher_obj)
            cell_weight = teacher_obj / teacher_obj.sum().clamp(min=1e-6)
            box_error = (coding.centre(student) - coding.centre(teacher)).square().sum(-1) + (
                student[..., 2:4] - teacher[..., 2:4]
            ).square().sum(-1)
            box_loss = box_loss + (box_error * cell_weight).sum()
            if student.shape[-1] > 5:
                class_error = F.binary_cross_entropy_with_logits(
                    coding.logits(student[..., 5:]), coding.scores(teacher[..., 5:]), reduction="none"
                ).mean(-1)
                cls_loss = cls_loss + (class_error * cell_weight).sum()
        # Scaled by the batch size like the detection loss (a sum over images), so `weight` keeps its
        # meaning whatever the batch size.
        total = self.weight * (obj_loss + box_loss + cls_loss) * images.shape[0]
        parts = {"kd_obj": obj_loss.detach(), "kd_box": box_loss.detach(), "kd_cls": cls_loss.detach()}
        return total, parts
