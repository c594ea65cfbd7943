"""Apply a `PrunePlan`: fold what is removed into what stays, then cut the network down.

A removed channel is treated as the constant it outputs once its γ is (near) zero: act(β). That
constant is not lost: it is carried forward through the graph and added where a linear operation
can absorb it. Following a channel-wise constant offset `o` (the original output minus the pruned
network's output) from layer to layer:

- conv: its pre-BN output gains Σ over kernel taps of W·o per output channel; subtracting that
  from the following BN's running_mean (or adding it to the conv bias without BN) makes the conv's
  output exact again — everywhere for 1×1 convs, away from the zero-padded border for larger ones;
- shortcut (linear): the offsets of the two summands add up (over the channels both have);
- route: offsets are concatenated (sliced with `groups`, whose parts keep equal numbers of channels);
- upsample, maxpool: pass through (max(x + c) = max(x) + c per channel);
- a removed residual block: its branch outputs the constant act(β) of its second conv, which the
  shortcut keeps adding; so the block's offset is that constant, passed on like any other.

Two steps make this checkable: `fold_pruned_constants` gives a *keep-size* state (same shapes as the
original, removed channels zeroed so they output exactly 0, constants folded into the consumers),
and `build_compact_model` slices it. The compact model equals the keep-size model everywhere.
"""

from __future__ import annotations

import copy
import logging
from typing import Callable

import torch
import torch.nn.functional as F

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, YoloBlock
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.model import Darknet, make_activation
from yoloprune.prune.plan import PrunePlan

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- keep-size folding


def _removed_masks(model: Darknet, plan: PrunePlan) -> dict[int, torch.Tensor]:
    """Per conv layer: True for output channels the plan removes (all of a removed block's second conv)."""
    masks = {}
    for idx, kept in plan.kept_channels.items():
        mask = torch.ones(model.out_channels[idx], dtype=torch.bool)
        mask[torch.as_tensor(kept, dtype=torch.long)] = False
        masks[idx] = mask
    for block in plan.removed_blocks:
        masks[block.second] = torch.ones(model.out_channels[block.second], dtype=torch.bool)
    return masks


def _conv_input_shift(weight: torch.Tensor, offset: torch.Tensor, groups: int) -> torch.Tensor:
    """Σ over input channels and kernel taps of W·offset: what a constant input adds to each output."""
    if groups == 1:
        return weight.sum(dim=(2, 3)).double() @ offset
    weight = weight.double()
    k_h, k_w = weight.shape[-2:]
    patch = offset.view(1, -1, 1, 1).expand(1, offset.numel(), k_h, k_w)
    return F.conv2d(patch, weight, groups=groups).view(-1)


def _fold_into_conv(state: dict[str, torch.Tensor], prefix: str, block: ConvBlock, incoming: torch.Tensor | None, removed: torch.Tensor | None) -> torch.Tensor | None:
    """Absorb a constant `incoming` on the conv's input into its BN mean (or its bias without BN);
    zero the `removed` output channels' γ and β and return the constant act(β) they output in the
    original network (None when no channel is removed)."""
    if incoming is not None:
        shift = _conv_input_shift(state[prefix + "conv.weight"], incoming, block.groups)
        if block.batch_normalize:
            state[prefix + "bn.running_mean"] -= shift.to(state[prefix + "bn.running_mean"].dtype)
        else:
            state[prefix + "conv.bias"] += shift.to(state[prefix + "conv.bias"].dtype)
    if removed is None or not removed.any():
        return None
    beta = state[prefix + "bn.bias"]
    offset = torch.zeros(block.filters, dtype=torch.float64)
    offset[removed] = make_activation(block.activation)(beta[removed].double())
    state[prefix + "bn.weight"][removed] = 0
    beta[removed] = 0
    return offset


