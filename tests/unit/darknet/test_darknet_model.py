import json

import numpy as np
import pytest
import torch

from helpers import CONFIGS, FIXTURES, REFERENCE_CFGS, cfg_text, conv, opencv_head_outputs, random_darknet, randomize_bn
from yoloprune.bench.profile import profile_model
from yoloprune.cli import main
from yoloprune.darknet.blocks import ACTIVATIONS
from yoloprune.darknet.cfg import RouteBlock, ShortcutBlock, parse_cfg
from yoloprune.darknet.model import Darknet, count_parameters, make_activation
from yoloprune.errors import CfgError
from yoloprune.export.darknet import export_darknet

# Published sizes (darknet's own printout and the Oxford Hand reference project).
EXPECTED_PARAMS = {"yolov3": 61_949_149, "yolov3-tiny": 8_852_366, "yolov3-hand": 61_523_734}


@pytest.mark.parametrize("name", REFERENCE_CFGS)
def test_reference_cfgs_build_and_run(name):
    model = Darknet(str(FIXTURES / f"{name}.cfg"))
    if name in EXPECTED_PARAMS:
        assert count_parameters(model) == EXPECTED_PARAMS[name]
    if name == "prune_yolov3-hand":
        assert abs(count_parameters(model) - 10.85e6) < 0.01e6
    x = torch.rand(1, 3, 64, 64)
    model.train()
    heads = model(x)
    assert len(heads) == len(model.yolo_indices)
    cells = 0
    for yolo, raw in zip(model.yolo_layers, heads):
        n, anchors, h, w, d = raw.shape
        assert (n, anchors, d) == (1, yolo.num_anchors, 5 + model.num_classes)
        cells += anchors * h * w
    model.eval()
    with torch.no_grad():
        boxes = model(x)
    assert boxes.shape == (1, cells, 5 + model.num_classes)
    assert torch.all(boxes[..., 4:] >= 0) and torch.all(boxes[..., 4:] <= 1)


def test_hand_cfg_at_416_forward_and_macs():
    """The seed-scale check: full-size 416 forward works and MACs match the published 32.6-32.8 G."""
    for name, low, high in [("yolov3-hand", 32.6, 32.8), ("prune_yolov3-hand", 9.0, 10.0)]:
        model = Darknet(str(FIXTURES / f"{name}.cfg"))
        profile = profile_model(model, 416)
        assert low <= profile.gmacs <= high
        assert profile.layers[-1].out_hw == (52, 52)


@pytest.mark.parametrize("name, bflops", [("yolov3", 65.86), ("yolov3-tiny", 5.56)])
def test_bflops_match_darknet(name, bflops):
    profile = profile_model(Darknet(str(FIXTURES / f"{name}.cfg")), 416)
    assert abs(profile.bflops - bflops) / bflops < 0.005
    assert profile.bflops == pytest.approx(2 * profile.gmacs)
    # the per-layer conv formula and torch's flop counter agree
    assert sum(layer.macs for layer in profile.layers) == pytest.approx(profile.gmacs * 1e9, rel=1e-9)


def test_decode_matches_the_yolo_formula():
    model = Darknet(str(CONFIGS / "yolov3-hand-nano.cfg"))
    randomize_bn(model).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        heads = model.forward_heads(x)
        boxes = model(x)
    raw = heads[0]  # first head: stride 32, 3x3 grid
    yolo = model.yolo_layers[0]
    stride = 96 / raw.shape[2]
    a, gy, gx = 1, 2, 1
    cell = raw[1, a, gy, gx]
    expected_cx = (torch.sigmoid(cell[0]) + gx) * stride
    expected_w = torch.exp(cell[2]) * yolo.anchors[a, 0]
    flat = boxes[1, a * raw.shape[2] * raw.shape[3] + gy * raw.shape[3] + gx]
    assert flat[0] == pytest.approx(expected_cx.item(), rel=1e-5)
    assert flat[2] == pytest.approx(expected_w.item(), rel=1e-5)
    assert flat[4] == pytest.approx(torch.sigmoid(cell[4]).item(), rel=1e-5)


def test_only_routed_outputs_are_kept():
    model = Darknet(str(FIXTURES / "yolov3-spp.cfg"))
    referenced = set()
    for idx, block in enumerate(model.cfg.layers):
        if isinstance(block, (RouteBlock, ShortcutBlock)):
            referenced |= {j for j in model.cfg.inputs_of(idx) if j != idx - 1}
    assert set(model._kept) == referenced
    assert len(model._kept) < len(model.layers) // 3


