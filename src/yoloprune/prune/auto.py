"""Automatic pruning: the most channels (hence FLOPs) that can go while validation mAP@0.5 stays
within `max_map_drop` of the unpruned model, and, with `max_map5095_drop`, mAP@0.5:0.95 within that.

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

A trial is accepted when every metric that has a tolerance stays within it. mAP@0.5 alone can hide
a loss of localisation (boxes still overlapping by half but no longer by 0.75), which mAP@0.5:0.95
sees; both come from the same evaluation pass (`MapScores`), so the second tolerance costs nothing.

At confidence 0.5 a score is its point estimate, which rides the noise of the validation images;
above it, the lower bound of the paired difference (trial − unpruned) must stay within the tolerance
too (`PairedRule`), read off the same evaluation (its per-image matches) at no further model cost.

The result always scores within the tolerances of the unpruned model. The channel search starts from
the blocks-only plan (no channels removed): with no blocks that is the unpruned model, which passes
by definition; with a fixed block count it is evaluated like any trial, and if it already falls
below the floor the search stops with `MapToleranceError` naming the closest trial, since removing
channels as well would only lower the score further.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Callable, NamedTuple

from yoloprune.darknet.residual import ResidualBlock, residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.errors import YoloPruneError
from yoloprune.eval.bootstrap import bootstrap_difference_intervals
from yoloprune.prune.budget import Budget, Ratio
from yoloprune.prune.channel import ChannelCut, plan_channel_prune
from yoloprune.prune.importance import Importance, bn_scale
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.settings import POINT_ESTIMATE

log = logging.getLogger(__name__)

BLOCK_SHARE = 0.5  # share of each mAP tolerance that block removal may use before channels are pruned
# The paired bootstrap of a trial: a search scores up to about 8 trials; a fixed seed makes the same
# scores give the same decisions.
BOUND_RESAMPLES = 500
BOUND_SEED = 0


class MapScores(NamedTuple):
    """A model's validation scores: mAP@0.5 and mAP@0.5:0.95 (None where the evaluator gives only mAP@0.5)."""

    map50: float
    map: float | None = None

    def by_name(self) -> dict[str, float | None]:
        return {"mAP@0.5": self.map50, "mAP@0.5:0.95": self.map}


def as_map_scores(value) -> MapScores:
    """An evaluator's answer as `MapScores`: a number is mAP@0.5 alone, a pair is (mAP@0.5, mAP@0.5:0.95),
    anything else is read by its `.map50` and `.map` (an `eval.evaluate.DetectionMetrics`)."""
    if isinstance(value, tuple):
        map50, map_ = value
    elif hasattr(value, "map50"):
        map50, map_ = value.map50, value.map
    else:  # a number, a 0-d tensor
        return MapScores(float(value))
    return MapScores(float(map50), None if map_ is None else float(map_))


@dataclass(frozen=True)
class MapFloors:
    """The lowest scores a trial may reach: the unpruned model's minus each tolerance (None: no tolerance)."""

    map50: float
    map: float | None = None

    @classmethod
    def below(cls, baseline: MapScores, max_map_drop: float, max_map5095_drop: float | None, share: float = 1.0) -> "MapFloors":
        return cls(baseline.map50 - share * max_map_drop, None if max_map5095_drop is None else baseline.map - share * max_map5095_drop)

    def by_name(self) -> dict[str, float]:
        """Each checked metric's name -> its floor."""
        return {"mAP@0.5": self.map50} | ({} if self.map is None else {"mAP@0.5:0.95": self.map})

    def failed(self, scores: MapScores) -> list[str]:
        """The metrics `scores` fall below their floor on, by name."""
        values = scores.by_name()
        return [name for name, floor in self.by_name().items() if values[name] < floor]

    def margin(self, scores: MapScores) -> float:
        """How far the worse metric lies above (> 0) or below (< 0) its floor: the closest trial has the largest."""
        return min(scores.map50 - self.map50, float("inf") if self.map is None else scores.map - self.map)


