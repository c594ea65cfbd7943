"""One quick demo, checked three ways: its report (every row, the controls, the delivered model, the
three runtimes, the figures), its "reproduce stage by stage" commands (run one by one, they rebuild
the demo's files), and its reuse of valid stages when run again. And `run` on a dataset with given
weights, and its refusal of a cfg whose classes do not fit them."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from helpers import NANO, sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.cfg import load_cfg, write_cfg
from yoloprune.darknet.weights import load_checkpoint, load_model, save_darknet_weights
from yoloprune.pipelines.demo import run_demo
from yoloprune.pipelines.demo_settings import DEMO_DATA
from yoloprune.pipelines.run.model_cfg import with_classes
from yoloprune.pipelines.run.profiles import PROFILES
from yoloprune.train.metrics import read_metrics_csv

DEMO_ONLY = {"report.md", "stage.json"}  # the demo's own bookkeeping, no command writes these
TIMINGS = {"img_per_s", "epoch_s", "apply_seconds", "plan_seconds", "latency_ms_torch", "latency_ms_ort"}


def files(root: Path) -> dict[str, Path]:
    """Files by relative path; TensorBoard event files (named by time and host) as their folder."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name not in DEMO_ONLY:
            name = path.relative_to(root).as_posix()
            found[re.sub(r"/tb/.*", "/tb/", name)] = path
    return found


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS and not k.startswith("ratios")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_content(name: str, first: Path, second: Path) -> None:
    if name.endswith(".pt"):
        a, b = (torch.load(path, weights_only=True)["state_dict"] for path in (first, second))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    elif name.endswith("metrics.csv"):
        a, b = (list(csv.DictReader(path.open())) for path in (first, second))
        assert without_timings(a) == without_timings(b), name
    elif name.endswith(".json"):
        a, b = (json.loads(path.read_text()) for path in (first, second))
        assert without_timings(a) == without_timings(b), name
    elif not name.endswith("/tb/"):
        assert first.read_bytes() == second.read_bytes(), name


ROWS = {"baseline", "baseline-equal-epochs", "sparse", "pruned", "finetuned", "scratch"}
RECOVERED = {"finetuned": "finetune", "scratch": "scratch"}  # row -> its training folder


def recovered_checkpoint(out: Path, row: str) -> Path:
    """The checkpoint a recovery stage hands on: best.pt, or last.pt when no evaluation improved."""
    best = out / RECOVERED[row] / "best.pt"
    return best if best.exists() else out / RECOVERED[row] / "last.pt"


@pytest.mark.slow
def test_quick_demo_report_reproduction_and_reuse(tmp_path, monkeypatch):
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    run_demo("demo", "quick")
    out = tmp_path / "first" / "demo"
    check_report(out)
    commands = re.search(r"```bash\n(.*?)```", (out / "report.md").read_text(), flags=re.S).group(1).splitlines()
    assert [line.split()[1] if line.startswith("yoloprune ") else line.split()[0] for line in commands] == [
        "data", "data", "train", "train", "prune", "train", "train", "train", "eval", "eval", "export", "export", "cp", "bench",
        "export", "eval", "eval", "eval", "plot", "plot",
    ]

    second = tmp_path / "second"
    (second / "demo").mkdir(parents=True)
    shutil.copy(out / "model.cfg", second / "demo" / "model.cfg")  # written by the demo before any stage
    monkeypatch.chdir(second)
    for line in commands:
        words = shlex.split(line)
        if words[0] == "cp":  # the delivered .pt: the chosen checkpoint's bytes
            shutil.copyfile(*words[1:])
        else:
            assert main(words[1:]) == 0, line
    made, remade = files(out), files(second / "demo")
    assert sorted(made) == sorted(remade)
    for name in made:
        assert_same_content(name, made[name], remade[name])

    monkeypatch.chdir(tmp_path / "first")
    check_reuse(Path("demo"))  # as the first run named it: stage records hold the paths they were given


