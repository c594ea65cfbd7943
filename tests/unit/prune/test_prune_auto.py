"""The --max-map-drop search keeps its promise: what it returns scores within the tolerance of the
unpruned model, or it stops with a one-line error naming the closest it got.

mAP@0.5 is scripted instead of measured: a function of what is missing from the model it is given,
read off that model alone (its cfg's layer count and its parameter count), so the expected values
do not depend on the search, its plans or its bookkeeping.
"""

from pathlib import Path
from typing import NamedTuple

import pytest

from helpers import sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.cost import count_cfg_macs
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


def _cli_prune_setup(tmp_path, monkeypatch, scripted_map) -> tuple[Path, Path, object]:
    """A 4+4-image dataset, the sparse nano model saved as a checkpoint, and `scripted_map(model)` as
    the mAP every trial of `yoloprune prune` reads: (data, checkpoint, scripted)."""
    assert main(["data", "synth", str(tmp_path / "data"), "--train", "4", "--val", "4", "--img-size", "64"]) == 0
    data = next((tmp_path / "data").glob("*.data"))
    model = sparse_nano()
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, model)
    scripted = scripted_map(model)
    monkeypatch.setattr("yoloprune.prune.run.make_map_evaluator", lambda *args, **kwargs: scripted)
    return data, checkpoint, scripted


def test_cli_stops_with_one_line_naming_the_closest_map_and_writes_nothing(tmp_path, capsys, monkeypatch):
    data, checkpoint, scripted = _cli_prune_setup(tmp_path, monkeypatch, ScriptedMap)
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


class ScriptedMaps(ScriptedMap):
    """mAP@0.5 as in ScriptedMap, and an mAP@0.5:0.95 that residual blocks and parameters cost at
    their own rates: `(mAP@0.5, mAP@0.5:0.95)` per call, both read off the evaluated model alone."""

    def __init__(self, unpruned: Darknet, block_cost: float, param_cost: float):
        super().__init__(unpruned)
        self.block_cost, self.param_cost = block_cost, param_cost
        self.maps: list[float] = []

    def __call__(self, model: Darknet) -> tuple[float, float]:
        map50 = super().__call__(model)
        blocks = self.calls[-1].blocks
        map_ = 0.5 - self.block_cost * blocks - self.param_cost * (1 - count_parameters(model) / self.params)
        self.maps.append(map_)
        return map50, map_


def test_a_trial_is_accepted_only_when_both_metrics_stay_within_their_tolerances():
    model = sparse_nano()
    # mAP@0.5:0.95 loses 3x what mAP@0.5 loses per parameter removed: its tolerance binds first
    loose = search_max_pruning(model, ScriptedMaps(model, 0.0, 3.0), 0.3, apply=prune_model, steps=5)
    scripted = ScriptedMaps(model, 0.0, 3.0)
    both = search_max_pruning(model, scripted, 0.3, apply=prune_model, steps=5, max_map5095_drop=0.3)
    assert (both.map50_before, both.map_before) == (1.0, 0.5)
    for trial, map50, map_ in zip(both.trials, [c.map50 for c in scripted.calls[1:]], scripted.maps[1:]):
        assert (trial.map50, trial.map) == (map50, map_)
        assert trial.accepted == (map50 >= 1.0 - 0.3 and map_ >= 0.5 - 0.3)
    check = ScriptedMaps(model, 0.0, 3.0)
    assert check(prune_model(model, both.plan)) == (both.map50_after, both.map_after)
    assert both.map_after >= 0.5 - 0.3 and both.map50_after >= 1.0 - 0.3
    # mAP@0.5 alone accepts trials that mAP@0.5:0.95 rejects, so it prunes further
    assert loose.map_after < 0.5 - 0.3 < both.map_after
    assert loose.plan.macs_after < both.plan.macs_after
    assert loose.map_before == 0.5 and all(t.map is not None for t in loose.trials)  # measured even without its tolerance
    values = both.to_dict()
    assert (values["map_before"], values["map_after"]) == (0.5, both.map_after)
    assert all(t["map"] == trial.map for t, trial in zip(values["trials"], both.trials))
    assert both.plan.settings["max_map5095_drop"] == 0.3