def test_new_coords_decode_matches_darknet():
    # darknet's forward_yolo_layer and get_yolo_box with new_coords=1: no sigmoid in the [yolo]
    # layer (its conv ends in a logistic), x = (t·s - (s-1)/2 + col) / w, box w = 4·t²·anchor
    head = "[convolutional]\nfilters=12\nsize=1\nactivation=logistic\n\n[yolo]\nmask=0,1\nanchors=10,13, 30,20\nclasses=1\nnum=2\nscale_x_y=2.0\nnew_coords=1\n"
    model = random_darknet("[net]\nwidth=64\nheight=64\n\n" + conv(8, 3, stride=2) + "\n" + head)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        raw = model.forward_heads(x)[0]  # (2, 2 anchors, 32, 32, 6)
        boxes = model(x)
    image, anchor, row, col = 1, 1, 5, 9
    t = raw[image, anchor, row, col].tolist()
    stride, s = 64 / 32, 2.0
    expected = [
        (t[0] * s - 0.5 * (s - 1) + col) * stride,
        (t[1] * s - 0.5 * (s - 1) + row) * stride,
        t[2] * t[2] * 4 * 30,
        t[3] * t[3] * 4 * 20,
        t[4],
        t[5],
    ]
    assert boxes[image, anchor * 32 * 32 + row * 32 + col].tolist() == pytest.approx(expected, rel=1e-6)


def _darknet_activation(name: str, x: np.ndarray) -> np.ndarray:
    """darknet's activation formulas (src/activations.h and .c), evaluated in float64: darknet's own
    float32 tanh, 2/(1 + e^-2x) - 1, loses digits for mish's tiny softplus below x = -5."""
    logistic = 1 / (1 + np.exp(-x))
    if name == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if name == "relu":
        return x * (x > 0)
    if name == "logistic":
        return logistic
    if name == "swish":
        return x * logistic
    if name == "mish":  # x·tanh(softplus(x)), softplus with darknet's threshold 20
        softplus = np.where(x > 20, x, np.where(x < -20, np.exp(x), np.log(np.exp(x) + 1)))
        return x * (2 / (1 + np.exp(-2 * softplus)) - 1)
    assert name == "linear"
    return x


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations_match_darknet(name):
    x = np.concatenate([np.linspace(-30, 30, 6001), [-80, -21, -20, -19, 19, 20, 21, 80]]).astype(np.float32)
    with np.errstate(over="ignore"):
        expected = _darknet_activation(name, x.astype(np.float64))
    ours = make_activation(name)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)


# Shortcuts between layers of different widths: darknet (shortcut_multilayer_cpu) keeps the previous
# layer's channels and adds `from` over the channels both have.
UNEQUAL_SHORTCUTS = cfg_text(
    conv(8, 3),  # 0
    conv(4),  # 1
    "[shortcut]\nfrom=-2\nactivation=leaky\n",  # 2: layer 1 + the first 4 channels of layer 0, then leaky
    conv(8),  # 3
    "[shortcut]\nfrom=2\nactivation=linear\n",  # 4: the first 4 channels of layer 3 + layer 2; 4..7 as they are
    size=32,
)


def _layer_outputs(model: Darknet, x: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    hooks = [layer.register_forward_hook(lambda module, inputs, output: outputs.append(output)) for layer in model.layers]
    with torch.no_grad():
        model.forward_heads(x)
    for hook in hooks:
        hook.remove()
    return outputs


def test_shortcut_of_unequal_widths_sums_the_common_channels(tmp_path):
    model = random_darknet(UNEQUAL_SHORTCUTS)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = _layer_outputs(model, x)
    summed = out[1] + out[0][:, :4]
    assert out[2].shape[1] == 4 and torch.equal(out[2], torch.where(summed > 0, summed, 0.1 * summed))
    assert out[4].shape[1] == 8
    assert torch.equal(out[4][:, :4], out[3][:, :4] + out[2]) and torch.equal(out[4][:, 4:], out[3][:, 4:])
    # OpenCV's importer agrees ("input_0_truncate": the first input's channels)
    cfg_path, weights_path = export_darknet(model, tmp_path / "model")
    (reference,) = opencv_head_outputs(cfg_path, weights_path, x, [i - 1 for i in model.yolo_indices])
    ours = out[model.yolo_indices[0] - 1].numpy()
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


def test_yolo_filter_count_is_checked():
    text = (CONFIGS / "yolov3-hand-nano.cfg").read_text().replace("classes=1", "classes=2", 1)
    with pytest.raises(CfgError, match="5 \\+ 2 classes"):
        Darknet(parse_cfg(text))


def test_info_json(capsys):
    assert main(["info", str(FIXTURES / "yolov3-tiny.cfg"), "--img-size", "416", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"params", "size_mb", "gmacs", "bflops"}
    assert result["params"] == EXPECTED_PARAMS["yolov3-tiny"]
    assert result["size_mb"] > result["params"] * 4 / 1e6  # BN running stats are stored too


def test_info_table_and_errors(capsys, tmp_path):
    assert main(["info", str(CONFIGS / "yolov3-hand-nano.cfg"), "--img-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "shortcut" in out and "upsample" in out and "BFLOPs" in out
    bad = tmp_path / "bad.cfg"
    bad.write_text("[net]\n[convolutional]\nfilters=abc\n")
    assert main(["info", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:3" in err and "Traceback" not in err
    assert main(["info", str(CONFIGS / "yolov3-hand-nano.cfg"), "--img-size", "100"]) == 2
