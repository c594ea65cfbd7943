"""Output distillation reads each head by its box coding: logits for classic heads, probabilities
and raw offsets for new_coords heads (whose conv ends in a logistic)."""

import pytest
import torch
import torch.nn.functional as F

from helpers import conv, random_darknet
from yoloprune.train.distill import OutputDistillation


def head_cfg(new_coords: bool) -> str:
    activation, coords = ("logistic", "new_coords=1\nscale_x_y=2.0\n") if new_coords else ("linear", "")
    return (
        "[net]\nwidth=32\nheight=32\nchannels=3\n\n" + conv(8, 3) + "\n"
        f"[convolutional]\nfilters=12\nsize=1\nactivation={activation}\n\n"
        f"[yolo]\nmask=0,1\nanchors=10,13,20,30\nclasses=1\nnum=2\n{coords}"
    )


@pytest.mark.parametrize("new_coords", [False, True], ids=["classic", "new_coords"])
def test_distillation_follows_the_heads_box_coding(new_coords):
    teacher, student = random_darknet(head_cfg(new_coords), seed=0), random_darknet(head_cfg(new_coords), seed=1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (t,), (s,) = teacher.forward_heads(images), student.forward_heads(images)
    _, parts = OutputDistillation(teacher)(images, [s], torch.zeros(0, 6))
    if new_coords:  # the raw values are the probabilities and the offsets
        assert 0 <= t.min() and t.max() <= 1
        objectness, xy = F.binary_cross_entropy(s[..., 4], t[..., 4]), (s[..., :2], t[..., :2])
    else:
        objectness = F.binary_cross_entropy_with_logits(s[..., 4], torch.sigmoid(t[..., 4]))
        xy = (torch.sigmoid(s[..., :2]), torch.sigmoid(t[..., :2]))
    assert parts["kd_obj"].item() == pytest.approx(objectness.item(), rel=1e-4)
    obj = teacher.yolo_layers[0].coding.scores(t[..., 4])
    box_error = (xy[0] - xy[1]).square().sum(-1) + (s[..., 2:4] - t[..., 2:4]).square().sum(-1)
    assert parts["kd_box"].item() == pytest.approx((box_error * obj / obj.sum()).sum().item(), rel=1e-4)