@dataclass(frozen=True)
class PairedRule:
    """How sure the search must be that a trial keeps its tolerance: the lower bound, at one-sided
    `confidence`, of the trial's score minus the unpruned model's on the same validation images (the
    percentile bootstrap of `eval.bootstrap.bootstrap_difference_intervals`: `resamples` image
    resamples drawn from `seed`, the same images for both models), never above the point difference.
    At confidence 0.5 the bound is the point difference and no bootstrap runs."""

    confidence: float = POINT_ESTIMATE
    resamples: int = BOUND_RESAMPLES
    seed: int = BOUND_SEED

    def __post_init__(self) -> None:
        if not POINT_ESTIMATE <= self.confidence < 1:
            raise ValueError(f"map_drop_confidence must be in [0.5, 1), got {self.confidence}")

    @property
    def pointwise(self) -> bool:
        return self.confidence == POINT_ESTIMATE

    def matches(self, answer):
        """The per-image matches of an evaluator's answer (None with the point rule, which needs none)."""
        if self.pointwise:
            return None
        matches = getattr(answer, "matches", None)
        if matches is None:
            raise ValueError("map_drop_confidence above 0.5 needs an evaluator whose answer keeps its per-image `.matches`")
        return matches

    def lower(self, scores: MapScores, baseline: MapScores, matches=None, reference=None) -> MapScores:
        """The lower bound of (trial − unpruned) in each metric (None where a score is missing);
        `matches`, `reference`: the two models' per-image matches, needed above confidence 0.5."""
        point = MapScores(scores.map50 - baseline.map50, None if scores.map is None or baseline.map is None else scores.map - baseline.map)
        if self.pointwise:
            return point
        # the one-sided bound at C is the lower end of the two-sided interval at level 2C - 1
        bounds = bootstrap_difference_intervals(matches, reference, self.resamples, self.seed, level=2 * self.confidence - 1)
        low50, low = bounds["map50_delta_ci"][0], bounds["map_delta_ci"][0]
        return MapScores(min(point.map50, low50), None if point.map is None else min(point.map, low))


@dataclass
class AutoTrial:
    ratio: float
    threshold: float | None
    macs_ratio: float
    params_ratio: float
    map50: float
    accepted: bool
    blocks: int = 0  # residual blocks removed in this trial
    map: float | None = None  # mAP@0.5:0.95, where the evaluator measures it
    # the lower bound of (this trial − unpruned) it was judged by (`PairedRule`; at 0.5 the point difference)
    map50_lower: float | None = None
    map_lower: float | None = None
    failed: list[str] = field(default_factory=list)  # the metrics whose tolerance it did not keep

    @property
    def scores(self) -> MapScores:
        return MapScores(self.map50, self.map)


class MapToleranceError(YoloPruneError):
    """No plan tried keeps the validation mAPs within their tolerances; `closest` is the trial whose
    worse metric came nearest its floor, and the message names the metrics it failed on."""

    def __init__(self, baseline: MapScores, floors: MapFloors, closest: AutoTrial, confidence: float = POINT_ESTIMATE):
        self.baseline, self.floors, self.closest = baseline, floors, closest
        failed = closest.failed
        channels = "no channels" if closest.ratio == 0 else f"channel ratio {closest.ratio:g}"
        metrics = [("mAP@0.5", baseline.map50, floors.map50, closest.map50, "max_map_drop")]
        if floors.map is not None:
            metrics.append(("mAP@0.5:0.95", baseline.map, floors.map, closest.map, "max_map5095_drop"))
        limits = "; ".join(
            f"{name} cannot stay within {before - floor:.4g} of the unpruned model's {before:.4f} (floor {floor:.4f})"
            for name, before, floor, _, _ in metrics if name in failed
        )
        scores = " and ".join(f"{name} {score:.4f}" for name, _, _, score, _ in metrics)
        if confidence != POINT_ESTIMATE:
            lows = {"mAP@0.5": closest.map50_lower, "mAP@0.5:0.95": closest.map_lower}
            scores += f" (lower {confidence:g} bound of the difference: " + ", ".join(f"{name} {lows[name]:+.4f}" for name in failed) + ")"
        settings = " or ".join(f"`{setting}`" for name, _, _, _, setting in metrics if name in failed)
        super().__init__(
            f"{limits}: the closest trial, {closest.blocks} residual blocks removed "
            f"with {channels} (MACs x{closest.macs_ratio:.3f}), scores {scores}; "
            f"remove fewer residual blocks (`layers`) or allow a larger drop ({settings})"
            + ("" if confidence == POINT_ESTIMATE else " or a lower `map_drop_confidence`")
        )


