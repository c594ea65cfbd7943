"""`Darknet`: a PyTorch module built from a parsed darknet cfg, one submodule per cfg layer.

Forward:
- training mode returns the raw head maps, one per `[yolo]` layer, each `(N, anchors, H, W, 5 + classes)`
  holding what the [yolo] layer reads (tx, ty, tw, th, objectness, class logits; with `new_coords=1`
  the head conv's logistic has already made them probabilities);
- eval mode returns decoded boxes `(N, sum of anchors*H*W over heads, 5 + classes)`: cx, cy, w, h in
  input pixels, then objectness and class probabilities, decoded as darknet's [yolo] layer does
  (`BoxCoding`: sigmoid / exp, or with `new_coords=1` the head's input as it is / squared sizes).

Layer `i` of the cfg is `model.layers[i]`, so state_dict keys read `layers.{i}.conv.weight`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from yoloprune.darknet.cfg import (
    ConvBlock,
    DarknetCfg,
    MaxpoolBlock,
    RouteBlock,
    ShortcutBlock,
    UpsampleBlock,
    YoloBlock,
    load_cfg,
    parse_cfg,
)
from yoloprune.darknet.network import infer_channels

LEAKY_SLOPE = 0.1  # darknet's leaky ReLU
BN_EPS = 1e-5
BN_MOMENTUM = 0.03


def make_activation(name: str) -> nn.Module:
    """darknet's activation `name` (src/activations.c). darknet's mish takes softplus(x) as x above 20
    and as exp(x) below -20, where both are exact to float32 precision: torch's Mish computes the same."""
    if name == "leaky":
        return nn.LeakyReLU(LEAKY_SLOPE)
    if name == "relu":
        return nn.ReLU()
    if name == "mish":
        return nn.Mish()
    if name == "logistic":
        return nn.Sigmoid()
    if name == "swish":
        return nn.SiLU()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}")


class ConvLayer(nn.Module):
    """`[convolutional]`: conv (bias only without BN) → optional BN → activation."""

    def __init__(self, block: ConvBlock, in_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            block.filters,
            block.size,
            block.stride,
            block.padding_px,
            groups=block.groups,
            bias=not block.batch_normalize,
        )
        self.bn = nn.BatchNorm2d(block.filters, eps=BN_EPS, momentum=BN_MOMENTUM) if block.batch_normalize else None
        self.act = make_activation(block.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class ShortcutLayer(nn.Module):
    """`[shortcut]`: element-wise sum of the previous layer and `from`, then activation.

    As in darknet (shortcut_multilayer_cpu), the output has the previous layer's channels; where the
    two differ in width, only the channels both have are summed and the previous layer's remaining
    channels pass unchanged (extra channels of `from` are dropped)."""

    def __init__(self, block: ShortcutBlock, widths: tuple[int, int]):
        super().__init__()
        self.act = make_activation(block.activation)
        # the widths are the cfg's: fixed here, the forward (and an ONNX trace) needs no shape test
        self.common = None if widths[0] == widths[1] else min(widths)

    def forward(self, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        if self.common is None:
            return self.act(x + other)
        common = self.common
        return self.act(torch.cat((x[:, :common] + other[:, :common], x[:, common:]), dim=1))


class RouteLayer(nn.Module):
    """`[route]`: channel concatenation of its inputs, or one channel group of each with `groups`."""

    def __init__(self, block: RouteBlock):
        super().__init__()
        self.groups, self.group_id = block.groups, block.group_id

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        if self.groups > 1:
            inputs = [x.chunk(self.groups, dim=1)[self.group_id] for x in inputs]
        return inputs[0] if len(inputs) == 1 else torch.cat(inputs, dim=1)


class UpsampleLayer(nn.Module):
    def __init__(self, block: UpsampleBlock):
        super().__init__()
        self.stride = block.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.stride, mode="nearest")


class MaxpoolLayer(nn.Module):
    """`[maxpool]` with darknet's padding: `size - 1` in total, the odd pixel on the right/bottom.

    Padding replicates the edge, which gives the same maxima as darknet's skip-out-of-bounds rule
    (every window that touches padding also holds the edge pixel it copies).
    """

    def __init__(self, block: MaxpoolBlock):
        super().__init__()
        total = block.padding_total
        self.pad = (total // 2, total - total // 2, total // 2, total - total // 2)
        self.pool = nn.MaxPool2d(block.size, block.stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad, mode="replicate")
        return self.pool(x)


SCORE_EPS = 1e-6  # new_coords scores are kept this far from 0 and 1 when taken as logits


@dataclass(frozen=True)
class BoxCoding:
    """How a [yolo] head reads its input, after darknet's forward_yolo_layer and get_yolo_box.

    Classic: sigmoid on x, y, objectness and classes, exp(t)·anchor for the size. `new_coords`
    (scaled-YOLOv4, YOLOv7): the [yolo] layer applies no sigmoid at all (the conv before it ends in
    a logistic activation) and the size is (2t)²·anchor, at most 4 anchors for t < 1. Either way
    `scale_x_y` stretches the centre offset around the cell centre, so that it can reach the
    cell's edges. The training loss decodes with the same object, so it trains the boxes the model
    outputs.
    """

    scale_x_y: float = 1.0
    new_coords: bool = False

    @classmethod
    def of(cls, block: YoloBlock) -> "BoxCoding":
        return cls(block.scale_x_y, block.new_coords)

    def boxes(self, raw: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """`(..., 4)` from the raw `(..., >= 4)`: the centre as an offset from its cell's corner, in
        cells, then the size in the unit of `anchors` (broadcast against `raw[..., 2:4]`)."""
        xy = self.centre(raw)
        if self.scale_x_y != 1.0:
            xy = xy * self.scale_x_y - (self.scale_x_y - 1) / 2
        size = (2 * raw[..., 2:4]).square() if self.new_coords else torch.exp(raw[..., 2:4])
        return torch.cat((xy, size * anchors), dim=-1)

    def centre(self, raw: torch.Tensor) -> torch.Tensor:
        """The centre's offset in its cell `(..., 2)`, before `scale_x_y` stretches it."""
        return raw[..., :2] if self.new_coords else torch.sigmoid(raw[..., :2])

    def scores(self, raw: torch.Tensor) -> torch.Tensor:
        """Objectness and class probabilities from their raw values."""
        return raw if self.new_coords else torch.sigmoid(raw)

    def logits(self, raw: torch.Tensor) -> torch.Tensor:
        """The logits of those probabilities, for a BCE: the raw values, or with new_coords their
        logit, clamped 1e-6 from 0 and 1 where it would be infinite (which bounds its gradient)."""
        return torch.logit(raw, eps=SCORE_EPS) if self.new_coords else raw


class YoloLayer(nn.Module):
    """`[yolo]`: reshapes the previous conv's output into per-anchor predictions; decodes in eval."""

    def __init__(self, block: YoloBlock):
        super().__init__()
        self.num_classes = block.classes
        self.num_anchors = len(block.mask)
        self.coding = BoxCoding.of(block)
        self.register_buffer("anchors", torch.tensor(block.masked_anchors, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        return x.view(n, self.num_anchors, self.num_classes + 5, h, w).permute(0, 1, 3, 4, 2).contiguous()

    def decode(self, raw: torch.Tensor, img_hw: tuple[int, int]) -> torch.Tensor:
        n, a, h, w, d = raw.shape
        stride_y, stride_x = img_hw[0] / h, img_hw[1] / w
        grid_y, grid_x = torch.meshgrid(
            torch.arange(h, device=raw.device, dtype=raw.dtype),
            torch.arange(w, device=raw.device, dtype=raw.dtype),
            indexing="ij",
        )
        boxes = self.coding.boxes(raw, self.anchors.to(raw.dtype).view(1, a, 1, 1, 2))
        cx = (boxes[..., 0] + grid_x) * stride_x
        cy = (boxes[..., 1] + grid_y) * stride_y
        out = torch.cat([cx.unsqueeze(-1), cy.unsqueeze(-1), boxes[..., 2:], self.coding.scores(raw[..., 4:])], dim=-1)
        return out.view(n, a * h * w, d)


def _build_layer(cfg: DarknetCfg, idx: int) -> nn.Module:
    block = cfg.layers[idx]
    if isinstance(block, ConvBlock):
        return ConvLayer(block, cfg.in_channels(idx))
    if isinstance(block, ShortcutBlock):
        previous, source = cfg.inputs_of(idx)
        return ShortcutLayer(block, (cfg.channels_of(previous), cfg.channels_of(source)))
    if isinstance(block, RouteBlock):
        return RouteLayer(block)
    if isinstance(block, UpsampleBlock):
        return UpsampleLayer(block)
    if isinstance(block, MaxpoolBlock):
        return MaxpoolLayer(block)
    return YoloLayer(block)


class Darknet(nn.Module):
    def __init__(self, cfg: DarknetCfg | str):
        super().__init__()
        if isinstance(cfg, str):
            cfg = load_cfg(cfg)
        self.cfg = cfg
        self.out_channels = infer_channels(cfg)
        self.layers = nn.ModuleList(_build_layer(cfg, idx) for idx in range(len(cfg.layers)))
        self.yolo_indices = cfg.yolo_indices
        self._initialize_head_biases()
        # Layer outputs that a later route/shortcut reads; all others are dropped as soon as used.
        self._kept = sorted({j for i in range(len(cfg.layers)) for j in cfg.inputs_of(i) if j != i - 1 and j >= 0})

    def _initialize_head_biases(self, objectness_prior: float = 0.01) -> None:
        """Start the head convs at sensible probabilities instead of sigmoid(0) = 0.5 everywhere.

        Almost every cell is background, so a fresh model predicting objectness 0.5 spends its first
        epochs only unlearning that; a prior of 1 % (and of 1/classes for the class scores) removes
        this plateau. Loaded weights overwrite these values.
        """
        with torch.no_grad():
            for idx in self.yolo_indices:
                head = self.layers[idx - 1]
                yolo = self.layers[idx]
                if not isinstance(head, ConvLayer) or head.conv.bias is None:
                    continue
                bias = head.conv.bias.view(yolo.num_anchors, yolo.num_classes + 5)
                bias[:, 4] = math.log(objectness_prior / (1 - objectness_prior))
                class_prior = 1 / yolo.num_classes if yolo.num_classes > 1 else 0.5
                bias[:, 5:] = math.log(class_prior / (1 - class_prior)) if class_prior < 1 else 0.0

    @classmethod
    def from_text(cls, text: str) -> "Darknet":
        """The model of a cfg given as text (public API on purpose: cfgs built in code need no file)."""
        return cls(parse_cfg(text))

    @property
    def num_classes(self) -> int:
        return self.cfg.layers[self.yolo_indices[0]].classes

    @property
    def yolo_layers(self) -> list[YoloLayer]:
        return [self.layers[i] for i in self.yolo_indices]

    def forward_heads(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Raw head maps `(N, anchors, H, W, 5 + classes)`, whatever the mode."""
        kept: dict[int, torch.Tensor] = {}
        heads: list[torch.Tensor] = []
        kept_set = set(self._kept)
        for idx, (block, layer) in enumerate(zip(self.cfg.layers, self.layers)):
            if isinstance(block, (RouteBlock, ShortcutBlock)):
                # the previous layer's output is `x` (also for a shortcut `from=-1`: x + x); older ones were kept
                inputs = [x if j == idx - 1 else kept[j] for j in self.cfg.inputs_of(idx)]
                x = layer(inputs) if isinstance(block, RouteBlock) else layer(*inputs)
            elif isinstance(block, YoloBlock):
                heads.append(layer(x))
            else:
                x = layer(x)
            if idx in kept_set:
                kept[idx] = x
        return heads

    def decode(self, heads: list[torch.Tensor], img_hw: tuple[int, int]) -> torch.Tensor:
        return torch.cat([yolo.decode(raw, img_hw) for yolo, raw in zip(self.yolo_layers, heads)], dim=1)

    def forward(self, x: torch.Tensor):
        heads = self.forward_heads(x)
        if self.training:
            return heads
        return self.decode(heads, (x.shape[2], x.shape[3]))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (BN running statistics are buffers and do not count), as darknet reports."""
    return sum(p.numel() for p in model.parameters())
