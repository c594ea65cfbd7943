"""Latency targets by measurement: compact models timed against the original, whole.

`LatencyMeter` applies a plan and times the compact model against the original, interleaved, in
ONNX Runtime (the ONNX export) or PyTorch (`bench.benchmark.time_in_runtime`), in `repeats` series
of `runs` runs; the ratio is the median of the series' ratios of medians, so that one busy series
on a shared machine cannot decide it.

`search_latency` finds how many ranked channels to remove for a latency target F. Latency falls
with the MACs, close to a straight line over a short range (a fixed cost per layer plus work in
proportion to the multiply-adds), so the search steps on the MACs fraction. The first plan keeps F of the MACs; each next MACs
fraction is read off the line through the two measurements that bracket F (the unpruned model
counts as measured at 1.0), or, while every measurement is still above F, the line through the two
with the fewest MACs, but no further than half the fewest: towards small widths latency falls
faster than such a line, which would overshoot. It stops when a measured ratio is within
`LATENCY_TOLERANCE` of F, when a step would time a plan already timed, or after `steps` plans,
and keeps the plan whose measured ratio came closest to F.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from statistics import median
from typing import Callable

log = logging.getLogger(__name__)

# Relative: a measured latency ratio this close to the target ends the search. On a shared 2-core
# machine the same pair of models timed repeatedly scatters by several percent, so the search is
# bounded by a number of steps rather than by a tighter tolerance.
LATENCY_TOLERANCE = 0.05


def measure_latency(model, pruned, runtime: str, img_size: int, threads: int, runs: int = 10, warmup: int = 3, repeats: int = 3) -> dict:
    """The original and the compact model timed interleaved (`bench.benchmark.time_in_runtime`) in
    `repeats` series of `runs` runs each: the medians (ms) and the measured ratio."""
    from yoloprune.bench.benchmark import time_in_runtime
    from yoloprune.bench.profile import series_ratios

    series = time_in_runtime({"original": model, "pruned": pruned}, runtime, img_size, threads, runs, warmup, repeats)
    return {
        "measured_ms_before": median(t for times in series for t in times["original"]),
        "measured_ms_after": median(t for times in series for t in times["pruned"]),
        "measured_ratio": series_ratios(series, "original")["pruned"],
    }


@dataclass
class LatencyMeter:
    """`meter(plan)`: the latency of `apply(model, plan)` against `model`'s (`measure_latency`)."""

    model: object
    apply: Callable
    runtime: str
    img_size: int
    threads: int
    runs: int = 10
    repeats: int = 3

    def __call__(self, plan) -> dict:
        return measure_latency(self.model, self.apply(self.model, plan), self.runtime, self.img_size, self.threads, self.runs, repeats=self.repeats)

    def describe(self) -> dict:
        return {"runtime": self.runtime, "threads": self.threads, "runs": self.runs * self.repeats}


def search_latency(cut, target: float, measure: Callable[[object], dict], steps: int) -> tuple[int, list[dict]]:
    """How many of `cut`'s ranked channels to remove so that `measure(plan)["measured_ratio"]` lands
    on `target` (see the module docstring). Returns that count and one record per plan timed."""
    points = [(1.0, 1.0)]  # (MACs fraction, measured latency ratio); the unpruned model by definition
    attempts: list[dict] = []
    macs = target  # first guess: latency in proportion to MACs
    for _ in range(steps):
        removed = cut.fit("macs", macs)
        if any(attempt["removed"] == removed for attempt in attempts):
            break  # the MACs steps are too fine for this model's channel counts: nothing new to time
        measured = measure(cut.plan(removed))
        reached = cut.fraction("macs", removed)
        attempts.append({"macs_target": macs, "macs_ratio": reached, "removed": removed, **measured})
        points.append((reached, measured["measured_ratio"]))
        log.info("latency: MACs x%.3f measured x%.3f against the target x%.3f", reached, measured["measured_ratio"], target)
        if abs(measured["measured_ratio"] / target - 1) <= LATENCY_TOLERANCE:
            break
        macs = _next_macs(points, target)
    best = min(attempts, key=lambda attempt: abs(attempt["measured_ratio"] / target - 1))
    return best["removed"], attempts


def _next_macs(points: list[tuple[float, float]], target: float) -> float:
    """The MACs fraction the measured points say lands on `target` (see the module docstring)."""
    above = sorted(p for p in points if p[1] > target)  # too slow: prune more
    below = [p for p in points if p[1] <= target]  # fast enough: prune less
    high = above[0] if above else (1.0, 1.0)
    if below:  # bracketed: the line through both ends
        other = max(below)
        floor = other[0]
    else:  # the line through the two fewest MACs measured, no further than half of the fewest
        other = above[1] if len(above) > 1 else (1.0, 1.0)
        floor = high[0] / 2
    (m0, r0), (m1, r1) = high, other
    slope = (r1 - r0) / (m1 - m0) if m1 != m0 else 0.0
    macs = m0 + (target - r0) / slope if slope > 0 else floor
    if not below:
        return max(macs, floor)
    return macs if floor < macs < m0 else (floor + m0) / 2  # a line that leaves the bracket (noise): its middle
