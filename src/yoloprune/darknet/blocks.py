"""The typed blocks of a darknet cfg: `[net]` and one dataclass per layer section, each with its rule.

Fields hold the values as written (relative layer references stay negative); darknet's defaults are
the dataclass defaults. Blocks are replaced, never edited in place (`copy_block`, `DarknetCfg.replace`).

Each layer block also knows how its layer moves data, and nothing outside its class re-derives it:
which layers it reads (`inputs`), how many channels it outputs (`out_channels`), which input channels
make each output channel (`channel_runs`: concatenated, sliced, summed or passed through; none for a
conv, which makes new channels), its output's spatial size (`out_hw`) and how it ties the channel sets
it reads for pruning (`tie_channels`). `DarknetCfg.propagate` walks a cfg with these rules. The
defaults (`LayerRules`) are those of a layer that reads the previous layer and passes its channels
through unchanged; a new layer type is one class here and its parser.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol, Union

from yoloprune.errors import CfgError

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "logistic", "swish")


def _field_line() -> int:
    # The source line of a block is for error messages only; it never takes part in equality.
    return field(default=0, compare=False, repr=False)


def resolve_ref(layer_idx: int, ref: int) -> int:
    """Absolute index of a layer reference written in layer `layer_idx` (negative = relative)."""
    return layer_idx + ref if ref < 0 else ref


class ChannelMismatch(ValueError):
    """A layer's input channels do not fit the layer (the message names neither layer nor file)."""


@dataclass(frozen=True)
class ChannelSpan:
    """Channels `start..stop-1` of channel set `group` (named by its first conv; -1 = the input image)."""

    group: int
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class ChannelRun:
    """Output channels `out_start..out_start+size-1` of a layer are input channels `in_start..` of
    its input number `source` (its position in the layer's inputs). Runs of different inputs that
    cover the same output channels are summed."""

    source: int
    out_start: int
    in_start: int
    size: int


class ChannelTies(Protocol):
    """Where `tie_channels` reports what removing channels must respect (`darknet.graph` collects it)."""

    def fix(self, spans: tuple[ChannelSpan, ...], reason: str) -> None:
        """The channel sets of `spans` may not lose channels, for `reason`."""

    def tie(self, first: tuple[ChannelSpan, ...], second: tuple[ChannelSpan, ...]) -> bool:
        """Two whole channel sets that must keep the same channels; False (nothing tied) where either
        is not exactly one whole set."""

    def split(self, spans: tuple[ChannelSpan, ...], parts: int) -> bool:
        """A whole channel set read in `parts` equal parts, which must keep equal numbers of channels;
        False (nothing recorded) where `spans` is not exactly one whole set."""


def _size(spans: tuple[ChannelSpan, ...]) -> int:
    return sum(span.size for span in spans)


class LayerRules:
    """A layer's rules, by default those of a layer that reads the previous layer and passes its
    channels through unchanged (upsample, maxpool, yolo)."""

    def inputs(self, layer_idx: int) -> list[int]:
        """Absolute indices of the layers it reads (-1 = the input image)."""
        return [layer_idx - 1]

    def out_channels(self, input_channels: list[int]) -> int:
        """Its output channels; ChannelMismatch where its inputs' channels do not fit it."""
        return input_channels[0]

    def in_channels(self, input_channels: list[int]) -> int:
        """The channels it reads: those of its first input (a conv: the channels it convolves)."""
        return input_channels[0]

    def channel_runs(self, input_channels: list[int]) -> list[ChannelRun]:
        """Which input channels make its output channels (see `ChannelRun`); channels no run
        covers are made by the layer itself."""
        return [ChannelRun(0, 0, 0, input_channels[0])]

    def out_hw(self, input_hws: list[tuple[int, int]]) -> tuple[int, int]:
        """Spatial size (height, width) of its output."""
        return input_hws[0]

    def tie_channels(self, layer_idx: int, input_maps: list[tuple[ChannelSpan, ...]], ties: ChannelTies) -> None:
        """Report the constraints removing channels of its inputs meets here (none by default)."""

    @property
    def out_activation(self) -> str:
        """The activation applied to what it moves or sums."""
        return "linear"


