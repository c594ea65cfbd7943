"""Shared test helpers: paths to the reference cfgs, cfg-text builders, and random / sparse model builders.

Test modules import these with `from helpers import ...` (pyproject puts tests/ on sys.path); they never
import conftest.py or another test module. yoloprune and cv2 are imported inside the helpers
that need them, so importing this module (conftest does) loads neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from yoloprune.darknet.model import Darknet

FIXTURES = Path(__file__).parent / "fixtures"
"""The checked-in test fixtures (cfgs, small data sets)."""

CONFIGS = Path(__file__).parent.parent / "configs"
"""The repository's configs/ directory."""

REFERENCE_CFGS = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov3-hand", "prune_yolov3-hand"]
"""Names of the reference cfgs under FIXTURES."""

NANO = str(CONFIGS / "yolov3-hand-nano.cfg")
"""The smallest shipped cfg, as a string path (the default model of `random_model`)."""

YOLO_HEAD = "[convolutional]\nfilters=6\nsize=1\nactivation=linear\n\n[yolo]\nmask=0\nanchors=10,13\nclasses=1\nnum=1\n"
"""One-anchor, one-class detection head for the small hand-written test cfgs."""

GROUPED_ROUTE = "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n"
"""A [route] section reading the second half of the previous layer's channels."""


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


def random_darknet(text: str, std: float = 0.3, seed: int = 0) -> Darknet:
    """An eval-mode model of cfg `text` with N(0, std) weights and random BN (every channel non-trivial)."""
    from yoloprune.darknet.model import Darknet

    torch.manual_seed(seed)
    model = Darknet.from_text(text)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, std)
    return randomize_bn(model, seed).eval()


def random_model(cfg: str = NANO, seed: int = 0) -> Darknet:
    """A train-mode model of cfg file `cfg` with N(0, 0.1) weights and random BN."""
    from yoloprune.darknet.model import Darknet

    torch.manual_seed(seed)
    model = Darknet(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    return randomize_bn(model, seed)


def assert_same_state(a: Darknet, b: Darknet) -> None:
    """Assert both models have the same state-dict keys and bit-identical floating-point tensors."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if sa[key].is_floating_point():
            assert torch.equal(sa[key], sb[key]), key


def opencv_head_outputs(cfg_path, weights_path, x: torch.Tensor, head_conv_indices):
    """The raw outputs of the given head convs, run by OpenCV DNN from a darknet cfg and .weights file."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    net.setInput(x.numpy())
    # OpenCV names a darknet conv layer's convolution "conv_<layer index>"; the head convs have no BN.
    return net.forward([f"conv_{i}" for i in head_conv_indices])


def sparse_nano(seed: int = 0) -> Darknet:
    """An eval-mode nano model with random weights whose BN γ are about half near zero (×0.01)."""
    from yoloprune.darknet.model import Darknet

    torch.manual_seed(seed)
    model = Darknet(str(CONFIGS / "yolov3-hand-nano.cfg"))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    randomize_bn(model, seed)
    with torch.no_grad():
        for layer in model.layers:
            if getattr(layer, "bn", None) is not None:
                layer.bn.weight.mul_((torch.rand(layer.bn.weight.shape) < 0.5).float() * 0.99 + 0.01)
    return model.eval()


def heads(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    """The model's raw head outputs for `x`, without autograd."""
    with torch.no_grad():
        return model.forward_heads(x)


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor], border: int = 0) -> float:
    """The largest absolute difference between paired head outputs, optionally ignoring a `border` of pixels."""
    diffs = []
    for ha, hb in zip(a, b):
        if border:
            ha, hb = ha[:, :, border:-border, border:-border], hb[:, :, border:-border, border:-border]
        diffs.append((ha - hb).abs().max().item())
    return max(diffs)
