"""`yoloprune prune` end to end: files written, readable by OpenCV DNN and by the project, errors as one line."""

import json

import numpy as np
import pytest
import torch

from helpers import CONFIGS, FIXTURES, heads, max_diff, opencv_head_outputs, sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.cfg import load_cfg
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.darknet.weights import load_model, save_checkpoint, save_darknet_weights
from yoloprune.prune.run import make_map_evaluator
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.report import PruneReport

OUTPUTS = ("plan.json", "pruned.cfg", "pruned.weights", "pruned.pt", "report.json", "channels.png")


def assert_matches_opencv(out_dir, size: int) -> None:
    model = load_model(out_dir / "pruned.cfg", out_dir / "pruned.weights").eval()
    head_convs = [i - 1 for i in model.yolo_indices]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = opencv_head_outputs(out_dir / "pruned.cfg", out_dir / "pruned.weights", x, head_convs)
    for reference, raw in zip(expected, heads(model, x)):
        ours = raw.permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
        assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_prune_cli_on_a_checkpoint(tmp_path, capsys):
    model = sparse_nano()
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, model)
    out = tmp_path / "out"
    code = main(["prune", "--weights", str(checkpoint), "--out", str(out), "--mode", "full", "--target-flops", "0.5", "--layers", "3", "--round", "2"])
    assert code == 0
    assert all((out / name).is_file() for name in OUTPUTS)
    report = json.loads((out / "report.json").read_text())
    assert abs(report["macs_ratio"] / 0.5 - 1) <= 0.01
    # the report object reads back to the same file, key order and layout included
    assert PruneReport.load(out / "report.json").to_json() + "\n" == (out / "report.json").read_text()
    assert len(report["removed_blocks"]) == 3
    plan = PrunePlan.load(out / "plan.json")
    # the .pt and the darknet pair hold the same network, which is the plan applied to the model
    from_pt = load_model(None, out / "pruned.pt").eval()
    from_darknet = load_model(out / "pruned.cfg", out / "pruned.weights").eval()
    from yoloprune.prune.apply import prune_model

    expected = prune_model(model, plan)
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(heads(from_pt, x), heads(expected, x)) == 0
    assert max_diff(heads(from_darknet, x), heads(expected, x)) == 0
    assert count_parameters(from_pt) == report["params_after"]
    assert "MACs@128" in capsys.readouterr().out
    assert_matches_opencv(out, 96)


