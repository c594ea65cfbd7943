"""BN-γ L1 sparsity (network slimming) as a gradient step, its schedule, and the γ statistics logged per epoch.

The penalty s·Σ|γ| over the chosen BN layers is not added to the loss: its subgradient s·sign(γ) is
added to γ.grad after backward and before the optimizer step (after AMP unscaling and after the task
gradient is clipped, so that clipping never scales the penalty down), which is what the seed did and
keeps the loss curves comparable with and without sparsity.

Layer sets (`resolve_sparsity_layers`):
- "all": every conv with batch normalisation;
- "safe": the seed's prunable set (`darknet.graph.safe_prunable_conv_indices`): BN convs that feed
  no [shortcut] and are not the convs right before an [upsample].

Weighting (`sparsity_weighting="macs"`, `macs_sparsity_weights`): network slimming prunes by one
global |γ| threshold, so a uniform s empties cheap and expensive layers alike; but in the demo's
cfg at 128 px a channel of the first conv costs 170 times what one of the last 1x1 convs does. Scaling each layer's s
by what one of its channels costs pushes the penalty where removing channels saves the most MACs.
A channel's cost is what pruning it saves: its own filter (the conv's MACs / filters) plus its
input slice in every conv that reads it, directly or through routes, shortcuts, upsamples and
maxpools (that conv's MACs / its input channels, once per time it reads the channel). Convs summed
by shortcuts share their channels (`darknet.graph.ChannelGroup`), so the slices read from such a set
are split evenly among its convs: a set's weights add up to what removing one of its channels saves.
The weights are normalised to mean 1 over the penalised channels, so at uniform |γ| the total
penalty s·Σ w·|γ| is that of the unweighted run and s keeps its meaning (`normalised_weights`).

Latency weighting (`sparsity_weighting="latency"`, `latency_sparsity_weights`): the same, with a
channel's cost the ms a latency table (`bench.latency_table`) predicts removing it saves, read the
way `prune --target-latency` ranks channels (`prune.latency.UnitLatency`): the table's slope over
the first channel block at full width, per channel, of every layer the channel's set reaches. A
conv's weight is its own row's saving (as output channels) plus an even share, among the convs of
its set, of the savings of the layers reading the set (as input channels, with the pass-through
layers between): the MACs weighting's split, priced by the table. A set the table predicts no
saving for (narrower than one channel block, or not prunable, so measured at its width alone)
gets weight 0: removing its channels would not make the model faster.

Sparsity target (`sparsity_target=F`): after every epoch `sparse_macs_share` weighs each penalised
channel by `channel_macs` and gives the share of those MACs whose |γ| is below the threshold; the
trainer stops once it reaches F, and `adapt_sparsity` doubles s (up to a ceiling) when the share stalls.

Schedule (`sparsity_at_epoch`): constant s (the seed), or with `decay_fraction=F` s is multiplied by
`decay_factor` (default 0.01) from epoch ⌊F·epochs⌋ on: the penalty has by then pushed the
unimportant γ towards zero, and the remaining epochs recover accuracy under a much weaker pull.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg
from yoloprune.darknet.graph import analyze_graph, bn_conv_indices, conv_macs, infer_output_hw, safe_prunable_conv_indices
from yoloprune.train.settings import SMALL_GAMMA, SPARSITY_LAYER_SETS

if TYPE_CHECKING:
    from yoloprune.bench.latency_table import LatencyTable

GAMMA_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
# Log-spaced |γ| histogram bins for the per-epoch distribution figure; the first bin starts at 0.
GAMMA_HIST_EDGES = [0.0] + [round(10 ** (k / 4), 6) for k in range(-16, 5)]  # 0, 1e-4 ... 10


def resolve_sparsity_layers(cfg: DarknetCfg, layers: str | Sequence[int]) -> list[int]:
    """Layer indices for a set name ("all" | "safe") or an explicit list of BN conv indices."""
    if isinstance(layers, str):
        if layers == "all":
            return bn_conv_indices(cfg)
        if layers == "safe":
            return safe_prunable_conv_indices(cfg)
        raise ValueError(f"sparsity layers must be one of {SPARSITY_LAYER_SETS} or a list of indices, got {layers!r}")
    allowed = set(bn_conv_indices(cfg))
    bad = [idx for idx in layers if idx not in allowed]
    if bad:
        raise ValueError(f"layers {bad} are not convs with batch normalisation")
    return sorted(set(int(idx) for idx in layers))


def _bn(model: nn.Module, layer_idx: int) -> nn.BatchNorm2d:
    model = getattr(model, "module", model)
    return model.layers[layer_idx].bn


def channel_macs(cfg: DarknetCfg, img_size: int) -> dict[int, float]:
    """Per conv: the MACs removing one of its output channels saves at `img_size` (module docstring)."""
    sizes = infer_output_hw(cfg, (img_size, img_size))
    graph = analyze_graph(cfg)
    convs = [idx for idx, block in enumerate(cfg.layers) if isinstance(block, ConvBlock)]
    macs = {idx: conv_macs(cfg.layers[idx], cfg.in_channels(idx), sizes[idx]) for idx in convs}
    read: dict[int, float] = {}  # channel set (root conv) -> MACs of its input slices in the convs reading it
    for idx in convs:
        source = cfg.inputs_of(idx)[0]
        if source < 0:
            continue  # reads the image
        per_input_channel = macs[idx] / cfg.in_channels(idx)
        for span in graph.channel_maps[source]:
            if span.group >= 0:
                read[span.group] = read.get(span.group, 0.0) + span.size * per_input_channel
    costs = {}
    for idx in convs:
        group = graph.group_for(idx)
        costs[idx] = macs[idx] / cfg.layers[idx].filters + read.get(group.root, 0.0) / group.channels / len(group.convs)
    return costs


def normalised_weights(cfg: DarknetCfg, layer_indices: Sequence[int], costs: dict[int, float]) -> dict[int, float]:
    """Per penalised layer: s's multiplier, proportional to its channel cost in `costs`, with mean 1
    over the penalised channels (each layer counts once per channel)."""
    channels = {idx: cfg.layers[idx].filters for idx in layer_indices}
    total = sum(channels.values())
    mean = sum(costs[idx] * n for idx, n in channels.items()) / total if total else 0.0
    return {idx: costs[idx] / mean for idx in layer_indices}


def macs_sparsity_weights(cfg: DarknetCfg, layer_indices: Sequence[int], img_size: int) -> dict[int, float]:
    """Per penalised layer: s's multiplier, proportional to `channel_macs`, mean 1 over the penalised channels."""
    return normalised_weights(cfg, layer_indices, channel_macs(cfg, img_size))


