"""Residual blocks a cfg can lose whole: conv → conv → [shortcut] adding the block's input."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.darknet.blocks import ConvBlock
from yoloprune.darknet.graph import layer_consumers
from yoloprune.darknet.network import DarknetCfg


@dataclass(frozen=True)
class ResidualBlock:
    """conv `first` → conv `second` → [shortcut] `shortcut` adding the block's input (layer `first - 1`)."""

    first: int
    second: int
    shortcut: int

    @property
    def layers(self) -> tuple[int, int, int]:
        return (self.first, self.second, self.shortcut)


def residual_blocks(cfg: DarknetCfg) -> list[ResidualBlock]:
    """Blocks that can be removed whole: two chained convs whose sum with the block input is a linear
    [shortcut], nothing else reading the convs, and a batch-normalised second conv (its constant
    output β is what the shortcut keeps adding once the block is gone). The block must keep its
    input's width: the shortcut's output then takes the input's place."""
    consumers = layer_consumers(cfg)
    blocks = []
    for idx, summands in cfg.sums().items():
        first, second = idx - 2, idx - 1
        if cfg.layers[idx].out_activation != "linear" or idx < 3 or summands != [second, first - 1]:
            continue
        first_block, second_block = cfg.layers[first], cfg.layers[second]
        if not (isinstance(first_block, ConvBlock) and isinstance(second_block, ConvBlock)):
            continue
        if cfg.inputs_of(first) != [first - 1]:
            continue
        if consumers[first] != [second] or consumers[second] != [idx] or not second_block.batch_normalize:
            continue
        if cfg.channels_of(first - 1) != second_block.filters:
            continue
        blocks.append(ResidualBlock(first, second, idx))
    return blocks
