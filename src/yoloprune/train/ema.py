"""Exponential moving average of model weights, the copy that is evaluated and saved when enabled.

The decay ramps up from 0 (`decay · (1 - exp(-updates / ramp))`), so early averages are not
dominated by the random initial weights. BN running statistics (buffers) are averaged too.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, ramp: float = 2000.0, updates: int = 0):
        self.module = copy.deepcopy(getattr(model, "module", model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.ramp, self.updates = decay, ramp, updates

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.ramp))

    def update(self, model: nn.Module) -> None:
        self.updates += 1
        keep = self.current_decay()
        source = getattr(model, "module", model).state_dict()
        with torch.no_grad():
            for name, value in self.module.state_dict().items():
                if value.dtype.is_floating_point:
                    value.mul_(keep).add_(source[name].detach(), alpha=1.0 - keep)
                else:
                    value.copy_(source[name])
