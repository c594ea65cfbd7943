"""Channel importance: what the planners rank by, as a function of the model.

An importance is any callable `model -> {conv layer index: tensor of one score per output channel}`
covering at least the batch-normalised convs; a higher score means more worth keeping. The planners
(`prune.channel.plan_channel_prune`, `prune.layer.plan_layer_prune`) take it as an argument, so
another criterion is tried by passing another function, with no change to the planners.
"""

from __future__ import annotations

from typing import Callable

import torch

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
