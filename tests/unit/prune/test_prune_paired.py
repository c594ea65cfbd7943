"""--map-drop-confidence: the mAP search judges each trial by the one-sided lower confidence bound of
its paired difference to the unpruned model on the validation images, not by the point estimate alone.

The evaluator is scripted per image: 32 images with one box each; a model finds every box exactly
except in its first `missed` images, a count read off the model alone (the fraction of its parameters
removed). mAP@0.5 and mAP@0.5:0.95 are then the AP of a detector of precision 1 at recall r, the
share of COCO's 101 recall thresholds <= r, for the point estimate and for every resample alike, so
the bootstrap's lower bound can be recomputed here from the resampled image indices alone.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from helpers import sparse_nano
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.errors import SettingsError, YoloPruneError
from yoloprune.eval.bootstrap import match_detections
from yoloprune.prune.apply import prune_model
from yoloprune.prune.auto import BOUND_RESAMPLES, BOUND_SEED, search_max_pruning
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.settings import PruneSettings

# A power of two: numpy draws indices below it without rejection, so the resamples do not depend on
# how many the bootstrap draws at once.
IMAGES = 32
BOX = [0.0, 10.0, 10.0, 30.0, 30.0]  # class 0, x1 y1 x2 y2
GROUND_TRUTHS = [np.array([BOX])] * IMAGES
FOUND = np.array([BOX[1:] + [0.9, 0.0]])  # the exact box: a hit at every IoU threshold
MISSED = np.zeros((0, 6))


def average_precision(found: int, images: int) -> float:
    """AP of one class with one box per image, `found` of them detected and no false positive."""
    if found == 0:
        return 0.0
    return np.count_nonzero(np.linspace(0, 1, 101) <= found / images) / 101


class ScriptedImages:
    """A model misses the boxes of its first `int(per_removed × fraction of parameters removed)` images
    (`missed`, or a fixed count); answers like `DetectionMetrics`: map50, map and per-image matches."""

    def __init__(self, unpruned: Darknet, per_removed: float = 8.0, missed: int | None = None):
        self.params, self.per_removed, self.fixed = count_parameters(unpruned), per_removed, missed
        self.misses: list[int] = []  # per call; the first is the baseline's

    def missed(self, model: Darknet) -> int:
        if self.fixed is not None and self.misses:  # the baseline finds every box
            return self.fixed
        return int(self.per_removed * (1 - count_parameters(model) / self.params))

    def __call__(self, model: Darknet) -> SimpleNamespace:
        missed = self.missed(model)
        self.misses.append(missed)
        predictions = [MISSED if image < missed else FOUND for image in range(IMAGES)]
        value = average_precision(IMAGES - missed, IMAGES)
        return SimpleNamespace(map50=value, map=value, matches=match_detections(predictions, GROUND_TRUTHS, 1))


def expected_lower(missed: int, confidence: float) -> float:
    """The bound recomputed from the resampled image indices: per resample, the AP of the boxes found
    minus the unpruned model's 1.0; its (1 - confidence) quantile, never above the point difference."""
    point = average_precision(IMAGES - missed, IMAGES) - 1.0
    if confidence == 0.5:
        return point
    draws = np.random.default_rng(BOUND_SEED).integers(0, IMAGES, size=(BOUND_RESAMPLES, IMAGES))
    missed_copies = np.count_nonzero(draws < missed, axis=1)
    differences = [average_precision(IMAGES - copies, IMAGES) - 1.0 for copies in missed_copies]
    return min(point, float(np.quantile(differences, 1 - confidence)))


def search(model: Darknet, scripted, confidence: float, drop: float = 0.1, **options):
    return search_max_pruning(model, scripted, drop, apply=prune_model, steps=5, confidence=confidence, max_map5095_drop=drop, **options)


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.95])
def test_each_trial_is_judged_by_the_lower_bound_of_its_paired_difference(confidence):
    model = sparse_nano()
    scripted = ScriptedImages(model)
    result = search(model, scripted, confidence)
    assert scripted.misses[0] == 0 and len(scripted.misses) == 1 + len(result.trials)  # one evaluation per trial
    for trial, missed in zip(result.trials, scripted.misses[1:]):
        lower = expected_lower(missed, confidence)
        assert trial.map50_lower == pytest.approx(lower, abs=1e-9) and trial.map_lower == pytest.approx(lower, abs=1e-9)
        assert trial.accepted == (trial.map50 >= 1.0 - 0.1 and lower >= -0.1)
    assert any(t.accepted for t in result.trials) and any(not t.accepted for t in result.trials)
    values = result.to_dict()
    assert values["map_drop_confidence"] == confidence
    assert [t["map50_lower"] for t in values["trials"]] == [t.map50_lower for t in result.trials]


def test_confidence_one_half_decides_as_the_point_estimate():
    model = sparse_nano()
    point = search_max_pruning(model, lambda m: ScriptedImages(model)(m).map50, 0.1, apply=prune_model, steps=5)
    half = search(model, ScriptedImages(model), 0.5)
    assert [(t.ratio, t.accepted) for t in half.trials] == [(t.ratio, t.accepted) for t in point.trials]
    assert half.plan.kept_channels == point.plan.kept_channels
    assert "map_drop_confidence" not in half.plan.settings  # the plan reads as before


