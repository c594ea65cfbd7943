from pathlib import Path

import pytest

from conftest import CONFIGS, FIXTURES, REFERENCE_CFGS
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.cfg import ConvBlock, MaxpoolBlock, RouteBlock, YoloBlock, load_cfg, parse_cfg, write_cfg
from yoloprune.errors import CfgError

MINIMAL = """[net]
width=64
height=64

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23
classes=1
"""


@pytest.mark.parametrize("name", REFERENCE_CFGS)
def test_reference_cfgs_round_trip(name):
    cfg = load_cfg(FIXTURES / f"{name}.cfg")
    text = write_cfg(cfg)
    again = parse_cfg(text)
    assert again == cfg
    assert write_cfg(again) == text  # the writer is a fixed point after one pass


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.cfg")), ids=lambda p: p.name)
def test_project_configs_parse(path):
    assert parse_cfg(write_cfg(load_cfg(path))) == load_cfg(path)


def test_builder_reproduces_the_hand_cfg_layers():
    reference = load_cfg(FIXTURES / "yolov3-hand.cfg")
    generated = parse_cfg(build_yolov3_cfg_text(1.0, classes=1, img_size=416))
    assert generated.layers == reference.layers


def test_typed_fields_of_tiny_and_spp():
    tiny = load_cfg(FIXTURES / "yolov3-tiny.cfg")
    pools = [b for b in tiny.layers if isinstance(b, MaxpoolBlock)]
    assert (pools[-1].size, pools[-1].stride, pools[-1].padding_total) == (2, 1, 1)
    spp = load_cfg(FIXTURES / "yolov3-spp.cfg")
    assert sorted({b.size for b in spp.layers if isinstance(b, MaxpoolBlock)}) == [5, 9, 13]
    route4 = [b for b in spp.layers if isinstance(b, RouteBlock) and len(b.layers) == 4]
    assert route4, "the SPP block concatenates four inputs"
    yolo = next(b for b in tiny.layers if isinstance(b, YoloBlock))
    assert yolo.mask == (3, 4, 5) and yolo.num == 6 and yolo.extra["ignore_thresh"] == ".7"


def test_spacing_comments_and_case_are_accepted():
    text = "# comment\n[net]\n width = 64 \n\n; other comment\n[Convolutional]\nfilters = 18\nsize=1\nactivation = LINEAR\n[yolo]\nmask = 0, 1, 2\nanchors = 1,2,3,4,5,6\nclasses = 1\n"
    cfg = parse_cfg(text)
    conv = cfg.layers[0]
    assert isinstance(conv, ConvBlock) and conv.filters == 18 and conv.activation == "linear"
    assert cfg.layers[1].anchors == ((1, 2), (3, 4), (5, 6))


def test_route_groups_are_kept():
    text = MINIMAL.replace("[convolutional]\nfilters=18", "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n[convolutional]\nfilters=18")
    cfg = parse_cfg(text)
    route = cfg.layers[1]
    assert (route.groups, route.group_id) == (2, 1)
    assert parse_cfg(write_cfg(cfg)) == cfg


def _error_for(text: str, tmp_path: Path) -> CfgError:
    path = tmp_path / "bad.cfg"
    path.write_text(text)
    with pytest.raises(CfgError) as info:
        load_cfg(path)
    assert str(path) in str(info.value)
    return info.value


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_unknown_section_names_file_and_line(tmp_path):
    text = MINIMAL.replace("[yolo]", "[frobnicate]")
    error = _error_for(text, tmp_path)
    assert error.line == _line_of(text, "[frobnicate]") and "unknown section" in str(error)


def test_non_integer_value_names_key_and_line(tmp_path):
    text = MINIMAL.replace("filters=8", "filters=abc")
    error = _error_for(text, tmp_path)
    assert error.line == _line_of(text, "filters=abc") and "filters" in str(error) and "'abc'" in str(error)


def test_missing_required_key(tmp_path):
    error = _error_for(MINIMAL.replace("classes=1\n", ""), tmp_path)
    assert "classes" in str(error)


@pytest.mark.parametrize("layers", ["-5", "7", "-1, 40"])
def test_route_to_missing_layer(tmp_path, layers):
    text = MINIMAL.replace("[convolutional]\nfilters=18", f"[route]\nlayers={layers}\n\n[convolutional]\nfilters=18")
    error = _error_for(text, tmp_path)
    assert error.line == _line_of(text, "[route]") and "refers to layer" in str(error)


def test_shortcut_to_missing_layer(tmp_path):
    text = MINIMAL.replace("[convolutional]\nfilters=18", "[shortcut]\nfrom=-9\n\n[convolutional]\nfilters=18")
    assert "refers to layer" in str(_error_for(text, tmp_path))


@pytest.mark.parametrize(
    "mutation, message",
    [
        (lambda t: t.replace("[net]", "[conv2]"), "first section"),
        (lambda t: t.replace("activation=leaky", "activation=gelu"), "activation"),
        (lambda t: t.replace("mask=0,1,2", "mask=0,1,5"), "mask"),
        (lambda t: t.replace("size=3", "size 3"), "key=value"),
        (lambda t: t.replace("pad=1", "pad=1\npad=1"), "duplicate"),
        (lambda t: "", "empty"),
    ],
)
def test_other_malformed_cfgs(tmp_path, mutation, message):
    assert message in str(_error_for(mutation(MINIMAL), tmp_path))


def test_missing_file_is_a_cfg_error(tmp_path):
    with pytest.raises(CfgError, match="not found"):
        load_cfg(tmp_path / "nope.cfg")
