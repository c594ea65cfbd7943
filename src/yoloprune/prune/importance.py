"""Channel importance: what the planners rank by, as a function of the model.

An importance is any callable `model -> {conv layer index: tensor of one score per output channel}`
covering at least the batch-normalised convs; a higher score means more worth keeping. The planners
(`prune.channel.plan_channel_prune`, `prune.layer.plan_layer_prune`) take it as an argument, so
another criterion is tried by passing another function, with no change to the planners.

Two are defined (`IMPORTANCES`, by the names `prune --importance` takes): `bn_scale` (|γ|, network
slimming's criterion) and `bn_scale_out_norm` (|γ| times the norm of the weights reading the channel).
"""

from __future__ import annotations

from typing import Callable

import torch

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, LayerBlock
from yoloprune.darknet.model import Darknet

Importance = Callable[[Darknet], dict[int, torch.Tensor]]


def bn_scale(model: Darknet) -> dict[int, torch.Tensor]:
    """|γ| of every batch-normalised conv, as float64 on the CPU (network slimming's criterion: a
    channel whose BN scale is near zero outputs a near-constant)."""
    return {
        idx: layer.bn.weight.detach().abs().double().cpu()
        for idx, layer in enumerate(model.layers)
        if getattr(layer, "bn", None) is not None
    }


def bn_scale_out_norm(model: Darknet) -> dict[int, torch.Tensor]:
    """|γ| times the L2 norm of the weights that read the channel, per batch-normalised conv.

    |γ| says how large a channel's output is, not how much the network uses it: a channel with a small
    γ that the next convs multiply by large weights can matter more than one with a larger γ they
    nearly ignore. The weights reading output channel c of conv i are the input slices at c of every
    conv that reads it, directly or through routes (at its offset in the concatenation, or in the
    slice a grouped route takes), shortcuts (a summand is read wherever the sum is), upsamples and
    maxpools (`reading_convs`). A channel that no conv reads scores 0: removing it changes nothing
    downstream (the first half of a conv read only through a `groups=2, group_id=1` route). A conv of
    which no channel is read by a conv (its only reader a [yolo] layer: such convs are never pruned)
    keeps |γ|."""
    cfg = model.cfg
    squares: dict[int, list[float]] = {}  # conv -> per output channel, the summed squares of the weights reading it
    per_input: dict[int, list[float]] = {}  # reading conv -> per input channel, the squares of the weights reading it
    for reader, position, sources in reading_convs(cfg):
        if reader not in per_input:
            block = cfg.layers[reader]
            weight = model.layers[reader].conv.weight.detach().double().cpu()  # (filters, in / groups, k, k)
            # input channel g·(in / groups) + q is read by the filters of group g, at their input q
            grouped = weight.view(block.groups, block.filters // block.groups, *weight.shape[1:])
            per_input[reader] = grouped.pow(2).sum(dim=(1, 3, 4)).flatten().tolist()
        for conv, channel in sources:
            squares.setdefault(conv, [0.0] * cfg.layers[conv].filters)[channel] += per_input[reader][position]
    scores = bn_scale(model)
    for idx in scores:
        if idx in squares:
            scores[idx] = scores[idx] * torch.tensor(squares[idx], dtype=torch.float64).sqrt()
    return scores


def reading_convs(cfg: DarknetCfg) -> list[tuple[int, int, tuple[tuple[int, int], ...]]]:
    """Every (reading conv, its input channel, the conv output channels that input is made of): the
    (conv, channel) pairs that reach it moved by routes, upsamples and maxpools, or summed by
    shortcuts, as `DarknetCfg.channel_runs` says."""
    readings = []
    runs, channels = cfg.all_channel_runs(), cfg.out_channels

    def carry(idx: int, block: LayerBlock, inputs: list[list[tuple[tuple[int, int], ...]]]) -> list[tuple[tuple[int, int], ...]]:
        """Per output channel of layer `idx`: the (conv, channel) pairs it carries."""
        if isinstance(block, ConvBlock):
            readings.extend((idx, position, carried) for position, carried in enumerate(inputs[0]) if carried)
            return [((idx, c),) for c in range(block.filters)]
        carried_out: list[tuple[tuple[int, int], ...]] = [()] * channels[idx]
        for _, run in runs[idx]:
            for offset in range(run.size):
                carried_out[run.out_start + offset] += inputs[run.source][run.in_start + offset]
        # dict.fromkeys: `from=-1` adds a layer to itself, which is still one reading of each channel
        return [tuple(dict.fromkeys(carried)) for carried in carried_out]

    cfg.propagate(carry, [()] * cfg.net.channels)
    return readings


# By the names `PruneSettings.importance` takes (`prune.settings.IMPORTANCE_NAMES`).
IMPORTANCES: dict[str, Importance] = {"gamma": bn_scale, "gamma-out-norm": bn_scale_out_norm}
