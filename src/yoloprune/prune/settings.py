"""How much and what to prune: `PruneSettings`, the `prune` command's defaults and checks, importable
without torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from yoloprune.errors import SettingsError
from yoloprune.prune.budget import DEFAULT_LATENCY_STEPS, Budget, LatencyTarget, MacsTarget, ParamsTarget, Ratio, Threshold
from yoloprune.settings import check_img_size, is_whole, option, require, resolve_device

# Which convs are candidates: the seed's rule, or every BN conv with shortcut-coupled ones pruned together.
PRUNE_MODES = ("safe", "full")
# The settings that say how much to prune; at most one may be given.
AMOUNT_SETTINGS = ("ratio", "threshold", "target_flops", "target_params", "target_latency", "max_map_drop")
# Runtimes a latency budget is measured in: ONNX Runtime (the model's ONNX export) or PyTorch.
LATENCY_RUNTIMES = ("ort", "torch")
# BN re-calibration after pruning, on by default when training images are at hand: on the demo's
# sparse model it raised the no-finetune mAP@0.5 at every MACs budget tried (docs/pruning-comparison.md).
DEFAULT_CALIBRATION_IMAGES = 256
# --map-drop-confidence at which the mAP search judges each trial by its point estimate (no bootstrap).
POINT_ESTIMATE = 0.5
# What ranks the channels (`prune.importance.IMPORTANCES`): |γ|, or |γ| times the norm of the weights reading the channel.
IMPORTANCE_NAMES = ("gamma", "gamma-out-norm")


def parse_layers(text: str) -> int | str:
    """`--layers`: a residual block count or 'auto'."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a block count or 'auto', got {text!r}") from None