def _moved_offsets(cfg: DarknetCfg, idx: int, offset_or_zeros: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """The offsets of layer `idx`'s inputs moved as it moves their channels (concatenated, sliced,
    passed through) and added where it sums them (`DarknetCfg.channel_runs`)."""
    total = torch.zeros(cfg.channels_of(idx), dtype=torch.float64)
    for j, run in cfg.channel_runs(idx):
        total[run.out_start:run.out_start + run.size] += offset_or_zeros(j)[run.in_start:run.in_start + run.size]
    return total


def _activated_offset(idx: int, activation: str, total: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The offset after a layer that applies `activation` to what it moves or sums, whose summands'
    offsets add up to `total`."""
    if activation == "linear":
        return total
    # act(x + c) differs from act(x) by a constant only where x is constant: in the removed
    # channels, whose keep-size summands are both exactly 0
    removed = torch.ones(len(total), dtype=torch.bool)
    removed[kept] = False
    offset = torch.zeros_like(total)
    offset[removed] = make_activation(activation)(total[removed])
    if total[~removed].abs().max() > 0:
        log.warning("layer %d has a %s activation: a constant reaching its kept channels is dropped", idx, activation)
    return offset


def fold_pruned_constants(model: Darknet, plan: PrunePlan) -> dict[str, torch.Tensor]:
    """A keep-size state dict: removed channels have γ = β = 0 (so they output exactly 0) and their
    constants act(β) are folded into the layers that read them. `model` is not changed. The state
    is on the CPU; for a CPU model its conv weights are `model`'s own tensors (never written)."""
    cfg = model.cfg
    # Folding runs on the CPU whatever the model's device. Conv weights are only read, so on the CPU
    # they stay shared with `model`; everything folding writes is a copy.
    state = {
        name: tensor.detach().cpu() if name.endswith("conv.weight") else tensor.detach().cpu().clone()
        for name, tensor in model.state_dict().items()
    }
    removed_masks = _removed_masks(model, plan)
    kept = _kept_indices(model, plan)
    removed_shortcuts = {block.shortcut: block for block in plan.removed_blocks}
    offsets: list[torch.Tensor | None] = []  # per layer output: original minus keep-size, per channel

    def offset_or_zeros(idx: int) -> torch.Tensor:
        channels = cfg.channels_of(idx)
        found = None if idx < 0 else offsets[idx]
        return found if found is not None else torch.zeros(channels, dtype=torch.float64)

    with torch.no_grad():
        for idx, block in enumerate(cfg.layers):
            incoming = [None if j < 0 else offsets[j] for j in cfg.inputs_of(idx)]
            offset: torch.Tensor | None = None
            if isinstance(block, ConvBlock):
                offset = _fold_into_conv(state, f"layers.{idx}.", block, incoming[0], removed_masks.get(idx))
            elif idx in removed_shortcuts:
                residual = removed_shortcuts[idx]
                offset = offset_or_zeros(residual.first - 1) + offset_or_zeros(residual.second)
            elif isinstance(block, YoloBlock):
                if incoming[0] is not None and incoming[0].abs().max() > 0:
                    log.warning("[yolo] %d reads a layer carrying a folded constant; it cannot absorb it", idx)
            elif any(o is not None for o in incoming):
                offset = _activated_offset(idx, block.out_activation, _moved_offsets(cfg, idx, offset_or_zeros), kept[idx])
            offsets.append(offset if offset is not None and offset.abs().max() > 0 else None)
    return state


def zero_removed_gammas(model: Darknet, plan: PrunePlan) -> Darknet:
    """A copy of `model` whose removed channels have γ = 0 and keep their β: each outputs its constant
    act(β), which is what folding assumes. Folding makes the compact model equal to this one wherever
    every consumer of a removed channel is 1×1; a k×k consumer differs at the zero-padded border, where
    the constant is not there to be folded."""
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        for idx, mask in _removed_masks(model, plan).items():
            zeroed.layers[idx].bn.weight[mask.to(zeroed.layers[idx].bn.weight.device)] = 0
    return zeroed


def mask_model(model: Darknet, plan: PrunePlan) -> Darknet:
    """The keep-size pruned model: same shapes as `model`, removed channels output 0, constants folded."""
    masked = Darknet(model.cfg)
    masked.load_state_dict(fold_pruned_constants(model, plan))
    return masked.to(next(model.parameters()).device).train(model.training)


# ---------------------------------------------------------------------------------------------- compact model


def _kept_through(cfg: DarknetCfg, idx: int, kept_inputs: list[list[int]]) -> list[int]:
    """The output channels a layer that moves or sums channels keeps, given its inputs' kept channels
    (`kept_inputs`, in input order): those whose input channels are kept. Channels it sums must be
    kept or removed together, and the pruned layer must read its pruned inputs as the original read
    the kept channels (a grouped route's parts must keep equal numbers of channels, the planner's
    `darknet.graph.ChannelGroup.parts`)."""
    inputs = cfg.inputs_of(idx)
    rank = [{channel: position for position, channel in enumerate(kept)} for kept in kept_inputs]
    alive: dict[int, bool] = {}  # output channel -> whether it is kept
    sources: dict[int, set[tuple[int, int]]] = {}  # kept output channel -> (input, pruned channel) it reads
    for _, run in cfg.channel_runs(idx):
        for offset in range(run.size):
            channel, read = run.out_start + offset, run.in_start + offset
            kept = read in rank[run.source]
            if alive.setdefault(channel, kept) != kept:
                raise ValueError(f"layer {idx}: its summands keep different channels (layers {inputs})")
            if kept:
                sources.setdefault(channel, set()).add((run.source, rank[run.source][read]))
    kept_out = sorted(channel for channel, kept in alive.items() if kept)
    pruned_reads: dict[int, set[tuple[int, int]]] = {}
    for run in cfg.layers[idx].channel_runs([len(kept) for kept in kept_inputs]):
        for offset in range(run.size):
            pruned_reads.setdefault(run.out_start + offset, set()).add((run.source, run.in_start + offset))
    if pruned_reads != {position: sources[channel] for position, channel in enumerate(kept_out)}:
        raise ValueError(
            f"layer {idx} ([{cfg.layers[idx].section}]) would read other channels of layers {inputs} once pruned: "
            "a grouped route's parts must keep equal numbers of channels, summands of different widths stay whole"
        )
    return kept_out


def _kept_indices(model: Darknet, plan: PrunePlan) -> list[torch.Tensor]:
    """Per layer output of the original network: the channels that survive, in order."""
    cfg = model.cfg
    removed_shortcuts = {block.shortcut: block for block in plan.removed_blocks}
    removed = plan.removed_layers
    kept: list[torch.Tensor] = []

    def of(j: int) -> torch.Tensor:
        return torch.arange(cfg.net.channels) if j < 0 else kept[j]

    for idx, block in enumerate(cfg.layers):
        if isinstance(block, ConvBlock):
            if idx in removed:
                kept.append(torch.empty(0, dtype=torch.long))
            elif idx in plan.kept_channels:
                kept.append(torch.as_tensor(plan.kept_channels[idx], dtype=torch.long))
            else:
                kept.append(torch.arange(block.filters))
        elif idx in removed_shortcuts:
            kept.append(of(removed_shortcuts[idx].first - 1))
        else:
            through = _kept_through(cfg, idx, [of(j).tolist() for j in cfg.inputs_of(idx)])
            kept.append(torch.as_tensor(through, dtype=torch.long))
    return kept


def build_compact_model(model: Darknet, plan: PrunePlan, state: dict[str, torch.Tensor] | None = None) -> Darknet:
    """The pruned network at its new size, weights sliced from `state` (default: the folded state)."""
    if state is None:
        state = fold_pruned_constants(model, plan)
    cfg = model.cfg
    kept = _kept_indices(model, plan)
    filters = {idx: len(kept[idx]) for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock)}
    pruned_cfg = build_pruned_cfg(cfg, filters, plan.removed_blocks)
    removed = plan.removed_layers
    new_index = {}
    for idx in range(len(cfg.layers)):
        if idx not in removed:
            new_index[idx] = len(new_index)
    compact_state = {}
    for idx, block in enumerate(cfg.layers):
        if not isinstance(block, ConvBlock) or idx in removed:
            continue
        old, new = f"layers.{idx}.", f"layers.{new_index[idx]}."
        out_idx = kept[idx]
        j = cfg.inputs_of(idx)[0]
        in_idx = torch.arange(cfg.net.channels) if j < 0 else kept[j]
        weight = state[old + "conv.weight"].index_select(0, out_idx)
        if block.groups == 1:
            weight = weight.index_select(1, in_idx)
        elif len(in_idx) != weight.shape[1] * block.groups or len(out_idx) != block.filters:
            raise ValueError(f"grouped conv {idx} cannot lose channels")
        compact_state[new + "conv.weight"] = weight
        if block.batch_normalize:
            for name in ("weight", "bias", "running_mean", "running_var"):
                compact_state[new + "bn." + name] = state[old + "bn." + name].index_select(0, out_idx)
            compact_state[new + "bn.num_batches_tracked"] = state[old + "bn.num_batches_tracked"].clone()
        else:
            compact_state[new + "conv.bias"] = state[old + "conv.bias"].index_select(0, out_idx)
    compact = Darknet(pruned_cfg)
    compact.load_state_dict(compact_state, assign=True)  # the sliced tensors are new: no copy needed
    return compact.to(next(model.parameters()).device).train(model.training)


def prune_model(model: Darknet, plan: PrunePlan) -> Darknet:
    """Apply `plan` to `model` (left unchanged): the compact pruned model. What it changed is
    described by `prune.report.build_prune_report(model, pruned, plan)`."""
    return build_compact_model(model, plan)
