"""`yoloprune slim`: rounds of prune → BN re-calibration → distilled finetune → check, on a tiny
synthetic dataset and the nano cfg with half of its BN γ near zero."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import CONFIGS, heads, max_diff, sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.weights import load_model, save_checkpoint

NANO_CFG = CONFIGS / "yolov3-hand-nano.cfg"
SIZE = 64  # the synthetic images' size; MACs are counted at it
ROUND_FIELDS = {"round", "macs_ratio", "params_ratio", "map50_pruned", "map_pruned", "map50_finetuned", "map_finetuned", "passed", "seconds"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """(the .data file, a sparse-ish nano checkpoint): 16 train images, so with --batch 16 an epoch is one step."""
    folder = tmp_path_factory.mktemp("slim")
    assert main(["data", "synth", str(folder / "data"), "--train", "16", "--val", "8", "--img-size", str(SIZE)]) == 0
    checkpoint = folder / "sparse.pt"
    save_checkpoint(checkpoint, sparse_nano())
    return folder / "data" / "synth.data", checkpoint


def slim_args(inputs, out, *extra) -> list[str]:
    data, checkpoint = inputs
    return [
        "slim", "--weights", str(checkpoint), "--data", str(data), "--out", str(out), "--rounds", "2", "--epochs-per-round", "1",
        "--img-size", str(SIZE), "--batch", "16", "--calibrate", "16", "--lr", "0.001", *extra,
    ]


def info_gmacs(capsys, cfg) -> float:
    """MACs as `yoloprune info` counts them: torch's flop counter on a forward pass of the built model."""
    capsys.readouterr()
    assert main(["info", str(cfg), "--img-size", str(SIZE), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["gmacs"]


def macs_fraction_scorer(*args, **kwargs):
    """A scripted validation score: the fraction of the original MACs a model keeps (as mAP@0.5, and
    a third of it as mAP@0.5:0.95). A random model's measured mAP is ~0 whatever is pruned, so no
    tolerance could fail; this score falls by a known amount per round."""
    from yoloprune.darknet.cfg import load_cfg
    from yoloprune.darknet.cost import count_cfg_macs

    original = count_cfg_macs(load_cfg(NANO_CFG), SIZE)

    def score(model):
        kept = count_cfg_macs(model.cfg, SIZE) / original
        return kept, kept / 3

    return score


def test_two_rounds_land_on_the_target_and_record_each_round(inputs, tmp_path, capsys):
    out = tmp_path / "slim"
    assert main(slim_args(inputs, out, "--target-flops", "0.25")) == 0
    # the oracle: yoloprune info's count of the written cfgs (torch's flop counter), not the planner's
    original = info_gmacs(capsys, NANO_CFG)
    round1 = info_gmacs(capsys, out / "round1" / "prune" / "pruned.cfg") / original
    final = info_gmacs(capsys, out / "final.cfg") / original
    # each round's budget search lands within 1 % of its target; round 2's is set from round 1's result
    assert abs(round1 / 0.25**0.5 - 1) <= 0.011
    assert abs(final / 0.25 - 1) <= 0.011
    record = json.loads((out / "slim.json").read_text())
    assert [r["round"] for r in record["rounds"]] == [1, 2] and record["chosen_round"] == 2
    for entry, measured in zip(record["rounds"], (round1, final)):
        assert ROUND_FIELDS <= set(entry)
        assert entry["passed"] is True and entry["seconds"] > 0
        assert entry["macs_ratio"] == pytest.approx(measured, rel=1e-6)
        assert all(0 <= entry[key] <= 1 for key in ("map50_pruned", "map_pruned", "map50_finetuned", "map_finetuned"))
    assert record["rounds"][1]["params_ratio"] < record["rounds"][0]["params_ratio"] < 1
    for r in (1, 2):
        assert (out / f"round{r}" / "prune" / "pruned.pt").is_file() and (out / f"round{r}" / "finetune" / "metrics.csv").is_file()
    # final.* is round 2's finetuned model, as a .pt and as darknet cfg + weights
    x = torch.rand(1, 3, SIZE, SIZE)
    finetuned = load_model(None, out / "round2" / "finetune" / "best.pt").eval()
    assert max_diff(heads(load_model(None, out / "final.pt").eval(), x), heads(finetuned, x)) == 0
    assert max_diff(heads(load_model(out / "final.cfg", out / "final.weights").eval(), x), heads(finetuned, x)) == 0
    assert sorted(p.name for p in out.iterdir()) == ["final.cfg", "final.pt", "final.weights", "round1", "round2", "slim.json"]


def test_a_round_below_the_tolerance_ends_the_run_with_the_round_before(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("yoloprune.pipelines.slim.make_map_evaluator", macs_fraction_scorer)
    out = tmp_path / "slim"
    # round 1 keeps 0.5 of the MACs (score 1 -> 0.5: within 0.6), round 2 keeps 0.25 (a drop of 0.75)
    assert main(slim_args(inputs, out, "--target-flops", "0.25", "--max-map-drop", "0.6")) == 0
    record = json.loads((out / "slim.json").read_text())
    assert [r["passed"] for r in record["rounds"]] == [True, False] and record["chosen_round"] == 1
    assert (out / "final.cfg").read_text() == (out / "round1" / "prune" / "pruned.cfg").read_text()
    x = torch.rand(1, 3, SIZE, SIZE)
    round1 = load_model(None, out / "round1" / "finetune" / "best.pt").eval()
    assert max_diff(heads(load_model(None, out / "final.pt").eval(), x), heads(round1, x)) == 0

    # no tolerance at all: round 1 already fails; one line naming it, and the folder (a previous
    # slim output, so replaced) holds that round's record but no final model
    capsys.readouterr()
    assert main(slim_args(inputs, out, "--target-flops", "0.25", "--max-map-drop", "0")) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("yoloprune: error:")]
    assert len(errors) == 1 and "Traceback" not in err
    assert "round 1 (MACs x0.50" in errors[0] and "--max-map-drop" in errors[0] and "slim.json" in errors[0]
    record = json.loads((out / "slim.json").read_text())
    assert [r["passed"] for r in record["rounds"]] == [False] and record["chosen_round"] is None
    assert sorted(p.name for p in out.iterdir()) == ["round1", "slim.json"]


def test_a_round_below_the_map5095_floor_fails_though_its_map50_holds(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("yoloprune.pipelines.slim.make_map_evaluator", macs_fraction_scorer)
    out = tmp_path / "slim"
    # scores (kept, kept/3): original (1, 0.333); round 1 (0.5, 0.167), round 2 (0.25, 0.083). mAP@0.5
    # drops 0.5 then 0.75, both within 0.8; mAP@0.5:0.95 drops 0.167 (within 0.2), then 0.25 (not)
    assert main(slim_args(inputs, out, "--target-flops", "0.25", "--max-map-drop", "0.8", "--max-map5095-drop", "0.2")) == 0
    record = json.loads((out / "slim.json").read_text())
    assert [r["passed"] for r in record["rounds"]] == [True, False] and record["chosen_round"] == 1
    assert "mAP@0.5:0.95 0.08" in record["stop_reason"] and "below the floor 0.1333" in record["stop_reason"] and "mAP@0.5 " not in record["stop_reason"]


def test_the_penalty_runs_in_every_finetuning_but_the_last(inputs, tmp_path):
    import csv

    out = tmp_path / "slim"
    assert main(slim_args(inputs, out, "--target-flops", "0.25", "--sparsity", "0.01", "--gamma-lr-scale", "5")) == 0

    def penalty(round_index):
        with open(out / f"round{round_index}" / "finetune" / "metrics.csv") as f:
            return {float(row["sparsity"]) for row in csv.DictReader(f)}

    assert penalty(1) == {0.01} and penalty(2) == {0.0}


@pytest.mark.parametrize(
    "drop, replace, message",
    [
        ("--data", None, "--data: must be given"),
        ("--rounds", "0", "--rounds: must be a whole number >= 1, got 0"),
        ("--target-flops --max-map-drop --max-map5095-drop", None, "--target-flops: say how far to slim: --target-flops, --max-map-drop, or both"),
        ("--target-flops", "1.5", "--target-flops: must be in (0, 1], got 1.5"),
        ("--epochs-per-round", "0", "--epochs-per-round: must be a whole number >= 1, got 0"),
        ("--sparsity", "-1", "--sparsity: must be >= 0, got -1"),
        ("--gamma-lr-scale", "0", "--gamma-lr-scale: must be > 0, got 0"),
        ("--max-map-drop", None, "--max-map5095-drop: must be given with --max-map-drop, got 0.01"),
    ],
)
def test_bad_settings_are_one_line_errors_and_write_nothing(inputs, tmp_path, capsys, drop, replace, message):
    args = slim_args(
        inputs, tmp_path / "slim", "--target-flops", "0.5", "--max-map-drop", "0.5", "--max-map5095-drop", "0.01", "--sparsity", "0.001", "--gamma-lr-scale", "1",
    )
    for flag in drop.split():  # each named flag loses its value, or the first gets the bad one
        at = args.index(flag)
        args[at : at + 2] = [] if replace is None else [flag, replace]
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_layers_auto_needs_the_map_search(inputs, tmp_path, capsys):
    assert main(slim_args(inputs, tmp_path / "slim", "--target-flops", "0.5", "--max-map-drop", "0.1", "--layers", "auto")) == 2
    assert "--layers: 'auto' needs --max-map-drop without --target-flops" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mine, named", [("notes.txt", "notes.txt"), ("round1/notes.txt", "round1")])
def test_a_folder_with_other_files_is_refused_untouched(inputs, tmp_path, capsys, mine, named):
    out = tmp_path / "slim"
    (out / mine).parent.mkdir(parents=True)
    (out / mine).write_text("mine")
    assert main(slim_args(inputs, out, "--target-flops", "0.5")) == 2
    assert f"holds files slim did not write ({named})" in capsys.readouterr().err
    assert (out / mine).read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["slim"]


def test_a_map_search_that_removes_almost_nothing_ends_the_run(inputs, tmp_path, capsys, monkeypatch):
    """Without a MACs target, a round prunes as far as `--max-map-drop` allows against its input; a
    tolerance so small that the search keeps over 99 % of the MACs leaves nothing to slim."""
    monkeypatch.setattr("yoloprune.pipelines.slim.make_map_evaluator", macs_fraction_scorer)
    monkeypatch.setattr("yoloprune.prune.run.make_map_evaluator", macs_fraction_scorer)
    out = tmp_path / "slim"
    capsys.readouterr()
    assert main(slim_args(inputs, out, "--max-map-drop", "0.001", "--auto-steps", "3")) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("yoloprune: error:")]
    assert len(errors) == 1 and "nothing to slim within --max-map-drop" in errors[0]
    record = json.loads((out / "slim.json").read_text())
    assert len(record["rounds"]) == 1 and record["rounds"][0]["macs_ratio"] > 0.99 and record["rounds"][0]["map50_finetuned"] is None
    assert not (out / "round1" / "finetune").exists()


@pytest.mark.slow
def test_map_search_rounds_stop_at_the_first_round_below_the_tolerance(inputs, tmp_path, monkeypatch):
    """Each round's search takes the tolerance from its input model; the check after finetuning
    measures from the original, so the drops add up and round 2 fails (scores: MACs fractions)."""
    monkeypatch.setattr("yoloprune.pipelines.slim.make_map_evaluator", macs_fraction_scorer)
    monkeypatch.setattr("yoloprune.prune.run.make_map_evaluator", macs_fraction_scorer)
    out = tmp_path / "slim"
    assert main(slim_args(inputs, out, "--max-map-drop", "0.3", "--auto-steps", "4")) == 0
    record = json.loads((out / "slim.json").read_text())
    rounds = record["rounds"]
    assert [r["passed"] for r in rounds] == [True, False] and record["chosen_round"] == 1
    assert 0.7 <= rounds[0]["macs_ratio"] < 0.99  # the search stayed within 0.3 of the original score 1
    assert rounds[1]["macs_ratio"] < 0.7  # and round 2's within 0.3 of round 1's, which is past the floor
    assert (out / "final.cfg").read_text() == (out / "round1" / "prune" / "pruned.cfg").read_text()
