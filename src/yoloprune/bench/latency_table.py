"""Latency lookup table: what a cfg, or any cfg pruned from it, costs to run batch 1 on this machine.

`build_table(cfg, img_size, timer)` times every shape class of the cfg (`bench.latency_shapes`:
layers that differ only in their channel counts share a class) over a grid of channel counts and
stores the medians; `LatencyTable.layer_sum(cfg)` prices a cfg as the sum of its layers, read off
the grids, plus the heads and the per-call cost (each counted once), and `predict(cfg)` maps that
sum through the table's calibration against whole models (`bench.latency_calibration`), if any.

Grid: per channel axis (a conv has two, input and output; a shortcut, route, upsample or maxpool
one, its width; the heads none) the points of `channel_ladder` (multiples of 8, each about
`grid_ratio` times the last, and the cfg's width) where pruning can change the axis, else the
cfg's width alone. A class used by several layers measures the union of their points.

Prediction: a count is first rounded up to the next multiple of 8 (`CHANNEL_BLOCK`: what the CPU
kernels compute; never past the grid's last point, and a grid point stays as it is), then read off
the grid by linear interpolation along each axis (bilinear for a conv), so a latency that is
bilinear in (input, output) channels, as a conv's multiply-adds are, is reproduced exactly between
the points. Under the first point the first point's value holds (a layer that thin costs its fixed
overhead); past the last one the table has nothing to say and raises `LatencyTableError`.

Layers other than convs are measured like the convs (the layer alone, at its resolution, over its
channel grid), not modelled: a shortcut, an upsample or a concatenation moves memory in proportion
to its width, and at small widths its fixed per-layer cost dominates; both come from the
measurement. Timing a layer alone includes the runtime's per-call cost, which a model pays once:
the timer subtracts it from every layer and the table adds it back once (`CallShape`).

Each point is timed in `passes` (3) passes over the whole grid and keeps the median of the passes
(`build_table`). The timer is a parameter (`timer(shape, channels) -> ms`,
`bench.latency_timers.RuntimeTimer` for real runs), so tests can script it. Tables are cached
(`cached_table`) under `$YOLOPRUNE_CACHE/latency/` (default `~/.cache/yoloprune/latency/`), keyed by
what the numbers depend on: CPU model, runtime and version, threads, input size, grid ratio and
the cfg's layers.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import platform
import statistics
import time
from bisect import bisect_left
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from yoloprune.bench.latency_calibration import Calibration, ModelTimer, calibrate
from yoloprune.bench.latency_shapes import (
    LayerCost,
    Shape,
    channel_ladder,
    layer_costs,
    round_up,
    variable_axes,
)
from yoloprune.darknet.blocks import NetBlock
from yoloprune.darknet.cfg import DarknetCfg, write_cfg
from yoloprune.errors import YoloPruneError
from yoloprune.fileio import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = 1  # the JSON layout; a table of another format is rebuilt (cache) or refused (--latency-table)
CACHE_ENV = "YOLOPRUNE_CACHE"
RUNTIMES = ("ort", "torch")  # ONNX Runtime (the model's ONNX export), PyTorch
DEFAULT_GRID_RATIO = 2.0
DEFAULT_PASSES = 3

Timer = Callable[[Shape, tuple[int, ...]], float]


class LatencyTableError(YoloPruneError):
    """A latency table that is malformed, or that has no measurement for a layer it is asked to price."""

    def __init__(self, message: str, path: str | Path | None = None):
        self.path, self.reason = path, message
        super().__init__(f"{path}: {message}" if path is not None else message)


# ---------------------------------------------------------------------------------------------- interpolation


def interpolate(axes: tuple[tuple[int, ...], ...], values, point: tuple[float, ...]) -> float:
    """Multilinear interpolation of `values` (nested lists, one level per axis) at `point`: exact
    at grid points, and exact between them for a function that is linear along each axis (bilinear
    in two). Every coordinate must lie within its axis."""
    brackets = []  # per axis: [(index, weight)]
    for axis, x in zip(axes, point):
        if len(axis) == 1 or x == axis[-1]:
            brackets.append([(len(axis) - 1, 1.0)])
            continue
        hi = bisect_left(axis, x)
        if axis[hi] == x:
            brackets.append([(hi, 1.0)])
            continue
        lo = hi - 1
        t = (x - axis[lo]) / (axis[hi] - axis[lo])
        brackets.append([(lo, 1.0 - t), (hi, t)])
    total = 0.0
    for corner in itertools.product(*brackets):
        value, weight = values, 1.0
        for index, w in corner:
            value, weight = value[index], weight * w
        total += weight * value
    return total


def grid_coordinate(axis: tuple[int, ...], channels: int) -> int | None:
    """Where `channels` is read on `axis`: itself at a grid point, else the next multiple of
    `CHANNEL_BLOCK` clamped into the axis; None past the axis's last point."""
    if channels in axis:
        return channels
    if channels > axis[-1] or channels < 1:
        return None
    return min(max(round_up(channels), axis[0]), axis[-1])


