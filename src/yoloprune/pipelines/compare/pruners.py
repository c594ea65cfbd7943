"""The pruners `compare` sets side by side, each brought to a MACs budget and judged by one rule.

Every pruned model's MACs are counted the same way, by darknet's counter on the widths of its own
conv modules (`count_macs`), whatever tool pruned it, and a row is accepted iff |achieved / target - 1| <= tolerance
(`within`). yoloprune searches its own budget (`plan_channel_prune(...,
MacsTarget(F))`, a bisection over the global |γ| ranking); Torch-Pruning takes a channel ratio,
so the ratio is searched until the count lands in the window. A pruner that cannot land there is
reported as missed, with the closest fraction it reached, never kept as if it had.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib import metadata
from typing import Callable

import torch

from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.model import Darknet
from yoloprune.errors import YoloPruneError
from yoloprune.prune import MacsTarget, plan_channel_prune, plan_layer_prune, prune_model
from yoloprune.settings import STRIDE


@dataclass
class Pruned:
    """One pruner at one budget: the model when it landed in the window, else why not."""

    macs_ratio: float | None  # achieved MACs / unpruned MACs (the closest try when missed)
    accepted: bool
    model: Darknet | None = None
    note: str = ""  # how the budget was met, or why it was not


@dataclass
class Pruner:
    key: str  # short and stable, for JSON and tests
    label: str  # what the table says
    prune: Callable[[Darknet, float], Pruned]  # (model, target fraction) -> outcome


def within(achieved: float, target: float, tolerance: float) -> bool:
    """The one acceptance rule of every row."""
    return abs(achieved / target - 1) <= tolerance


def count_macs(model: Darknet, img_size: int) -> int:
    """Multiply-adds of every conv at `img_size`, by darknet's one counter (`count_cfg_macs`) on the
    cfg the model's conv modules describe. A model Torch-Pruning pruned keeps the cfg it started
    from, so the widths are read from its conv modules, not from `model.cfg`; counting from the cfg
    also avoids a forward of every newly shaped model (one per try of a bisection), which first sets
    up its conv kernels, seconds on a CPU."""
    return count_cfg_macs(module_cfg(model), img_size)


def module_cfg(model: Darknet) -> DarknetCfg:
    """`model.cfg` with every conv's `filters` as its module has them; raises when a conv module reads
    another number of channels than that cfg gives it (a pruning the cfg cannot describe)."""
    convs = {idx: layer.conv for idx, layer in enumerate(model.layers) if isinstance(getattr(layer, "conv", None), torch.nn.Conv2d)}
    cfg = build_pruned_cfg(model.cfg, {idx: conv.out_channels for idx, conv in convs.items()})
    for idx, conv in convs.items():
        if conv.in_channels != cfg.in_channels(idx):
            raise YoloPruneError(f"layer {idx}: the conv reads {conv.in_channels} channels, its cfg gives it {cfg.in_channels(idx)}")
    return cfg


class MacsCounter:
    """MACs as a fraction of the unpruned model's, counted the same way for every model."""

    def __init__(self, model: Darknet, img_size: int):
        self.img_size = img_size
        self.base = count_macs(model, img_size)

    def __call__(self, model: Darknet) -> float:
        return count_macs(model, self.img_size) / self.base


def yoloprune_pruner(mode: str, blocks: int, img_size: int, round_to: int, macs: MacsCounter, tolerance: float) -> Pruner:
    """yoloprune `--mode MODE --target-flops T --round R` (+ `--layers blocks`)."""
    key = f"yoloprune-{mode}" + (f"-{blocks}-blocks" if blocks else "")
    label = f"yoloprune {mode}" + (f" + {blocks} blocks" if blocks else "")

    def prune(model: Darknet, target: float) -> Pruned:
        try:
            removed = plan_layer_prune(model, blocks) if blocks else ()
            plan = plan_channel_prune(model, mode, MacsTarget(target), img_size=img_size, round_to=round_to, removed_blocks=removed)
        except YoloPruneError as error:
            return Pruned(None, False, note=str(error))
        pruned = prune_model(model, plan).eval()
        achieved = macs(pruned)
        if not within(achieved, target, tolerance):
            return Pruned(achieved, False, note=f"budget search reaches x{achieved:.3f} at best")
        return Pruned(achieved, True, pruned, note=f"budget search, {len(removed)} blocks removed" if blocks else "budget search")

    return Pruner(key, label, prune)


