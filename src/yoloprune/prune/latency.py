"""What one channel set costs in predicted latency, for the latency budget of `prune.channel`.

A unit (a channel set pruned together) keeping c of its P positions changes the channel counts of
its own convs (outputs), of the convs that read it (inputs) and of the pass-through layers
between (shortcuts, routes, upsamples, maxpools); every such count is linear in c. `UnitLatency`
finds those layers once, by comparing the cfg with the unit at P and at P - 1 positions, and then
prices any c from the latency table without building a cfg: the predicted ms of those layers with
the unit at c and every other unit at its full width. That is the local view the ranking and the
rounding need; the budget itself is always checked on the whole pruned cfg (`LatencyTable.predict`).

`latency_table_for` finds the table a pruning run (or a latency-weighted sparsity training,
`train.sparsity.channel_latency`) uses and `measure_latency` checks its prediction on the compact
model afterwards. `refine_to_measured` closes the loop: where the measured ratio misses the target,
the budget given to the table is corrected by the miss and the plan made again.
"""

from __future__ import annotations

import logging
import math

from yoloprune.bench.latency_shapes import CHANNEL_BLOCK, layer_costs
from yoloprune.bench.latency_table import LatencyTable
from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.graph import ResidualBlock

log = logging.getLogger(__name__)

# Relative: a measured latency ratio this close to the target needs no new plan. On this project's
# shared 2-core machine one pair of models timed five times in a row scattered by about ±6 % on one
# thread and ±10 % on two, whatever the runs per series, so there a re-plan can follow noise; the
# number of re-plans (`--refine`) is bounded for that reason.
REFINE_TOLERANCE = 0.05


class UnitLatency:
    """Predicted ms of the layers a unit's width reaches, as a function of the positions it keeps."""

    def __init__(self, table: LatencyTable, cfg: DarknetCfg, convs: tuple[int, ...], parts: int, positions: int, removed_blocks: list[ResidualBlock]):
        self.table, self.positions = table, positions
        hw = (table.img_size, table.img_size)
        base = layer_costs(build_pruned_cfg(cfg, {}, removed_blocks), hw)
        self._terms = []  # (layer, grid, channels at full width, channels lost per position removed)
        if positions > 1:
            narrower = layer_costs(build_pruned_cfg(cfg, {idx: (positions - 1) * parts for idx in convs}, removed_blocks), hw)
            for full, less in zip(base, narrower):
                if full.channels != less.channels:
                    per_position = tuple(a - b for a, b in zip(full.channels, less.channels))
                    self._terms.append((full.index, table.grids[full.shape.key], full.channels, per_position))
        self._memo: dict[int, float] = {}

    def _layer_ms(self, kept: int) -> list[float]:
        """Predicted ms of each reached layer (in `_terms` order) with `kept` positions."""
        gone = self.positions - kept
        return [grid.at(tuple(c - d * gone for c, d in zip(channels, lost))) for _, grid, channels, lost in self._terms]

    def ms(self, kept: int) -> float:
        """Predicted ms of the reached layers with `kept` positions (1 <= kept <= positions)."""
        if kept not in self._memo:
            self._memo[kept] = sum(self._layer_ms(kept))
        return self._memo[kept]

    def _first_step(self, min_keep: int) -> int:
        """Positions over which a saving is read: the first channel block, or as far as `min_keep`
        allows (the table rounds counts up to whole blocks, so one position alone saves nothing)."""
        return min(CHANNEL_BLOCK, self.positions - min_keep)

    def saving_per_position(self, min_keep: int) -> float:
        """Predicted ms saved per position removed, over the first channel block (or as far as
        `min_keep` allows): the table's local slope at the full width; 0 where it predicts no saving."""
        step = self._first_step(min_keep)
        if step <= 0:
            return 0.0
        return max(self.ms(self.positions) - self.ms(self.positions - step), 0.0) / step

    def layer_savings(self, min_keep: int) -> dict[int, float]:
        """`saving_per_position` layer by layer (cfg index -> ms per position), before its clamp at 0:
        what the unit's own convs save as outputs, and every layer reading the unit as inputs."""
        step = self._first_step(min_keep)
        if step <= 0:
            return {}
        savings: dict[int, float] = {}
        for (layer, *_), full, less in zip(self._terms, self._layer_ms(self.positions), self._layer_ms(self.positions - step)):
            savings[layer] = savings.get(layer, 0.0) + (full - less) / step
        return savings

    def fastest_count(self, keep: int, round_to: int) -> int:
        """The count from `keep` up to the end of its rounding step (`round_to`, or one channel
        block when that is 1) that the table predicts fastest; among equals the larger, whose extra
        channels then cost nothing. So a count is never one the table predicts slower than the
        next multiple of the block above it."""
        step = round_to if round_to > 1 else CHANNEL_BLOCK
        top = min(self.positions, math.ceil(keep / step) * step)
        return min(range(keep, top + 1), key=lambda count: (self.ms(count), -count))