@dataclass
class NetBlock:
    """`[net]`: kept as ordered options; width/height/channels are read on demand."""

    options: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "net"

    def _int(self, key: str, default: int) -> int:
        value = self.options.get(key)
        if value is None:
            return default
        try:
            return int(value)
        except ValueError:
            raise CfgError(f"[net] {key}: expected an integer, got {value!r}", line=self.line) from None

    @property
    def width(self) -> int:
        return self._int("width", 416)

    @property
    def height(self) -> int:
        return self._int("height", 416)

    @property
    def channels(self) -> int:
        return self._int("channels", 3)


@dataclass
class ConvBlock(LayerRules):
    filters: int
    size: int = 1
    stride: int = 1
    pad: bool = False
    padding: int = 0  # explicit padding, used by darknet only when pad=0
    batch_normalize: bool = False
    groups: int = 1
    activation: str = "linear"
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "convolutional"

    @property
    def padding_px(self) -> int:
        return self.size // 2 if self.pad else self.padding

    def out_channels(self, input_channels: list[int]) -> int:
        if input_channels[0] % self.groups:
            raise ChannelMismatch(f"{input_channels[0]} input channels not divisible by groups={self.groups}")
        return self.filters

    def channel_runs(self, input_channels: list[int]) -> list[ChannelRun]:
        return []  # every output channel is new

    def out_hw(self, input_hws: list[tuple[int, int]]) -> tuple[int, int]:
        (h, w), pad, k, s = input_hws[0], self.padding_px, self.size, self.stride
        return (h + 2 * pad - k) // s + 1, (w + 2 * pad - k) // s + 1

    def tie_channels(self, layer_idx: int, input_maps: list[tuple[ChannelSpan, ...]], ties: ChannelTies) -> None:
        own = (ChannelSpan(layer_idx, 0, self.filters),)
        if not self.batch_normalize:
            ties.fix(own, "no batch_normalize")  # no γ to rank channels by, no β to fold
        if self.activation == "logistic":
            ties.fix(own, "logistic activation (a removed channel would not output zero)")
        if self.groups > 1:
            ties.fix(own, "grouped conv")
            ties.fix(input_maps[0], f"read by grouped conv {layer_idx}")

    @property
    def out_activation(self) -> str:
        return self.activation


@dataclass
class ShortcutBlock(LayerRules):
    from_: int  # as written: negative = relative to this layer
    activation: str = "linear"
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "shortcut"

    def inputs(self, layer_idx: int) -> list[int]:
        return [layer_idx - 1, resolve_ref(layer_idx, self.from_)]

    def channel_runs(self, input_channels: list[int]) -> list[ChannelRun]:
        # darknet keeps the previous layer's channels and adds `from` over the channels both have
        previous, source = input_channels
        return [ChannelRun(0, 0, 0, previous), ChannelRun(1, 0, 0, min(previous, source))]

    def tie_channels(self, layer_idx: int, input_maps: list[tuple[ChannelSpan, ...]], ties: ChannelTies) -> None:
        first, second = input_maps
        if _size(first) != _size(second):
            # only the leading channels are summed: a set cannot drop a channel without shifting
            # which channels of the other one it meets
            ties.fix(first + second, f"summed by shortcut {layer_idx} over the first {min(_size(first), _size(second))} channels only")
        elif not ties.tie(first, second):
            ties.fix(first + second, f"summed by shortcut {layer_idx} with a concatenation, a slice or the image")

    @property
    def out_activation(self) -> str:
        return self.activation


