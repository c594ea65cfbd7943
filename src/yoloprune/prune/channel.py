"""Channel pruning plans: rank candidate channels by importance and cut by a global threshold or a budget.

Importance is a callable passed in (`importance=`, default `prune.importance.bn_scale`: |γ|), giving
one score per output channel of every batch-normalised conv; below, |γ| stands for that score.

Candidates (`mode`):
- "safe": the seed's rule (`darknet.graph.safe_prunable_conv_indices`); every candidate conv is
  pruned on its own;
- "full": every prunable channel set of `darknet.graph.analyze_graph`. Convs whose outputs are summed
  by a shortcut chain share one channel set, so a channel of the set is removed from all of them.

Importance of a channel of a shared set = the **max** of its members' |γ|. A channel is removed
only when it is negligible in every summand: the max keeps the meaning of the threshold the same
for a lone conv and for a chain of nine (every removed channel of every conv has |γ| below the
threshold), whereas a sum would grow with the chain's length and shield the deep residual stages
from pruning for no reason other than their depth.

Threshold:
- `ratio=P`: remove the fraction P of candidate channels with the lowest importance (one global
  ranking over all candidates; a shared set's channel counts once);
- `threshold=T`: remove the channels whose importance is below T;
- `target_flops=F` / `target_params=F`: the number of lowest-ranked channels to remove is found by
  bisection so that the pruned model's MACs (or parameters) land on F × the original's. Cost is
  counted from the cfg (`darknet.graph.count_cfg_macs`), so each step takes about a millisecond.
- `target_latency=F` with a latency table (`latency=`, `bench.latency_table`): the same bisection
  on the latency the table predicts for the pruned cfg.

Among channels of equal importance (exact zeros, typically) the one in the costlier conv goes first.

Latency-aware ranking (whenever a latency table is given): a channel costs what removing it saves,
the table's local slope for its unit (predicted ms saved per position over the first channel block
at full width, `prune.latency.UnitLatency`), and channels are ranked by importance lost per ms
saved, lowest first. This is greedy: each unit's saving is taken once, at full width, although
it changes as the unit and its neighbours narrow; the budget, though, is always checked on the
whole pruned cfg. Rounding then picks, within each unit's rounding step, the count the table
predicts fastest (see `UnitLatency.fastest_count`), rather than the next multiple of `round_to`.
There is no single importance threshold in this ranking, so the plan's `threshold` is None.

Per conv at least `min_keep` channels stay (a fraction of its width if < 1, else a count; never
zero), and with `round_to=R` the kept count is rounded up to a multiple of R (the extra channels
are the next most important ones).

A set read through a [route] with `groups` (`ChannelGroup.parts` > 1) must keep the same number of
channels in every part, so that the route still splits it where the parts meet; which channels each
part keeps is free (the applier carries any choice through the route). So each part's channels are
sorted by importance and paired by rank: position r is the r-th most important channel of every
part, with the max of their importances, one candidate costing all of them. Paired by index instead
(channel c of every part together), a position stays while either part needs its channel c: on the
YOLOv4-tiny demo model after 80 sparsity epochs, |γ| ≥ 0.01 kept 164 of the 224 channels of its
three grouped convs by index and 146 by rank. `min_keep` and `round_to` count positions (channels
per part).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch

from yoloprune.bench.latency_table import LatencyTable
from yoloprune.darknet.graph import (
    ResidualBlock,
    analyze_graph,
    conv_macs,
    count_cfg_macs,
    count_cfg_params,
    infer_output_hw,
    prunable_conv_indices,
)
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.model import Darknet
from yoloprune.prune.importance import Importance, bn_scale
from yoloprune.prune.latency import UnitLatency
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.settings import PRUNE_MODES

log = logging.getLogger(__name__)

BUDGET_TOLERANCE = 0.01  # relative: a budget F is met when the cost lands in F·(1 ± 1 %)


@dataclass
class _Unit:
    """Convs pruned together (one channel set) and the importance of each of their channel positions."""

    convs: tuple[int, ...]
    importance: torch.Tensor  # (positions,) float64: per channel, or per rank position of every part
    parts: int = 1  # the set's channels are `parts` equal runs that keep equal numbers of channels
    part_order: torch.Tensor | None = None  # (parts, positions): channel (within its part) of each rank
    min_keep: int = 1
    channel_macs: int = 0  # what one position (a channel of every part) of the unit's convs costs
    latency: UnitLatency | None = None  # with a latency table: what its width costs in predicted ms

    @property
    def channels(self) -> int:
        """Candidate positions: output channels per part."""
        return int(self.importance.numel())

    def kept_channels(self, positions: list[int]) -> list[int]:
        """The output channels kept when the unit keeps `positions`, ascending."""
        if self.part_order is None:
            return sorted(int(c) for c in positions)
        return sorted(part * self.channels + int(self.part_order[part, r]) for part in range(self.parts) for r in positions)


def _unit(convs: tuple[int, ...], scores: dict[int, torch.Tensor], parts: int) -> _Unit:
    """The convs of one set ranked together: per channel, the max importance over the convs; with
    parts, per rank position the max over the parts of their channels of that rank."""
    importance = torch.stack([scores[idx] for idx in convs]).amax(dim=0)
    if parts == 1:
        return _Unit(convs, importance)
    ranked, order = torch.sort(importance.view(parts, -1), dim=1, descending=True, stable=True)
    return _Unit(convs, ranked.amax(dim=0), parts, part_order=order)


def min_keep_count(min_keep: float, channels: int) -> int:
    """Channels a conv keeps at least: `min_keep` < 1 is a fraction of `channels`, else a count; ≥ 1."""
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    wanted = math.ceil(min_keep * channels) if min_keep < 1 else int(min_keep)
    return max(1, min(channels, wanted))


def _channel_scores(model: Darknet, importance: Importance) -> dict[int, torch.Tensor]:
    """`importance(model)` as float64 on the CPU (the ranking sorts with numpy), checked against the widths."""
    scores = {}
    for idx, values in importance(model).items():
        scores[idx] = torch.as_tensor(values).detach().double().cpu().reshape(-1)
        if scores[idx].numel() != model.out_channels[idx]:
            raise ValueError(f"importance gives {scores[idx].numel()} scores for layer {idx}, which has {model.out_channels[idx]} channels")
    return scores


def _candidate_units(
    model: Darknet, scores: dict[int, torch.Tensor], mode: str, removed_layers: set[int], min_keep: float, img_size: int
) -> list[_Unit]:
    cfg = model.cfg
    sizes = infer_output_hw(cfg, (img_size, img_size))
    graph = analyze_graph(cfg)
    units: list[_Unit] = []
    if mode == "safe":
        for idx in prunable_conv_indices(cfg, "safe"):
            if idx not in removed_layers:
                units.append(_unit((idx,), scores, graph.group_for(idx).parts))
    else:
        for group in graph.prunable_groups():
            members = tuple(idx for idx in group.convs if idx not in removed_layers)
            if members:
                units.append(_unit(members, scores, group.parts))
    for unit in units:
        unit.min_keep = min_keep_count(min_keep, unit.channels)
        for idx in unit.convs:
            # one position's share of the conv's cost: a channel in each part
            block = cfg.layers[idx]
            unit.channel_macs += unit.parts * conv_macs(block, cfg.in_channels(idx), sizes[idx]) // block.filters
    return units


class _Ranking:
    """All candidate channels in one global order, lowest importance first (with a latency table:
    lowest importance per predicted ms saved first, see the module docstring)."""

    def __init__(self, units: list[_Unit]):
        self.units = units
        self.by_latency = any(unit.latency is not None for unit in units)
        if units:
            values = torch.cat([unit.importance for unit in units])
            unit_ids = torch.cat([torch.full((unit.channels,), i, dtype=torch.long) for i, unit in enumerate(units)])
            costs = torch.cat([torch.full((unit.channels,), _channel_cost(unit), dtype=torch.float64) for unit in units])
        else:
            values = costs = torch.zeros(0, dtype=torch.float64)
            unit_ids = torch.zeros(0, dtype=torch.long)
        if self.by_latency:
            # a channel whose removal the table says saves nothing ranks last, unless it is worth nothing
            values = values / costs.clamp(min=1e-12)
        # lowest importance first; among equal importances (e.g. exact zeros) the costlier channel first
        order = torch.from_numpy(np.lexsort((-costs.numpy(), values.numpy())))
        self.sorted_values = values[order]
        self.unit_of_rank = unit_ids[order]
        # within a unit, channels by descending importance (ties: lower channel index first)
        self.unit_order = [torch.sort(-unit.importance, stable=True).indices for unit in units]

    @property
    def size(self) -> int:
        return int(self.sorted_values.numel())

    def count_below(self, threshold: float) -> int:
        return int(torch.searchsorted(self.sorted_values, torch.tensor([threshold], dtype=torch.float64)).item())

    def threshold(self, removed: int) -> float | None:
        """The importance of the lowest-ranked channel that stays (None in the latency ranking)."""
        if self.size == 0 or self.by_latency:
            return None
        return float(self.sorted_values[min(removed, self.size - 1)])

    def kept_counts(self, removed: int, round_to: int) -> list[int]:
        """Channels each unit keeps when the `removed` lowest-ranked channels go, after min_keep and rounding."""
        removed_per_unit = torch.bincount(self.unit_of_rank[:removed], minlength=len(self.units)).tolist()
        counts = []
        for unit, gone in zip(self.units, removed_per_unit):
            keep = max(unit.channels - gone, unit.min_keep)
            if unit.latency is not None:
                keep = unit.latency.fastest_count(keep, round_to)
            elif round_to > 1:
                keep = min(unit.channels, math.ceil(keep / round_to) * round_to)
            counts.append(keep)
        return counts

    def kept_channels(self, counts: list[int]) -> dict[int, list[int]]:
        kept: dict[int, list[int]] = {}
        for unit, order, count in zip(self.units, self.unit_order, counts):
            if count < unit.channels:
                channels = unit.kept_channels(order[:count].tolist())
                for idx in unit.convs:
                    kept[idx] = channels
        return kept


def _channel_cost(unit: _Unit) -> float:
    """What removing one of the unit's positions saves: predicted ms with a latency table, else MACs."""
    return unit.latency.saving_per_position(unit.min_keep) if unit.latency is not None else float(unit.channel_macs)


