"""`info`'s counts against darknet's own printout and against a brute-force count of the convs.

`bflops` is 2 x conv MACs; `bflops_darknet` is the "Total BFLOPS" AlexeyAB/darknet prints when it
loads a cfg, which also counts maxpool and shortcut layers. Both are counted at the cfg's own
`[net]` size unless a size is given.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from helpers import FIXTURES, cfg_text, conv
from yoloprune.bench.profile import profile_model
from yoloprune.cli import main
from yoloprune.darknet.cfg import parse_cfg
from yoloprune.darknet.model import Darknet

# "Total BFLOPS" darknet prints for each cfg at the input side it was loaded at (None = the cfg's own).
DARKNET_TOTALS = [
    pytest.param("yolov4-tiny", None, 6.910, id="yolov4-tiny"),
    pytest.param("yolov4", None, 128.459, id="yolov4"),
    pytest.param("yolov4-csp", None, 77.003, id="yolov4-csp"),
    pytest.param("yolov7-tiny", None, 5.802, id="yolov7-tiny"),
    pytest.param("yolov3-tiny-prn", None, 3.467, id="yolov3-tiny-prn"),
    # darknet's cfg/yolov3.cfg is 416x416; this fixture carries the 608x608 training header
    pytest.param("yolov3", 416, 65.879, id="yolov3"),
]


def brute_force_conv_macs(model: Darknet, height: int, width: int) -> int:
    """Multiply-adds of every nn.Conv2d in one shape-only forward (it moves `model` to the meta
    device), from each conv's output shape: every output element sums in_channels / groups x kernel taps."""
    model = model.to("meta").eval()
    macs = []

    def count(conv: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        _, out_c, out_h, out_w = output.shape
        kernel_h, kernel_w = conv.kernel_size
        macs.append(out_h * out_w * out_c * (conv.in_channels // conv.groups) * kernel_h * kernel_w)

    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        model.forward_heads(torch.zeros(1, model.cfg.net.channels, height, width, device="meta"))
    return sum(macs)


def check_counts(model: Darknet, img_size: int | None) -> float:
    """Profile `model`, check the input size it counted at and its conv count against the brute
    force, and return its darknet total."""
    profile = profile_model(model, img_size)
    cfg_hw = (model.cfg.net.height, model.cfg.net.width)
    assert profile.input_hw == (cfg_hw if img_size is None else (img_size, img_size))
    assert round(profile.bflops * 1e9) == 2 * brute_force_conv_macs(model, *profile.input_hw)
    assert profile.bflops_darknet > profile.bflops
    return profile.bflops_darknet


@pytest.mark.parametrize("name, img_size, darknet_bflops", DARKNET_TOTALS)
def test_counts_match_darknet(name, img_size, darknet_bflops):
    with torch.device("meta"):  # only shapes are counted: skip initialising 60 M weights
        model = Darknet(str(FIXTURES / f"{name}.cfg"))
    ours = check_counts(model, img_size)
    # darknet prints 3 decimals of a float32 sum; the conv term alone is already within 0.5 % of it,
    # so only a match to the printed digits shows that the non-conv terms are the right ones
    assert ours == pytest.approx(darknet_bflops, abs=0.0015)


def non_square_tiny_text() -> str:
    """yolov4-tiny with a 256 x 320 (height x width) input."""
    return (FIXTURES / "yolov4-tiny.cfg").read_text().replace("width=416", "width=320").replace("height=416", "height=256")


def test_a_non_square_cfg_is_counted_at_its_own_height_and_width():
    model = Darknet(parse_cfg(non_square_tiny_text()))
    assert model.cfg.net.height == 256 and model.cfg.net.width == 320
    check_counts(model, None)


def test_grouped_and_depthwise_convs_count_their_group_of_input_channels():
    """darknet's conv cost uses `c / groups` input channels per filter (its `nweights`), as torch's does."""
    text = cfg_text(conv(16, 3), conv(32, 3, groups=4), conv(32, 3, groups=32), "[maxpool]\nsize=2\nstride=2\n")
    conv_macs = 64 * 64 * 9 * (16 * 3 + 32 * 16 // 4 + 32 * 1) + 32 * 32 * 6 * 32  # the head conv: 1x1, 32 -> 6
    maxpool = 32 * 32 * 32 * 2 * 2  # one comparison per tap and output element
    assert check_counts(Darknet(parse_cfg(text)), None) * 1e9 == pytest.approx(2 * conv_macs + maxpool, rel=1e-12)


def test_info_json_defaults_to_the_cfg_size(capsys, tmp_path):
    path = tmp_path / "tiny-256x320.cfg"
    path.write_text(non_square_tiny_text())
    assert main(["info", str(path), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["input_hw"] == [256, 320] and result["img_size"] is None
    assert result["bflops"] == pytest.approx(2 * result["gmacs"])
    assert result["bflops_darknet"] > result["bflops"]


def test_info_img_size_overrides_and_both_totals_are_printed(capsys):
    assert main(["info", str(FIXTURES / "yolov4-tiny.cfg"), "--img-size", "320", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["input_hw"] == [320, 320]
    assert main(["info", str(FIXTURES / "yolov4-tiny.cfg")]) == 0
    out = capsys.readouterr().out
    assert "416x416" in out and "BFLOPs:  6.908" in out and "darknet: 6.910 BFLOPs" in out
