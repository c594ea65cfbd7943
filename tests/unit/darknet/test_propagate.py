"""The per-block channel rules and `propagate` against the forward pass that `Darknet` runs.

The oracle is the PyTorch model built from the cfg (`darknet.model`, its own code for each layer):
every layer's output shape in a forward must be what `propagate` infers, and every layer that moves
or sums channels must output, channel by channel, what its `channel_runs` say it reads.
"""

from __future__ import annotations

import pytest
import torch

from helpers import FIXTURES, REFERENCE_CFGS
from yoloprune.darknet.cfg import RouteBlock, ShortcutBlock, YoloBlock, load_cfg
from yoloprune.darknet.model import Darknet, make_activation
from yoloprune.darknet.network import infer_output_hw

HW = (96, 64)  # not square, so that height and width cannot be swapped unnoticed


@pytest.mark.parametrize("name", REFERENCE_CFGS)
def test_propagate_gives_the_shapes_of_a_forward(name):
    cfg = load_cfg(FIXTURES / f"{name}.cfg")
    with torch.device("meta"):
        model = Darknet(cfg)  # shapes only: no weights, no arithmetic
    shapes: dict[int, tuple[int, ...]] = {}
    for idx, layer in enumerate(model.layers):
        if not isinstance(cfg.layers[idx], YoloBlock):  # a [yolo] layer reshapes into its head map
            layer.register_forward_hook(lambda module, args, out, idx=idx: shapes.__setitem__(idx, tuple(out.shape)))
    model.forward_heads(torch.zeros(1, cfg.net.channels, *HW, device="meta"))
    channels, sizes = cfg.out_channels, infer_output_hw(cfg, HW)
    assert shapes == {idx: (1, channels[idx], *sizes[idx]) for idx in shapes}
    assert len(shapes) == len(cfg.layers) - len(cfg.yolo_indices)


@pytest.mark.parametrize("name", REFERENCE_CFGS)
def test_channel_runs_say_what_each_layer_outputs(name):
    """Each input channel is a distinct constant: a layer that moves channels outputs the constants
    its runs name, and one that sums them their sum (after the layer's activation)."""
    cfg = load_cfg(FIXTURES / f"{name}.cfg")
    with torch.device("meta"):
        model = Darknet(cfg)
    generator = torch.Generator().manual_seed(0)
    checked = 0
    for idx, block in enumerate(cfg.layers):
        runs = cfg.channel_runs(idx)
        if not runs or isinstance(block, YoloBlock):
            continue  # convs make new channels; [yolo] reshapes
        inputs = cfg.inputs_of(idx)
        values = [torch.randn(cfg.channels_of(j), generator=generator, dtype=torch.float64) for j in inputs]
        tensors = [v.view(1, -1, 1, 1).expand(1, -1, 4, 4).contiguous() for v in values]
        layer = model.layers[idx].to_empty(device="cpu")
        if isinstance(block, RouteBlock):
            out = layer(tensors)
        elif isinstance(block, ShortcutBlock):
            out = layer(*tensors)
        else:
            out = layer(tensors[0])
        expected = torch.zeros(cfg.channels_of(idx), dtype=torch.float64)
        for _, run in runs:
            expected[run.out_start:run.out_start + run.size] += values[run.source][run.in_start:run.in_start + run.size]
        expected = make_activation(block.out_activation)(expected)
        assert out.shape[1] == len(expected)
        torch.testing.assert_close(out[0, :, 1, 1], expected, rtol=0, atol=1e-12)
        checked += 1
    assert checked > 0
