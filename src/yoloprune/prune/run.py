"""One pruning run, as the `prune` command and the demo perform it:
plan (layer blocks, then channels by ratio / threshold / budget / mAP tolerance) → plan.json →
apply with constant folding → optional BN re-calibration → pruned.cfg/.weights/.pt, report.json, channels.png.

Everything is written into a hidden folder beside the output folder, which takes the output folder's
place only once complete (`fileio.atomic_directory`): an interrupted or failed run leaves the
previous output folder as it was, or no output folder. Replacing removes the old folder as a whole,
so it is only done when that folder holds nothing but a previous run's outputs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from yoloprune.darknet.model import Darknet
from yoloprune.errors import YoloPruneError
from yoloprune.fileio import atomic_directory
from yoloprune.prune.apply import prune_model
from yoloprune.prune.auto import AutoPruneResult, make_map50_evaluator, search_max_pruning
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.report import PRUNED_FILES, write_prune_outputs

log = logging.getLogger(__name__)

# BN re-calibration after pruning, on by default when training images are at hand: on the demo's
# sparse model it raised the no-finetune mAP@0.5 at every MACs budget tried (docs/pruning-comparison.md).
DEFAULT_CALIBRATION_IMAGES = 256

AMOUNT_SETTINGS = ("ratio", "threshold", "target_flops", "target_params", "max_map_drop")

OUTPUT_FILES = ("plan.json", *PRUNED_FILES)  # all a pruning run writes into its output folder


@dataclass
class PruneSettings:
    """How much and what to prune; field names match the `prune` command's flags."""

    mode: str = "full"
    ratio: float | None = None
    threshold: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    max_map_drop: float | None = None
    min_keep: float = 1
    round_to: int = 1
    layers: int | str = 0  # residual blocks to remove, or "auto" (chosen by the mAP search)
    calibrate: int | None = None  # images for BN re-calibration; None: DEFAULT_CALIBRATION_IMAGES with data, else 0
    data: str | None = None
    img_size: int | None = None
    batch: int = 8
    workers: int = 0
    auto_steps: int = 7
    device: str = "cpu"
    plan_only: bool = False

    def validate(self) -> None:
        def fail(message: str) -> None:
            raise YoloPruneError(message)

        if self.mode not in ("safe", "full"):
            fail(f"mode must be 'safe' or 'full', got {self.mode!r}")
        given = [name for name in AMOUNT_SETTINGS if getattr(self, name) is not None]
        if len(given) > 1:
            fail("give one of --ratio, --threshold, --target-flops, --target-params, --max-map-drop; got " + ", ".join(given))
        if self.ratio is not None and not 0 <= self.ratio <= 1:
            fail(f"--ratio must lie in [0, 1], got {self.ratio}")
        for name in ("target_flops", "target_params"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 1:
                fail(f"--{name.replace('_', '-')} must lie in (0, 1], got {value}")
        if self.threshold is not None and self.threshold < 0:
            fail(f"--threshold must be >= 0, got {self.threshold}")
        if self.max_map_drop is not None and (self.max_map_drop < 0 or not self.data):
            fail("--max-map-drop needs a non-negative value and --data")
        if self.min_keep < 0 or (self.min_keep >= 1 and self.min_keep != int(self.min_keep)):
            fail(f"--min-keep must be a fraction in [0, 1) or a whole count, got {self.min_keep}")
        if self.layers == "auto" and self.max_map_drop is None:
            fail("--layers auto needs --max-map-drop (the block count is chosen by validation mAP)")
        if self.layers != "auto" and not isinstance(self.layers, int):
            fail(f"--layers must be a block count or 'auto', got {self.layers!r}")
        if self.round_to < 1 or (self.layers != "auto" and self.layers < 0) or self.calibration_images() < 0 or self.batch < 1 or self.auto_steps < 1:
            fail("--round, --batch and --auto-steps must be >= 1; --layers and --calibrate >= 0")
        if self.calibration_images() and not self.data:
            fail("--calibrate needs --data (its training images)")
        if self.img_size is not None and (self.img_size <= 0 or self.img_size % 32):
            fail(f"--img-size must be a positive multiple of 32, got {self.img_size}")
        if not given and not self.layers:
            fail("say how much to prune: --ratio, --threshold, --target-flops, --target-params, --max-map-drop or --layers")
        self.torch_device()

    def calibration_images(self) -> int:
        if self.calibrate is not None:
            return self.calibrate
        return DEFAULT_CALIBRATION_IMAGES if self.data else 0

    def torch_device(self) -> torch.device:
        try:
            return torch.device(self.device)
        except RuntimeError:
            raise YoloPruneError(f"--device {self.device!r} is not a device name") from None


@dataclass
class PruneOutcome:
    plan: PrunePlan
    report: dict | None  # None with plan_only
    paths: dict[str, Path] = field(default_factory=dict)
    auto: AutoPruneResult | None = None
    pruned: Darknet | None = None


def _make_recalibrator(settings: PruneSettings, img_size: int):
    from yoloprune.data.dataset import create_dataloader, load_data_spec
    from yoloprune.prune.calibrate import recalibrate_batchnorm

    spec = load_data_spec(settings.data)

    def recalibrate(model: Darknet) -> int:
        loader = create_dataloader(spec.train, img_size, settings.batch, augment=False, workers=settings.workers, shuffle=True, skip_bad=True, seed=0)
        return recalibrate_batchnorm(model, loader, settings.calibration_images(), settings.torch_device())

    return recalibrate


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that a run could not replace without deleting the user's own files:
    one holding anything but the files of `OUTPUT_FILES`, or something that is not a folder."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise YoloPruneError(f"{out_dir}: the output path exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in OUTPUT_FILES or not p.is_file())
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise YoloPruneError(
            f"{out_dir}: not replacing this output folder, it holds files prune did not write ({listed}); "
            "move them or choose another --out"
        )