def check_report(out: Path) -> None:
    report = (out / "report.md").read_text()
    bench = json.loads((out / "bench.json").read_text())
    models = bench["models"]
    chosen = check_delivered(out, report, models)
    assert set(models) == ROWS | {f"{chosen} int8"} and bench["split"] == "test"
    for name in models:
        assert f"| {name} |" in report
    assert models["pruned"]["gmacs"] <= models["baseline"]["gmacs"]
    assert models["scratch"]["gmacs"] == pytest.approx(models["finetuned"]["gmacs"])  # the same architecture
    for row, reference in (("finetuned", "baseline-equal-epochs"), ("finetuned", "scratch"), ("pruned", "sparse"), (f"{chosen} int8", chosen)):
        assert f"| {row} − {reference} |" in report
    int8 = models[f"{chosen} int8"]  # the delivered model's INT8 export: same architecture, ONNX Runtime only
    assert int8["int8_of"] == chosen and int8["latency_ms_torch"] is None and int8["gmacs"] == models[chosen]["gmacs"]
    assert f"| {chosen} int8 / baseline |" in report
    # The three runtimes score the same model through the same post-processing.
    line = next(line for line in report.splitlines() if "largest difference" in line)
    scores = [float(value) for value in re.findall(r"(?:PyTorch|export\)|weights\)) (\d\.\d{4})", line)]
    assert len(scores) == 3 and max(scores) - min(scores) <= 0.002
    assert scores[0] == pytest.approx(models["pruned"]["map50"], abs=1e-4)
    for name in ("gamma_quantiles", "gamma_traces", "gamma_hist", "channels"):
        png = out / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert f"figures/{name}.png" in report
    # the controls trained for the epochs the report says
    p = PROFILES["quick"]
    assert len(read_metrics_csv(out / "baseline-equal-epochs" / "metrics.csv")) == p.sparse_epochs + p.finetune_epochs
    assert len(read_metrics_csv(out / "scratch" / "metrics.csv")) == p.baseline_epochs + p.sparse_epochs + p.finetune_epochs
    # the trainings from random init save the weights' average; those from the baseline the weights
    averaged = {name: load_checkpoint(out / name / "last.pt")["meta"]["ema"] for name in ("baseline", "scratch", "sparse", "finetune")}
    assert averaged == {"baseline": True, "scratch": True, "sparse": False, "finetune": False}


def check_delivered(out: Path, report: str, models: dict) -> str:
    """OUT/delivered/ holds the recovery the report names, as a .pt, a cfg + .weights that load to the
    same model and an ONNX export whose boxes are PyTorch's; the report leads with it. Its row name."""
    chosen = re.search(r"\*(finetuned|scratch)\* delivered", report).group(1)
    folder = out / "delivered"
    assert (folder / "model.pt").read_bytes() == recovered_checkpoint(out, chosen).read_bytes()
    assert report.index("## The delivered model") < report.index("## Models")
    assert f"| MACs | {models['baseline']['gmacs']:.4f} G | {models[chosen]['gmacs']:.4f} G |" in report
    delta = models[chosen]["map_delta_ci"]
    assert f"({delta[0]:+.4f} to {delta[1]:+.4f})" in report
    for command in ("eval", "detect"):  # the report ends with them
        assert re.search(rf"yoloprune {command} --weights \S*delivered/model\.pt", report.split("## Use the delivered model")[1])
    size = PROFILES["quick"].img_size
    x = torch.rand(2, 3, size, size)
    with torch.no_grad():
        boxes = load_model(None, folder / "model.pt").eval()(x).numpy()
        darknet_boxes = load_model(folder / "model.cfg", folder / "model.weights").eval()(x).numpy()
    (onnx_boxes,) = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})
    for other in (darknet_boxes, onnx_boxes):
        assert np.abs(other - boxes).max() <= 1e-4 * max(1.0, np.abs(boxes).max())
    return chosen