def test_a_higher_confidence_never_prunes_more():
    model = sparse_nano()
    macs = []
    for confidence in (0.5, 0.6, 0.8, 0.9, 0.95, 0.99):
        result = search(model, ScriptedImages(model), confidence)
        assert result.plan.settings.get("map_drop_confidence", 0.5) == confidence
        macs.append(result.plan.macs_after)
    assert macs == sorted(macs) and macs[0] < macs[-1], macs


def test_a_trial_equal_to_the_unpruned_model_passes_a_zero_tolerance():
    model = sparse_nano()
    result = search(model, ScriptedImages(model, per_removed=0.0), 0.95, drop=0.0)
    # identical per-image results: every resample's difference is 0, so the bound is 0 exactly
    assert [(t.ratio, t.accepted, t.map50_lower, t.map_lower) for t in result.trials] == [(1.0, True, 0.0, 0.0)]


@pytest.mark.parametrize("confidence", [0.5, 0.7, 0.99])
def test_a_trial_worse_on_every_image_is_rejected_at_any_confidence(confidence):
    model = sparse_nano()
    blocks = plan_layer_prune(model, 1)
    with pytest.raises(YoloPruneError) as caught:
        search(model, ScriptedImages(model, missed=IMAGES), confidence, drop=0.5, removed_blocks=blocks)
    closest = caught.value.closest
    assert closest.map50 == 0.0 and closest.map50_lower == -1.0 and closest.failed == ["mAP@0.5", "mAP@0.5:0.95"]
    assert (confidence == 0.5) == ("map_drop_confidence" not in str(caught.value))


def test_the_bound_needs_per_image_matches():
    model = sparse_nano()
    with pytest.raises(ValueError, match="matches"):
        search_max_pruning(model, lambda m: (1.0, 0.5), 0.1, apply=prune_model, confidence=0.9)


def test_settings_take_a_confidence_in_its_range_with_a_tolerance():
    from yoloprune.pipelines.slim import _Slimmer
    from yoloprune.pipelines.slim_settings import SlimSettings

    assert PruneSettings(max_map_drop=0.01, data="d.data").map_drop_confidence == 0.5
    for value in (0.4, 1.0):
        with pytest.raises(SettingsError) as caught:
            PruneSettings(max_map_drop=0.01, data="d.data", map_drop_confidence=value)
        assert caught.value.setting == "map_drop_confidence"
    with pytest.raises(SettingsError) as caught:
        PruneSettings(ratio=0.5, map_drop_confidence=0.9)
    assert caught.value.setting == "map_drop_confidence" and "`max_map_drop`" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        SlimSettings(data="d.data", target_flops=0.5, max_map_drop=0.01, map_drop_confidence=0.9)
    assert caught.value.setting == "map_drop_confidence"
    # slim hands it to each round's mAP search
    slim = SimpleNamespace(settings=SlimSettings(data="d.data", max_map_drop=0.01, map_drop_confidence=0.9), img_size=64)
    assert _Slimmer.prune_settings(slim, None, 0).map_drop_confidence == 0.9


def test_cli_records_the_bound_of_every_trial(tmp_path, capsys, monkeypatch):
    from yoloprune.cli import main
    from yoloprune.darknet.weights import save_checkpoint

    assert main(["data", "synth", str(tmp_path / "data"), "--train", "4", "--val", "4", "--img-size", "64"]) == 0
    data = next((tmp_path / "data").glob("*.data"))
    model = sparse_nano()
    save_checkpoint(tmp_path / "sparse.pt", model)
    asked = []
    scripted = ScriptedImages(model)
    monkeypatch.setattr("yoloprune.prune.run.make_map_evaluator", lambda *args, **kwargs: asked.append(kwargs) or scripted)
    out = tmp_path / "out"
    args = ["prune", "--weights", str(tmp_path / "sparse.pt"), "--out", str(out), "--data", str(data), "--calibrate", "0", "--auto-steps", "3"]
    assert main([*args, "--max-map-drop", "0.1", "--map-drop-confidence", "0.9"]) == 0
    assert asked == [{"matches": True}]  # the validator keeps its per-image matches for the bootstrap
    report = __import__("json").loads((out / "report.json").read_text())
    auto = report["auto"]
    assert auto["map_drop_confidence"] == 0.9 and report["settings"]["map_drop_confidence"] == 0.9
    for trial, missed in zip(auto["trials"], scripted.misses[1:]):
        assert trial["map50_lower"] == pytest.approx(expected_lower(missed, 0.9), abs=1e-9)
    capsys.readouterr()
    assert main([*args, "--ratio", "0.5", "--map-drop-confidence", "0.9"]) == 2
    assert "--map-drop-confidence" in capsys.readouterr().err


def test_the_validator_answers_with_matches_from_the_same_pass(tmp_path):
    from yoloprune.cli import main
    from yoloprune.eval.bootstrap import pooled_map
    from yoloprune.prune.run import make_map_evaluator

    assert main(["data", "synth", str(tmp_path / "data"), "--train", "2", "--val", "3", "--img-size", "64"]) == 0
    settings = PruneSettings(max_map_drop=0.1, data=str(next((tmp_path / "data").glob("*.data"))), map_drop_confidence=0.9)
    model = sparse_nano()
    answer = make_map_evaluator(settings, 64, matches=True)(model)
    assert answer.matches.images == 3
    assert (answer.map50, answer.map) == make_map_evaluator(settings, 64)(model)
    assert pooled_map(answer.matches) == pytest.approx((answer.map50, answer.map), abs=1e-6)
