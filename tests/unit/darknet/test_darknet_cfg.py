import dataclasses
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS, FIXTURES, REFERENCE_CFGS, randomize_bn
from yoloprune.cli import main
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.cfg import ConvBlock, MaxpoolBlock, RouteBlock, YoloBlock, load_cfg, parse_cfg, write_cfg
from yoloprune.darknet.model import Darknet
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


def test_builder_reproduces_darknets_yolov4_tiny_layers():
    """Layer for layer darknet's yolov4-tiny.cfg, but for [yolo] keys only darknet's training reads."""
    from dataclasses import replace

    from yoloprune.darknet.builder import build_yolov4_tiny_cfg_text

    def inference_view(cfg):
        return [replace(b, extra={"scale_x_y": b.extra["scale_x_y"]}) if isinstance(b, YoloBlock) else b for b in cfg.layers]

    generated = parse_cfg(build_yolov4_tiny_cfg_text(1.0, classes=80, img_size=416))
    assert inference_view(generated) == inference_view(load_cfg(FIXTURES / "yolov4-tiny.cfg"))
    narrow = parse_cfg(build_yolov4_tiny_cfg_text(0.3, classes=1, img_size=128))
    grouped = [narrow.layers[i - 1] for i, b in enumerate(narrow.layers) if isinstance(b, RouteBlock) and b.groups == 2]
    assert grouped and all(conv.filters % 2 == 0 for conv in grouped), "a grouped route must split its input into equal halves"


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


# ---------------------------------------------------------------------------------------------- darknet's keys
# The facts below are darknet's (AlexeyAB/darknet src/parser.c and the layers it builds), not this
# parser's: which keys change the network darknet builds and which only steer its training.

# A valid cfg with one section of each kind; each case adds one line to it.
EVERY_SECTION = """[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[upsample]

[shortcut]
from=-3
activation=linear

[route]
layers=-1

[convolutional]
filters=18
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=10,13, 16,30, 33,23
classes=1
num=3
"""


def _with_line(anchor: str, line: str, text: str = EVERY_SECTION) -> str:
    """`text` with `line` after its unique line `anchor`, or instead of it when both set the same key."""
    lines = text.splitlines()
    assert lines.count(anchor) == 1, anchor
    at = lines.index(anchor)
    same_key = "=" in anchor and anchor.split("=")[0] == line.split("=")[0]
    lines[at : at + 1] = [line] if same_key else [anchor, line]
    return "\n".join(lines) + "\n"


# Keys at values that make darknet compute something yoloprune does not.
NOT_SUPPORTED = [
    ("activation=leaky", "dilation=2"),  # a dilated 3x3 conv
    ("activation=leaky", "stride_x=2"),  # per-axis strides that differ from `stride`
    ("activation=leaky", "stride_y=2"),
    ("activation=leaky", "antialiasing=1"),  # a blur conv after the conv
    ("activation=leaky", "binary=1"),  # binarised weights
    ("activation=leaky", "xnor=1"),  # binarised weights and inputs
    ("activation=leaky", "bin_output=1"),
    ("activation=leaky", "flipped=1"),  # weights transposed when loaded
    ("activation=leaky", "coordconv=1"),
    ("activation=leaky", "share_index=0"),  # weights shared with another layer
    ("activation=leaky", "dontload=1"),  # weights not read from the .weights file
    ("activation=leaky", "dontloadscales=1"),  # BN parameters not read from the .weights file
    ("filters=18", "cbn=1"),  # turns batch normalisation on in a conv written without it
    ("[maxpool]", "stride_x=1"),
    ("[maxpool]", "stride_y=4"),
    ("[maxpool]", "maxpool_depth=1"),  # pooling across channels
    ("[maxpool]", "out_channels=4"),
    ("[maxpool]", "antialiasing=1"),
    ("[maxpool]", "maxpool_zero_nonmax=1"),
    ("[upsample]", "stride=-2"),  # a negative stride downsamples
    ("[upsample]", "scale=0.5"),  # multiplies the output
    ("from=-3", "from=-3,-2"),  # a sum of several layers
    ("[shortcut]", "weights_type=per_feature"),  # learned weights on the summands
    ("[shortcut]", "weights_type=per_channel"),
    ("[shortcut]", "weights_normalization=softmax"),
    ("[yolo]", "new_coords=2"),  # darknet decodes it as 1; its cfgs write 0 or 1 only
]


def _line_number(text: str, line: str) -> int:
    numbers = [i for i, candidate in enumerate(text.splitlines(), start=1) if candidate == line]
    assert len(numbers) == 1, line
    return numbers[0]


