"""Sparsity regularisers: penalties on the BN scaling factors γ that make channels prunable.

A regulariser is one object the trainer calls: `at_epoch(epoch)` at the start of every epoch (the
strength s of that epoch, from its schedule), `regularize(model)` once per optimizer step after
backward and before `optimizer.step()`, `after_step(model)` right after the step, `log(model)` for
the epoch's metrics row, and `end_epoch(history)` once the row is in the history. It holds the base
strength s (raised by a sparsity target, and saved in the checkpoint: `state_dict`), the schedule,
the penalised layers (`penalised`, conv indices whose BN γ are penalised), their per-layer weights
(`sparsity_weighting=macs`, `sparsity.normalised_weights`), and each channel's MACs.

The penalty s·R(γ) is not added to the loss: its (sub)gradient s·∂R/∂γ is added to γ.grad, after AMP
unscaling and after the task gradient is clipped (so clipping never scales the penalty down), which
is what the seed did and keeps the loss curves comparable with and without sparsity. Where R is not
differentiable (|x| at 0) the subgradient sign(0) = 0 is used.

- `L1Sparsity`: R(γ) = Σ_i w_i·|γ_i| (network slimming; Liu et al., "Learning Efficient Convolutional
  Networks through Network Slimming", ICCV 2017): every γ is pulled towards 0 at the same rate.
- `Polarization`: R(γ) = Σ_i w_i·(t·|γ_i| − |γ_i − γ̄|), γ̄ the mean of all penalised γ together, with
  every penalised γ kept in [0, a] (Zhuang et al., "Neuron-level Structured Pruning using Polarization
  Regularizer", NeurIPS 2020; their code: github.com/polarizationpruning/PolarizationPruning). See
  the class.

With w_i = 1 (no weighting) both are the papers' regularisers; w_i is the weight of γ_i's layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from torch import nn

from yoloprune.darknet.cost import channel_macs
from yoloprune.train.settings import SMALL_GAMMA, TrainSettings
from yoloprune.train.sparsity import (
    STALL_EPOCHS,
    STALL_GAIN,
    adapt_sparsity,
    bn_of,
    normalised_weights,
    resolve_sparsity_layers,
    sparse_macs_share,
    sparsity_at_epoch,
    summarize_gammas,
)

if TYPE_CHECKING:
    from yoloprune.darknet.network import DarknetCfg

log = logging.getLogger(__name__)

__all__ = ["L1Sparsity", "Polarization", "Regulariser", "SparsitySchedule", "build_regulariser"]


@dataclass(frozen=True)
class SparsitySchedule:
    """How s changes over a run: constant, or multiplied by `decay_factor` from epoch
    ⌊decay_fraction·epochs⌋ on (`sparsity.sparsity_at_epoch`); with a sparsity `target`, doubled up
    to `ceiling` whenever the share of prunable MACs stalls (`sparsity.adapt_sparsity`)."""

    epochs: int
    decay_fraction: float | None = None
    decay_factor: float = 0.01
    target: float | None = None  # the share of the penalised MACs with |γ| < target_threshold that ends the run
    target_threshold: float = SMALL_GAMMA
    ceiling: float | None = None  # the largest s the target may raise s to


def _add_to_grad(parameter: nn.Parameter, step: torch.Tensor) -> None:
    if parameter.grad is None:
        parameter.grad = step.clone()
    else:
        parameter.grad.add_(step)


class Regulariser:
    """A penalty s·R(γ) on the BN γ of the `penalised` layers, applied as a gradient step (module docstring)."""

    kind = ""

    def __init__(
        self, s: float, penalised: Sequence[int], costs: dict[int, float], schedule: SparsitySchedule, weights: dict[int, float] | None = None,
    ):
        self.s = s  # the base strength: a sparsity target raises it
        self.strength = s  # this epoch's s, set by `at_epoch`
        self.penalised = list(penalised)
        self.costs = costs  # per conv: the MACs one of its channels costs (`darknet.cost.channel_macs`)
        self.schedule = schedule
        self.weights = weights  # per penalised layer: s's multiplier (None: 1 everywhere)

    def weight(self, layer_idx: int) -> float:
        return 1.0 if self.weights is None else self.weights[layer_idx]

    def at_epoch(self, epoch: int) -> float:
        """Set and return the strength of 0-based `epoch` under the schedule."""
        schedule = self.schedule
        self.strength = sparsity_at_epoch(self.s, epoch, schedule.epochs, schedule.decay_fraction, schedule.decay_factor)
        return self.strength

    def regularize(self, model: nn.Module) -> None:
        """Add this epoch's s·∂R/∂γ to γ.grad of the penalised layers."""
        raise NotImplementedError

    def after_step(self, model: nn.Module) -> None:
        """Called right after each optimizer step (a constraint on γ goes here); nothing by default."""

    def log(self, model: nn.Module) -> dict:
        """The epoch's γ statistics (`sparsity.summarize_gammas`) and the share of the penalised MACs
        whose |γ| is below the target threshold (`sparse_macs_share`)."""
        row = summarize_gammas(model, self.penalised)
        if self.penalised:
            row["sparse_macs_share"] = sparse_macs_share(model, self.penalised, self.costs, self.schedule.target_threshold)
        return row

    def reaches_target(self, row: dict) -> bool:
        target, share = self.schedule.target, row.get("sparse_macs_share")
        return target is not None and share is not None and share >= target

    def end_epoch(self, history: Sequence[dict]) -> None:
        """Under a sparsity target not yet reached, the s of the next epoch (`sparsity.adapt_sparsity`)."""
        if self.schedule.target is None or not history or self.reaches_target(history[-1]) or "sparse_macs_share" not in history[-1]:
            return
        # rows of a run resumed from before the column existed have no share: they are no evidence
        path = [(row["sparsity"], row["sparse_macs_share"]) for row in history if row.get("sparse_macs_share") is not None]
        before, self.s = self.s, adapt_sparsity(path, self.schedule.ceiling)
        if self.s != before:
            log.info("sparse MACs share gained under %g over the last %d epochs: s %.3g -> %.3g (at most %.3g)",
                     STALL_GAIN, STALL_EPOCHS, before, self.s, self.schedule.ceiling)

    def state_dict(self) -> dict:
        """What a resume needs: the base s (a sparsity target may have raised it)."""
        return {"kind": self.kind, "s": self.s}

    def load_state_dict(self, state: dict) -> None:
        self.s = float(state["s"])


