"""The optimizer and its learning-rate schedule: parameter groups, SGD or AdamW, warmup then cosine."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from yoloprune.errors import SettingsError


def build_param_groups(model: nn.Module, weight_decay: float, lr: float, scaled: Sequence[nn.Parameter] = (), lr_scale: float = 1.0) -> list[dict]:
    """Conv weights decay; BN γ/β and biases do not (decay on γ would fight or fake the sparsity).
    The `scaled` parameters (the penalised γ) get `lr · lr_scale` in a group of their own."""
    scaled_ids = {id(parameter) for parameter in scaled} if lr_scale != 1.0 else set()
    decayed, plain, boosted = [], [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (boosted if id(parameter) in scaled_ids else decayed if parameter.ndim > 1 else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay, "lr": lr}, {"params": plain, "weight_decay": 0.0, "lr": lr}]
    if boosted:
        groups.append({"params": boosted, "weight_decay": 0.0, "lr": lr * lr_scale})
    return groups


def build_optimizer(name: str, param_groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the YOLOv3 recipe; plain SGD at momentum 0) or AdamW with β1 = momentum.

    The sparsity penalty is added to γ.grad before the step, so with AdamW the penalty is normalised
    like any gradient: every γ whose task gradient is small moves towards 0 at about lr per step.
    """
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(momentum, 0.999))
    raise SettingsError("optimizer", f"unknown optimizer {name!r}: expected 'sgd' or 'adam'")


def lr_factor_at(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then cosine from 1 down to `final_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int, warmup_epochs: float, final_ratio: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule of `lr_factor_at` over the whole run (stepped after every optimizer step)."""
    total_steps = epochs * steps_per_epoch
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    # A plain function, not a callable object: LambdaLR.state_dict would store an object's attributes
    # in the checkpoint, and the schedule is rebuilt from the settings on resume anyway.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor_at(step, total_steps, warmup_steps, final_ratio))
