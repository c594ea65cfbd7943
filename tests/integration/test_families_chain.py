"""Each darknet family cfg through the commands a user runs, on a tiny synthetic dataset: `train`
(with the MACs-weighted γ penalty, which walks the cfg's channel graph), `prune` (full mode, a MACs
budget, a residual block where the cfg has one), `eval` in the three runtimes, `export` to ONNX and to
darknet, `bench` and `info`.

The cfgs are darknet's own, with their 80 classes cut to the dataset's one class (every head conv's
filters follow), all at 64 px; the big ones are marked slow. The oracles: the pruned model's outputs
from ONNX Runtime (the ONNX export) and OpenCV DNN (the darknet export) against PyTorch's, the three
runtimes' mAP against each other, and the MACs of the pruned cfg counted by `info` against the
planner's budget.
"""

import json
import re

import numpy as np
import onnxruntime
import pytest
import torch

from helpers import FIXTURES, OPENCV_BN_EPS, heads, opencv_head_outputs
from yoloprune.cli import main
from yoloprune.darknet.cfg import load_cfg
from yoloprune.darknet.residual import residual_blocks
from yoloprune.darknet.weights import load_model
from yoloprune.prune.budget import BUDGET_TOLERANCE

SIZE = 64
TARGET = 0.5


def _case(name: str, slow: bool = False):
    return pytest.param(name, id=name, marks=[pytest.mark.xdist_group(f"chain-{name}")] + ([pytest.mark.slow] if slow else []))


CASES = [
    _case("yolov3-tiny"),
    _case("yolov3-tiny-prn"),
    _case("yolov4-tiny"),
    _case("yolov7-tiny"),
    _case("yolov4", slow=True),
    _case("yolov4-csp", slow=True),
]


def one_class_cfg(name: str, folder) -> str:
    """darknet's cfg `name` with one class: `classes=80` -> 1 in every [yolo] and the conv before it
    at (5 + 1) x its anchors instead of (5 + 80) x 3 = 255 filters."""
    text = (FIXTURES / f"{name}.cfg").read_text()
    heads = text.count("[yolo]")
    text, classes = re.subn(r"(?m)^classes\s*=\s*80\s*$", "classes=1", text)
    text, filters = re.subn(r"(?m)^filters\s*=\s*255\s*$", "filters=18", text)
    assert classes == filters == heads > 0
    path = folder / f"{name}-1class.cfg"
    path.write_text(text)
    return str(path)


def run(*args: str) -> None:
    assert main([*args]) == 0, args


def run_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    run(*args, "--json")
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("name", CASES)
def test_the_command_chain_runs_on_every_family_cfg(name, tiny_data, tmp_path, capsys):
    cfg = one_class_cfg(name, tmp_path)
    data = str(tiny_data)
    common = ["--img-size", str(SIZE), "--device", "cpu"]

    run("train", "--cfg", cfg, "--data", data, "--out", str(tmp_path / "sparse"), "--epochs", "1", "--batch", "4",
        "--sparsity", "0.001", "--sparsity-weighting", "macs", "--no-progress", "--no-tensorboard", *common)
    sparse = tmp_path / "sparse" / "last.pt"
    assert sparse.is_file()

    layers = "1" if residual_blocks(load_cfg(cfg)) else "0"
    pruned = tmp_path / "pruned"
    run("prune", "--weights", str(sparse), "--out", str(pruned), "--mode", "full", "--target-flops", str(TARGET), "--layers", layers,
        "--img-size", str(SIZE))
    report = json.loads((pruned / "report.json").read_text())
    assert len(report["removed_blocks"]) == int(layers)

    # MACs counted afresh from the written cfg: the budget landed
    original, compact = (run_json(capsys, "info", path, "--img-size", str(SIZE)) for path in (cfg, str(pruned / "pruned.cfg")))
    assert abs(compact["gmacs"] / original["gmacs"] / TARGET - 1) <= BUDGET_TOLERANCE

    # the exported ONNX file and OpenCV's reading of the darknet pair compute what PyTorch computes
    run("export", "--weights", str(pruned / "pruned.pt"), "--format", "onnx", "--out", str(tmp_path / "pruned.onnx"), "--img-size", str(SIZE))
    run("export", "--weights", str(pruned / "pruned.pt"), "--format", "darknet", "--out", str(tmp_path / "dark"))
    model = load_model(tmp_path / "dark.cfg", tmp_path / "dark.weights").eval()
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        boxes = model(x).numpy()
    (ort_boxes,) = onnxruntime.InferenceSession(str(tmp_path / "pruned.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    assert np.abs(ort_boxes - boxes).max() <= 1e-4 * max(1.0, np.abs(boxes).max())
    for module in model.modules():  # OpenCV's importer gives every BN its own epsilon
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = OPENCV_BN_EPS
    expected = opencv_head_outputs(tmp_path / "dark.cfg", tmp_path / "dark.weights", x, [i - 1 for i in model.yolo_indices])
    for reference, raw in zip(expected, heads(model, x)):
        ours = raw.permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
        assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())

    # eval scores in all three runtimes alike; bench counts and times both models
    scores = [
        run_json(capsys, "eval", *weights, "--data", data, "--batch", "4", "--no-intervals", *common)["map50"]
        for weights in (["--weights", str(pruned / "pruned.pt")], ["--weights", str(tmp_path / "pruned.onnx")],
                        ["--cfg", str(pruned / "pruned.cfg"), "--weights", str(pruned / "pruned.weights"), "--backend", "opencv"])
    ]
    assert max(scores) - min(scores) <= 0.002
    run("bench", "--model", f"sparse={sparse}", "--model", f"pruned={pruned / 'pruned.pt'}", "--img-size", str(SIZE),
        "--runs", "1", "--warmup", "1", "--threads", "1", "--json", str(tmp_path / "bench.json"))
    bench = json.loads((tmp_path / "bench.json").read_text())["models"]
    assert bench["pruned"]["ratios"]["gmacs"] == pytest.approx(compact["gmacs"] / original["gmacs"], rel=1e-3)