def channel_latency(cfg: DarknetCfg, table: "LatencyTable", layer_indices: Sequence[int]) -> dict[int, float]:
    """Per conv of `layer_indices`: the ms `table` predicts removing one of its output channels
    saves at the table's input size (module docstring)."""
    from yoloprune.prune.latency import UnitLatency

    graph = analyze_graph(cfg)
    costs = {}
    for root in sorted({graph.group_of[idx] for idx in layer_indices}):
        group = graph.groups[root]
        # min_keep 1: the slope over a whole channel block, as the pruning's ranking reads it
        savings = UnitLatency(table, cfg, group.convs, group.parts, group.channels // group.parts, []).layer_savings(min_keep=1)
        shared = sum(ms for layer, ms in savings.items() if layer not in group.convs) / len(group.convs)
        for idx in group.convs:
            # per channel: a position is a channel of every part; a noisy table's negative slope saves nothing
            costs[idx] = max(savings.get(idx, 0.0) + shared, 0.0) / group.parts
    return {idx: costs[idx] for idx in layer_indices}


def latency_sparsity_weights(cfg: DarknetCfg, layer_indices: Sequence[int], table: "LatencyTable") -> dict[int, float]:
    """Per penalised layer: s's multiplier, proportional to `channel_latency`, mean 1 over the
    penalised channels; a LatencyTableError if the table predicts no saving for any of them."""
    from yoloprune.bench.latency_table import LatencyTableError

    costs = channel_latency(cfg, table, layer_indices)
    if layer_indices and not any(costs.values()):
        raise LatencyTableError(
            f"predicts no saving from removing channels of any penalised layer ({len(layer_indices)} layers): "
            "nothing to weight the penalty by", table.path,
        )
    return normalised_weights(cfg, layer_indices, costs)


def apply_bn_sparsity(model: nn.Module, s: float, layer_indices: Sequence[int], weights: dict[int, float] | None = None) -> None:
    """Add `s·w·sign(γ)` to γ.grad of the BN layers at `layer_indices` (the L1 subgradient), with w
    the layer's weight in `weights` (`macs_sparsity_weights`), or 1 without."""
    if s == 0:
        return
    with torch.no_grad():
        for layer_idx in layer_indices:
            gamma = _bn(model, layer_idx).weight
            step = s * (1.0 if weights is None else weights[layer_idx]) * torch.sign(gamma)
            if gamma.grad is None:
                gamma.grad = step.clone()
            else:
                gamma.grad.add_(step)


def sparsity_at_epoch(s: float, epoch: int, epochs: int, decay_fraction: float | None = None, decay_factor: float = 0.01) -> float:
    """The penalty weight for 0-based `epoch` of `epochs` under the constant or decayed schedule."""
    if decay_fraction is None or epoch < math.floor(decay_fraction * epochs):
        return s
    return s * decay_factor


def sparse_macs_share(model: nn.Module, layer_indices: Sequence[int], costs: dict[int, float], threshold: float) -> float:
    """The share of the penalised channels' MACs (`costs`: `channel_macs`) in channels whose |γ| is
    below `threshold`: how much of the prunable work a |γ| threshold would remove now."""
    total = small = 0.0
    for idx in layer_indices:
        gamma = _bn(model, idx).weight.detach().abs()
        total += costs[idx] * gamma.numel()
        small += costs[idx] * int((gamma < threshold).sum())
    return small / total if total else 0.0


# `adapt_sparsity`'s stall rule: the share must grow by STALL_GAIN (one point of the prunable MACs)
# over STALL_EPOCHS epochs run at the current s; two, so that one noisy epoch cannot double s, and
# both at the current s, so that a raised s is judged on its own epochs only.
STALL_EPOCHS = 2
STALL_GAIN = 0.01


def adapt_sparsity(path: Sequence[tuple[float, float]], ceiling: float) -> float:
    """The s of the next epoch under a sparsity target, from `path`: per completed epoch, the s it
    ran at and `sparse_macs_share` after it. s doubles (up to `ceiling`) when the last STALL_EPOCHS
    epochs ran at the current s and the share gained less than STALL_GAIN over them (from the end
    of the epoch before them); otherwise it stays. It never goes down."""
    s = path[-1][0]
    recent = path[-STALL_EPOCHS - 1:]
    if len(recent) <= STALL_EPOCHS or any(used != s for used, _ in recent[1:]):
        return s
    if recent[-1][1] - recent[0][1] < STALL_GAIN:
        return max(s, min(2 * s, ceiling))
    return s


def collect_gammas(model: nn.Module, layer_indices: Sequence[int]) -> torch.Tensor:
    """|γ| of all chosen layers as one flat CPU tensor."""
    if not layer_indices:
        return torch.zeros(0)
    return torch.cat([_bn(model, idx).weight.detach().abs().float().cpu().flatten() for idx in layer_indices])


def summarize_gammas(model: nn.Module, layer_indices: Sequence[int]) -> dict:
    """Per-epoch γ statistics: |γ| quantiles (`gamma_q0` … `gamma_q100`), the fraction below 0.01,
    and the signed γ vector of the first chosen layer (a list, for the training-trace figure)."""
    abs_gammas = collect_gammas(model, layer_indices)
    stats: dict = {}
    if abs_gammas.numel():
        values = torch.quantile(abs_gammas, torch.tensor(GAMMA_QUANTILES))
        for q, value in zip(GAMMA_QUANTILES, values.tolist()):
            stats[f"gamma_q{int(q * 100)}"] = value
        stats["gamma_frac_small"] = float((abs_gammas < SMALL_GAMMA).float().mean())
        clipped = abs_gammas.clamp(max=GAMMA_HIST_EDGES[-1])
        counts, _ = torch.histogram(clipped, torch.tensor(GAMMA_HIST_EDGES))
        stats["gamma_hist"] = [int(c) for c in counts.tolist()]
        stats["gamma_hist_edges"] = list(GAMMA_HIST_EDGES)
        stats["gamma_first_layer"] = int(layer_indices[0])
        stats["gamma_first"] = _bn(model, layer_indices[0]).weight.detach().float().cpu().tolist()
    return stats
