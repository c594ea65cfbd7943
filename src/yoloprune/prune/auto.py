"""Automatic pruning: the most channels (hence FLOPs) that can go while validation mAP@0.5 stays
within `max_map_drop` of the unpruned model.

The search is a bisection over the global |γ| threshold, expressed as its rank among the candidate
channels (the fraction removed): removing more channels never adds FLOPs, and accuracy is assumed to
fall the further the threshold rises, so each trial halves the interval between the largest
fraction known to pass and the smallest known to fail. Every trial prunes (with β folding), then
optionally recalibrates BN and evaluates; the model given is never changed.

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
from yoloprune.prune.apply import prune_model
from yoloprune.prune.channel import plan_channel_prune
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
            "use fewer --layers or a larger --max-map-drop"
        )


@dataclass
class AutoPruneResult:
    plan: PrunePlan
    map50_before: float
    map50_after: float
    trials: list[AutoTrial] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"map50_before": self.map50_before, "map50_after": self.map50_after, "trials": [asdict(t) for t in self.trials]}


def search_max_pruning(
    model: Darknet,
    evaluate_map50: Callable[[Darknet], float],
    max_map_drop: float,
    mode: str = "full",
    min_keep: float = 1,
    round_to: int = 1,
    img_size: int | None = None,
    removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (),
    steps: int = 7,
    recalibrate: Callable[[Darknet], object] | None = None,
    search_blocks: bool = False,
) -> AutoPruneResult:
    """Bisection (`steps` trials after the baseline) for the largest removed fraction of candidate
    channels whose pruned model scores `evaluate_map50(model) >= baseline - max_map_drop`.
    `recalibrate(pruned)`, when given, runs on every trial model before it is evaluated.
    `search_blocks=True` first chooses the residual blocks to remove (instead of `removed_blocks`)."""
    if max_map_drop < 0:
        raise ValueError(f"max_map_drop must be >= 0, got {max_map_drop}")
    if search_blocks and removed_blocks:
        raise ValueError("give removed_blocks or search_blocks=True, not both")

    def plan_at(ratio: float, blocks=None) -> PrunePlan:
        blocks = removed_blocks if blocks is None else blocks
        plan = plan_channel_prune(model, mode, ratio=ratio, min_keep=min_keep, round_to=round_to, img_size=img_size, removed_blocks=blocks)
        plan.settings.update(max_map_drop=max_map_drop, auto=True)
        return plan

    def score(plan: PrunePlan) -> float:
        pruned, _ = prune_model(model, plan)
        if recalibrate is not None:
            recalibrate(pruned)
        return float(evaluate_map50(pruned))

    def record(plan: PrunePlan, ratio: float, map50: float, accepted: bool) -> None:
        trials.append(AutoTrial(
            ratio, plan.threshold, plan.macs_after / plan.macs_before, plan.params_after / plan.params_before, map50, accepted,
            len(plan.removed_blocks),
        ))
        log.info(
            "auto prune: blocks %d  ratio %.4f  MACs x%.3f  mAP@0.5 %.4f  %s",
            trials[-1].blocks, ratio, trials[-1].macs_ratio, map50, "ok" if accepted else "too low",
        )

    trials: list[AutoTrial] = []
    baseline = float(evaluate_map50(model))
    floor = baseline - max_map_drop
    log.info("auto prune: baseline mAP@0.5 %.4f, accepting >= %.4f", baseline, floor)
    # The starting plan: no channels, and no blocks unless a fixed count was given. Without blocks it
    # is the unpruned model, whose score is the baseline itself (no evaluation needed).
    best_plan, best_map = plan_at(0.0), baseline
    if search_blocks:
        # Integer bisection on the block count: `passing` blocks are known to pass, `failing` to fail.
        passing, failing = 0, len(residual_blocks(model.cfg)) + 1
        while failing - passing > 1:
            count = (passing + failing) // 2
            plan = plan_at(0.0, plan_layer_prune(model, count))
            map50 = score(plan)
            accepted = map50 >= baseline - BLOCK_SHARE * max_map_drop
            record(plan, 0.0, map50, accepted)
            if accepted:
                passing, best_plan, best_map = count, plan, map50
            else:
                failing = count
        removed_blocks = best_plan.removed_blocks
    elif removed_blocks:
        best_map = score(best_plan)
        record(best_plan, 0.0, best_map, best_map >= floor)
        if best_map < floor:
            # every channel trial removes these blocks and more: none can do better, so stop here
            raise MapToleranceError(baseline, max_map_drop, max(trials, key=lambda t: t.map50))
    low, high = 0.0, 1.0  # low: largest fraction known to pass; high: smallest known to fail (or 1)
    for step in range(steps):
        ratio = high if step == 0 else (low + high) / 2  # try everything first: it may already pass
        plan = plan_at(ratio)
        map50 = score(plan)
        accepted = map50 >= floor
        record(plan, ratio, map50, accepted)
        if accepted:
            low, best_plan, best_map = ratio, plan, map50
            if step == 0:
                break
        else:
            high = ratio
    assert best_map >= floor, f"auto prune returned mAP@0.5 {best_map} under the floor {floor}"
    return AutoPruneResult(best_plan, baseline, best_map, trials)


def make_map50_evaluator(
    data: str,
    img_size: int,
    batch_size: int = 8,
    device: str = "cpu",
    workers: int = 0,
    max_images: int | None = None,
) -> Callable[[Darknet], float]:
    """mAP@0.5 on the valid list of a .data file (COCO protocol), as a function of the model."""
    from yoloprune.data.dataset import create_dataloader, load_data_spec
    from yoloprune.errors import DataError
    from yoloprune.eval.evaluate import evaluate_model

    spec = load_data_spec(data)
    loader = create_dataloader(spec.valid, img_size, batch_size, augment=False, workers=workers, shuffle=False, num_classes=spec.classes)
    if max_images is not None:
        batches = list(_take_images(loader, max_images))
    else:
        batches = loader

    def evaluate(model: Darknet) -> float:
        if model.num_classes != spec.classes:
            raise DataError(f"dataset has {spec.classes} classes, the model predicts {model.num_classes}", spec.path)
        return evaluate_model(model, batches, device=device, progress=False).map50

    return evaluate


def _take_images(loader, max_images: int):
    seen = 0
    for images, targets, paths in loader:
        if seen >= max_images:
            break
        keep = min(len(images), max_images - seen)
        targets = targets[targets[:, 0] < keep]
        yield images[:keep], targets, paths[:keep]
        seen += keep
