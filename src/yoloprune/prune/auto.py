"""Automatic pruning: the most channels (hence FLOPs) that can go while validation mAP@0.5 stays
within `max_map_drop` of the unpruned model.

The search is a bisection over the global |γ| threshold, expressed as its rank among the candidate
channels (the fraction removed): removing more channels never adds FLOPs, and accuracy is assumed to
fall the further the threshold rises, so each trial halves the interval between the largest
fraction known to pass and the smallest known to fail. Every trial is pruned by the applier passed
in (`prune.apply.prune_model`, with β folding; this module only plans), then optionally has its BN
re-calibrated and is evaluated; the model given is never changed.

With `search_blocks=True` a first bisection picks how many residual blocks to remove (lowest
importance first, see `prune.layer`) within `BLOCK_SHARE` of the tolerance; the channel search then
uses the whole tolerance, measured from the unpruned model. Blocks go first because a removed block
saves its layers' fixed per-layer cost too, which matters for latency on small models.

The result always scores within `max_map_drop` of the unpruned model. The channel search starts from
the blocks-only plan (no channels removed): with no blocks that is the unpruned model, which passes
by definition; with a fixed block count it is evaluated like any trial, and if it already falls
below the floor the search stops with `MapToleranceError` naming the closest trial, since removing
channels as well would only lower the score further.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable

from yoloprune.darknet.graph import ResidualBlock, residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.errors import YoloPruneError
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.importance import Importance, bn_scale
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan

log = logging.getLogger(__name__)

BLOCK_SHARE = 0.5  # share of the mAP tolerance that block removal may use before channels are pruned


@dataclass
class AutoTrial:
    ratio: float
    threshold: float | None
    macs_ratio: float
    params_ratio: float
    map50: float
    accepted: bool
    blocks: int = 0  # residual blocks removed in this trial


class MapToleranceError(YoloPruneError):
    """No plan tried keeps validation mAP@0.5 within the tolerance; `closest` is the trial that
    scored highest."""

    def __init__(self, baseline: float, max_map_drop: float, closest: AutoTrial):
        self.baseline, self.max_map_drop, self.closest = baseline, max_map_drop, closest
        channels = "no channels" if closest.ratio == 0 else f"channel ratio {closest.ratio:g}"
        super().__init__(
            f"mAP@0.5 cannot stay within {max_map_drop:g} of the unpruned model's {baseline:.4f} "
            f"(floor {baseline - max_map_drop:.4f}): the closest trial, {closest.blocks} residual blocks removed "
            f"with {channels} (MACs x{closest.macs_ratio:.3f}), scores {closest.map50:.4f}; "
            "remove fewer residual blocks (`layers`) or allow a larger drop (`max_map_drop`)"
        )


@dataclass
class AutoPruneResult:
    plan: PrunePlan
    map50_before: float
    map50_after: float
    trials: list[AutoTrial] = field(default_factory=list)
    recalibrated: bool = False  # whether the trials (and so the result) were BN re-calibrated
    map50_recalibrated: float | None = None  # the unpruned model's score after re-calibration, when tried

    def to_dict(self) -> dict:
        return {
            "map50_before": self.map50_before, "map50_after": self.map50_after, "recalibrated": self.recalibrated,
            "map50_recalibrated": self.map50_recalibrated, "trials": [asdict(t) for t in self.trials],
        }


class _Trials:
    """Plans, scores and records the trials of one search; the model given is never changed."""

    def __init__(self, model: Darknet, evaluate_map50, apply, recalibrate, max_map_drop: float, plan_options: dict):
        self.model, self.evaluate_map50, self.apply, self.recalibrate = model, evaluate_map50, apply, recalibrate
        self.max_map_drop = max_map_drop
        self.plan_options = plan_options  # mode, min_keep, round_to, img_size, importance
        self.trials: list[AutoTrial] = []

    def plan(self, ratio: float, blocks: list[ResidualBlock]) -> PrunePlan:
        plan = plan_channel_prune(self.model, ratio=ratio, removed_blocks=blocks, **self.plan_options)
        plan.settings.update(max_map_drop=self.max_map_drop, auto=True)
        return plan

    def least_important_blocks(self, count: int) -> list[ResidualBlock]:
        return plan_layer_prune(self.model, count, importance=self.plan_options["importance"])

    def run(self, plan: PrunePlan, ratio: float, floor: float) -> AutoTrial:
        """Prune by `plan`, (re-calibrate,) evaluate, and record it as accepted when it scores >= `floor`."""
        pruned = self.apply(self.model, plan)
        if self.recalibrate is not None:
            self.recalibrate(pruned)
        map50 = float(self.evaluate_map50(pruned))
        trial = AutoTrial(
            ratio, plan.threshold, plan.macs_after / plan.macs_before, plan.params_after / plan.params_before, map50, map50 >= floor,
            len(plan.removed_blocks),
        )
        self.trials.append(trial)
        log.info(
            "auto prune: blocks %d  ratio %.4f  MACs x%.3f  mAP@0.5 %.4f  %s",
            trial.blocks, ratio, trial.macs_ratio, map50, "ok" if trial.accepted else "too low",
        )
        return trial


def search_max_pruning(
    model: Darknet,
    evaluate_map50: Callable[[Darknet], float],
    max_map_drop: float,
    mode: str = "full",
    *,
    apply: Callable[[Darknet, PrunePlan], Darknet],
    min_keep: float = 1,
    round_to: int = 1,
    img_size: int | None = None,
    removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (),
    steps: int = 7,
    recalibrate: Callable[[Darknet], object] | None = None,
    search_blocks: bool = False,
    importance: Importance = bn_scale,
) -> AutoPruneResult:
    """Bisection (`steps` trials after the baseline) for the largest removed fraction of candidate
    channels whose pruned model scores `evaluate_map50(model) >= baseline - max_map_drop`.
    Every trial model is `apply(model, plan)` (`prune.apply.prune_model`: the search itself only plans);
    `recalibrate(pruned)`, when given, runs on it before it is evaluated, unless re-calibrating the
    unpruned model already lowers its score: then the search runs without it (`result.recalibrated`).
    `search_blocks=True` first chooses the residual blocks to remove (instead of `removed_blocks`)."""
    if max_map_drop < 0:
        raise ValueError(f"max_map_drop must be >= 0, got {max_map_drop}")
    if search_blocks and removed_blocks:
        raise ValueError("give removed_blocks or search_blocks=True, not both")
    plan_options = dict(mode=mode, min_keep=min_keep, round_to=round_to, img_size=img_size, importance=importance)
    trials = _Trials(model, evaluate_map50, apply, recalibrate, max_map_drop, plan_options)
    baseline = float(evaluate_map50(model))
    floor = baseline - max_map_drop
    log.info("auto prune: baseline mAP@0.5 %.4f, accepting >= %.4f", baseline, floor)
    recalibrated_baseline = None
    if recalibrate is not None:
        # Re-calibration is a choice, so the validation split makes it: where it costs the unpruned
        # model mAP (BN statistics from un-augmented training images can fit worse than the trained
        # ones), every trial would pay that cost before removing a single channel.
        unpruned = apply(model, trials.plan(0.0, []))
        recalibrate(unpruned)
        recalibrated_baseline = float(evaluate_map50(unpruned))
        if recalibrated_baseline < baseline:
            log.info("auto prune: BN re-calibration lowers the unpruned model's mAP@0.5 (%.4f -> %.4f): searching without it",
                     baseline, recalibrated_baseline)
            trials.recalibrate = None
    # The starting plan: no channels, and no blocks unless a fixed count was given. Without blocks it
    # is the unpruned model, whose score is the baseline itself (no evaluation needed).
    best_plan, best_map = trials.plan(0.0, list(removed_blocks)), baseline
    if search_blocks:
        best_plan, best_map = _search_block_count(trials, baseline - BLOCK_SHARE * max_map_drop, best_plan, best_map)
    elif removed_blocks:
        best_map = trials.run(best_plan, 0.0, floor).map50
        if best_map < floor:
            # every channel trial removes these blocks and more: none can do better, so stop here
            raise MapToleranceError(baseline, max_map_drop, max(trials.trials, key=lambda t: t.map50))
    best_plan, best_map = _search_channel_ratio(trials, floor, steps, best_plan, best_map)
    assert best_map >= floor, f"auto prune returned mAP@0.5 {best_map} under the floor {floor}"
    return AutoPruneResult(best_plan, baseline, best_map, trials.trials, trials.recalibrate is not None, recalibrated_baseline)


def _search_block_count(trials: _Trials, floor: float, best_plan: PrunePlan, best_map: float) -> tuple[PrunePlan, float]:
    """Integer bisection on how many residual blocks go (lowest importance first), no channels removed."""
    passing, failing = 0, len(residual_blocks(trials.model.cfg)) + 1  # known to pass / to fail
    while failing - passing > 1:
        count = (passing + failing) // 2
        plan = trials.plan(0.0, trials.least_important_blocks(count))
        trial = trials.run(plan, 0.0, floor)
        if trial.accepted:
            passing, best_plan, best_map = count, plan, trial.map50
        else:
            failing = count
    return best_plan, best_map


def _search_channel_ratio(trials: _Trials, floor: float, steps: int, best_plan: PrunePlan, best_map: float) -> tuple[PrunePlan, float]:
    """Bisection on the removed fraction of candidate channels, on top of `best_plan`'s blocks."""
    blocks = best_plan.removed_blocks
    low, high = 0.0, 1.0  # low: largest fraction known to pass; high: smallest known to fail (or 1)
    for step in range(steps):
        ratio = high if step == 0 else (low + high) / 2  # try everything first: it may already pass
        plan = trials.plan(ratio, blocks)
        trial = trials.run(plan, ratio, floor)
        if trial.accepted:
            low, best_plan, best_map = ratio, plan, trial.map50
            if step == 0:
                break
        else:
            high = ratio
    return best_plan, best_map