def run_pruning(model: Darknet, settings: PruneSettings, out_dir: str | Path, source: str | None = None) -> PruneOutcome:
    """Plan, save the plan, apply, (re-calibrate,) and write every output into `out_dir`, which is
    created, or replaced as a whole at the end (see the module docstring and `check_output_folder`)."""
    settings.validate()
    out_dir = Path(out_dir)
    check_output_folder(out_dir)  # now rather than after a search that can take minutes
    model = model.eval()
    img_size = settings.img_size or model.cfg.net.width
    recalibrate = _make_recalibrator(settings, img_size) if settings.calibration_images() else None
    start = time.perf_counter()
    search_blocks = settings.layers == "auto"
    blocks = [] if search_blocks else plan_layer_prune(model, settings.layers)
    common = dict(min_keep=settings.min_keep, round_to=settings.round_to, img_size=img_size, removed_blocks=blocks)
    auto_result = None
    if settings.max_map_drop is not None:
        evaluate = make_map50_evaluator(settings.data, img_size, settings.batch, settings.torch_device(), settings.workers)
        auto_result = search_max_pruning(
            model, evaluate, settings.max_map_drop, settings.mode, steps=settings.auto_steps, recalibrate=recalibrate,
            search_blocks=search_blocks, **common,
        )
        plan = auto_result.plan
    else:
        plan = plan_channel_prune(
            model,
            settings.mode,
            ratio=settings.ratio,
            threshold=settings.threshold,
            target_flops=settings.target_flops,
            target_params=settings.target_params,
            **common,
        )
    if source is not None:
        plan.settings["source"] = source
    plan_seconds = time.perf_counter() - start
    pruned = report = None
    # A symbolic link to a folder stays a link: the folder it points to is the one replaced.
    with atomic_directory(out_dir.resolve() if out_dir.is_symlink() else out_dir) as staging:
        # The plan first, as decided; if a later step fails the whole staging folder goes, and a rerun
        # with --plan-only shows the plan.
        plan.save(staging / "plan.json")
        written = ["plan.json"]
        if not settings.plan_only:
            pruned, report = prune_model(model, plan)
            report["plan_seconds"] = plan_seconds
            if recalibrate is not None:
                report["calibrated_images"] = recalibrate(pruned)
            if auto_result is not None:
                report["auto"] = auto_result.to_dict()
            written += list(write_prune_outputs(staging, pruned, report, plan))
        check_output_folder(out_dir)  # again: a file put there during the run would be deleted with the old folder
    paths = {name: out_dir / name for name in written}
    return PruneOutcome(plan, report, paths, auto_result, pruned)