@dataclass
class AutoPruneResult:
    plan: PrunePlan
    map50_before: float
    map50_after: float
    trials: list[AutoTrial] = field(default_factory=list)
    recalibrated: bool = False  # whether the trials (and so the result) were BN re-calibrated
    map50_recalibrated: float | None = None  # the unpruned model's score after re-calibration, when tried
    # mAP@0.5:0.95 beside each mAP@0.5 above, where the evaluator measures it
    map_before: float | None = None
    map_after: float | None = None
    map_recalibrated: float | None = None
    confidence: float = POINT_ESTIMATE  # the `PairedRule`'s: 0.5 judges trials by their point estimates

    def to_dict(self) -> dict:
        return {
            "map50_before": self.map50_before, "map50_after": self.map50_after, "map_drop_confidence": self.confidence,
            "map_before": self.map_before, "map_after": self.map_after, "recalibrated": self.recalibrated,
            "map50_recalibrated": self.map50_recalibrated, "map_recalibrated": self.map_recalibrated,
            "trials": [asdict(t) for t in self.trials],
        }


class _Trials:
    """Plans, scores and records the trials of one search; the model given is never changed."""

    def __init__(self, model: Darknet, evaluate, apply, recalibrate, tolerances: dict, plan_options: dict, rule: PairedRule):
        self.model, self.evaluate, self.apply, self.recalibrate = model, evaluate, apply, recalibrate
        self.tolerances = tolerances  # max_map_drop, and max_map5095_drop where given
        self.plan_options = plan_options  # mode, min_keep, round_to, img_size, importance
        self.rule = rule
        self.trials: list[AutoTrial] = []
        self.baseline, self.reference = MapScores(0.0), None  # set by `score_baseline`

    def score_baseline(self) -> MapScores:
        """Evaluate the unpruned model: the scores every trial is measured against (and, above
        confidence 0.5, the per-image matches every trial is paired with)."""
        answer = self.evaluate(self.model)
        self.baseline, self.reference = as_map_scores(answer), self.rule.matches(answer)
        return self.baseline

    def judged(self, trial: AutoTrial) -> MapScores:
        """What a trial's margin to the floors is read from: its scores, or the unpruned model's plus the lower bounds."""
        if self.rule.pointwise:
            return trial.scores
        return MapScores(self.baseline.map50 + trial.map50_lower, None if trial.map_lower is None else self.baseline.map + trial.map_lower)

    def plan(self, ratio: float, blocks: list[ResidualBlock]) -> PrunePlan:
        plan = plan_channel_prune(self.model, budget=Ratio(ratio), removed_blocks=blocks, **self.plan_options)
        plan.settings.update(**self.tolerances, auto=True)
        return plan

    def least_important_blocks(self, count: int) -> list[ResidualBlock]:
        return plan_layer_prune(self.model, count, importance=self.plan_options["importance"])

    def run(self, plan: PrunePlan, ratio: float, floors: MapFloors) -> AutoTrial:
        """Prune by `plan`, (re-calibrate,) evaluate, and record it as accepted when no metric falls
        below its floor, nor, above confidence 0.5, its lower bound (`PairedRule`)."""
        pruned = self.apply(self.model, plan)
        if self.recalibrate is not None:
            self.recalibrate(pruned)
        answer = self.evaluate(pruned)
        scores = as_map_scores(answer)
        lower = self.rule.lower(scores, self.baseline, self.rule.matches(answer), self.reference)
        trial = AutoTrial(
            ratio, plan.threshold, plan.macs_after / plan.macs_before, plan.params_after / plan.params_before, scores.map50, False,
            len(plan.removed_blocks), scores.map, lower.map50, lower.map,
        )
        # the point estimate is checked at every confidence: at 0.5 without the rounding of baseline + difference
        trial.failed = floors.failed(scores)
        if not self.rule.pointwise:
            trial.failed += [name for name in floors.failed(self.judged(trial)) if name not in trial.failed]
        trial.accepted = not trial.failed
        self.trials.append(trial)
        bounds = "" if self.rule.pointwise else f"  lower {self.rule.confidence:g} bound of the difference {_format(lower, signed=True)}"
        log.info(
            "auto prune: blocks %d  ratio %.4f  MACs x%.3f  %s%s  %s", trial.blocks, ratio, trial.macs_ratio, _format(scores), bounds,
            "ok" if trial.accepted else "too low: " + ", ".join(trial.failed),
        )
        return trial