@dataclass
class Grid:
    """One shape class: medians (ms) over the cross product of its channel axes."""

    axes: tuple[tuple[int, ...], ...]
    ms: object  # nested lists, one level per axis; a float for a class without axes

    def at(self, channels: tuple[int, ...]) -> float | None:
        """The predicted ms at `channels`, None if a count lies past its axis."""
        point = tuple(grid_coordinate(axis, c) for axis, c in zip(self.axes, channels))
        if any(p is None for p in point):
            return None
        return interpolate(self.axes, self.ms, point)


# ---------------------------------------------------------------------------------------------- the table


@dataclass
class LatencyTable:
    key: dict  # what the numbers depend on (`table_key`)
    grids: dict[str, Grid]
    cfg_name: str | None = None  # the cfg it was built for, for messages
    build_seconds: float | None = None
    grid_points: int = 0  # measured points (each timed `passes` times)
    passes: int = 1
    path: Path | None = field(default=None, compare=False)  # where it was read from or written to
    calibration: Calibration | None = None  # against whole models (`bench.latency_calibration`)

    @property
    def img_size(self) -> int:
        return int(self.key["img_size"])

    @property
    def runtime(self) -> str:
        return str(self.key["runtime"])

    @property
    def threads(self) -> int:
        return int(self.key["threads"])

    def layer_ms(self, cfg: DarknetCfg) -> list[tuple[LayerCost, float]]:
        """Every priced part of `cfg` at the table's input size and its predicted ms; a
        LatencyTableError naming the first layer the table has no measurement for."""
        priced = []
        for cost in layer_costs(cfg, (self.img_size, self.img_size)):
            grid = self.grids.get(cost.shape.key)
            value = None if grid is None else grid.at(cost.channels)
            if value is None:
                self._refuse(cfg, cost, grid)
            priced.append((cost, value))
        return priced

    def layer_sum(self, cfg: DarknetCfg) -> float:
        """`cfg`'s layers read off the grids and summed (with the heads and one call), in ms."""
        return sum(ms for _, ms in self.layer_ms(cfg))

    def predict(self, cfg: DarknetCfg) -> float:
        """Predicted batch-1 latency of `cfg` in ms: `layer_sum`, calibrated where the table is."""
        raw = self.layer_sum(cfg)
        return raw if self.calibration is None else self.calibration.apply(raw)

    def _refuse(self, cfg: DarknetCfg, cost: LayerCost, grid: Grid | None) -> None:
        where = "the call" if cost.index < 0 else f"layer {cost.index}"
        if grid is None:
            problem = f"no measurement for {where} of {cfg.path or 'the cfg'} ({cost.shape.key})"
        else:
            widest = tuple(axis[-1] for axis in grid.axes)
            problem = f"{where} of {cfg.path or 'the cfg'} ({cost.shape.key}) has channels {cost.channels}, the table covers up to {widest}"
        raise LatencyTableError(
            f"{problem}: the table was built for {self.cfg_name or 'another cfg'} at {self.img_size} px; "
            "build one for this cfg with `yoloprune latency-table`", self.path,
        )

    # ------------------------------------------------------------------------------------ JSON

    def to_dict(self) -> dict:
        return {
            "format": FORMAT, "key": self.key, "cfg": self.cfg_name, "build_seconds": self.build_seconds,
            "grid_points": self.grid_points, "passes": self.passes,
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "grids": {key: {"axes": [list(a) for a in grid.axes], "ms": grid.ms} for key, grid in sorted(self.grids.items())},
        }

    def to_json(self) -> str:
        # one line per grid, so that the file reads as a table and diffs by shape class
        head = {k: v for k, v in self.to_dict().items() if k != "grids"}
        lines = [f" {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
        rows = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in self.to_dict()["grids"].items()]
        return "{\n" + ",\n".join(lines + [' "grids": {\n' + ",\n".join(rows) + "\n }"]) + "\n}\n"

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, self.to_json())
        self.path = Path(path)

    @classmethod
    def from_dict(cls, data: dict, path: str | Path | None = None) -> "LatencyTable":
        """The table of `to_dict()`, checked; LatencyTableError naming `path` for anything else."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise LatencyTableError(f"not a yoloprune latency table of format {FORMAT} (format: {found!r})", path)
        key, grids = data.get("key"), data.get("grids")
        missing = [name for name in ("cpu", "runtime", "runtime_version", "threads", "img_size") if not isinstance(key, dict) or name not in key]
        if missing:
            raise LatencyTableError(f"its key lacks {', '.join(missing)}", path)
        if key["runtime"] not in RUNTIMES:
            raise LatencyTableError(f"its runtime must be one of {', '.join(RUNTIMES)}, got {key['runtime']!r}", path)
        for name in ("threads", "img_size"):
            if type(key[name]) is not int or key[name] < 1:
                raise LatencyTableError(f"its key's {name} must be a whole number >= 1, got {key[name]!r}", path)
        counts = {name: data.get(name, default) for name, default in (("grid_points", 0), ("passes", 1))}
        if any(type(value) is not int or value < 0 for value in counts.values()):
            raise LatencyTableError(f"grid_points and passes must be whole numbers, got {counts}", path)
        if not isinstance(grids, dict) or not grids:
            raise LatencyTableError("it holds no grids", path)
        try:
            calibration = None if data.get("calibration") is None else Calibration.from_dict(data["calibration"])
        except ValueError as error:
            raise LatencyTableError(str(error), path) from None
        return cls(
            key=key, grids={name: _checked_grid(name, value, path) for name, value in grids.items()},
            cfg_name=data.get("cfg"), build_seconds=data.get("build_seconds"), **counts,
            path=Path(path) if path is not None else None, calibration=calibration,
        )

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise LatencyTableError(f"cannot read the latency table: {error.strerror or error}", path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise LatencyTableError(f"line {error.lineno}: not valid JSON ({error.msg})", path) from None
        return cls.from_dict(data, path)


def _checked_grid(name: str, value: object, path) -> Grid:
    def bad(reason: str) -> LatencyTableError:
        return LatencyTableError(f"grid {name!r}: {reason}", path)

    if not isinstance(value, dict) or not isinstance(value.get("axes"), list) or "ms" not in value:
        raise bad("expected {\"axes\": [...], \"ms\": ...}")
    axes = []
    for axis in value["axes"]:
        if not isinstance(axis, list) or not axis or not all(type(c) is int and c > 0 for c in axis) or sorted(set(axis)) != axis:
            raise bad(f"an axis must list channel counts > 0 in ascending order, got {axis!r}")
        axes.append(tuple(axis))

    def check(ms, depth: int) -> None:
        if depth == len(axes):
            if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms) or ms < 0:
                raise bad(f"a latency must be a finite number >= 0, got {ms!r}")
            return
        if not isinstance(ms, list) or len(ms) != len(axes[depth]):
            raise bad(f"'ms' must have {len(axes[depth])} entries along axis {depth} (one per point)")
        for item in ms:
            check(item, depth + 1)

    check(value["ms"], 0)
    return Grid(tuple(axes), value["ms"])


# ---------------------------------------------------------------------------------------------- building


def cfg_fingerprint(cfg: DarknetCfg) -> str:
    """A hash of the cfg's layers (not its training settings): what the table measures."""
    layers_only = DarknetCfg(NetBlock({"channels": str(cfg.net.channels)}), list(cfg.layers))
    return hashlib.sha256(write_cfg(layers_only).encode("utf-8")).hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def table_key(cfg: DarknetCfg, img_size: int, runtime: str, threads: int, runtime_version: str, grid_ratio: float = DEFAULT_GRID_RATIO) -> dict:
    return {
        "cpu": cpu_model(), "runtime": runtime, "runtime_version": runtime_version, "threads": threads,
        "img_size": img_size, "grid_ratio": grid_ratio, "cfg_layers": cfg_fingerprint(cfg),
    }


