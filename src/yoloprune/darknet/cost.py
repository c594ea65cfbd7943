"""What a cfg costs, from the cfg alone: multiply-adds (MACs) and parameters, per conv and in all, and
what one output channel of each conv costs.

This is the one place a conv's cost is computed (`conv_macs`, `conv_params`); it is fast enough to
run inside a search loop. Only convs are counted: routes, shortcuts, upsamples and maxpools move or
add values but multiply nothing.

A channel's cost (`channel_macs`) is what removing it saves: its own filter (the conv's MACs /
filters) plus its input slice in every conv that reads it, directly or through routes, shortcuts,
upsamples and maxpools (that conv's MACs / its input channels, once per time it reads the channel).
Convs summed by shortcuts share their channels (`darknet.graph.ChannelGroup`), so the slices read
from such a set are split evenly among its convs: a set's costs add up to what removing one of its
channels saves.

`darknet_extra_flops` is what darknet's own printed total adds to 2 x conv MACs.
"""

from __future__ import annotations

from yoloprune.darknet.blocks import ConvBlock, MaxpoolBlock, ShortcutBlock
from yoloprune.darknet.graph import analyze_graph
from yoloprune.darknet.network import DarknetCfg, infer_output_hw


def conv_macs(block: ConvBlock, in_channels: int, out_hw: tuple[int, int]) -> int:
    """Multiply-adds of a conv reading `in_channels` channels into an output of `out_hw` (height, width):
    each of `filters` filters sees `in_channels / groups` channels over size x size taps, per pixel."""
    out_h, out_w = out_hw
    return out_h * out_w * block.filters * (in_channels // block.groups) * block.size * block.size


def conv_params(block: ConvBlock, in_channels: int) -> int:
    """Trainable parameters of a conv: its kernel (each weight is used once per output pixel, so these
    are its MACs at a 1x1 output), plus BN's γ and β or else the conv's bias."""
    return conv_macs(block, in_channels, (1, 1)) + (2 * block.filters if block.batch_normalize else block.filters)


def _hw(img_size: int | tuple[int, int]) -> tuple[int, int]:
    return (img_size, img_size) if isinstance(img_size, int) else img_size


def conv_macs_per_layer(cfg: DarknetCfg, img_size: int | tuple[int, int] = 416) -> list[int]:
    """Multiply-adds of every layer at `img_size` (0 for the layers that are not convs), from the cfg alone."""
    sizes = infer_output_hw(cfg, _hw(img_size))
    return [conv_macs(block, cfg.in_channels(idx), sizes[idx]) if isinstance(block, ConvBlock) else 0 for idx, block in enumerate(cfg.layers)]


def count_cfg_macs(cfg: DarknetCfg, img_size: int | tuple[int, int] = 416) -> int:
    """Multiply-adds of all convs at `img_size`, from the cfg alone (no model is built)."""
    return sum(conv_macs_per_layer(cfg, img_size))


def count_cfg_params(cfg: DarknetCfg) -> int:
    """Trainable parameters of the model a cfg describes (conv weights, BN γ/β or conv bias)."""
    return sum(conv_params(block, cfg.in_channels(idx)) for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock))


def channel_macs(cfg: DarknetCfg, img_size: int | tuple[int, int]) -> dict[int, float]:
    """Per conv: the MACs removing one of its output channels saves at `img_size` (module docstring)."""
    layer_macs = conv_macs_per_layer(cfg, img_size)
    graph = analyze_graph(cfg)
    convs = [idx for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock)]
    read: dict[int, float] = {}  # channel set (root conv) -> MACs of its input slices in the convs reading it
    for idx in convs:
        source = cfg.inputs_of(idx)[0]
        if source < 0:
            continue  # reads the image
        per_input_channel = layer_macs[idx] / cfg.in_channels(idx)
        for span in graph.channel_maps[source]:
            if span.group >= 0:
                read[span.group] = read.get(span.group, 0.0) + span.size * per_input_channel
    costs = {}
    for idx in convs:
        group = graph.group_for(idx)
        costs[idx] = layer_macs[idx] / cfg.layers[idx].filters + read.get(group.root, 0.0) / group.channels / len(group.convs)
    return costs


def darknet_extra_flops(cfg: DarknetCfg, img_hw: tuple[int, int]) -> int:
    """The FLOPs darknet's printed "Total BFLOPS" adds to 2 x conv MACs at `img_hw`, from the cfg's shapes.

    AlexeyAB/darknet sets `l.bflops` in only a few layer types: convolutional_layer.c (2 per
    multiply-add over `c / groups` input channels: 2 x `conv_macs` already), maxpool_layer.c (one per
    pooled tap: size * size * input channels per output pixel) and shortcut_layer.c (one per output
    element and per added layer; doubled for weighted shortcuts, which yoloprune does not build).
    Route, upsample and yolo set none, so they count 0.
    """
    sizes = infer_output_hw(cfg, img_hw)
    total = 0
    for idx, block in enumerate(cfg.layers):
        height, width = sizes[idx]
        if isinstance(block, MaxpoolBlock):
            total += block.size * block.size * cfg.in_channels(idx) * height * width
        elif isinstance(block, ShortcutBlock):
            added_layers = len(cfg.inputs_of(idx)) - 1  # inputs are the previous layer + the `from` layers
            total += height * width * cfg.channels_of(idx) * added_layers
    return total
