"""`yoloprune latency-table`: measure a cfg's layers on this machine for latency-aware pruning."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.bench.settings import LatencyTableSettings

    add_command(
        subparsers, "latency-table", LatencyTableSettings, run_latency_table,
        help="time every layer shape of a cfg over a grid of channel counts (for prune --target-latency)",
        description="Time each conv of the cfg alone (batch 1, at its own input resolution, median after warm-up) "
        "over a grid of input and output channel counts, and every other layer over its width; layers of the "
        "same shape share measurements; the cfg, its narrowest version and two in between are then timed whole to calibrate the sum. "
        "`prune --target-latency` predicts a pruned cfg's latency from the "
        "table (bilinear between grid points). The table is cached by CPU, runtime and version, threads, "
        "input size and cfg, so a later prune reuses it.",
    )


def run_latency_table(args: argparse.Namespace) -> int:
    import torch

    from yoloprune.bench.latency_table import cached_table
    from yoloprune.bench.settings import LatencyTableSettings

    settings = from_arguments(LatencyTableSettings, args)
    cfg = _read_cfg(settings)
    img_size = settings.img_size or cfg.net.width
    threads = settings.threads or torch.get_num_threads()
    table = cached_table(cfg, img_size, settings.runtime, threads, grid_ratio=settings.grid_ratio, progress=settings.progress, rebuild=settings.rebuild)
    cached_at = table.path
    table.save(settings.out)
    key = table.key
    print(
        f"latency table: {len(table.grids)} shape classes, {table.grid_points} grid points timed {table.passes} times, built in "
        f"{table.build_seconds:.1f} s ({key['runtime_version']}, {key['threads']} threads, {key['cpu']})"
    )
    calibration = table.calibration
    how = "" if calibration is None else (
        f" (its layers alone: {table.layer_sum(cfg):.2f} ms; timed whole: {calibration.measured_ms[-1]:.2f} ms, "
        f"and {calibration.measured_ms[0]:.2f} ms with every prunable channel set at 8 channels)"
    )
    print(f"predicted latency of {settings.cfg or settings.weights} at {img_size} px: {table.predict(cfg):.2f} ms{how}")
    print(f"wrote: {settings.out} (cached as {cached_at})")
    return 0


def _read_cfg(settings):
    from yoloprune.darknet.cfg import load_cfg, parse_cfg
    from yoloprune.darknet.weights import is_checkpoint_path, load_checkpoint
    from yoloprune.errors import CfgError, WeightsError

    if settings.cfg is not None:
        return load_cfg(settings.cfg)
    if not is_checkpoint_path(settings.weights):
        raise WeightsError("a darknet .weights holds no cfg: give --cfg", settings.weights)
    checkpoint = load_checkpoint(settings.weights)
    if "cfg" not in checkpoint:
        raise WeightsError("checkpoint carries no cfg text: give --cfg", settings.weights)
    try:
        return parse_cfg(checkpoint["cfg"], f"{settings.weights}#cfg")
    except CfgError as error:
        raise WeightsError(f"checkpoint cfg is invalid: {error}", settings.weights) from None