class L1Sparsity(Regulariser):
    """R(γ) = Σ w·|γ|: adds s·w·sign(γ) to γ.grad, so with SGD a penalised γ moves by lr·s·w per step
    from the penalty, towards 0."""

    kind = "l1"

    def regularize(self, model: nn.Module) -> None:
        s = self.strength
        if s == 0:
            return
        with torch.no_grad():
            for layer_idx in self.penalised:
                gamma = bn_of(model, layer_idx).weight
                _add_to_grad(gamma, s * self.weight(layer_idx) * torch.sign(gamma))


class Polarization(Regulariser):
    """R(γ) = Σ_i w_i·(t·|γ_i| − |γ_i − γ̄|) over all penalised γ, with γ̄ their mean, γ kept in [0, a].

    From Zhuang et al. (NeurIPS 2020) and their code (polarizationpruning/PolarizationPruning):
    - γ̄ is one mean over the γ of all penalised layers together, not per layer, and the gradient
      flows through it: ∂R/∂γ_j = w_j·(t·sign(γ_j) − sign(γ_j − γ̄)) + (1/n)·Σ_i w_i·sign(γ_i − γ̄).
    - The first term is on |γ|, the second on γ itself; after every optimizer step each penalised γ is
      clamped to [0, a] (a = `bound`, 1 in the paper: "insensitive to the exact value", but it should
      exceed the std of the BN's input so that BN can stay an identity). So γ never goes negative,
      and a γ that starts negative or above a is clamped at the first step.
    - Alone, R is minimised by a share ρ = 1/2 − t/4 of the γ at a and the rest at 0 (t in [-2, 2]),
      so a larger t sends more γ to 0; with the task loss the share is set by s and t together.
      The paper trains with t from 1.0 to 1.5 (λ = s from 2.5e-5 to 8e-5 on a loss averaged over
      the batch; this project's detection loss sums over the batch, so s is not comparable).
    - Weighting by FLOPs in their code scales each layer's term, with the one shared mean: so here.
    """

    kind = "polarization"

    def __init__(self, *args, t: float, bound: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.t = t
        self.bound = bound

    def regularize(self, model: nn.Module) -> None:
        s = self.strength
        if s == 0 or not self.penalised:
            return
        with torch.no_grad():
            gammas = [bn_of(model, layer_idx).weight for layer_idx in self.penalised]
            flat = torch.cat([gamma.flatten() for gamma in gammas])
            mean = flat.mean()
            away = [torch.sign(gamma - mean) for gamma in gammas]  # where each γ sits from the mean
            # the mean's share: γ̄ moves with every γ by 1/n
            through_mean = sum(self.weight(idx) * side.sum() for idx, side in zip(self.penalised, away)) / flat.numel()
            for layer_idx, gamma, side in zip(self.penalised, gammas, away):
                gradient = self.weight(layer_idx) * (self.t * torch.sign(gamma) - side) + through_mean
                _add_to_grad(gamma, s * gradient)

    def after_step(self, model: nn.Module) -> None:
        """Keep each penalised γ in [0, bound] (only while the penalty is on)."""
        if self.s == 0:
            return
        with torch.no_grad():
            for layer_idx in self.penalised:
                bn_of(model, layer_idx).weight.clamp_(0.0, self.bound)


def build_regulariser(settings: TrainSettings, cfg: DarknetCfg, img_size: int) -> Regulariser:
    """The regulariser `settings` ask for (`sparsity_kind`, with s = `sparsity`, possibly 0), on the
    model of `cfg` trained at `img_size`."""
    penalised = resolve_sparsity_layers(cfg, settings.sparsity_layers)
    # From the cfg at the training size, once: the costs do not change while the widths do not.
    costs = channel_macs(cfg, img_size) if penalised else {}
    weights = None
    if settings.sparsity_weighting == "macs" and penalised:
        weights = normalised_weights({idx: cfg.layers[idx].filters for idx in penalised}, costs)
        log.info("sparsity weighted by MACs per channel: weights %.3g to %.3g (mean 1 over the penalised channels)",
                 min(weights.values()), max(weights.values()))
    schedule = SparsitySchedule(
        settings.epochs, settings.sparsity_decay, settings.sparsity_decay_factor,
        settings.sparsity_target, settings.sparsity_target_threshold, settings.sparsity_ceiling,
    )
    if settings.sparsity_kind == "polarization":
        return Polarization(settings.sparsity, penalised, costs, schedule, weights, t=settings.polarization_t, bound=settings.polarization_bound)
    return L1Sparsity(settings.sparsity, penalised, costs, schedule, weights)
