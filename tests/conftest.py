"""Shared test helpers: paths to the reference cfgs and a way to make BN layers non-trivial."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = Path(__file__).parent.parent / "configs"
REFERENCE_CFGS = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov3-hand", "prune_yolov3-hand"]


def randomize_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BN layer random affine parameters and running statistics (fresh BN is the identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.6 - 0.3)
                module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
                module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
    return model


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES
