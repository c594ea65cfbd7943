"""The --max-map-drop search keeps its promise: what it returns scores within the tolerance of the
unpruned model, or it stops with a one-line error naming the closest it got.

mAP@0.5 is scripted instead of measured: a function of what is missing from the model it is given,
read off that model alone (its cfg's layer count and its parameter count), so the expected values
do not depend on the search, its plans or its bookkeeping.
"""

from typing import NamedTuple

import pytest

from helpers import sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.graph import count_cfg_macs
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.errors import YoloPruneError
from yoloprune.prune.apply import prune_model
from yoloprune.prune.auto import BLOCK_SHARE, search_max_pruning
from yoloprune.prune.layer import plan_layer_prune

BLOCK_COST = 0.1  # scripted mAP@0.5 lost per removed residual block


class Evaluation(NamedTuple):
    map50: float
    blocks: int  # residual blocks missing from the evaluated model
    macs_ratio: float  # its MACs over the unpruned model's, at the cfg's input size


class ScriptedMap:
    """mAP@0.5 = 1 - BLOCK_COST per removed residual block - the fraction of parameters removed.
    Every call is kept in `calls`; the first one of a search is its baseline."""

    def __init__(self, unpruned: Darknet):
        self.size = unpruned.cfg.net.width
        self.layers, self.params = len(unpruned.cfg.layers), count_parameters(unpruned)
        self.macs = count_cfg_macs(unpruned.cfg, self.size)
        self.calls: list[Evaluation] = []

    def __call__(self, model: Darknet) -> float:
        blocks = (self.layers - len(model.cfg.layers)) // 3  # a residual block is three cfg layers
        map50 = 1.0 - BLOCK_COST * blocks - (1 - count_parameters(model) / self.params)
        self.calls.append(Evaluation(map50, blocks, count_cfg_macs(model.cfg, self.size) / self.macs))
        return map50

    def closest_trial(self) -> Evaluation:
        return max(self.calls[1:], key=lambda call: call.map50)


def assert_names_the_closest_trial(message: str, closest: Evaluation, settings=("`layers`", "`max_map_drop`")) -> None:
    """One line with the closest trial's score, MACs and blocks, naming the two settings to change
    (as fields from the library, as flags from the command line)."""
    assert "\n" not in message
    assert f"{closest.map50:.4f}" in message and f"x{closest.macs_ratio:.3f}" in message
    assert f"{closest.blocks} residual blocks" in message
    assert all(name in message for name in settings)


def test_fixed_blocks_that_alone_fall_below_the_floor_stop_with_the_closest_trial():
    model = sparse_nano()
    scripted = ScriptedMap(model)
    with pytest.raises(YoloPruneError) as caught:
        search_max_pruning(model, scripted, max_map_drop=0.15, apply=prune_model, removed_blocks=plan_layer_prune(model, 2), steps=4)
    closest = scripted.closest_trial()
    assert closest.blocks == 2 and closest.map50 < 1 - 0.15  # two blocks cost 0.2: the floor is out of reach
    message = str(caught.value)
    assert_names_the_closest_trial(message, closest)
    assert "1.0000" in message and "0.8500" in message  # the baseline and the floor


def test_when_no_channel_trial_passes_the_blocks_only_plan_is_returned():
    model = sparse_nano()
    scripted = ScriptedMap(model)
    blocks = plan_layer_prune(model, 1)
    # one block costs 0.1 of the 0.12 allowed; removing even a quarter of the channels costs far more
    result = search_max_pruning(model, scripted, max_map_drop=0.12, apply=prune_model, removed_blocks=blocks, steps=3)
    blocks_only = scripted.calls[1]
    assert blocks_only.blocks == 1 and blocks_only.macs_ratio < 1
    assert [(t.blocks, t.ratio, t.accepted) for t in result.trials] == [(1, 0.0, True), (1, 1.0, False), (1, 0.5, False), (1, 0.25, False)]
    assert result.plan.removed_blocks == blocks and not result.plan.kept_channels
    assert result.map50_after == blocks_only.map50 >= 1 - 0.12
    assert ScriptedMap(model)(prune_model(model, result.plan)) == blocks_only.map50


def test_every_result_is_within_the_tolerance_and_prunes_more_as_it_grows():
    model = sparse_nano()
    for layers in (1, "auto"):
        macs, refused = [], []
        for drop in (0.05, 0.25, 0.6):
            scripted = ScriptedMap(model)
            fixed_blocks = [] if layers == "auto" else plan_layer_prune(model, layers)
            try:
                result = search_max_pruning(
                    model, scripted, drop, apply=prune_model, removed_blocks=fixed_blocks, search_blocks=layers == "auto", steps=4
                )
            except YoloPruneError:
                assert scripted.closest_trial().map50 < 1 - drop
                refused.append(drop)
                continue
            check = ScriptedMap(model)
            assert check(prune_model(model, result.plan)) == result.map50_after >= 1 - drop
            # every evaluation after the baseline is a recorded trial; the unpruned model is evaluated once
            assert len(scripted.calls) == 1 + len(result.trials)
            assert [call.macs_ratio for call in scripted.calls].count(1.0) == 1
            if layers == "auto":
                # the most blocks whose cost (0.1 each, plus their parameters) fits in half the tolerance
                assert len(result.plan.removed_blocks) == {0.05: 0, 0.25: 1, 0.6: 2}[drop]
                assert all(t.map50 >= 1 - BLOCK_SHARE * drop for t in result.trials if t.ratio == 0 and t.accepted)
            macs.append(check.calls[0].macs_ratio)
        # a fixed block costs 0.1: only the smallest tolerance cannot afford it
        assert refused == ([0.05] if layers == 1 else [])
        assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]


def test_cli_stops_with_one_line_naming_the_closest_map_and_writes_nothing(tmp_path, capsys, monkeypatch):
    assert main(["data", "synth", str(tmp_path / "data"), "--train", "4", "--val", "4", "--img-size", "64"]) == 0
    data = next((tmp_path / "data").glob("*.data"))
    model = sparse_nano()
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, model)
    scripted = ScriptedMap(model)
    monkeypatch.setattr("yoloprune.prune.run.make_map50_evaluator", lambda *args, **kwargs: scripted)
    out = tmp_path / "out"
    capsys.readouterr()
    args = ["prune", "--weights", str(checkpoint), "--out", str(out), "--data", str(data), "--calibrate", "0"]
    code = main([*args, "--layers", "2", "--max-map-drop", "0.15"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("yoloprune: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert_names_the_closest_trial(errors[0], scripted.closest_trial(), settings=("--layers", "--max-map-drop"))
    assert not out.exists() and not list(tmp_path.rglob("pruned.*"))


@pytest.mark.parametrize("calibration_effect", [-0.05, 0.02])
def test_the_search_recalibrates_only_where_that_does_not_lower_the_unpruned_score(calibration_effect):
    """Re-calibration is chosen on the validation score of the unpruned model: a re-calibration that
    costs mAP there is left out of every trial (and of the result), one that helps is kept."""
    model = sparse_nano()
    scripted = ScriptedMap(model)

    def recalibrate(pruned: Darknet) -> None:
        pruned.recalibrated = True

    def evaluate(pruned: Darknet) -> float:
        return scripted(pruned) + (calibration_effect if getattr(pruned, "recalibrated", False) else 0.0)

    seen = []
    result = search_max_pruning(
        model, lambda m: seen.append(getattr(m, "recalibrated", False)) or evaluate(m), max_map_drop=0.1,
        apply=prune_model, recalibrate=recalibrate, steps=3,
    )
    helps = calibration_effect > 0
    assert seen[:2] == [False, True]  # the unpruned model as given, then re-calibrated
    assert all(flag == helps for flag in seen[2:]) and len(seen) > 2
    assert result.recalibrated == helps
    assert result.map50_recalibrated == pytest.approx(1.0 + calibration_effect)
