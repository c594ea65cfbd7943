"""The pieces the sparsity regularisers (`train.regularisers`) are built from: the penalised layer
sets, the strength's schedule, the MACs weighting, the sparsity target's climb, and the γ statistics
logged per epoch.

Layer sets (`resolve_sparsity_layers`):
- "all": every conv with batch normalisation;
- "safe": the seed's prunable set (`darknet.graph.safe_prunable_conv_indices`): BN convs that feed
  no [shortcut] and are not the convs right before an [upsample].

Weighting (`normalised_weights`): network slimming prunes by one global |γ| threshold, so a uniform
s empties cheap and expensive layers alike; but in the demo's cfg at 128 px a channel of the first
conv costs 170 times what one of the last 1x1 convs does. Scaling each layer's s by what one of its
channels costs (`darknet.cost.channel_macs`) pushes the penalty where removing channels saves the
most MACs. The weights are normalised to mean 1 over the penalised channels, so at uniform |γ| the
total penalty s·Σ w·|γ| is that of the unweighted run and s keeps its meaning.

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

from yoloprune.darknet.graph import bn_conv_indices, safe_prunable_conv_indices
from yoloprune.train.settings import SMALL_GAMMA, SPARSITY_LAYER_SETS

if TYPE_CHECKING:
    from yoloprune.darknet.network import DarknetCfg

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


def bn_of(model: nn.Module, layer_idx: int) -> nn.BatchNorm2d:
    """The BatchNorm of conv `layer_idx` (of the Darknet itself when `model` is wrapped by DDP)."""
    model = getattr(model, "module", model)
    return model.layers[layer_idx].bn


def normalised_weights(channels: dict[int, int], costs: dict[int, float]) -> dict[int, float]:
    """Per penalised layer (`channels`: its channel count): s's multiplier, proportional to its
    channel cost in `costs`, with mean 1 over the penalised channels (each layer counts once per channel)."""
    total = sum(channels.values())
    mean = sum(costs[idx] * n for idx, n in channels.items()) / total if total else 0.0
    return {idx: costs[idx] / mean for idx in channels}


def sparsity_at_epoch(s: float, epoch: int, epochs: int, decay_fraction: float | None = None, decay_factor: float = 0.01) -> float:
    """The penalty weight for 0-based `epoch` of `epochs` under the constant or decayed schedule."""
    if decay_fraction is None or epoch < math.floor(decay_fraction * epochs):
        return s
    return s * decay_factor


def sparse_macs_share(model: nn.Module, layer_indices: Sequence[int], costs: dict[int, float], threshold: float) -> float:
    """The share of the penalised channels' MACs (`costs`: `darknet.cost.channel_macs`) in channels whose |γ| is
    below `threshold`: how much of the prunable work a |γ| threshold would remove now."""
    total = small = 0.0
    for idx in layer_indices:
        gamma = bn_of(model, idx).weight.detach().abs()
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
    return torch.cat([bn_of(model, idx).weight.detach().abs().float().cpu().flatten() for idx in layer_indices])


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
        stats["gamma_first"] = bn_of(model, layer_indices[0]).weight.detach().float().cpu().tolist()
    return stats
