"""Shared test helpers: paths to the reference cfgs and a way to make BN layers non-trivial.

Every test starts from the same random state (torch, numpy, python), so a failure reproduces and no
test depends on which tests ran before it on the same xdist worker. Hypothesis runs derandomized
(profile "ci", the default): the same examples on every run; `HYPOTHESIS_PROFILE=explore` searches anew.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings as hypothesis_settings

hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TEST_SEED = 0

FIXTURES = Path(__file__).parent / "fixtures"
CONFIGS = Path(__file__).parent.parent / "configs"
REFERENCE_CFGS = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov3-hand", "prune_yolov3-hand"]


# One-anchor, one-class detection head for the small hand-written test cfgs.
YOLO_HEAD = "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n[yolo]\nmask=0\nanchors=10,13\nclasses=1\nnum=1\n"
GROUPED_ROUTE = "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"


def conv(filters: int, size: int = 1, stride: int = 1, activation: str = "leaky", groups: int = 1) -> str:
    """A batch-normalised [convolutional] section."""
    grouped = f"groups={groups}\n" if groups != 1 else ""
    return f"[convolutional]\nbatch_normalize=1\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\n{grouped}activation={activation}\n"


def cfg_text(*sections: str, size: int = 64) -> str:
    """A cfg of `sections` between a [net] of `size`² RGB and `YOLO_HEAD`."""
    return f"[net]\nwidth={size}\nheight={size}\nchannels=3\n\n" + "\n".join(sections) + "\n" + YOLO_HEAD


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


def random_darknet(text: str, std: float = 0.3, seed: int = 0):
    """An eval-mode model of cfg `text` with N(0, std) weights and random BN (every channel non-trivial)."""
    from yoloprune.darknet.model import Darknet

    torch.manual_seed(seed)
    model = Darknet.from_text(text)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return randomize_bn(model, seed).eval()


@pytest.fixture
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(autouse=True)
def seeded_random_state():
    """The same torch, numpy and python random state at the start of every test."""
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)
