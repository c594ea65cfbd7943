"""What a latency table prices: every layer of a cfg as a shape class and its channel counts.

A shape class (`ConvShape`, `ShortcutShape`, ...) holds everything about a layer that pruning does
not change (kernel, stride, input resolution, activation, ...); its `key` names the class in the
table. Pruning changes only channel counts, so the table measures each class over a grid of them
(`channel_ladder`), and layers of the same class share those measurements: YOLOv3 repeats the same
1x1 and 3x3 convs at each resolution many times.

The [yolo] layers, their box decoding and the final concatenation of the heads form one `HeadsShape`
per model: the head convs are never pruned, so it is a fixed cost. `CallShape` is what running a
model costs on top of its layers (the runtime's per-call overhead), also counted once per model.

A route of a single input without `groups` computes nothing (PyTorch returns its input, the ONNX
export has no node for it): it gets no shape and costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Union

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, MaxpoolBlock, RouteBlock, ShortcutBlock, UpsampleBlock, YoloBlock
from yoloprune.darknet.graph import analyze_graph, infer_output_hw

# CPU convolution kernels work on blocks of channels (8 floats in an AVX2 register; ONNX Runtime's
# NCHWc layout and oneDNN pad channels to the block): a layer with 33 channels costs about what one
# with 40 costs. The grid is measured at multiples of the block and a count between two is priced
# as the next multiple (`LatencyTable`).
CHANNEL_BLOCK = 8


@dataclass(frozen=True)
class ConvShape:
    size: int
    stride: int
    padding: int
    groups: int
    in_hw: tuple[int, int]
    activation: str
    batch_normalize: bool  # PyTorch runs the BN as its own op; an ONNX export folds it into the conv

    @property
    def key(self) -> str:
        bn = " bn" if self.batch_normalize else ""
        return f"conv {self.size}x{self.size}/{self.stride} pad {self.padding} groups {self.groups} in {_hw(self.in_hw)}{bn} {self.activation}"


@dataclass(frozen=True)
class ShortcutShape:
    """An element-wise sum of two inputs of equal width (an unequal-width shortcut is priced as one of its output's width)."""

    hw: tuple[int, int]
    activation: str

    @property
    def key(self) -> str:
        return f"shortcut {_hw(self.hw)} {self.activation}"


@dataclass(frozen=True)
class RouteShape:
    """A concatenation of `inputs` layers (or, with `groups`, of a slice of each); priced by its
    output width, measured with that width shared equally by the inputs (a copy costs what it moves)."""

    hw: tuple[int, int]
    inputs: int
    groups: int
    group_id: int

    @property
    def key(self) -> str:
        return f"route {_hw(self.hw)} inputs {self.inputs} groups {self.groups} id {self.group_id}"


@dataclass(frozen=True)
class UpsampleShape:
    in_hw: tuple[int, int]
    stride: int

    @property
    def key(self) -> str:
        return f"upsample {_hw(self.in_hw)} x{self.stride}"


@dataclass(frozen=True)
class MaxpoolShape:
    size: int
    stride: int
    padding: int
    in_hw: tuple[int, int]

    @property
    def key(self) -> str:
        return f"maxpool {self.size}x{self.size}/{self.stride} pad {self.padding} in {_hw(self.in_hw)}"


@dataclass(frozen=True)
class HeadShape:
    hw: tuple[int, int]
    anchors: int
    classes: int
    scale_x_y: float
    new_coords: bool


@dataclass(frozen=True)
class HeadsShape:
    """Every [yolo] layer's reshape and box decoding, and the concatenation of their outputs."""

    heads: tuple[HeadShape, ...]
    img_hw: tuple[int, int]

    @property
    def key(self) -> str:
        parts = [
            f"{_hw(h.hw)} a{h.anchors} c{h.classes}" + (f" xy{h.scale_x_y:g}" if h.scale_x_y != 1 else "") + (" new" if h.new_coords else "")
            for h in self.heads
        ]
        return f"heads {_hw(self.img_hw)}: " + ", ".join(parts)


@dataclass(frozen=True)
class CallShape:
    """Running a model once, without its layers: the runtime's fixed cost per call, for an input of `img_hw`."""

    img_hw: tuple[int, int]
    channels: int

    @property
    def key(self) -> str:
        return f"call {self.channels}x{_hw(self.img_hw)}"


Shape = Union[ConvShape, ShortcutShape, RouteShape, UpsampleShape, MaxpoolShape, HeadsShape, CallShape]


@dataclass(frozen=True)
class LayerCost:
    """One layer as the table prices it: its shape class and its channel counts, one per axis of
    the class's grid (a conv: input, output; the pass-through layers: their output; heads: none)."""

    index: int  # cfg layer (the first [yolo] layer for the heads; -1 for the call)
    shape: Shape
    channels: tuple[int, ...]


def _hw(hw: tuple[int, int]) -> str:
    return f"{hw[0]}x{hw[1]}"


def layer_costs(cfg: DarknetCfg, img_hw: tuple[int, int]) -> list[LayerCost]:
    """What the table prices for `cfg` at an input of `img_hw`: one entry per layer that computes
    something, then the heads and the call (see the module docstring)."""
    sizes = infer_output_hw(cfg, img_hw)
    costs: list[LayerCost] = []
    heads: list[HeadShape] = []
    first_yolo = -1
    for idx, block in enumerate(cfg.layers):
        inputs = cfg.inputs_of(idx)
        in_hw = img_hw if inputs[0] < 0 else sizes[inputs[0]]
        out_channels = cfg.channels_of(idx)
        if isinstance(block, ConvBlock):
            shape = ConvShape(block.size, block.stride, block.padding_px, block.groups, in_hw, block.activation, block.batch_normalize)
            costs.append(LayerCost(idx, shape, (cfg.in_channels(idx), out_channels)))
        elif isinstance(block, ShortcutBlock):
            costs.append(LayerCost(idx, ShortcutShape(sizes[idx], block.activation), (out_channels,)))
        elif isinstance(block, RouteBlock):
            if len(inputs) > 1 or block.groups > 1:
                costs.append(LayerCost(idx, RouteShape(sizes[idx], len(inputs), block.groups, block.group_id), (out_channels,)))
        elif isinstance(block, UpsampleBlock):
            costs.append(LayerCost(idx, UpsampleShape(in_hw, block.stride), (out_channels,)))
        elif isinstance(block, MaxpoolBlock):
            costs.append(LayerCost(idx, MaxpoolShape(block.size, block.stride, block.padding_total, in_hw), (out_channels,)))
        elif isinstance(block, YoloBlock):
            first_yolo = idx if first_yolo < 0 else first_yolo
            heads.append(HeadShape(sizes[idx], len(block.mask), block.classes, block.scale_x_y, block.new_coords))
    if heads:
        costs.append(LayerCost(first_yolo, HeadsShape(tuple(heads), img_hw), ()))
    costs.append(LayerCost(-1, CallShape(img_hw, cfg.net.channels), ()))
    return costs


def variable_axes(cfg: DarknetCfg, costs: list[LayerCost]) -> list[tuple[bool, ...]]:
    """Per entry of `costs` (of this cfg), per channel axis: whether pruning can change it, i.e.
    whether any of those channels belongs to a prunable channel set (in `full` mode, which prunes a
    superset of `safe`). Fixed axes are measured at the cfg's width only."""
    graph = analyze_graph(cfg)

    def varies(layer: int) -> bool:
        return layer >= 0 and any(span.group >= 0 and graph.groups[span.group].prunable for span in graph.channel_maps[layer])

    result = []
    for cost in costs:
        if isinstance(cost.shape, ConvShape):
            result.append((varies(cfg.inputs_of(cost.index)[0]), varies(cost.index)))
        else:
            result.append(tuple(varies(cost.index) for _ in cost.channels))
    return result


def channel_ladder(width: int, ratio: float) -> list[int]:
    """Grid points for an axis up to `width`: multiples of `CHANNEL_BLOCK` from one block up, each
    about `ratio` times the last (latency is close to linear in the channels once they fill a few
    blocks, so geometric spacing spends the measurements where the curve bends), then `width`."""
    if ratio <= 1:
        raise ValueError(f"the grid ratio must be > 1, got {ratio}")
    points, value = [], CHANNEL_BLOCK
    while value < width:
        points.append(value)
        value = max(value + CHANNEL_BLOCK, round_up(value * ratio))
    return points + [width]


def round_up(channels: float, block: int = CHANNEL_BLOCK) -> int:
    """`channels` rounded up to a multiple of `block`."""
    return int(math.ceil(channels / block - 1e-9)) * block
