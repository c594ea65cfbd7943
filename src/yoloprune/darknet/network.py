"""`DarknetCfg`: the `[net]` block and the layer blocks of a cfg, and `propagate`, the one walk that
carries a value per layer output (channels, spatial size, a channel map) through the layers by each
block's own rule (`darknet.blocks.LayerRules`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, TypeVar

from yoloprune.darknet.blocks import ChannelMismatch, ChannelRun, LayerBlock, NetBlock, YoloBlock, resolve_ref
from yoloprune.errors import CfgError

Value = TypeVar("Value")


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
        return resolve_ref(layer_idx, ref)

    def inputs_of(self, layer_idx: int) -> list[int]:
        """Absolute indices of the layers whose outputs layer `layer_idx` reads (-1 = the image)."""
        return self.layers[layer_idx].inputs(layer_idx)

    def propagate(self, rule: Callable[[int, LayerBlock, list[Value]], Value], image: Value) -> list[Value]:
        """Per layer, in order: `rule(layer index, block, its inputs' values)`, the input image's value
        being `image`."""
        values: list[Value] = []
        for idx, block in enumerate(self.layers):
            values.append(rule(idx, block, [image if j < 0 else values[j] for j in block.inputs(idx)]))
        return values

    def _layer_channels(self) -> list[int]:
        """Every layer's output channels, inferred again whenever `net.channels` or a layer changed.

        Blocks are replaced rather than edited in place, so comparing the layers by identity is
        enough to notice a change; the layers list itself may be swapped or edited freely."""
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
        return self.net.channels if ref < 0 else self._layer_channels()[ref]

    def in_channels(self, layer_idx: int) -> int:
        """The channels layer `layer_idx` reads: for a conv, the channels it convolves; for a route,
        all its inputs'."""
        return self.layers[layer_idx].in_channels([self.channels_of(j) for j in self.inputs_of(layer_idx)])

    def channel_runs(self, layer_idx: int) -> list[tuple[int, ChannelRun]]:
        """(input layer, run) for each run of input channels that layer `layer_idx` moves or sums into
        its output (`darknet.blocks.ChannelRun`); none for a conv."""
        return self._runs(layer_idx, self._layer_channels())

    def all_channel_runs(self) -> list[list[tuple[int, ChannelRun]]]:
        """`channel_runs` of every layer."""
        channels = self._layer_channels()
        return [self._runs(idx, channels) for idx in range(len(self.layers))]

    def _runs(self, layer_idx: int, channels: list[int]) -> list[tuple[int, ChannelRun]]:
        inputs = self.inputs_of(layer_idx)
        runs = self.layers[layer_idx].channel_runs([self.net.channels if j < 0 else channels[j] for j in inputs])
        return [(inputs[run.source], run) for run in runs]

    def sums(self) -> dict[int, list[int]]:
        """The layers that add inputs element-wise ([shortcut]): layer -> the inputs it adds."""
        found = {}
        for idx, runs in enumerate(self.all_channel_runs()):
            spans = sorted((run.out_start, run.out_start + run.size) for _, run in runs)
            if any(start < stop for (_, stop), (start, _) in zip(spans, spans[1:])):  # runs overlap: a sum
                found[idx] = [j for j, _ in runs]
        return found

    @property
    def yolo_indices(self) -> list[int]:
        return [i for i, block in enumerate(self.layers) if isinstance(block, YoloBlock)]

    def replace(self, layers: list[LayerBlock]) -> "DarknetCfg":
        return DarknetCfg(net=self.net, layers=layers, path=None)


def infer_channels(cfg: DarknetCfg) -> list[int]:
    """Output channels of every layer; raises CfgError where the cfg's channel arithmetic fails."""

    def channels(idx: int, block: LayerBlock, inputs: list[int]) -> int:
        try:
            return block.out_channels(inputs)
        except ChannelMismatch as error:
            raise CfgError(f"[{block.section}] layer {idx}: {error}", cfg.path, block.line) from None

    return cfg.propagate(channels, cfg.net.channels)


def infer_output_hw(cfg: DarknetCfg, img_hw: tuple[int, int]) -> list[tuple[int, int]]:
    """Spatial size of every layer's output for an input of `img_hw` (height, width)."""
    return cfg.propagate(lambda idx, block, inputs: block.out_hw(inputs), tuple(img_hw))
