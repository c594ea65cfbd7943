"""The latency target: the measured search against scripted runtimes (latency a known function of
the compact model's MACs), its use as the limit of the mAP search, the settings, and
`prune --target-latency` end to end (real timers, no timing asserted)."""

import json

import pytest

from helpers import CONFIGS, random_model, sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.cfg import ConvBlock
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.errors import SettingsError
from yoloprune.prune.apply import prune_model
from yoloprune.prune.budget import LatencyTarget
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.latency import LATENCY_TOLERANCE
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.settings import PruneSettings


class ScriptedRuntime:
    """A runtime on which a model's latency is `fixed + (1 - fixed) * m ** power`, m its MACs as a
    fraction of the original's, counted on the compact model the plan gives (not on the plan)."""

    def __init__(self, model, fixed: float, power: float = 1.0):
        self.model, self.fixed, self.power, self.calls = model, fixed, power, 0
        self.macs = count_cfg_macs(model.cfg, 128)

    def ratio(self, compact) -> float:
        return self.fixed + (1 - self.fixed) * (count_cfg_macs(compact.cfg, 128) / self.macs) ** self.power

    def __call__(self, plan) -> dict:
        self.calls += 1
        return {"measured_ms_before": 10.0, "measured_ms_after": 10.0 * self.ratio(prune_model(self.model, plan)),
                "measured_ratio": self.ratio(prune_model(self.model, plan))}


@pytest.fixture(scope="module")
def demo_model():
    return random_model(str(CONFIGS / "yolov3-hand-demo.cfg")).eval()


@pytest.mark.parametrize("fixed, power, target", [(0.0, 1.0, 0.5), (0.3, 1.0, 0.5), (0.1, 0.5, 0.5), (0.3, 0.7, 0.6), (0.45, 1.5, 0.55)])
def test_the_search_lands_within_five_percent_of_the_target(demo_model, fixed, power, target):
    runtime = ScriptedRuntime(demo_model, fixed, power)
    plan = plan_channel_prune(demo_model, "full", LatencyTarget(target, runtime, steps=4), img_size=128)
    reached = runtime.ratio(prune_model(demo_model, plan))
    assert abs(reached / target - 1) <= LATENCY_TOLERANCE
    attempts = plan.settings["latency_attempts"]
    assert runtime.calls == len(attempts) <= 4 and plan.settings["target_latency"] == target
    # the first plan keeps the target's fraction of the MACs: with no fixed cost it lands at once
    assert attempts[0]["macs_ratio"] == pytest.approx(target, rel=0.01)
    assert len(attempts) == 1 or fixed > 0
    chosen = [a for a in attempts if a["removed"] == plan.settings["ranked_removed"]]
    assert chosen and chosen[0]["measured_ratio"] == pytest.approx(reached)


def test_the_search_keeps_the_closest_plan_when_the_steps_run_out(demo_model):
    runtime = ScriptedRuntime(demo_model, 0.45, 1.5)
    plan = plan_channel_prune(demo_model, "full", LatencyTarget(0.55, runtime, steps=1), img_size=128)
    (attempt,) = plan.settings["latency_attempts"]
    assert runtime.calls == 1 and attempt["measured_ratio"] > 0.55 * (1 + LATENCY_TOLERANCE)
    assert runtime.ratio(prune_model(demo_model, plan)) == pytest.approx(attempt["measured_ratio"])


def test_a_latency_target_needs_a_timer_and_a_valid_value():
    with pytest.raises(ValueError, match="timer"):
        plan_channel_prune(sparse_nano(), "full", LatencyTarget(0.5))
    with pytest.raises(SettingsError, match="target_latency"):
        LatencyTarget(1.5)
    with pytest.raises(SettingsError, match="latency_steps"):
        LatencyTarget(0.5, steps=0)


def conv_channels(model) -> int:
    return sum(b.filters for b in model.cfg.layers if isinstance(b, ConvBlock))


def test_max_map_drop_with_a_latency_target_prunes_at_most_to_the_target():
    from yoloprune.prune.auto import search_max_pruning

    model = sparse_nano()
    runtime = ScriptedRuntime(model, 0.2)
    budget = plan_channel_prune(model, "full", LatencyTarget(0.7, runtime), img_size=128)
    # a stand-in for mAP@0.5: the share of conv channels kept
    score = lambda m: conv_channels(m) / conv_channels(model)  # noqa: E731
    common = dict(apply=prune_model, limit=LatencyTarget(0.7, runtime), img_size=128)
    loose = search_max_pruning(model, score, 1.0, "full", **common)
    assert loose.plan.kept_channels == budget.kept_channels  # everything passes: the latency target is the limit
    assert loose.plan.settings["target_latency"] == 0.7 and loose.plan.settings["latency_attempts"]
    tight = search_max_pruning(model, score, 0.05, "full", **common)
    assert score(prune_model(model, tight.plan)) >= 0.95
    assert runtime.ratio(prune_model(model, tight.plan)) > runtime.ratio(prune_model(model, budget))


def test_target_latency_combines_with_max_map_drop_only():
    assert PruneSettings(target_latency=0.5, max_map_drop=0.01, data="d.data").target_latency == 0.5
    with pytest.raises(SettingsError, match="give one of"):
        PruneSettings(target_latency=0.5, ratio=0.3)
    for name, value in (("runtime", "ort"), ("latency_steps", 2)):
        with pytest.raises(SettingsError, match=name):
            PruneSettings(ratio=0.3, **{name: value})
    assert isinstance(PruneSettings(target_latency=0.5, latency_steps=2).budget(), LatencyTarget)


def test_prune_with_a_latency_target_end_to_end(tmp_path, capsys):
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, sparse_nano())
    out = tmp_path / "out"
    args = ["prune", "--weights", str(checkpoint), "--img-size", "64", "--out", str(out), "--target-latency", "0.6"]
    assert main([*args, "--latency-steps", "2"]) == 0
    printed = capsys.readouterr().out
    assert "latency (ort, " in printed and "measured x" in printed and "latency search (--latency-steps): MACs x" in printed
    plan = PrunePlan.load(out / "plan.json")
    attempts = plan.settings["latency_attempts"]
    assert plan.settings["target_latency"] == 0.6 and 1 <= len(attempts) <= 2
    assert attempts[0]["macs_target"] == 0.6 and attempts[0]["macs_ratio"] == pytest.approx(0.6, rel=0.05)
    latency = json.loads((out / "report.json").read_text())["latency"]
    chosen = next(a for a in attempts if a["removed"] == plan.settings["ranked_removed"])
    assert latency["measured_ratio"] == chosen["measured_ratio"] and latency["runtime"] == "ort"
    assert latency["measured_ms_before"] > 0 and latency["measured_ms_after"] > 0
    assert plan.macs_after / plan.macs_before == pytest.approx(chosen["macs_ratio"])