@pytest.mark.parametrize("anchor, line", NOT_SUPPORTED, ids=[line for _, line in NOT_SUPPORTED])
def test_keys_that_change_the_network_are_refused_with_file_line_and_key(tmp_path, capsys, anchor, line):
    text = _with_line(anchor, line)
    error = _error_for(text, tmp_path)
    message = str(error)
    assert error.line == _line_number(text, line)
    assert f"bad.cfg:{error.line}: " in message and line in message and "not supported" in message
    assert "\n" not in message
    capsys.readouterr()
    assert main(["info", str(tmp_path / "bad.cfg")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"bad.cfg:{error.line}: " in err and line in err


UNKNOWN = [
    ("activation=leaky", "dilaton=2"),
    ("filters=18", "actvation=leaky"),
    ("[maxpool]", "pool=2"),
    ("[upsample]", "mode=bilinear"),
    ("[shortcut]", "alpha=0.5"),
    ("[route]", "axis=1"),
    ("[yolo]", "foo=1"),
]


@pytest.mark.parametrize("anchor, line", UNKNOWN, ids=[line for _, line in UNKNOWN])
def test_keys_darknet_does_not_read_are_refused_as_probably_misspelt(tmp_path, anchor, line):
    text = _with_line(anchor, line)
    error = _error_for(text, tmp_path)
    key = line.split("=")[0]
    assert error.line == _line_number(text, line)
    assert f"unknown key {key!r}" in str(error) and "darknet does not read it" in str(error)


# Keys that only steer darknet's training or post-processing, and keys at the value where darknet
# computes what yoloprune computes: kept, written back, and without effect on the output.
KEPT = {
    "activation=leaky": [
        "dilation=1", "stride_x=1", "stride_y=1", "antialiasing=0", "cbn=1", "dontload=0",
        "stopbackward=1", "learning_rate=0.5", "assisted_excitation=4000",
    ],
    "filters=18": ["dilation=2", "grad_centr=1", "train_only_bn=1"],  # darknet ignores dilation in a 1x1 conv
    "[maxpool]": ["stride_x=2", "maxpool_depth=0", "out_channels=1", "clip=1"],
    "[upsample]": ["scale=1", "learning_rate=0"],
    "[shortcut]": ["weights_type=none", "weights_normalization=none", "onlyforward=1"],
    "[route]": ["stream=1", "wait_stream=0", "stopbackward=1"],
    "[yolo]": [
        "new_coords=0", "jitter=.3", "ignore_thresh=.7", "truth_thresh=1", "random=1", "iou_thresh=0.213",
        "iou_loss=ciou", "iou_normalizer=0.07", "cls_normalizer=1.0", "obj_normalizer=1.0", "nms_kind=greedynms",
        "beta_nms=0.6", "max_delta=5", "resize=1.5", "max=200", "counters_per_class=100", "label_smooth_eps=0.1",
        "focal_loss=1", "objectness_smooth=1",
    ],
}


def test_training_only_and_neutral_keys_are_kept_written_back_and_change_nothing():
    text = EVERY_SECTION
    for anchor, lines in KEPT.items():
        for line in reversed(lines):
            text = _with_line(anchor, line, text)
    base, cfg = parse_cfg(EVERY_SECTION), parse_cfg(text)
    written = write_cfg(cfg)
    for lines in KEPT.values():
        for line in lines:
            key, value = line.split("=")
            assert any(block.extra.get(key) == value for block in cfg.layers), line
            assert line in written.splitlines(), line
    assert parse_cfg(written) == cfg
    # the typed layers, and so the network, are those of the cfg without the added keys
    assert [dataclasses.replace(block, extra={}) for block in cfg.layers] == base.layers
    torch.manual_seed(0)
    reference = randomize_bn(Darknet(base)).eval()  # EVERY_SECTION builds: the refusals above are each line's doing
    model = Darknet(cfg).eval()
    model.load_state_dict(reference.state_dict())
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_conv_without_activation_is_logistic_as_in_darknet():
    cfg = parse_cfg(EVERY_SECTION.replace("activation=leaky\n", ""))
    assert cfg.layers[0].activation == "logistic"
    assert "activation=logistic" in write_cfg(cfg)
    assert parse_cfg(EVERY_SECTION.replace("from=-3\nactivation=linear\n", "from=-3\n")).layers[3].activation == "linear"


def test_new_coords_is_read_and_written_back():
    cfg = parse_cfg(_with_line("[yolo]", "new_coords=1"))
    assert cfg.layers[-1].new_coords and not parse_cfg(EVERY_SECTION).layers[-1].new_coords
    assert "new_coords=1" in write_cfg(cfg).splitlines() and parse_cfg(write_cfg(cfg)) == cfg


def test_scale_x_y_must_be_a_number(tmp_path):
    text = _with_line("[yolo]", "scale_x_y=abc")
    error = _error_for(text, tmp_path)
    assert error.line == _line_number(text, "scale_x_y=abc") and "scale_x_y: expected a number" in str(error)
    assert parse_cfg(_with_line("[yolo]", "scale_x_y=1.05")).layers[-1].scale_x_y == 1.05