def latency_table_for(cfg: DarknetCfg, img_size: int, runtime: str | None, table_path: str | None, progress: bool = True) -> LatencyTable:
    """The table a latency budget (or a latency-weighted penalty) uses: the one at `table_path`,
    checked against the run (its runtime, unless `runtime` says another, its input size and the
    cfg's layers), or else the cached or newly built one for `cfg` at `img_size` in `runtime`
    (default ort) with torch's current thread count."""
    import torch

    from yoloprune.bench.latency_table import LatencyTableError, cached_table, cpu_model

    if table_path is None:
        return cached_table(cfg, img_size, runtime or "ort", torch.get_num_threads(), progress=progress)
    table = LatencyTable.load(table_path)
    if runtime is not None and table.runtime != runtime:
        raise LatencyTableError(f"measured in {table.runtime}, not in {runtime} (`runtime`)", table_path)
    if table.img_size != img_size:
        raise LatencyTableError(f"measured at {table.img_size} px inputs, this run is at {img_size} px (`img_size`)", table_path)
    if table.key.get("cpu") != cpu_model():
        log.warning("%s was measured on %s, this machine is %s: its predictions may not hold here", table_path, table.key.get("cpu"), cpu_model())
    table.predict(cfg)  # one clear error now if it is another cfg's table
    return table


def measure_latency(model, pruned, table: LatencyTable, runs: int = 10, warmup: int = 3, repeats: int = 3) -> dict:
    """The original and the compact model timed interleaved in the table's runtime with its thread
    count (`bench.benchmark.time_in_runtime`), in `repeats` series of `runs` runs each, beside what
    the table predicts for each. The measured ratio is the median of the series' ratios of medians:
    on a shared machine one busy series then cannot decide it."""
    from statistics import median

    from yoloprune.bench.benchmark import time_in_runtime
    from yoloprune.bench.profile import series_ratios

    series = time_in_runtime({"original": model, "pruned": pruned}, table.runtime, table.img_size, table.threads, runs, warmup, repeats)
    before = [t for times in series for t in times["original"]]
    after = [t for times in series for t in times["pruned"]]
    predicted_before, predicted_after = table.predict(model.cfg), table.predict(pruned.cfg)
    return {
        "runtime": table.runtime, "threads": table.threads, "runs": runs * repeats, "table": str(table.path) if table.path else None,
        "predicted_ms_before": predicted_before, "predicted_ms_after": predicted_after, "predicted_ratio": predicted_after / predicted_before,
        "measured_ms_before": median(before), "measured_ms_after": median(after), "measured_ratio": series_ratios(series, "original")["pruned"],
    }


def refine_to_measured(model, plan, replan, apply, table: LatencyTable, target: float, steps: int, measure=measure_latency):
    """`plan` (made for the latency `target` on `table`), made again up to `steps` times until the
    compact model `apply(model, plan)` measures within REFINE_TOLERANCE of the target. Each miss is
    taken as the table's error, a factor that holds near this width: the next budget on the table is
    the plan's predicted ratio × target / measured ratio, and `replan(budget)` plans for it. The
    table's error is largest near a model's floor, where what is left is mostly per-layer overhead
    and the calibration's models (every block kept) differ most from the compact one. Returns the
    last plan and one record per measurement (the budget planned for and `measure`'s result)."""
    budget, attempts = target, []
    for _ in range(steps):
        measured = measure(model, apply(model, plan), table)
        attempts.append({"budget": budget, **measured})
        miss = measured["measured_ratio"] / target
        if abs(miss - 1) <= REFINE_TOLERANCE:
            break
        budget = min(1.0, plan.settings["predicted_latency_ratio"] / miss)
        log.info(
            "latency: planned for x%.3f on the table, measured x%.3f against the target x%.3f; planning again for x%.3f",
            attempts[-1]["budget"], measured["measured_ratio"], target, budget,
        )
        plan = replan(budget)
    return plan, attempts
