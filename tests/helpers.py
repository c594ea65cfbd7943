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

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root folder."""

FIXTURES = Path(__file__).parent / "fixtures"
"""The checked-in test fixtures (cfgs, small data sets)."""

CONFIGS = Path(__file__).parent.parent / "configs"
"""The repository's configs/ directory."""

FAMILY_CFGS = ["yolov3-tiny-prn", "yolov4-tiny", "yolov4", "yolov4-csp", "yolov7-tiny"]
"""darknet's cfgs beyond YOLOv3 under FIXTURES: shortcuts of unequal widths, route groups, mish,
scale_x_y and new_coords heads."""

REFERENCE_CFGS = ["yolov3", "yolov3-tiny", "yolov3-spp", "yolov3-hand", "prune_yolov3-hand", *FAMILY_CFGS]
"""Names of the reference cfgs under FIXTURES."""

OPENCV_BN_EPS = 1e-6
"""The BatchNorm epsilon OpenCV's darknet importer gives every BN layer (darknet and yoloprune: 1e-5)."""

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


def calibrate_bn(model: Darknet, x: torch.Tensor, seed: int = 0) -> Darknet:
    """Make a random model's output for `x` meaningful to compare at any depth (then eval mode).

    Random weights otherwise grow the activations layer by layer (to 1e25 in yolov4), where mish is
    the identity and a head's logistic is saturated at 0 or 1. Here every BN, layer by layer, divides
    what reaches it for `x` by its root mean square (mean 0, variance = mean square), so every layer
    stays near unit scale and every activation is exercised where it bends. (Subtracting the actual
    mean would divide near-constant channels by a tiny spread, their rounding errors with them.)
    BN's β is drawn from [0, 1]: with offsets of both signs the network is chaotic, a relative
    perturbation grows 30-fold through yolov4's neck, and float32 rounding alone would part two
    correct implementations by more than 1e-4; positive offsets keep it below 4e-5.
    """
    generator = torch.Generator().manual_seed(seed)

    def set_statistics(bn: torch.nn.BatchNorm2d, inputs: tuple[torch.Tensor]) -> None:
        bn.running_mean.zero_()
        bn.running_var.copy_(inputs[0].double().square().mean(dim=(0, 2, 3)))
        bn.bias.copy_(torch.rand(bn.num_features, generator=generator))

    hooks = [m.register_forward_pre_hook(set_statistics) for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    try:
        with torch.no_grad():
            model.eval().forward_heads(x)
    finally:
        for hook in hooks:
            hook.remove()
    return model


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


def opencv_yolo_outputs(cfg_path, weights_path, x: torch.Tensor, yolo_indices) -> list[tuple]:
    """Per [yolo] layer, as OpenCV DNN runs a darknet cfg and .weights file on one image `x`: its input
    `(1, C, H, W)` (the head conv's output, activation included) and its decoded output, one row per
    cell (row-major) and anchor: x, y, w, h relative to the image, objectness, then objectness x
    class probability, zeroed below OpenCV's threshold."""
    import cv2

    net = cv2.dnn.readNetFromDarknet(str(cfg_path), str(weights_path))
    # OpenCV computes 3x3 convs by Winograd's method by default, several times less accurate in
    # float32 than direct convolution (4x the difference to yoloprune in yolov4-tiny): the oracle
    # uses the direct one
    net.enableWinograd(False)
    net.setInput(x.numpy())
    # OpenCV feeds [yolo] layer i through "permute_<i>", its input moved to NHWC, into "yolo_<i>"
    outputs = net.forward([f"permute_{i}" for i in yolo_indices] + [f"yolo_{i}" for i in yolo_indices])
    heads, decoded = outputs[: len(yolo_indices)], outputs[len(yolo_indices) :]
    return [(head.transpose(0, 3, 1, 2), boxes) for head, boxes in zip(heads, decoded)]


def opencv_head_outputs(cfg_path, weights_path, x: torch.Tensor, head_conv_indices):
    """The outputs `(1, C, H, W)` of the given head convs, activation included, as OpenCV DNN runs a
    darknet cfg and .weights file; each head conv must be followed by its [yolo] layer."""
    return [head for head, _ in opencv_yolo_outputs(cfg_path, weights_path, x, [i + 1 for i in head_conv_indices])]


def opencv_model_heads(model: Darknet, folder: Path, name: str, x: torch.Tensor) -> list:
    """The head convs' outputs `(1, anchors × (5 + classes), H, W)` of `model` written as darknet files
    (`folder/name.cfg`, `.weights`) by yoloprune and run by OpenCV DNN."""
    from yoloprune.darknet.cfg import save_cfg
    from yoloprune.darknet.weights import save_darknet_weights

    cfg_path, weights_path = folder / f"{name}.cfg", folder / f"{name}.weights"
    save_cfg(model.cfg, cfg_path)
    save_darknet_weights(model, weights_path)
    return opencv_head_outputs(cfg_path, weights_path, x, [i - 1 for i in model.yolo_indices])


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
