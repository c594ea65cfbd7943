"""Exponential moving average of model weights, the copy that is evaluated and saved when enabled.

The decay ramps up from 0 (`decay · (1 - exp(-updates / ramp))`), so early averages are not
dominated by the random initial weights. The ramp is a fifth of the average's horizon 1 / (1 - decay)
unless given: 2000 updates at the default 0.9999 (a run of hundreds of epochs), 20 at 0.99, which
averages about 100 updates: a few epochs of a short CPU run, where 0.9999 would barely average at all.
BN running statistics (buffers) are averaged too.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


RAMP_SHARE = 0.2  # the ramp, as a share of the horizon 1 / (1 - decay)


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.9999, ramp: float | None = None, updates: int = 0):
        self.module = copy.deepcopy(getattr(model, "module", model)).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay, self.updates = decay, updates
        self.ramp = ramp if ramp is not None else RAMP_SHARE / (1.0 - decay)

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