class _Heads(torch.nn.Module):
    """Darknet with the raw head maps as output: what Torch-Pruning traces its dependency graph on."""

    def __init__(self, model: Darknet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_heads(x)


# Torch-Pruning's BN-scale importance two ways. Its default divides each group's |γ| scores by the
# group's own mean (normalizer='mean') and averages |γ| over the BNs a residual chain couples
# (group_reduction='mean'): a per-group rescaling, not network slimming's one global threshold.
# The like-for-like setting ranks raw |γ| globally and takes the max over coupled BNs, which is
# what yoloprune's `full` mode does.
TP_IMPORTANCES = {
    "tp-default": ("Torch-Pruning BNScaleImportance() (default, per-group mean-normalised)", {}),
    "tp-global": (
        "Torch-Pruning BNScaleImportance(group_reduction='max', normalizer=None) (global slimming)",
        {"group_reduction": "max", "normalizer": None},
    ),
}


def torch_pruning_version() -> str | None:
    """The installed torch-pruning distribution's version, or None without it."""
    try:
        import torch_pruning  # noqa: F401 (the import is the check: a broken install counts as absent)
    except ImportError:
        return None
    return metadata.version("torch-pruning")


def _prune_with_ratio(model: Darknet, importance_options: dict, ratio: float, round_to: int) -> Darknet:
    """A copy of `model` pruned by Torch-Pruning's MetaPruner at channel `ratio`: global ranking,
    BN-scale importance, head convs left whole (their outputs are the detections)."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    device = next(pruned.parameters()).device
    heads = [pruned.layers[idx - 1].conv for idx in pruned.yolo_indices]
    # The traced graph does not depend on the input size: the smallest input a darknet takes will do.
    example = torch.zeros(1, pruned.cfg.net.channels, STRIDE, STRIDE, device=device)
    pruner = tp.pruner.MetaPruner(
        _Heads(pruned), example, importance=tp.importance.BNScaleImportance(**importance_options), pruning_ratio=ratio,
        ignored_layers=heads, global_pruning=True, round_to=round_to if round_to > 1 else None,
    )
    pruner.step()
    return pruned


# Ratios tried evenly over (0, 1) when bisection misses: Torch-Pruning's MACs are not monotone in
# its ratio (it leaves a group whole once every channel of it falls under the global threshold, so
# pruning more can keep more; on the demo's sparse model the like-for-like importance dips to its
# lowest MACs in a stretch of ratios 0.01 wide), and a budget bisection stepped over may lie
# between two of these.
RATIO_GRID = 50


def search_ratio(fraction_at: Callable[[float], float], target: float, tolerance: float, steps: int) -> tuple[float | None, dict[float, float]]:
    """A pruning ratio in (0, 1) whose MACs fraction `fraction_at(ratio)` is `within` the target,
    or None; and every ratio tried with its fraction. In turn, until one lands: bisection over
    (0, 1) (ratio 0 prunes nothing); a grid of ratios; bisection between every two neighbouring tried
    ratios whose fractions lie on either side of the target; and `steps` rounds of trying halfway
    between the ratio closest to the target so far and its tried neighbours (narrow dips)."""
    tried: dict[float, float] = {}

    def lands(ratio: float) -> bool:
        if ratio not in tried:
            tried[ratio] = fraction_at(ratio)
        return within(tried[ratio], target, tolerance)

    def bisect(low: float, high: float) -> float | None:
        above_at_low = tried.get(low, 1.0) > target
        for _ in range(steps):
            ratio = (low + high) / 2
            if lands(ratio):
                return ratio
            if (tried[ratio] > target) == above_at_low:
                low = ratio
            else:
                high = ratio
        return None

    def brackets() -> float | None:
        points = sorted(tried.items())
        for (low, at_low), (high, at_high) in zip(points, points[1:]):
            if (at_low > target) != (at_high > target) and (found := bisect(low, high)) is not None:
                return found
        return None

    def around_closest() -> float | None:
        for _ in range(steps):
            ratios = sorted(tried)
            best = min(ratios, key=lambda ratio: abs(tried[ratio] / target - 1))
            where = ratios.index(best)
            neighbours = ratios[max(where - 1, 0): where] + ratios[where + 1: where + 2]
            for ratio in ((best + neighbour) / 2 for neighbour in neighbours):
                if lands(ratio):
                    return ratio
        return None

    def grid() -> float | None:
        return next((ratio for ratio in ((i + 0.5) / RATIO_GRID for i in range(RATIO_GRID)) if lands(ratio)), None)

    for stage in (lambda: bisect(0.0, 1.0), grid, brackets, around_closest):
        if (found := stage()) is not None:
            return found, tried
    return None, tried


def torch_pruning_pruner(key: str, round_to: int, macs: MacsCounter, tolerance: float, steps: int) -> Pruner:
    """Torch-Pruning with the importance `TP_IMPORTANCES[key]`, its channel ratio searched onto each
    budget (`search_ratio`)."""
    label, options = TP_IMPORTANCES[key]

    def prune(model: Darknet, target: float) -> Pruned:
        landed: dict[float, Darknet] = {}  # the one model that lands, kept; the misses are dropped

        def fraction_at(ratio: float) -> float:
            pruned = _prune_with_ratio(model, options, ratio, round_to)
            fraction = macs(pruned)
            if within(fraction, target, tolerance):
                landed[ratio] = pruned
            return fraction

        ratio, tried = search_ratio(fraction_at, target, tolerance, steps)
        if ratio is not None:
            return Pruned(tried[ratio], True, landed[ratio], note=f"ratio {ratio:.4f} ({len(tried)} tries)")
        closest = min(tried.values(), key=lambda fraction: abs(fraction / target - 1))
        return Pruned(closest, False, note=f"x{closest:.3f} at best in {len(tried)} tries (search_ratio)")

    return Pruner(key, label, prune)


def rounding_statement(round_to: int, tp_version: str | None) -> str:
    """How each tool treats kept channel counts given the same `round_to` (they round in opposite
    directions), and the Torch-Pruning rule that decides how far it can prune."""
    if round_to > 1:
        yolo = f"yoloprune rounds each conv's kept channel count up to a multiple of {round_to} (never above its width)"
        tp = f"rounds each group's kept count down to a multiple of {round_to} (pruning more)"
    else:
        yolo, tp = "none in yoloprune (`--round 1`)", "none"
    if tp_version is None:
        return yolo + "."
    return (
        f"{yolo}; Torch-Pruning {tp_version} (`round_to={round_to if round_to > 1 else None}`): {tp}, and it leaves a "
        "coupled group whole when pruning would remove every one of its channels (yoloprune keeps at least one instead)."
    )