@dataclass
class PruneSettings:
    """How much and what to prune; see `prune.run.run_pruning`."""

    mode: str = option(
        "full", choices=PRUNE_MODES,
        help="safe: the classic rule (no conv feeding a shortcut, none before an upsample); "
        "full: every BN conv, shortcut-coupled convs pruned together",
    )
    ratio: float | None = option(None, help="fraction of candidate channels to remove, lowest |γ| first (e.g. 0.85)")
    threshold: float | None = option(None, help="remove candidate channels whose importance (--importance; |γ| by default) is below this value")
    target_flops: float | None = option(None, help="keep this fraction of the MACs (budget search, within 1%%)")
    target_params: float | None = option(None, help="keep this fraction of the parameters (budget search, within 1%%)")
    target_latency: float | None = option(
        None,
        help="keep this fraction of the latency measured in --runtime: compact models are timed against the original, "
        "interleaved, and the MACs budget searched until the ratio is within 5%% (at most --latency-steps models). "
        "With --max-map-drop: prune at most this far, less if the mAP asks for it",
    )
    runtime: str | None = option(
        None, choices=LATENCY_RUNTIMES, help="runtime of --target-latency: ort (the ONNX export in ONNX Runtime) or torch",
        default_text="ort",
    )
    latency_steps: int | None = option(
        None, help="with --target-latency: compact models timed at most (the first keeps the target's fraction of the MACs)",
        default_text=str(DEFAULT_LATENCY_STEPS),
    )
    max_map_drop: float | None = option(
        None,
        help="with --data: the most pruning whose valid mAP@0.5 stays within this of the unpruned model "
        "(bisection); an error naming the closest trial if removing the --layers blocks alone drops more",
    )
    max_map5095_drop: float | None = option(
        None,
        help="with --max-map-drop: also keep valid mAP@0.5:0.95 within this of the unpruned model "
        "(both come from one evaluation per trial)",
    )
    map_drop_confidence: float = option(
        POINT_ESTIMATE,
        help="with --max-map-drop: accept a trial only when the one-sided lower confidence bound, at this confidence, "
        "of its valid mAP minus the unpruned model's (paired bootstrap over the validation images) stays within each "
        "tolerance; 0.5: the point estimate. Higher holds better on unseen images and prunes less",
    )
    importance: str = option(
        "gamma", choices=IMPORTANCE_NAMES,
        help="what ranks channels and blocks: gamma: |γ| (network slimming); gamma-out-norm: |γ| times the L2 norm "
        "of the weights of the convs that read the channel",
    )
    min_keep: float = option(1, help="channels each conv keeps at least: a fraction (< 1) or a count")
    round_to: int = option(1, flag="--round", help="round kept channel counts up to a multiple of this (e.g. 8)")
    layers: int | str = option(
        0, parse=parse_layers,
        help="also remove this many residual blocks (lowest mean |γ| of their second conv); "
        "'auto' with --max-map-drop: as many as keep mAP@0.5 within half the tolerance",
    )
    calibrate: int | None = option(
        None, help="recompute BN statistics of the pruned model on this many training images (0 = off)",
        default_text=f"{DEFAULT_CALIBRATION_IMAGES} with --data, else 0",
    )
    data: str | None = option(None, help="dataset .data file (for --calibrate and --max-map-drop)")
    img_size: int | None = option(None, help="input size for MAC counts, calibration and evaluation", default_text="the cfg's width")
    batch: int = option(8, help="images per batch for --calibrate / --max-map-drop")
    workers: int = option(0, help="data loader worker processes")
    auto_steps: int = option(7, help="evaluations of the --max-map-drop bisection")
    device: str = option("cpu", help="cpu, cuda, cuda:N")
    plan_only: bool = option(False, help="write just OUT/plan.json and print the plan, prune nothing")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting whose value cannot work."""
        require(self.mode in PRUNE_MODES, "mode", " or ".join(PRUNE_MODES), self.mode)
        require(self.importance in IMPORTANCE_NAMES, "importance", " or ".join(IMPORTANCE_NAMES), self.importance)
        given = [name for name in AMOUNT_SETTINGS if getattr(self, name) is not None]
        if self.max_map_drop is not None and self.target_latency is not None:
            given.remove("target_latency")  # the one pair that combines: the latency target bounds the mAP search
        if len(given) > 1:
            raise SettingsError(given[1], "give one of " + ", ".join(f"`{name}`" for name in AMOUNT_SETTINGS) + "; got " + " and ".join(f"`{name}`" for name in given))
        if not given and not self.layers:
            raise SettingsError("ratio", "say how much to prune: one of " + ", ".join(f"`{name}`" for name in AMOUNT_SETTINGS) + " or `layers`")
        self.budget()  # each budget checks its own value
        for name in ("runtime", "latency_steps"):
            require(getattr(self, name) is None or self.target_latency is not None, name, "given with `target_latency`", getattr(self, name))
        require(self.runtime is None or self.runtime in LATENCY_RUNTIMES, "runtime", " or ".join(LATENCY_RUNTIMES), self.runtime)
        require(self.threshold is None or self.threshold >= 0, "threshold", ">= 0", self.threshold)
        require(self.max_map_drop is None or self.max_map_drop >= 0, "max_map_drop", ">= 0", self.max_map_drop)
        require(self.max_map_drop is None or bool(self.data), "max_map_drop", "given with `data` (the mAP is measured on its valid split)", self.max_map_drop)
        # A second tolerance, not a way to say how much to prune: alone it would leave mAP@0.5 unbounded.
        require(self.max_map5095_drop is None or self.max_map_drop is not None, "max_map5095_drop", "given with `max_map_drop`", self.max_map5095_drop)
        require(self.max_map5095_drop is None or self.max_map5095_drop >= 0, "max_map5095_drop", ">= 0", self.max_map5095_drop)
        require(POINT_ESTIMATE <= self.map_drop_confidence < 1, "map_drop_confidence", "in [0.5, 1)", self.map_drop_confidence)
        require(self.map_drop_confidence == POINT_ESTIMATE or self.max_map_drop is not None, "map_drop_confidence", "given with `max_map_drop`", self.map_drop_confidence)
        require(0 <= self.min_keep < 1 or self.min_keep == int(self.min_keep), "min_keep", "a fraction in [0, 1) or a whole count", self.min_keep)
        require(self.layers == "auto" or (is_whole(self.layers) and self.layers >= 0), "layers", "a block count >= 0 or 'auto'", self.layers)
        require(self.layers != "auto" or self.max_map_drop is not None, "layers", "a count unless `max_map_drop` is given ('auto' chooses by mAP)", self.layers)
        for name in ("round_to", "batch", "auto_steps"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1", getattr(self, name))
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
        require(self.calibrate is None or (is_whole(self.calibrate) and self.calibrate >= 0), "calibrate", "a whole number >= 0", self.calibrate)
        require(not self.calibration_images() or bool(self.data), "calibrate", "0 without `data` (it runs on the training images)", self.calibrate)
        check_img_size(self.img_size)
        resolve_device(self.device)

    def budget(self, measure=None) -> Budget | None:
        """The channel budget the settings give (`prune.budget`), None where none is given; with
        `max_map_drop` the latency target is the limit of the search. `measure`: the latency
        target's timer (`prune.latency.LatencyMeter`)."""
        steps = DEFAULT_LATENCY_STEPS if self.latency_steps is None else self.latency_steps
        for value, make in (
            (self.ratio, Ratio), (self.threshold, Threshold), (self.target_flops, MacsTarget), (self.target_params, ParamsTarget),
            (self.target_latency, lambda value: LatencyTarget(value, measure, steps)),
        ):
            if value is not None:
                return make(value)
        return None

    def calibration_images(self) -> int:
        if self.calibrate is not None:
            return self.calibrate
        return DEFAULT_CALIBRATION_IMAGES if self.data else 0
