import os
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CONFIGS, FIXTURES, NANO, assert_same_state, random_model
from yoloprune.darknet.model import ConvLayer, Darknet
from yoloprune.darknet.weights import (
    DarknetHeader,
    count_darknet_floats,
    load_checkpoint,
    load_darknet_weights,
    load_model,
    load_weights,
    save_checkpoint,
    save_darknet_weights,
)
from yoloprune.errors import WeightsError

@pytest.mark.parametrize("cfg", [NANO, str(FIXTURES / "yolov3-tiny.cfg")])
def test_weights_round_trip_is_bit_exact(tmp_path, cfg):
    model = random_model(cfg)
    path = tmp_path / "m.weights"
    save_darknet_weights(model, path, seen=12345)
    assert path.stat().st_size == 20 + 4 * count_darknet_floats(model)
    loaded = Darknet(cfg)
    header = load_darknet_weights(loaded, path)
    assert header.seen == 12345 and (header.major, header.minor) == (0, 2)
    assert_same_state(model, loaded)
    save_darknet_weights(loaded, tmp_path / "again.weights", seen=12345)
    assert (tmp_path / "again.weights").read_bytes() == path.read_bytes()


def test_old_header_with_int32_seen(tmp_path):
    model = random_model()
    header = DarknetHeader(major=0, minor=1, revision=0, seen=7)
    assert not header.seen_is_int64
    floats = b"".join(t.detach().numpy().astype("<f4").tobytes() for t in _file_order(model))
    path = tmp_path / "old.weights"
    path.write_bytes(header.to_bytes() + floats)
    loaded = Darknet(NANO)
    assert load_darknet_weights(loaded, path).seen == 7
    assert_same_state(model, loaded)


def _file_order(model: Darknet):
    for layer in model.layers:
        if isinstance(layer, ConvLayer):
            if layer.bn is not None:
                yield from (layer.bn.bias, layer.bn.weight, layer.bn.running_mean, layer.bn.running_var, layer.conv.weight)
            else:
                yield from (layer.conv.bias, layer.conv.weight)


def test_cutoff_loads_only_the_backbone(tmp_path):
    model = random_model()
    cutoff = 20
    save_darknet_weights(model, tmp_path / "backbone.weights", cutoff=cutoff)
    fresh = Darknet(NANO)
    untouched = {k: v.clone() for k, v in fresh.state_dict().items()}
    load_darknet_weights(fresh, tmp_path / "backbone.weights", cutoff=cutoff)
    for key, value in fresh.state_dict().items():
        layer_idx = int(key.split(".")[1])
        expected = model.state_dict()[key] if layer_idx < cutoff else untouched[key]
        if value.is_floating_point():
            assert torch.equal(value, expected), key
    # a full file also loads with a cutoff (only the first layers are read)
    save_darknet_weights(model, tmp_path / "full.weights")
    load_darknet_weights(Darknet(NANO), tmp_path / "full.weights", cutoff=cutoff)


def test_truncated_weights_state_expected_and_actual(tmp_path):
    model = random_model()
    path = tmp_path / "m.weights"
    save_darknet_weights(model, path)
    data = path.read_bytes()
    needed = count_darknet_floats(model)
    (tmp_path / "cut.weights").write_bytes(data[: 20 + 4 * 100])
    with pytest.raises(WeightsError) as info:
        load_darknet_weights(Darknet(NANO), tmp_path / "cut.weights")
    assert f"needs {needed} float32" in str(info.value) and "holds 100" in str(info.value)
    assert "cut.weights" in str(info.value)
    (tmp_path / "odd.weights").write_bytes(data[:-2])
    with pytest.raises(WeightsError, match="whole number"):
        load_darknet_weights(Darknet(NANO), tmp_path / "odd.weights")
    (tmp_path / "tiny.weights").write_bytes(data[:10])
    with pytest.raises(WeightsError, match="header"):
        load_darknet_weights(Darknet(NANO), tmp_path / "tiny.weights")


def test_weights_for_a_different_cfg(tmp_path):
    save_darknet_weights(random_model(str(CONFIGS / "yolov3-hand-small.cfg")), tmp_path / "small.weights")
    with pytest.raises(WeightsError, match="different"):
        load_darknet_weights(Darknet(NANO), tmp_path / "small.weights")


def test_checkpoint_round_trip_carries_its_cfg(tmp_path):
    model = random_model()
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, meta={"epoch": 3, "note": "x"})
    loaded = load_model(None, path)
    assert_same_state(model, loaded)
    assert loaded.cfg == model.cfg
    assert load_checkpoint(path)["meta"] == {"epoch": 3, "note": "x"}
    other = Darknet(NANO)
    load_weights(other, path)
    assert_same_state(model, other)
    assert not list(tmp_path.glob("*.tmp")), "atomic write leaves no temp file"


def test_checkpoint_for_a_different_cfg(tmp_path):
    save_checkpoint(tmp_path / "small.pt", random_model(str(CONFIGS / "yolov3-hand-small.cfg")))
    with pytest.raises(WeightsError, match="does not match the cfg"):
        load_model(NANO, tmp_path / "small.pt")


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/yoloprune-pickle-executed")


def test_pickled_objects_are_refused_not_executed(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {}, "cfg": "", "payload": Payload()}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_checkpoint(path)
    assert not MARKER.exists()


@pytest.mark.parametrize("content", [{"state_dict": {"w": 3}}, {"weights": {}}, [1, 2, 3]])
def test_non_tensor_checkpoints_are_refused(tmp_path, content):
    path = tmp_path / "odd.pt"
    torch.save(content, path)
    with pytest.raises(WeightsError):
        load_checkpoint(path)


def test_garbage_checkpoint(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(np.random.default_rng(0).bytes(1000))
    with pytest.raises(WeightsError, match="garbage.pt"):
        load_checkpoint(path)
