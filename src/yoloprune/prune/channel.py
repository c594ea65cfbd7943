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

How many of the ranked channels go is the budget's choice (`prune.budget`: a ratio, a threshold,
a MACs, parameter or latency target); `ChannelCut` ranks once and builds the plan for any count.

Among channels of equal importance (exact zeros, typically) the one whose removal saves more MACs
(`darknet.cost.channel_macs`: its own filter and its slice of every conv reading it) goes first.

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

import math
from dataclasses import dataclass

import numpy as np
import torch

from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.cost import channel_macs, count_cfg_macs, count_cfg_params
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.graph import analyze_graph, prunable_conv_indices
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.residual import ResidualBlock
from yoloprune.prune.budget import Budget
from yoloprune.prune.importance import Importance, bn_scale
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.settings import PRUNE_MODES


@dataclass
class _Unit:
    """Convs pruned together (one channel set) and the importance of each of their channel positions."""

    convs: tuple[int, ...]
    importance: torch.Tensor  # (positions,) float64: per channel, or per rank position of every part
    parts: int = 1  # the set's channels are `parts` equal runs that keep equal numbers of channels
    part_order: torch.Tensor | None = None  # (parts, positions): channel (within its part) of each rank
    min_keep: int = 1
    channel_macs: float = 0.0  # what removing one position (a channel of every part) saves (`darknet.cost.channel_macs`)

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
    costs = channel_macs(cfg, img_size)
    for unit in units:
        unit.min_keep = min_keep_count(min_keep, unit.channels)
        unit.channel_macs = unit.parts * sum(costs[idx] for idx in unit.convs)  # a channel in each part
    return units


class _Ranking:
    """All candidate channels in one global order, lowest importance first."""

    def __init__(self, units: list[_Unit]):
        self.units = units
        if units:
            values = torch.cat([unit.importance for unit in units])
            unit_ids = torch.cat([torch.full((unit.channels,), i, dtype=torch.long) for i, unit in enumerate(units)])
            costs = torch.cat([torch.full((unit.channels,), unit.channel_macs, dtype=torch.float64) for unit in units])
        else:
            values = costs = torch.zeros(0, dtype=torch.float64)
            unit_ids = torch.zeros(0, dtype=torch.long)
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
        """The importance of the lowest-ranked channel that stays."""
        if self.size == 0:
            return None
        return float(self.sorted_values[min(removed, self.size - 1)])

    def kept_counts(self, removed: int, round_to: int) -> list[int]:
        """Channels each unit keeps when the `removed` lowest-ranked channels go, after min_keep and rounding."""
        removed_per_unit = torch.bincount(self.unit_of_rank[:removed], minlength=len(self.units)).tolist()
        counts = []
        for unit, gone in zip(self.units, removed_per_unit):
            keep = max(unit.channels - gone, unit.min_keep)
            if round_to > 1:
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