def check_reuse(out: Path) -> None:
    """A re-run with other pruning settings reuses data, baseline, sparse model and the equal-epochs
    control, and re-runs pruning, finetuning and the scratch control (whose inputs changed); a
    re-run with the same settings re-runs nothing."""
    from dataclasses import replace

    from yoloprune.stage import file_digest

    def stamps(*names: str) -> dict:
        return {name: (out / name).stat().st_mtime_ns for name in names}

    upstream = ("data/synth.data", "baseline/last.pt", "sparse/last.pt", "baseline-equal-epochs/last.pt")
    kept = stamps(*upstream)
    old_finetune = (out / "finetune/last.pt").read_bytes()
    run_demo(out, replace(PROFILES["quick"], max_map_drop=0.05))
    assert stamps(*upstream) == kept
    assert json.loads((out / "prune/report.json").read_text())["settings"]["max_map_drop"] == 0.05
    assert (out / "finetune/last.pt").read_bytes() != old_finetune
    finetune_record = json.loads((out / "finetune/stage.json").read_text())
    assert finetune_record["inputs"]["weights"]["sha256"] == file_digest(out / "prune/pruned.pt")
    scratch_record = json.loads((out / "scratch/stage.json").read_text())
    assert scratch_record["inputs"]["cfg"]["sha256"] == file_digest(out / "prune/pruned.cfg")

    again = (*upstream, "prune/pruned.pt", "finetune/last.pt", "scratch/last.pt")
    kept = stamps(*again)
    run_demo(out, replace(PROFILES["quick"], max_map_drop=0.05))
    assert stamps(*again) == kept
    # the plot command regenerates the figures
    assert main(["plot", str(out / "sparse"), "--out", str(out / "figs")]) == 0
    assert (out / "figs" / "gamma_hist.png").exists()


@pytest.mark.slow
def test_quick_demo_with_yolov4_tiny(tmp_path):
    """`demo --model yolov4-tiny`: the same chain and report on YOLOv4-tiny (route groups, scale_x_y
    heads), whose pruned model OpenCV runs as PyTorch does."""
    from yoloprune.darknet.builder import build_yolov4_tiny_cfg_text

    out = tmp_path / "demo"
    run_demo(out, "quick", model="yolov4-tiny")
    built = build_yolov4_tiny_cfg_text(2 * DEMO_DATA["quick"].width_multiple, classes=1, img_size=PROFILES["quick"].img_size).splitlines()
    written = (out / "model.cfg").read_text().splitlines()
    # the builder's cfg with its six anchors refitted to the data
    assert len(written) == len(built) and [a for a in written if a not in built] and all(
        a.startswith("anchors = ") and len(a.split("=")[1].split(",")) == 12 for a in written if a not in built
    )
    check_report(out)
    assert "YOLOv4-tiny topology" in (out / "report.md").read_text()


@pytest.mark.slow
def test_run_with_given_weights_skips_the_baseline_and_refuses_a_cfg_for_other_classes(tmp_path, capsys):
    """`run --weights` (darknet .weights of the cfg): the given model is the baseline (no baseline
    training), everything after it runs as in the demo; a cfg whose heads predict other classes than the data's is one line, exit 2,
    and nothing written."""
    data_dir = tmp_path / "data"
    assert main(["data", "synth", str(data_dir), "--train", "8", "--val", "4", "--test", "4", "--img-size", "64"]) == 0
    data = next(data_dir.glob("*.data"))
    weights = tmp_path / "given.weights"  # darknet weights: the cfg comes with them to every stage that loads them
    save_darknet_weights(sparse_nano(), weights)
    two = tmp_path / "two.cfg"
    two.write_text(write_cfg(with_classes(load_cfg(NANO), 2)))
    capsys.readouterr()
    refused = tmp_path / "refused"
    assert main(["run", "--data", str(data), "--cfg", str(two), "--weights", str(weights), "--out", str(refused)]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 1 and "two.cfg:" in errors[0] and "the dataset has 1 classes" in errors[0]
    assert not refused.exists()

    out = tmp_path / "run"
    args = ["run", "--data", str(data), "--cfg", NANO, "--weights", str(weights), "--out", str(out), "--profile", "quick", "--img-size", "64"]
    assert main(args) == 0
    assert not (out / "baseline").exists() and not (out / "baseline-equal-epochs").exists()  # given; controls off
    bench = json.loads((out / "bench.json").read_text())["models"]
    assert set(bench) - {"finetuned int8", "scratch int8"} == {"baseline", "sparse", "pruned", "finetuned", "scratch"}
    assert bench["baseline"]["params"] == sum(p.numel() for p in sparse_nano().parameters())  # the given model is the baseline
    sparse_record = json.loads((out / "sparse" / "stage.json").read_text())
    assert sparse_record["inputs"]["weights"]["path"] == str(weights)
    report = (out / "report.md").read_text()
    assert "the baseline is the weights given to the run" in report
    chosen = re.search(r"\*(finetuned|scratch)\* delivered", report).group(1)
    assert (out / "delivered" / "model.pt").read_bytes() == recovered_checkpoint(out, chosen).read_bytes()
