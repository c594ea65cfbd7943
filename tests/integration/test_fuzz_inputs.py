"""Property tests: whatever bytes or cfg text arrive, only the project's own errors escape, naming the file."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import CONFIGS
from yoloprune.darknet.cfg import load_cfg
from yoloprune.darknet.model import Darknet, infer_channels
from yoloprune.darknet.weights import load_checkpoint, load_darknet_weights, save_darknet_weights
from yoloprune.errors import YoloPruneError

NANO_TEXT = (CONFIGS / "yolov3-hand-nano.cfg").read_text()
NANO_LINES = NANO_TEXT.splitlines()
JUNK = st.sampled_from(
    ["[route]", "layers=-99", "filters=", "[yolo]", "from=abc", "size=0", "=", "[", "mask=9", "classes=-1",
     "groups=3", "activation=tanh", "anchors=1,2,3", "stride=x", "[shortcut]", "layers=-1,-2,-3,-4,-5", "batch_normalize=1"]
)


@st.composite
def mutated_cfg(draw):
    lines = list(NANO_LINES)
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        position = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["delete", "insert", "replace", "truncate"]))
        if action == "delete":
            del lines[position]
        elif action == "insert":
            lines.insert(position, draw(JUNK | st.text(max_size=12)))
        elif action == "replace":
            lines[position] = draw(JUNK)
        else:
            lines = lines[:position]
    return "\n".join(lines)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=mutated_cfg())
def test_mutated_cfg_text_raises_only_cfg_errors(tmp_path, text):
    path = tmp_path / "fuzz.cfg"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    try:
        infer_channels(load_cfg(path))
    except YoloPruneError as error:
        assert str(path) in str(error)


@pytest.fixture(scope="module")
def nano_weights(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("w") / "nano.weights"
    save_darknet_weights(Darknet(str(CONFIGS / "yolov3-hand-nano.cfg")), path)
    return path.read_bytes()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(0, 10_000_000), noise=st.binary(max_size=64))
def test_truncated_or_random_weights_raise_only_weights_errors(tmp_path, nano_weights, cut, noise):
    path = tmp_path / "fuzz.weights"
    path.write_bytes(nano_weights[: cut % (len(nano_weights) + 1)] + noise)
    model = Darknet(str(CONFIGS / "yolov3-hand-nano.cfg"))
    try:
        load_darknet_weights(model, path)
    except YoloPruneError as error:
        assert str(path) in str(error)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=2048))
def test_random_bytes_as_checkpoint(tmp_path, data):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(data)
    with pytest.raises(YoloPruneError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
