"""BN-γ L1 sparsity (network slimming) as a gradient step, its schedule, and the γ statistics logged per epoch.

The penalty s·Σ|γ| over the chosen BN layers is not added to the loss: its subgradient s·sign(γ) is
added to γ.grad after backward and before the optimizer step (after AMP unscaling and after the task
gradient is clipped, so that clipping never scales the penalty down), which is what the seed did and
keeps the loss curves comparable with and without sparsity.

Layer sets (`resolve_sparsity_layers`):
- "all": every conv with batch normalisation;
- "safe": the seed's prunable set (`darknet.graph.safe_prunable_conv_indices`): BN convs that feed
  no [shortcut] and are not the convs right before an [upsample].

Schedule (`sparsity_at_epoch`): constant s (the seed), or with `decay_fraction=F` s is multiplied by
`decay_factor` (default 0.01) from epoch ⌊F·epochs⌋ on: the penalty has by then pushed the
unimportant γ towards zero, and the remaining epochs recover accuracy under a much weaker pull.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.graph import bn_conv_indices, safe_prunable_conv_indices
from yoloprune.train.settings import SPARSITY_LAYER_SETS

GAMMA_QUANTILES = (0.0, 0.25, 0.5, 0.75, 1.0)
SMALL_GAMMA = 0.01  # |γ| below this counts as "pruned away" in the logged fraction
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


def apply_bn_sparsity(model: nn.Module, s: float, layer_indices: Sequence[int]) -> None:
    """Add `s·sign(γ)` to γ.grad of the BN layers at `layer_indices` (the L1 subgradient)."""
    if s == 0:
        return
    with torch.no_grad():
        for layer_idx in layer_indices:
            gamma = _bn(model, layer_idx).weight
            step = s * torch.sign(gamma)
            if gamma.grad is None:
                gamma.grad = step.clone()
            else:
                gamma.grad.add_(step)


def sparsity_at_epoch(s: float, epoch: int, epochs: int, decay_fraction: float | None = None, decay_factor: float = 0.01) -> float:
    """The penalty weight for 0-based `epoch` of `epochs` under the constant or decayed schedule."""
    if decay_fraction is None or epoch < math.floor(decay_fraction * epochs):
        return s
    return s * decay_factor


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