class ChannelCut:
    """The candidate channels of one model ranked once (see the module docstring): the plan, the
    pruned cfg and its costs for any number of lowest-ranked channels removed. A budget
    (`prune.budget`) chooses that number."""

    def __init__(
        self, model: Darknet, mode: str = "safe", *, min_keep: float = 1, round_to: int = 1, img_size: int | None = None,
        removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (), importance: Importance = bn_scale,
    ):
        if mode not in PRUNE_MODES:
            raise ValueError(f"mode must be one of {PRUNE_MODES}, got {mode!r}")
        if round_to < 1:
            raise ValueError(f"round_to must be >= 1, got {round_to}")
        self.model, self.mode, self.min_keep, self.round_to = model, mode, min_keep, round_to
        self.img_size = img_size or model.cfg.net.width
        self.removed_blocks = list(removed_blocks)
        removed_layers = {idx for block in self.removed_blocks for idx in block.layers}
        units = _candidate_units(model, _channel_scores(model, importance), mode, removed_layers, min_keep, self.img_size)
        self.ranking = _Ranking(units)
        self._cfgs: dict[int, DarknetCfg] = {}
        self._costs = {"macs": lambda cfg: count_cfg_macs(cfg, self.img_size), "params": count_cfg_params}

    @property
    def size(self) -> int:
        """Ranked candidates (a shared set's channel, or a grouped set's rank position, counts once)."""
        return self.ranking.size

    def count_below(self, threshold: float) -> int:
        return self.ranking.count_below(threshold)

    def cfg_after(self, removed: int) -> DarknetCfg:
        """The pruned cfg when the `removed` lowest-ranked channels go."""
        if removed not in self._cfgs:
            counts = self.ranking.kept_counts(removed, self.round_to)
            filters = {idx: count * unit.parts for unit, count in zip(self.ranking.units, counts) for idx in unit.convs}
            self._cfgs[removed] = build_pruned_cfg(self.model.cfg, filters, self.removed_blocks)
        return self._cfgs[removed]

    def fraction(self, cost: str, removed: int) -> float:
        """`cost` ("macs" or "params") of the pruned cfg as a fraction of the original cfg's."""
        count = self._costs[cost]
        return count(self.cfg_after(removed)) / count(self.model.cfg)

    def fit(self, cost: str, target: float) -> int:
        """How many lowest-ranked channels to remove so that `fraction(cost, k)` (non-increasing in k)
        is closest to `target`: bisection for the first k at or under the target, then the nearer of
        k and k - 1."""
        def fraction_after(k: int) -> float:
            return self.fraction(cost, k)

        if fraction_after(0) <= target:
            return 0
        if fraction_after(self.size) > target:
            return self.size
        low, high = 0, self.size  # fraction_after(low) > target >= fraction_after(high)
        while high - low > 1:
            middle = (low + high) // 2
            if fraction_after(middle) > target:
                low = middle
            else:
                high = middle
        return low if abs(fraction_after(low) - target) < abs(fraction_after(high) - target) else high

    def plan(self, removed: int, settings: dict | None = None, threshold: float | None = None) -> PrunePlan:
        """The plan that removes the `removed` lowest-ranked channels (and the cut's blocks);
        `threshold`: the one the plan records, by default the importance of the lowest-ranked channel kept."""
        cfg, after = self.model.cfg, self.cfg_after(removed)
        return PrunePlan(
            mode=self.mode,
            threshold=threshold if threshold is not None else (self.ranking.threshold(removed) if removed else None),
            kept_channels=self.ranking.kept_channels(self.ranking.kept_counts(removed, self.round_to)),
            removed_blocks=list(self.removed_blocks),
            candidate_layers=sorted(idx for unit in self.ranking.units for idx in unit.convs),
            channels_before={idx: block.filters for idx, block in enumerate(cfg.layers) if hasattr(block, "filters")},
            img_size=self.img_size,
            settings=dict(settings or {}),
            params_before=count_cfg_params(cfg),
            params_after=count_cfg_params(after),
            macs_before=count_cfg_macs(cfg, self.img_size),
            macs_after=count_cfg_macs(after, self.img_size),
        )


def plan_channel_prune(
    model: Darknet, mode: str = "safe", budget: Budget | None = None, *, min_keep: float = 1, round_to: int = 1,
    img_size: int | None = None, removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (),
    importance: Importance = bn_scale,
) -> PrunePlan:
    """Plan which channels to remove (see the module docstring): as many of the lowest-ranked as
    `budget` says (`prune.budget`: `Ratio`, `Threshold`, `MacsTarget`, `ParamsTarget`,
    `LatencyTarget`); with none, no channel is removed (a layer-only plan).
    `removed_blocks` (from `prune.layer.plan_layer_prune`) are taken out first and count towards a budget.
    `importance(model)` scores every channel (`prune.importance`); the lowest scores go first."""
    cut = ChannelCut(model, mode, min_keep=min_keep, round_to=round_to, img_size=img_size, removed_blocks=removed_blocks, importance=importance)
    settings: dict = {"ratio": None, "threshold": None, "target_flops": None, "target_params": None}
    settings.update(budget.settings() if budget is not None else {})
    settings.update(min_keep=min_keep, round_to=round_to)
    removed = budget.removed(cut, settings) if budget is not None else 0
    return cut.plan(removed, settings, budget.threshold() if budget is not None else None)