@dataclass
class RouteBlock(LayerRules):
    layers: tuple[int, ...]  # as written: negative = relative to this layer
    groups: int = 1
    group_id: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "route"

    def inputs(self, layer_idx: int) -> list[int]:
        return [resolve_ref(layer_idx, ref) for ref in self.layers]

    def out_channels(self, input_channels: list[int]) -> int:
        if any(c % self.groups for c in input_channels):
            raise ChannelMismatch(f"input channels {input_channels} not divisible by groups={self.groups}")
        return sum(c // self.groups for c in input_channels)

    def in_channels(self, input_channels: list[int]) -> int:
        return sum(input_channels)

    def channel_runs(self, input_channels: list[int]) -> list[ChannelRun]:
        # concatenation; with `groups`, part `group_id` of `groups` equal parts of each input
        runs, offset = [], 0
        for source, channels in enumerate(input_channels):
            width = channels // self.groups
            runs.append(ChannelRun(source, offset, width * self.group_id, width))
            offset += width
        return runs

    def tie_channels(self, layer_idx: int, input_maps: list[tuple[ChannelSpan, ...]], ties: ChannelTies) -> None:
        if self.groups == 1:
            return
        for input_map in input_maps:
            if not ties.split(input_map, self.groups):
                ties.fix(input_map, f"read by grouped route {layer_idx} through a concatenation or a slice")


@dataclass
class UpsampleBlock(LayerRules):
    stride: int = 2
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "upsample"

    def out_hw(self, input_hws: list[tuple[int, int]]) -> tuple[int, int]:
        h, w = input_hws[0]
        return h * self.stride, w * self.stride


@dataclass
class MaxpoolBlock(LayerRules):
    size: int
    stride: int = 1
    padding: int | None = None  # total padding; darknet's default is size - 1
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "maxpool"

    @property
    def padding_total(self) -> int:
        return self.size - 1 if self.padding is None else self.padding

    def out_hw(self, input_hws: list[tuple[int, int]]) -> tuple[int, int]:
        (h, w), total, k, s = input_hws[0], self.padding_total, self.size, self.stride
        return (h + total - k) // s + 1, (w + total - k) // s + 1


@dataclass
class YoloBlock(LayerRules):
    mask: tuple[int, ...]
    anchors: tuple[tuple[int, int], ...]
    classes: int
    extra: dict[str, str] = field(default_factory=dict)  # jitter, ignore_thresh, scale_x_y, ...
    line: int = _field_line()
    section = "yolo"

    @property
    def num(self) -> int:
        return len(self.anchors)

    @property
    def masked_anchors(self) -> tuple[tuple[int, int], ...]:
        return tuple(self.anchors[i] for i in self.mask)

    @property
    def scale_x_y(self) -> float:
        return float(self.extra.get("scale_x_y", 1.0))

    @property
    def new_coords(self) -> bool:
        """darknet's `new_coords=1` box decoding (scaled-YOLOv4, YOLOv7); the parser admits 0 and 1 only."""
        return float(self.extra.get("new_coords", 0)) != 0

    def out_channels(self, input_channels: list[int]) -> int:
        expected = len(self.mask) * (self.classes + 5)
        if input_channels[0] != expected:
            raise ChannelMismatch(
                f"previous layer has {input_channels[0]} channels, expected "
                f"{len(self.mask)} anchors x (5 + {self.classes} classes) = {expected}"
            )
        return input_channels[0]

    def tie_channels(self, layer_idx: int, input_maps: list[tuple[ChannelSpan, ...]], ties: ChannelTies) -> None:
        ties.fix(input_maps[0], f"feeds [yolo] {layer_idx}")  # its channels are the predictions


LayerBlock = Union[ConvBlock, ShortcutBlock, RouteBlock, UpsampleBlock, MaxpoolBlock, YoloBlock]


def copy_block(block: LayerBlock, **changes) -> LayerBlock:
    """A copy of a block with some fields changed (extra dicts are copied, not shared)."""
    if hasattr(block, "extra") and "extra" not in changes:
        changes["extra"] = dict(block.extra)
    return dataclasses.replace(block, **changes)
