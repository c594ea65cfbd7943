import json

import cv2
import numpy as np
import pytest
import torch

from helpers import CONFIGS, NANO, assert_same_state, random_model
from yoloprune.bench.benchmark import ModelSpec
from yoloprune.cli import main
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_model, save_checkpoint
from yoloprune.errors import YoloPruneError
from yoloprune.export.onnx import create_ort_session, export_onnx

def test_onnx_export_parity_with_dynamic_batch(tmp_path):
    model = random_model(NANO).eval()
    result = export_onnx(model, tmp_path / "m.onnx", img_size=96, dynamic_batch=True)
    assert result.parity_error <= 1e-4
    import onnx

    proto = onnx.load(str(result.path))
    assert proto.opset_import[0].version >= 13
    x = torch.rand(3, 3, 96, 96)
    (ort_out,) = create_ort_session(result.path).run(None, {"images": x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert ort_out.shape == expected.shape
    # Box coordinates are input pixels: compare them as a share of the 96-px image (float32 rounding
    # of a 96-px box is ~1e-5 px on one CPU and 1e-3 px on another); probabilities as they are.
    boxes, scores = np.s_[..., :4], np.s_[..., 4:]
    assert np.abs(ort_out[boxes] - expected[boxes]).max() / 96 <= 1e-4
    assert np.abs(ort_out[scores] - expected[scores]).max() <= 1e-4


def test_onnx_parity_error_scales_boxes_by_the_input_size():
    from yoloprune.export.onnx import parity_error

    reference = np.zeros((1, 2, 6), dtype=np.float32)
    shifted_box = reference.copy()
    shifted_box[0, 1, 2] = 4.16  # w off by 4.16 px on a 416-px-wide input: 1 % of the image
    assert parity_error(reference, shifted_box, (208, 416)) == pytest.approx(0.01)
    shifted_score = reference.copy()
    shifted_score[0, 0, 5] = 0.02  # a class probability off by 0.02
    assert parity_error(reference, shifted_score, (416, 416)) == pytest.approx(0.02)
    overflowed = reference.copy()
    overflowed[0, 0, 3] = np.inf
    assert parity_error(overflowed, overflowed, (416, 416)) == 0.0
    assert parity_error(overflowed, reference, (416, 416)) == float("inf")


def test_export_cli_onnx_and_darknet(tmp_path, capsys):
    model = random_model(NANO)
    save_checkpoint(tmp_path / "m.pt", model)
    assert main(["export", "--weights", str(tmp_path / "m.pt"), "--format", "onnx", "--out", str(tmp_path / "m.onnx"), "--img-size", "64"]) == 0
    assert "parity error vs PyTorch" in capsys.readouterr().out
    assert main(["export", "--weights", str(tmp_path / "m.pt"), "--format", "darknet", "--out", str(tmp_path / "dark")]) == 0
    reloaded = load_model(tmp_path / "dark.cfg", tmp_path / "dark.weights")
    assert_same_state(model, reloaded)
    # OpenCV DNN loads the darknet export and computes the same head outputs
    net = cv2.dnn.readNetFromDarknet(str(tmp_path / "dark.cfg"), str(tmp_path / "dark.weights"))
    x = torch.rand(1, 3, 96, 96)
    net.setInput(x.numpy())
    head = model.yolo_indices[0] - 1
    (reference,) = net.forward([f"conv_{head}"])
    with torch.no_grad():
        ours = model.eval().forward_heads(x)[0].permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
    assert np.abs(ours - reference).max() <= 1e-4 * np.abs(reference).max()


def test_export_rejects_bad_sizes(tmp_path):
    save_checkpoint(tmp_path / "m.pt", random_model(NANO))
    assert main(["export", "--weights", str(tmp_path / "m.pt"), "--out", str(tmp_path / "m.onnx"), "--img-size", "70"]) == 2
    assert not (tmp_path / "m.onnx").exists()


def test_model_spec_parsing():
    assert ModelSpec.parse("a=x.cfg:y.weights") == ModelSpec("a", "x.cfg", "y.weights")
    assert ModelSpec.parse("a=run/best.pt") == ModelSpec("a", None, "run/best.pt")
    assert ModelSpec.parse("a=x.cfg") == ModelSpec("a", "x.cfg", None)
    with pytest.raises(YoloPruneError):
        ModelSpec.parse("x.cfg")


def test_bench_json_has_every_key(tmp_path):
    # default initialisation: large random weights overflow exp() in the box decoding
    save_checkpoint(tmp_path / "small.pt", Darknet(str(CONFIGS / "yolov3-hand-small.cfg")))
    out = tmp_path / "bench.json"
    md = tmp_path / "bench.md"
    args = ["bench", "--model", f"small={tmp_path / 'small.pt'}", "--model", f"nano={NANO}", "--img-size", "64",
            "--runs", "3", "--warmup", "1", "--threads", "1", "--json", str(out), "--md", str(md)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["threads"] == 1 and set(result["models"]) == {"small", "nano"}
    for entry in result["models"].values():
        assert set(entry) >= {"params", "size_mb", "gmacs", "latency_ms_torch", "latency_ms_ort", "map50", "map"}
        assert entry["params"] > 0 and entry["size_mb"] > 0 and entry["gmacs"] > 0
        assert entry["latency_ms_torch"] > 0 and entry["latency_ms_ort"] > 0
    small, nano = result["models"]["small"], result["models"]["nano"]
    assert nano["params"] < small["params"] and nano["gmacs"] < small["gmacs"]
    assert nano["ratios"]["params"] == pytest.approx(nano["params"] / small["params"])
    table = md.read_text()
    assert table.count("\n|") >= 3 and "nano" in table


def test_ort_sessions_do_not_spin_between_timed_runs(tmp_path):
    from yoloprune.export.onnx import create_ort_session, export_onnx

    path = export_onnx(Darknet(str(CONFIGS / "yolov3-hand-nano.cfg")), tmp_path / "nano.onnx", img_size=64).path
    options = create_ort_session(path, threads=1).get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