def search_max_pruning(
    model: Darknet, evaluate: Callable[[Darknet], object], max_map_drop: float, mode: str = "full", *,
    apply: Callable[[Darknet, PrunePlan], Darknet], min_keep: float = 1, round_to: int = 1, img_size: int | None = None,
    removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (), steps: int = 7,
    recalibrate: Callable[[Darknet], object] | None = None, search_blocks: bool = False, importance: Importance = bn_scale,
    max_map5095_drop: float | None = None, limit: Budget | None = None, confidence: float = POINT_ESTIMATE,
) -> AutoPruneResult:
    """Bisection (`steps` trials after the baseline) for the largest removed fraction of candidate
    channels whose pruned model keeps mAP@0.5 >= baseline - max_map_drop and, with `max_map5095_drop`,
    mAP@0.5:0.95 >= its baseline - max_map5095_drop.
    `evaluate(model)` scores a model (`as_map_scores`: mAP@0.5 alone, or both from one pass; the
    second tolerance needs both).
    Every trial model is `apply(model, plan)` (`prune.apply.prune_model`: the search itself only plans);
    `recalibrate(pruned)`, when given, runs on it before it is evaluated, unless re-calibrating the
    unpruned model already lowers its score: then the search runs without it (`result.recalibrated`).
    `search_blocks=True` first chooses the residual blocks to remove (instead of `removed_blocks`).
    `limit` (a `prune.budget` budget, e.g. a `LatencyTarget`) bounds the search by the channels it
    removes with the chosen blocks: the result is that plan, or a lighter one if the mAP asks for it.
    `confidence` above 0.5 also asks the lower bound at that one-sided confidence of each trial's
    paired difference to the unpruned model to stay within the tolerance (`PairedRule`; the evaluator's
    answers then need their per-image `.matches`)."""
    _check_search(max_map_drop, max_map5095_drop, search_blocks, removed_blocks)
    rule = PairedRule(confidence)
    plan_options = dict(mode=mode, min_keep=min_keep, round_to=round_to, img_size=img_size, importance=importance)
    tolerances = {"max_map_drop": max_map_drop} | ({} if max_map5095_drop is None else {"max_map5095_drop": max_map5095_drop})
    if not rule.pointwise:
        tolerances["map_drop_confidence"] = confidence
    trials = _Trials(model, evaluate, apply, recalibrate, tolerances, plan_options, rule)
    baseline = trials.score_baseline()
    if max_map5095_drop is not None and baseline.map is None:
        raise ValueError("max_map5095_drop needs an evaluator that returns mAP@0.5:0.95 too (a pair, or an object with .map50 and .map)")
    floors = MapFloors.below(baseline, max_map_drop, max_map5095_drop)
    log.info("auto prune: baseline mAP@0.5 %.4f%s, accepting mAP@0.5 >= %.4f%s", baseline.map50,
             "" if baseline.map is None else f"  mAP@0.5:0.95 {baseline.map:.4f}", floors.map50,
             "" if floors.map is None else f" and mAP@0.5:0.95 >= {floors.map:.4f}")
    recalibrated_baseline = None if recalibrate is None else _recalibration_check(trials, baseline, floors)
    # The starting plan: no channels, and no blocks unless a fixed count was given. Without blocks it
    # is the unpruned model, whose score is the baseline itself (no evaluation needed).
    best_plan, best_scores = trials.plan(0.0, list(removed_blocks)), baseline
    if search_blocks:
        block_floors = MapFloors.below(baseline, max_map_drop, max_map5095_drop, share=BLOCK_SHARE)
        best_plan, best_scores = _search_block_count(trials, block_floors, best_plan, best_scores)
    elif removed_blocks:
        trial = trials.run(best_plan, 0.0, floors)
        best_scores = trial.scores
        if not trial.accepted:
            # every channel trial removes these blocks and more: none can do better, so stop here
            raise MapToleranceError(baseline, floors, max(trials.trials, key=lambda t: floors.margin(trials.judged(t))), confidence)
    best_plan, best_scores = _search_channel_ratio(trials, floors, steps, best_plan, best_scores, limit)
    assert not floors.failed(best_scores), f"auto prune returned {best_scores} under the floors {floors}"
    return AutoPruneResult(
        best_plan, baseline.map50, best_scores.map50, trials.trials, trials.recalibrate is not None,
        None if recalibrated_baseline is None else recalibrated_baseline.map50,
        baseline.map, best_scores.map, None if recalibrated_baseline is None else recalibrated_baseline.map, confidence,
    )


