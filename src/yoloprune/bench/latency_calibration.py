"""Calibrating a latency table against whole models.

A layer timed alone runs with its weights and its input hot in the CPU caches, run after run.
Inside a model whose weights no longer fit the caches, every layer fetches its weights from memory
again on every run, which the layers alone never pay. Measured on this project's shared 2-core EPYC
(ONNX Runtime, 1 thread, the demo cfg at 128 px, 15.5 MB of weights): the layers alone summed to
7.7 ms, the whole model ran in 12.6 ms; the same model pruned to 0.5 MB ran in 4.1 ms against 3.9 ms
summed. Uncalibrated, the table under-predicts what pruning a large model saves.

So `calibrate` times cfgs whole, interleaved (`model_timer`): the cfg itself, its narrowest version
(every prunable channel set at one channel block, `narrowed_cfg(cfg, 0)`: the far end of what
pruning explores) and versions in between (each set at a share of its width, `CALIBRATION_WIDTHS`).
`Calibration.apply` maps a table sum onto the piecewise-linear curve through those (table sum,
measured) points, and below the narrow end in proportion to it. The cache effect is not linear in
the table sum: it fades once a pruned model's weights fit the caches, so a single line through the
two ends over-predicts small models (measured with the ends alone, the demo model pruned to a
predicted 0.29 ran at 0.20-0.22 of the full model). A rising piecewise-linear map keeps every order,
so ranking channels by predicted ms saved is unchanged; what it corrects is the budget, which
compares whole-model latencies.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from yoloprune.bench.latency_shapes import CHANNEL_BLOCK, round_up
from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.graph import analyze_graph

log = logging.getLogger(__name__)

# ms of each named cfg, timed as whole models (batch 1, interleaved)
ModelTimer = Callable[[dict[str, DarknetCfg]], dict[str, float]]


# Widths (share of every prunable channel set) of the cfgs timed whole, narrowest first, full last.
CALIBRATION_WIDTHS = (0.0, 0.25, 0.5, 1.0)
CALIBRATION_NAMES = ("narrowest", "quarter", "half", "full")


@dataclass(frozen=True)
class Calibration:
    table_ms: tuple[float, ...]  # the table's sums for the cfgs timed whole, narrowest first
    measured_ms: tuple[float, ...]  # the same cfgs timed whole

    @property
    def valid(self) -> bool:
        """At least two points, both sequences rising (else the measurement was noise)."""
        pairs = list(zip(self.table_ms, self.measured_ms))
        return (
            len(pairs) >= 2 and len(self.table_ms) == len(self.measured_ms) and pairs[0][0] > 0 and pairs[0][1] > 0
            and all(t0 < t1 and m0 < m1 for (t0, m0), (t1, m1) in zip(pairs, pairs[1:]))
        )

    def apply(self, table_ms: float) -> float:
        table, measured = self.table_ms, self.measured_ms
        if table_ms <= table[0]:
            return measured[0] * table_ms / table[0]
        segment = next((k for k in range(len(table) - 1) if table_ms <= table[k + 1]), len(table) - 2)  # past the end: the last one
        (t0, t1), (m0, m1) = table[segment : segment + 2], measured[segment : segment + 2]
        return m0 + (table_ms - t0) * (m1 - m0) / (t1 - t0)

    def to_dict(self) -> dict:
        return {"table_ms": list(self.table_ms), "measured_ms": list(self.measured_ms)}

    @classmethod
    def from_dict(cls, data: object) -> "Calibration":
        """The calibration of `to_dict()`; ValueError for anything else."""
        try:
            table_ms, measured_ms = (tuple(float(v) for v in data[name]) for name in ("table_ms", "measured_ms"))
        except (TypeError, KeyError, ValueError):
            raise ValueError("calibration must be {\"table_ms\": [...], \"measured_ms\": [...]}, narrowest first") from None
        calibration = cls(table_ms, measured_ms)
        if not calibration.valid:
            raise ValueError(f"calibration must hold two or more rising pairs of positive ms, got {data}")
        return calibration


def narrowed_cfg(cfg: DarknetCfg, width: float) -> DarknetCfg:
    """`cfg` with every prunable channel set (`full` mode) at `width` of its channels per part,
    rounded up to whole channel blocks, and at least one block (or its width if that is smaller)."""
    filters = {}
    for group in analyze_graph(cfg).prunable_groups():
        per_part = group.channels // group.parts
        positions = min(per_part, max(CHANNEL_BLOCK, round_up(width * per_part)))
        filters.update({idx: positions * group.parts for idx in group.convs})
    return build_pruned_cfg(cfg, filters)


def calibrate(table_sum: Callable[[DarknetCfg], float], cfg: DarknetCfg, model_timer: ModelTimer) -> Calibration | None:
    """The calibration of a table (`table_sum(cfg)`: its uncalibrated prediction) for `cfg`, or None
    where nothing in `cfg` can be pruned or the whole-model timings of the narrowest and the full
    cfg do not rise with the table. A point in between that breaks the rise (noise, or a width that
    rounds to an end) is left out."""
    versions = {name: narrowed_cfg(cfg, width) for name, width in zip(CALIBRATION_NAMES[:-1], CALIBRATION_WIDTHS[:-1])}
    versions[CALIBRATION_NAMES[-1]] = cfg
    sums = {name: table_sum(version) for name, version in versions.items()}
    if not sums["narrowest"] < sums["full"]:
        return None
    measured = model_timer(versions)
    points = [(sums[name], measured[name]) for name in CALIBRATION_NAMES]
    kept = [points[0]]
    for table_ms, model_ms in points[1:-1]:
        if kept[-1][0] < table_ms < points[-1][0] and kept[-1][1] < model_ms < points[-1][1]:
            kept.append((table_ms, model_ms))
    kept.append(points[-1])
    calibration = Calibration(tuple(t for t, _ in kept), tuple(m for _, m in kept))
    if not calibration.valid:
        log.warning("latency table: not calibrated, the whole-model timings %s do not rise with the table's %s", measured, sums)
        return None
    log.info(
        "latency table: calibrated on whole models: %s",
        ", ".join(f"{name} {measured[name]:.2f} ms (layers alone {sums[name]:.2f})" for name in CALIBRATION_NAMES),
    )
    return calibration
