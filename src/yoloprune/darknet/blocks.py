"""The typed blocks of a darknet cfg: `[net]`, one dataclass per layer section, and `DarknetCfg`.

Fields hold the values as written (relative layer references stay negative); darknet's defaults are
the dataclass defaults. Blocks are replaced, never edited in place (`copy_block`, `DarknetCfg.replace`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Union

from yoloprune.errors import CfgError

ACTIVATIONS = ("leaky", "linear", "relu", "mish", "logistic", "swish")


def _field_line() -> int:
    # The source line of a block is for error messages only; it never takes part in equality.
    return field(default=0, compare=False, repr=False)


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
class ConvBlock:
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


@dataclass
class ShortcutBlock:
    from_: int  # as written: negative = relative to this layer
    activation: str = "linear"
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "shortcut"


@dataclass
class RouteBlock:
    layers: tuple[int, ...]  # as written: negative = relative to this layer
    groups: int = 1
    group_id: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "route"


@dataclass
class UpsampleBlock:
    stride: int = 2
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "upsample"


@dataclass
class MaxpoolBlock:
    size: int
    stride: int = 1
    padding: int | None = None  # total padding; darknet's default is size - 1
    extra: dict[str, str] = field(default_factory=dict)
    line: int = _field_line()
    section = "maxpool"

    @property
    def padding_total(self) -> int:
        return self.size - 1 if self.padding is None else self.padding


@dataclass
class YoloBlock:
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


LayerBlock = Union[ConvBlock, ShortcutBlock, RouteBlock, UpsampleBlock, MaxpoolBlock, YoloBlock]


def _same_objects(first: tuple, second: tuple) -> bool:
    return len(first) == len(second) and all(a is b for a, b in zip(first, second))


@dataclass
class DarknetCfg:
    net: NetBlock
    layers: list[LayerBlock]
    path: str | None = field(default=None, compare=False)
    # every layer's output channels and the (net channels, layers) they were inferred from
    _channels_memo: tuple[int, tuple[LayerBlock, ...], list[int]] | None = field(default=None, init=False, compare=False, repr=False)

    def resolve(self, layer_idx: int, ref: int) -> int:
        """Absolute index of a layer reference written in layer `layer_idx`."""
        return layer_idx + ref if ref < 0 else ref

    def inputs_of(self, layer_idx: int) -> list[int]:
        """Absolute indices of the layers whose outputs layer `layer_idx` reads (-1 = the image)."""
        block = self.layers[layer_idx]
        if isinstance(block, RouteBlock):
            return [self.resolve(layer_idx, ref) for ref in block.layers]
        if isinstance(block, ShortcutBlock):
            return [layer_idx - 1, self.resolve(layer_idx, block.from_)]
        return [layer_idx - 1]

    def _layer_channels(self) -> list[int]:
        """Every layer's output channels, inferred again whenever `net.channels` or a layer changed.

        Blocks are replaced rather than edited in place, so comparing the layers by identity is
        enough to notice a change; the layers list itself may be swapped or edited freely."""
        from yoloprune.darknet.graph import infer_channels  # graph builds on this module

        net_channels, layers = self.net.channels, tuple(self.layers)
        memo = self._channels_memo
        if memo is None or memo[0] != net_channels or not _same_objects(memo[1], layers):
            memo = (net_channels, layers, infer_channels(self))
            self._channels_memo = memo
        return memo[2]

    @property
    def out_channels(self) -> list[int]:
        """Output channels of every layer (a fresh list); CfgError where the channel arithmetic fails."""
        return list(self._layer_channels())

    def channels_of(self, ref: int) -> int:
        """Channels of layer `ref`'s output; -1 = the input image (`net.channels`)."""
        from yoloprune.darknet.graph import channels_at

        return channels_at(self, self._layer_channels(), ref)

    def in_channels(self, layer_idx: int) -> int:
        """Channels of layer `layer_idx`'s first input: for a conv, the channels it convolves."""
        return self.channels_of(self.inputs_of(layer_idx)[0])

    @property
    def yolo_indices(self) -> list[int]:
        return [i for i, block in enumerate(self.layers) if isinstance(block, YoloBlock)]

    def replace(self, layers: list[LayerBlock]) -> "DarknetCfg":
        return DarknetCfg(net=self.net, layers=layers, path=None)


def copy_block(block: LayerBlock, **changes) -> LayerBlock:
    """A copy of a block with some fields changed (extra dicts are copied, not shared)."""
    if hasattr(block, "extra") and "extra" not in changes:
        changes["extra"] = dict(block.extra)
    return dataclasses.replace(block, **changes)
