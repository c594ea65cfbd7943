"""How much a channel plan removes: one budget object per way of saying it.

`prune.channel.plan_channel_prune(model, mode, budget)` ranks the candidate channels once
(`prune.channel.ChannelCut`) and asks the budget how many of the lowest-ranked go:

- `Ratio(P)`: the fraction P of the candidates;
- `Threshold(T)`: those whose importance is below T;
- `MacsTarget(F)` / `ParamsTarget(F)`: as many as make the pruned cfg's MACs (parameters) land on
  F × the original's, by bisection on the count; cost is counted from the cfg, about a millisecond a step;
- `LatencyTarget(F, measure)`: the compact model's latency, timed against the original's
  (`prune.latency`), lands on F × the original's, by a search over MACs targets.

Each budget checks its own value when it is made (a `SettingsError` naming the setting the
command line reads it from), and writes what it was and what it reached into the plan's settings.
The mAP-tolerance search (`prune.auto`) is a caller that plans with `Ratio` budgets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, ClassVar

from yoloprune.prune.latency import search_latency
from yoloprune.settings import is_whole, require

log = logging.getLogger(__name__)

BUDGET_TOLERANCE = 0.01  # relative: a MACs or parameter target F is met when the cost lands in F·(1 ± 1 %)
DEFAULT_LATENCY_STEPS = 4  # compact models a latency search times at most


@dataclass(frozen=True)
class Budget:
    """How many of a `ChannelCut`'s ranked channels to remove; `setting` names it in plan.json and on the command line."""

    value: float
    setting: ClassVar[str] = ""

    def removed(self, cut, record: dict) -> int:
        """The number of lowest-ranked channels of `cut` to remove; what the budget reached goes into `record`."""
        raise NotImplementedError

    def threshold(self) -> float | None:
        """The importance threshold the plan records, when the budget is one."""
        return None

    def settings(self) -> dict:
        return {self.setting: self.value}


@dataclass(frozen=True)
class Ratio(Budget):
    """Remove this fraction of the candidate channels, lowest importance first."""

    setting: ClassVar[str] = "ratio"

    def __post_init__(self) -> None:
        require(0 <= self.value <= 1, self.setting, "in [0, 1]", self.value)

    def removed(self, cut, record: dict) -> int:
        return int(cut.size * self.value)


@dataclass(frozen=True)
class Threshold(Budget):
    """Remove the candidate channels whose importance is below this value."""

    setting: ClassVar[str] = "threshold"

    def removed(self, cut, record: dict) -> int:
        return cut.count_below(self.value)

    def threshold(self) -> float | None:
        return self.value


@dataclass(frozen=True)
class _CostTarget(Budget):
    """Keep this fraction (in (0, 1]) of a cost counted on the pruned cfg."""

    cost: ClassVar[str] = ""  # what `ChannelCut.fraction` counts

    def __post_init__(self) -> None:
        require(0 < self.value <= 1, self.setting, "in (0, 1]", self.value)

    def removed(self, cut, record: dict) -> int:
        removed = cut.fit(self.cost, self.value)
        achieved = cut.fraction(self.cost, removed)
        record["achieved"] = achieved
        if abs(achieved / self.value - 1) > BUDGET_TOLERANCE:
            # min_keep, rounding and the candidate set bound how far pruning can go: say so rather than fail
            log.warning(
                "budget %s=%.4f not reachable within %.0f %% in %s mode (min_keep=%s, round_to=%s): got %.4f",
                self.setting, self.value, 100 * BUDGET_TOLERANCE, cut.mode, cut.min_keep, cut.round_to, achieved,
            )
        return removed


@dataclass(frozen=True)
class MacsTarget(_CostTarget):
    setting: ClassVar[str] = "target_flops"
    cost: ClassVar[str] = "macs"


@dataclass(frozen=True)
class ParamsTarget(_CostTarget):
    setting: ClassVar[str] = "target_params"
    cost: ClassVar[str] = "params"


@dataclass(frozen=True)
class LatencyTarget(Budget):
    """Keep this fraction of the measured latency: `measure(plan)` times the compact model the plan
    gives against the original (`prune.latency.LatencyMeter`) and returns a dict with its
    `measured_ratio`; at most `steps` plans are timed (`prune.latency.search_latency`)."""

    measure: Callable[[object], dict] | None = field(default=None, compare=False)
    steps: int = DEFAULT_LATENCY_STEPS
    setting: ClassVar[str] = "target_latency"

    def __post_init__(self) -> None:
        require(0 < self.value <= 1, self.setting, "in (0, 1]", self.value)
        require(is_whole(self.steps) and self.steps >= 1, "latency_steps", "a whole number >= 1", self.steps)

    def removed(self, cut, record: dict) -> int:
        if self.measure is None:
            raise ValueError("a latency target needs a timer (measure=, e.g. prune.latency.LatencyMeter)")
        removed, attempts = search_latency(cut, self.value, self.measure, self.steps)
        record.update(latency_steps=self.steps, ranked_channels=cut.size, ranked_removed=removed, latency_attempts=attempts)
        return removed