def test_residual_blocks_may_use_half_of_each_tolerance():
    model = sparse_nano()
    # blocks cost mAP@0.5:0.95 only (0.1 each): half of its 0.25 tolerance allows one block, half of
    # the generous mAP@0.5 tolerance would allow every block
    scripted = ScriptedMaps(model, 0.1, 0.0)
    result = search_max_pruning(model, scripted, 0.9, apply=prune_model, steps=3, search_blocks=True, max_map5095_drop=0.25)
    assert len(result.plan.removed_blocks) == 1
    block_trials = [t for t in result.trials if t.ratio == 0]
    assert all(t.map >= 0.5 - BLOCK_SHARE * 0.25 for t in block_trials if t.accepted)
    # two blocks: mAP@0.5 (0.8) is well within half its tolerance, mAP@0.5:0.95 (0.3) is not
    assert any(t.blocks == 2 and t.map50 >= 1 - BLOCK_SHARE * 0.9 and not t.accepted for t in block_trials)


def test_the_error_names_the_metric_that_failed():
    model = sparse_nano()
    # two blocks cost mAP@0.5:0.95 0.2 against a tolerance of 0.15; mAP@0.5 stays within its own
    evaluate = lambda m: (1.0, ScriptedMaps(model, 0.1, 0.0)(m)[1])  # noqa: E731
    with pytest.raises(YoloPruneError) as caught:
        search_max_pruning(model, evaluate, 0.05, apply=prune_model, removed_blocks=plan_layer_prune(model, 2), steps=2, max_map5095_drop=0.15)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("mAP@0.5:0.95 cannot stay within 0.15 ")
    assert "0.5000" in message and "0.3500" in message and "0.3000" in message  # baseline, floor, the trial's score
    assert "`max_map5095_drop`" in message and "`max_map_drop`" not in message


def test_the_second_tolerance_needs_an_evaluator_that_measures_it():
    model = sparse_nano()
    with pytest.raises(ValueError, match="max_map5095_drop"):
        search_max_pruning(model, ScriptedMap(model), 0.1, apply=prune_model, max_map5095_drop=0.1)


def test_prune_settings_take_the_second_tolerance_only_with_the_first():
    from yoloprune.errors import SettingsError
    from yoloprune.prune.settings import PruneSettings

    assert PruneSettings(max_map_drop=0.01, max_map5095_drop=0.02, data="d.data").max_map5095_drop == 0.02
    with pytest.raises(SettingsError) as caught:
        PruneSettings(ratio=0.5, max_map5095_drop=0.01)
    assert caught.value.setting == "max_map5095_drop" and "`max_map_drop`" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        PruneSettings(max_map_drop=0.01, max_map5095_drop=-0.01, data="d.data")
    assert caught.value.setting == "max_map5095_drop"


def test_cli_reports_both_metrics(tmp_path, capsys, monkeypatch):
    data, checkpoint, _ = _cli_prune_setup(tmp_path, monkeypatch, lambda model: ScriptedMaps(model, 0.0, 3.0))
    out = tmp_path / "out"
    args = ["prune", "--weights", str(checkpoint), "--out", str(out), "--data", str(data), "--calibrate", "0", "--auto-steps", "3"]
    capsys.readouterr()
    assert main([*args, "--max-map-drop", "0.3", "--max-map5095-drop", "0.3"]) == 0
    printed = capsys.readouterr().out
    auto = __import__("json").loads((out / "report.json").read_text())["auto"]
    assert auto["map_before"] == 0.5 and auto["map_after"] >= 0.2 and auto["map50_after"] >= 0.7
    assert f"mAP@0.5:0.95: 0.5000 -> {auto['map_after']:.4f}" in printed
    # the flag alone is refused, naming both flags
    code = main([*args[:-2], "--max-map5095-drop", "0.3", "--ratio", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "--max-map5095-drop" in err and "--max-map-drop" in err


def test_the_validator_gives_both_metrics_from_one_pass(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from yoloprune.eval.settings import EvalSettings
    from yoloprune.eval.validator import Validator

    assert main(["data", "synth", str(tmp_path / "data"), "--train", "2", "--val", "2", "--img-size", "64"]) == 0
    passes = []

    def evaluate_model(model, batches, **kwargs):
        passes.append(model)
        return SimpleNamespace(map50=0.4, map=0.25)

    monkeypatch.setattr("yoloprune.eval.validator.evaluate_model", evaluate_model)
    validator = Validator(EvalSettings(data=str(next((tmp_path / "data").glob("*.data"))), split="valid", img_size=64), progress=False)
    model = sparse_nano()
    assert validator.maps(model) == (0.4, 0.25) and passes == [model]