def _filters_for(units: list[_Unit], counts: list[int]) -> dict[int, int]:
    return {idx: count * unit.parts for unit, count in zip(units, counts) for idx in unit.convs}


def _check_amount(mode: str, ratio, threshold, target_flops, target_params, round_to: int, target_latency=None, latency=None) -> None:
    if mode not in PRUNE_MODES:
        raise ValueError(f"mode must be one of {PRUNE_MODES}, got {mode!r}")
    amounts = {"ratio": ratio, "threshold": threshold, "target_flops": target_flops, "target_params": target_params, "target_latency": target_latency}
    given = [name for name, value in amounts.items() if value is not None]
    if len(given) > 1:
        raise ValueError(f"give one of {', '.join(amounts)}, not {' and '.join(given)}")
    if ratio is not None and not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if target_latency is not None and latency is None:
        raise ValueError("target_latency needs a latency table (latency=)")
    if threshold is not None and latency is not None:
        raise ValueError("threshold ranks by importance alone: it takes no latency table")
    for name, value in (("target_flops", target_flops), ("target_params", target_params), ("target_latency", target_latency)):
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"{name} must be in (0, 1], got {value}")
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")


def plan_channel_prune(
    model: Darknet,
    mode: str = "safe",
    ratio: float | None = None,
    threshold: float | None = None,
    target_flops: float | None = None,
    target_params: float | None = None,
    min_keep: float = 1,
    round_to: int = 1,
    img_size: int | None = None,
    removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (),
    importance: Importance = bn_scale,
    target_latency: float | None = None,
    latency: LatencyTable | None = None,
) -> PrunePlan:
    """Plan which channels to remove (see the module docstring). At most one of `ratio`,
    `threshold` (remove channels whose importance is below it), `target_flops`, `target_params`,
    `target_latency`; with none, no channel is removed (a layer-only plan).
    `removed_blocks` (from `prune.layer.plan_layer_prune`) are taken out first and count towards a budget.
    `importance(model)` scores every channel (`prune.importance`); the lowest scores go first.
    `latency` (a `bench.latency_table.LatencyTable` for the model's cfg at `img_size`) makes the
    ranking and rounding latency-aware, with any amount but a threshold; `target_latency` needs it."""
    _check_amount(mode, ratio, threshold, target_flops, target_params, round_to, target_latency, latency)
    cfg = model.cfg
    img_size = img_size or cfg.net.width
    if latency is not None and latency.img_size != img_size:
        raise ValueError(f"the latency table is for {latency.img_size} px inputs, the plan for {img_size} px")
    removed_blocks = list(removed_blocks)
    removed_layers = {idx for block in removed_blocks for idx in block.layers}
    units = _candidate_units(model, _channel_scores(model, importance), mode, removed_layers, min_keep, img_size)
    if latency is not None:
        latency.predict(build_pruned_cfg(cfg, {}, removed_blocks))  # a LatencyTableError now if it misses a layer
        for unit in units:
            unit.latency = UnitLatency(latency, cfg, unit.convs, unit.parts, unit.channels, removed_blocks)
    ranking = _Ranking(units)
    pruned_cfgs: dict[int, object] = {}

    def pruned_cfg(removed: int):
        if removed not in pruned_cfgs:
            pruned_cfgs[removed] = build_pruned_cfg(cfg, _filters_for(units, ranking.kept_counts(removed, round_to)), removed_blocks)
        return pruned_cfgs[removed]

    # what a budget measures on a cfg: one planner, the cost a callable
    costs = {"target_flops": lambda c: count_cfg_macs(c, img_size), "target_params": count_cfg_params}
    if latency is not None:
        costs["target_latency"] = latency.predict
    settings: dict = {"ratio": ratio, "threshold": threshold, "target_flops": target_flops, "target_params": target_params, "min_keep": min_keep, "round_to": round_to}
    if latency is not None:
        settings.update(target_latency=target_latency, ranking="importance per predicted ms saved")
    budget = next((name for name in costs if name in settings and settings[name] is not None), None)
    if ratio is not None:
        removed = int(ranking.size * ratio)
    elif threshold is not None:
        removed = ranking.count_below(threshold)
    elif budget is not None:
        removed = _fit_budget(lambda k: costs[budget](pruned_cfg(k)), costs[budget](cfg), ranking.size, budget, settings, mode)
    else:
        removed = 0
    after = pruned_cfg(removed)
    if latency is not None:
        before_ms, after_ms = latency.predict(cfg), latency.predict(after)
        settings.update(
            latency_runtime=latency.runtime, latency_threads=latency.threads, latency_table=str(latency.path) if latency.path else None,
            predicted_ms_before=before_ms, predicted_ms_after=after_ms, predicted_latency_ratio=after_ms / before_ms,
            ranked_channels=ranking.size, ranked_removed=removed,
        )
    return PrunePlan(
        mode=mode,
        threshold=threshold if threshold is not None else (ranking.threshold(removed) if removed else None),
        kept_channels=ranking.kept_channels(ranking.kept_counts(removed, round_to)),
        removed_blocks=removed_blocks,
        candidate_layers=sorted(idx for unit in units for idx in unit.convs),
        channels_before={idx: block.filters for idx, block in enumerate(cfg.layers) if hasattr(block, "filters")},
        img_size=img_size,
        settings=settings,
        params_before=count_cfg_params(cfg),
        params_after=count_cfg_params(after),
        macs_before=count_cfg_macs(cfg, img_size),
        macs_after=count_cfg_macs(after, img_size),
    )


