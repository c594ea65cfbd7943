import json

import pytest
import torch

from helpers import CONFIGS, FIXTURES, REFERENCE_CFGS, randomize_bn
from yoloprune.bench.profile import profile_model
from yoloprune.cli import main
from yoloprune.darknet.cfg import RouteBlock, ShortcutBlock, parse_cfg
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.errors import CfgError

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


def test_channel_mismatch_is_a_cfg_error(tmp_path):
    text = (CONFIGS / "yolov3-hand-small.cfg").read_text().replace("from=-3", "from=-2", 1)
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(CfgError, match=r"bad\.cfg:\d+: \[shortcut\].*must match"):
        Darknet(str(path))


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
