"""A user's path on real photos: import the fixture (a dozen BCCD blood-smear photos as Pascal VOC,
a dozen hand photos as an Ultralytics export), then `run` the whole chain with the smoke recipe.
The cfg's head is written for one class; BCCD has three, so `run` must fit the heads to the data."""

from __future__ import annotations

import json
import re

import onnxruntime
import pytest
import torch

from helpers import FIXTURES, NANO
from yoloprune.cli import main
from yoloprune.darknet.blocks import YoloBlock
from yoloprune.darknet.cfg import load_cfg
from yoloprune.darknet.weights import load_model
from yoloprune.data.spec import load_data_spec

REAL = FIXTURES / "real"
IMPORTS = {
    "bccd": (["data", "voc", str(REAL / "bccd")], 3),
    "hands": (["data", "yolo", str(REAL / "hand-gesture" / "data.yaml"), "--merge", "hand"], 1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(IMPORTS))
def test_import_then_run_delivers_a_model_for_the_data(tmp_path, name):
    command, classes = IMPORTS[name]
    data_dir = tmp_path / name
    assert main([*command, str(data_dir)]) == 0
    data = data_dir / f"{name}.data"
    assert load_data_spec(data).classes == classes
    assert main(["data", "check", str(data)]) == 0

    out = tmp_path / "run"
    assert main(["run", "--data", str(data), "--cfg", NANO, "--out", str(out), "--profile", "quick", "--img-size", "64"]) == 0

    delivered = out / "delivered"
    heads = [block for block in load_cfg(delivered / "model.cfg").layers if isinstance(block, YoloBlock)]
    assert heads and all(block.classes == classes for block in heads)
    model = load_model(delivered / "model.cfg", delivered / "model.weights").eval()
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images).numpy()
    session = onnxruntime.InferenceSession(str(delivered / "model.onnx"), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    assert output.shape == expected.shape and abs(output - expected).max() <= 1e-4 * 64

    report = (out / "report.md").read_text()
    chosen = re.search(r"\*(finetuned|scratch)\* delivered", report).group(1)
    bench = json.loads((out / "bench.json").read_text())["models"]
    assert bench[chosen]["gmacs"] <= bench["baseline"]["gmacs"]
    assert f"yoloprune eval --weights {delivered / 'model.pt'}" in report