def table_grid_points(cfg: DarknetCfg, img_size: int, grid_ratio: float = DEFAULT_GRID_RATIO) -> dict[str, tuple[Shape, tuple[tuple[int, ...], ...]]]:
    """Per shape class of `cfg`: the shape and its axes (see the module docstring)."""
    costs = layer_costs(cfg, (img_size, img_size))
    points: dict[str, tuple[Shape, list[set[int]]]] = {}
    for cost, variable in zip(costs, variable_axes(cfg, costs)):
        _, axes = points.setdefault(cost.shape.key, (cost.shape, [set() for _ in cost.channels]))
        for axis, width, varies in zip(axes, cost.channels, variable):
            axis.update(channel_ladder(width, grid_ratio) if varies else [width])
    return {key: (shape, tuple(tuple(sorted(axis)) for axis in axes)) for key, (shape, axes) in points.items()}


def build_table(
    cfg: DarknetCfg, img_size: int, timer: Timer, key: dict, grid_ratio: float = DEFAULT_GRID_RATIO, progress: bool = True,
    passes: int = DEFAULT_PASSES,
) -> LatencyTable:
    """Time every grid point of every shape class of `cfg` with `timer(shape, channels) -> ms`, in
    `passes` passes over the whole grid, and keep each point's median over the passes. On a shared
    machine the load changes over seconds: spreading each point's timings over the whole build
    makes every point see the same mix of quiet and busy moments (as interleaving does for whole
    models), so the points stay comparable to each other and to a model timed over a while."""
    from tqdm import tqdm

    start = time.perf_counter()
    classes = table_grid_points(cfg, img_size, grid_ratio)
    points = [(name, shape, channels) for name, (shape, axes) in classes.items() for channels in itertools.product(*axes)]
    timings: dict[tuple[str, tuple[int, ...]], list[float]] = {(name, channels): [] for name, _, channels in points}
    with tqdm(total=passes * len(points), desc="latency table", unit="shape", disable=not progress, leave=False) as bar:
        for _ in range(passes):
            for name, shape, channels in points:
                timings[name, channels].append(float(timer(shape, channels)))
                bar.update(1)
    best = {point: statistics.median(values) for point, values in timings.items()}

    def nested(name: str, axes: tuple[tuple[int, ...], ...], channels: tuple[int, ...] = ()):
        if len(channels) == len(axes):
            return best[name, channels]
        return [nested(name, axes, channels + (c,)) for c in axes[len(channels)]]

    grids = {name: Grid(axes, nested(name, axes)) for name, (_, axes) in classes.items()}
    seconds = time.perf_counter() - start
    log.info("latency table: %d grid points of %d shape classes, %d pass(es), in %.1f s", len(points), len(classes), passes, seconds)
    return LatencyTable(key, grids, cfg_name=cfg.path, build_seconds=round(seconds, 2), grid_points=len(points), passes=passes)


def cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else Path.home() / ".cache" / "yoloprune") / "latency"


def cache_path(key: dict, directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:20]
    return (directory or cache_dir()) / f"{digest}.json"


def cached_table(
    cfg: DarknetCfg,
    img_size: int,
    runtime: str,
    threads: int,
    timer: Timer | None = None,
    runtime_version: str | None = None,
    grid_ratio: float = DEFAULT_GRID_RATIO,
    progress: bool = True,
    rebuild: bool = False,
    model_timer: ModelTimer | None = None,
) -> LatencyTable:
    """The table for `cfg` at `img_size` in `runtime` with `threads` threads: read from the cache
    when one with the same key is there (unless `rebuild`), else built with `timer` and calibrated
    with `model_timer` (`bench.latency_calibration`), then cached. Without a `timer` both are the
    real ones (`RuntimeTimer`, `time_whole_models`); a scripted `timer` alone builds an uncalibrated table."""
    from yoloprune.bench.latency_timers import RuntimeTimer, runtime_version as version_of, time_whole_models

    key = table_key(cfg, img_size, runtime, threads, runtime_version or version_of(runtime), grid_ratio)
    path = cache_path(key)
    if path.is_file() and not rebuild:
        try:
            table = LatencyTable.load(path)
            if table.key == key:
                log.info("latency table: reusing %s", path)
                return table
        except LatencyTableError as error:  # a damaged cache entry is rebuilt, not fatal
            log.warning("latency table: rebuilding the unreadable cache entry (%s)", error)
    if timer is None:
        with RuntimeTimer(runtime, threads) as real_timer:
            table = build_table(cfg, img_size, real_timer, key, grid_ratio, progress)
        model_timer = model_timer or (lambda cfgs: time_whole_models(cfgs, runtime, img_size, threads))
    else:
        table = build_table(cfg, img_size, timer, key, grid_ratio, progress)
    if model_timer is not None:
        table.calibration = calibrate(table.layer_sum, cfg, model_timer)
    table.save(path)
    return table