def _check_search(max_map_drop: float, max_map5095_drop: float | None, search_blocks: bool, removed_blocks) -> None:
    if max_map_drop < 0:
        raise ValueError(f"max_map_drop must be >= 0, got {max_map_drop}")
    if max_map5095_drop is not None and max_map5095_drop < 0:
        raise ValueError(f"max_map5095_drop must be >= 0, got {max_map5095_drop}")
    if search_blocks and removed_blocks:
        raise ValueError("give removed_blocks or search_blocks=True, not both")


def _recalibration_check(trials: _Trials, baseline: MapScores, floors: MapFloors) -> MapScores:
    """The unpruned model's scores after BN re-calibration; where they are lower, the search runs without it.

    Re-calibration is a choice, so the validation split makes it: where it costs the unpruned model
    mAP (BN statistics from un-augmented training images can fit worse than the trained ones), every
    trial would pay that cost before removing a single channel. With two tolerances, a cost in either
    metric counts."""
    unpruned = trials.apply(trials.model, trials.plan(0.0, []))
    trials.recalibrate(unpruned)
    recalibrated = as_map_scores(trials.evaluate(unpruned))
    if MapFloors(baseline.map50, baseline.map if floors.map is not None else None).failed(recalibrated):
        log.info("auto prune: BN re-calibration lowers the unpruned model's scores (%s -> %s): searching without it",
                 _format(baseline), _format(recalibrated))
        trials.recalibrate = None
    return recalibrated


def _format(scores: MapScores, signed: bool = False) -> str:
    number = "+.4f" if signed else ".4f"
    return f"mAP@0.5 {scores.map50:{number}}" + ("" if scores.map is None else f", mAP@0.5:0.95 {scores.map:{number}}")


def _search_block_count(trials: _Trials, floors: MapFloors, best_plan: PrunePlan, best_scores: MapScores) -> tuple[PrunePlan, MapScores]:
    """Integer bisection on how many residual blocks go (lowest importance first), no channels removed."""
    passing, failing = 0, len(residual_blocks(trials.model.cfg)) + 1  # known to pass / to fail
    while failing - passing > 1:
        count = (passing + failing) // 2
        plan = trials.plan(0.0, trials.least_important_blocks(count))
        trial = trials.run(plan, 0.0, floors)
        if trial.accepted:
            passing, best_plan, best_scores = count, plan, trial.scores
        else:
            failing = count
    return best_plan, best_scores


def _search_channel_ratio(
    trials: _Trials, floors: MapFloors, steps: int, best_plan: PrunePlan, best_scores: MapScores, limit: Budget | None = None,
) -> tuple[PrunePlan, MapScores]:
    """Bisection on the removed fraction of candidate channels, on top of `best_plan`'s blocks; with
    `limit`, no further than the channels that budget removes (with these blocks)."""
    blocks = best_plan.removed_blocks
    high, bound = 1.0, {}
    if limit is not None:
        cut = ChannelCut(trials.model, removed_blocks=blocks, **trials.plan_options)
        bound = limit.settings()
        high = min(1.0, (limit.removed(cut, bound) + 0.5) / max(cut.size, 1))  # + 0.5: a ratio's count rounds down
    low = 0.0  # low: largest fraction known to pass; high: smallest known to fail (or the most allowed)
    for step in range(steps):
        ratio = high if step == 0 else (low + high) / 2  # try everything first: it may already pass
        plan = trials.plan(ratio, blocks)
        trial = trials.run(plan, ratio, floors)
        if trial.accepted:
            low, best_plan, best_scores = ratio, plan, trial.scores
            if step == 0:
                break
        else:
            high = ratio
    best_plan.settings.update(bound)  # the limit and what it reached
    return best_plan, best_scores