def test_plan_only_writes_just_the_plan(tmp_path):
    model = sparse_nano()
    weights = tmp_path / "model.weights"
    save_darknet_weights(model, weights)
    out = tmp_path / "out"
    assert main(["prune", "--cfg", str(CONFIGS / "yolov3-hand-nano.cfg"), "--weights", str(weights), "--out", str(out), "--mode", "safe", "--ratio", "0.5", "--plan-only"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--ratio: say how much to prune: one of --ratio"),
        (["--ratio", "1.5"], "--ratio: must be in [0, 1], got 1.5"),
        (["--target-flops", "0"], "--target-flops: must be in (0, 1], got 0.0"),
        (["--ratio", "0.5", "--calibrate", "10"], "--calibrate: must be 0 without --data"),
        (["--max-map-drop", "0.01"], "--max-map-drop: must be given with --data"),
        (["--ratio", "0.5", "--min-keep", "2.5"], "--min-keep"),
        (["--layers", "99"], "removable"),
        (["--ratio", "0.5", "--img-size", "100"], "--img-size: must be a positive multiple of 32, got 100"),
        (["--ratio", "0.5", "--layers", "auto"], "--layers: must be a count unless --max-map-drop is given"),
        (["--ratio", "0.5", "--threshold", "0.1"], "--threshold: give one of --ratio, --threshold"),
        (["--target-latency", "0.5", "--latency-steps", "0"], "--latency-steps: must be a whole number >= 1, got 0"),
        (["--ratio", "0.5", "--latency-steps", "2"], "--latency-steps: must be given with --target-latency"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path, capsys, extra, message):
    weights = tmp_path / "model.weights"
    save_darknet_weights(Darknet(str(CONFIGS / "yolov3-hand-nano.cfg")), weights)
    code = main(["prune", "--cfg", str(CONFIGS / "yolov3-hand-nano.cfg"), "--weights", str(weights), "--out", str(tmp_path / "o"), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
def test_hand_cfg_safe_and_full_budget(tmp_path):
    """The seed's yolov3-hand.cfg with random weights and sparse γ: 42 safe candidates; the full-mode
    FLOPs budget is met within 1 %; both results load in OpenCV DNN and in the project."""
    cfg_path = FIXTURES / "yolov3-hand.cfg"
    torch.manual_seed(0)
    model = Darknet(str(cfg_path))
    with torch.no_grad():
        for layer in model.layers:
            if getattr(layer, "bn", None) is not None:
                gamma = layer.bn.weight
                gamma.copy_(torch.rand_like(gamma) * (torch.rand_like(gamma) < 0.3))
    weights = tmp_path / "sparse.weights"
    save_darknet_weights(model, weights)
    del model
    safe, full = tmp_path / "safe", tmp_path / "full"
    assert main(["prune", "--cfg", str(cfg_path), "--weights", str(weights), "--out", str(safe), "--mode", "safe", "--ratio", "0.85"]) == 0
    assert main(["prune", "--cfg", str(cfg_path), "--weights", str(weights), "--out", str(full), "--mode", "full", "--target-flops", "0.25"]) == 0
    assert len(PrunePlan.load(safe / "plan.json").candidate_layers) == 42
    report = json.loads((full / "report.json").read_text())
    macs_ratio = count_cfg_macs(load_cfg(full / "pruned.cfg"), 416) / count_cfg_macs(load_cfg(cfg_path), 416)
    assert abs(macs_ratio / 0.25 - 1) <= 0.01 and report["macs_ratio"] == macs_ratio
    for out in (safe, full):
        assert_matches_opencv(out, 64)
        assert main(["info", str(out / "pruned.cfg"), "--weights", str(out / "pruned.weights"), "--img-size", "64", "--json"]) == 0


@pytest.mark.slow  # each newly shaped model's first forward sets up its conv kernels: seconds on CPU
def test_auto_prune_with_calibration_on_a_synthetic_dataset(tmp_path, monkeypatch):
    assert main(["data", "synth", str(tmp_path / "data"), "--train", "4", "--val", "4", "--img-size", "64"]) == 0
    data = next((tmp_path / "data").glob("*.data"))
    model = sparse_nano()
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, model)
    # A random model's mAP is ~0 whatever is pruned, so every trial would pass. The measured mAP gets a
    # scripted term, the fraction of parameters kept, so that pruning too much is rejected.
    unpruned_params = count_parameters(model)

    def evaluator_with_a_scripted_term(*args, **kwargs):
        measured = make_map_evaluator(*args, **kwargs)

        def evaluate(m):
            term = count_parameters(m) / unpruned_params
            return tuple(score + term for score in measured(m))  # (mAP@0.5, mAP@0.5:0.95)

        return evaluate

    monkeypatch.setattr("yoloprune.prune.run.make_map_evaluator", evaluator_with_a_scripted_term)
    out = tmp_path / "out"
    args = ["prune", "--weights", str(checkpoint), "--out", str(out), "--data", str(data), "--img-size", "64", "--batch", "4"]
    assert main([*args, "--max-map-drop", "0.65", "--calibrate", "4", "--auto-steps", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    auto = report["auto"]
    # the search re-calibrates where that does not lower the unpruned model's score; so does the result
    assert (auto["map50_recalibrated"] >= auto["map50_before"]) == auto["recalibrated"]
    assert report.get("calibrated_images") == (4 if auto["recalibrated"] else None)
    assert set(report["folding"]) == {"map50_zeroed_gamma", "map50_compact"}
    assert all(0 <= value <= 2 for value in report["folding"].values())  # the scripted term adds up to 1
    floor = auto["map50_before"] - 0.65
    trials = auto["trials"]
    # removing all candidate channels keeps x0.003 of the parameters: too far; half of them keeps x0.40
    assert [t["accepted"] for t in trials] == [False, True]
    assert all((t["map50"] >= floor) == t["accepted"] for t in trials)
    assert auto["map50_after"] == trials[-1]["map50"] >= floor
    pruned = load_model(None, out / "pruned.pt").eval()
    assert count_parameters(pruned) == report["params_after"]
    assert count_parameters(pruned) / unpruned_params == pytest.approx(trials[-1]["params_ratio"])
    assert all(torch.isfinite(h).all() for h in heads(pruned, torch.rand(1, 3, 64, 64)))


def folder_bytes(folder) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def checkpoint_and_prune_args(tmp_path) -> list[str]:
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, sparse_nano())
    return ["prune", "--weights", str(checkpoint), "--out", str(tmp_path / "out"), "--mode", "safe"]


def test_an_interrupted_prune_leaves_the_previous_output_folder_untouched(tmp_path, monkeypatch):
    args, out = checkpoint_and_prune_args(tmp_path), tmp_path / "out"
    assert main([*args, "--ratio", "0.3"]) == 0
    previous, entries = folder_bytes(out), sorted(p.name for p in tmp_path.iterdir())

    from yoloprune.prune.report import write_prune_outputs

    def interrupt(*args, **kwargs):  # Ctrl-C once every file is written, before the new folder takes the old one's place
        write_prune_outputs(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr("yoloprune.prune.run.write_prune_outputs", interrupt)
    assert main([*args, "--ratio", "0.6"]) == 130
    assert folder_bytes(out) == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == entries  # no staging folder left behind


def test_a_failed_first_prune_leaves_no_output_folder(tmp_path, monkeypatch):
    args = checkpoint_and_prune_args(tmp_path)

    def fail(*args, **kwargs):  # an unexpected error while writing the weights, plan.json and pruned.cfg being done
        raise RuntimeError("injected failure")

    monkeypatch.setattr("yoloprune.darknet.weights.save_darknet_weights", fail)
    with pytest.raises(RuntimeError, match="injected failure"):
        main([*args, "--ratio", "0.5"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sparse.pt"]


def test_a_new_prune_replaces_every_file_of_the_previous_one(tmp_path):
    args, out = checkpoint_and_prune_args(tmp_path), tmp_path / "out"
    assert main([*args, "--ratio", "0.3"]) == 0
    assert main([*args, "--ratio", "0.6", "--plan-only"]) == 0
    # the previous pruned model does not stay beside a plan it does not come from
    assert sorted(p.name for p in out.iterdir()) == ["plan.json"]
    assert PrunePlan.load(out / "plan.json").settings["ratio"] == 0.6


def test_an_output_folder_holding_other_files_is_refused_and_kept(tmp_path, capsys):
    args, out = checkpoint_and_prune_args(tmp_path), tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.json").write_text("{}")
    code = main([*args, "--ratio", "0.5"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("yoloprune: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert str(out) in errors[0] and "notes.txt" in errors[0] and "report.json" not in errors[0]
    assert folder_bytes(out) == {"notes.txt": b"mine", "report.json": b"{}"}