def _fit_budget(cost_after, cost_before: float, candidates: int, name: str, settings: dict, mode: str) -> int:
    """How many lowest-ranked channels to remove so that the cost the budget `name` measures
    (`cost_after(k)` after removing k) lands on the target fraction `settings[name]` of
    `cost_before`. Records the fraction reached as settings["achieved"]."""
    target = settings[name]
    removed = _search_budget(lambda k: cost_after(k) / cost_before, candidates, target)
    achieved = cost_after(removed) / cost_before
    settings["achieved"] = achieved
    if abs(achieved / target - 1) > BUDGET_TOLERANCE:
        # min_keep, rounding and the candidate set bound how far pruning can go: say so rather than fail
        log.warning(
            "budget %s=%.4f not reachable within %.0f %% in %s mode (min_keep=%s, round_to=%s): got %.4f",
            name, target, 100 * BUDGET_TOLERANCE, mode, settings["min_keep"], settings["round_to"], achieved,
        )
    return removed


def _search_budget(fraction_after, candidates: int, target: float) -> int:
    """How many lowest-ranked channels to remove so that `fraction_after(k)` (non-increasing in k)
    is closest to `target`: bisection for the first k at or under the target, then the nearer of
    k and k - 1."""
    if fraction_after(0) <= target:
        return 0
    if fraction_after(candidates) > target:
        return candidates
    low, high = 0, candidates  # fraction_after(low) > target >= fraction_after(high)
    while high - low > 1:
        middle = (low + high) // 2
        if fraction_after(middle) > target:
            low = middle
        else:
            high = middle
    return low if abs(fraction_after(low) - target) < abs(fraction_after(high) - target) else high
