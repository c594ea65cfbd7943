"""One pruning run, as the `prune` command and the demo perform it:
plan (layer blocks, then channels by ratio / threshold / budget / mAP tolerance) → plan.json →
apply with constant folding → optional BN re-calibration → pruned.cfg/.weights/.pt, report.json (the
caller draws channels.png from the report, `viz.channels.plot_channels`).

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
from yoloprune.fileio import atomic_directory, check_replaceable_folder
from yoloprune.prune.apply import prune_model, zero_removed_gammas
from yoloprune.prune.auto import AutoPruneResult, as_map_scores, search_max_pruning
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.importance import IMPORTANCES
from yoloprune.prune.latency import LatencyMeter, measure_latency
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.report import PRUNED_FILES, PruneReport, build_prune_report, write_prune_outputs
from yoloprune.prune.settings import POINT_ESTIMATE, PruneSettings
from yoloprune.settings import resolve_device

log = logging.getLogger(__name__)

OUTPUT_FILES = ("plan.json", *PRUNED_FILES, "channels.png")  # all a pruning run writes into its output folder


@dataclass
class PruneOutcome:
    plan: PrunePlan
    report: PruneReport | None  # None with plan_only
    paths: dict[str, Path] = field(default_factory=dict)
    auto: AutoPruneResult | None = None
    pruned: Darknet | None = None


def _make_recalibrator(settings: PruneSettings, img_size: int):
    from yoloprune.data.dataset import image_loader
    from yoloprune.data.spec import load_data_spec
    from yoloprune.prune.calibrate import recalibrate_batchnorm

    spec = load_data_spec(settings.data)
    device = resolve_device(settings.device)

    def recalibrate(model: Darknet) -> int:
        # The same shuffled training images for every trial (the loader's seed is fixed).
        loader = image_loader(spec, "train", img_size, settings.batch, settings.workers, shuffle=True, skip_bad=True, device=device)
        return recalibrate_batchnorm(model, loader, settings.calibration_images(), device)

    return recalibrate


def make_map_evaluator(settings, img_size: int, matches: bool = False):
    """(mAP@0.5, mAP@0.5:0.95) on the valid split of `settings.data`, from one pass, as a function of
    the model (the search and slim's checks choose by them, so they never read the test split).
    `settings`: a `PruneSettings` or `SlimSettings` (its data, batch, workers and device).
    `matches=True`: the model's `DetectionMetrics` instead, with the per-image matches that the
    search's paired bootstrap reads (`prune.auto.PairedRule`), from the same one pass."""
    from yoloprune.eval.settings import EvalSettings
    from yoloprune.eval.validator import Validator

    evaluation = EvalSettings(data=settings.data, split="valid", intervals=matches, img_size=img_size, batch=settings.batch, workers=settings.workers, device=settings.device)
    validator = Validator(evaluation, progress=False)
    return validator if matches else validator.maps


def _apply(model: Darknet, plan: PrunePlan, evaluate, recalibrate) -> tuple[Darknet, PruneReport]:
    """The compact model and its report; with an evaluator (data given), the report measures folding
    on the validation images (the zeroed-γ network against the compact one, before BN re-calibration)."""
    start = time.perf_counter()
    pruned = prune_model(model, plan)
    report = build_prune_report(model, pruned, plan, apply_seconds=time.perf_counter() - start)
    if evaluate is not None:
        report.folding = {
            "map50_zeroed_gamma": as_map_scores(evaluate(zero_removed_gammas(model, plan))).map50,
            "map50_compact": as_map_scores(evaluate(pruned)).map50,
        }
    if recalibrate is not None:
        report.calibrated_images = recalibrate(pruned)
    return pruned, report


def check_output_folder(out_dir: Path) -> None:
    """Refuse an output folder that a run could not replace without deleting the user's own files:
    one holding anything but the files of `OUTPUT_FILES`, or something that is not a folder."""
    check_replaceable_folder(out_dir, lambda p: p.name in OUTPUT_FILES and p.is_file(), "prune")


def run_pruning(model: Darknet, settings: PruneSettings, out_dir: str | Path, source: str | None = None) -> PruneOutcome:
    """Plan, save the plan, apply, (re-calibrate,) and write every output into `out_dir`, which is
    created, or replaced as a whole at the end (see the module docstring and `check_output_folder`).
    The channels chart (channels.png) is the caller's to draw from the report (`viz.channels.plot_channels`)."""
    settings.validate()
    out_dir = Path(out_dir)
    check_output_folder(out_dir)  # now rather than after a search that can take minutes
    model = model.eval()
    img_size = settings.img_size or model.cfg.net.width
    recalibrate = _make_recalibrator(settings, img_size) if settings.calibration_images() else None
    # One validation loader for the search and the folding measurement.
    needs_evaluator = settings.data and (settings.max_map_drop is not None or not settings.plan_only)
    paired = settings.map_drop_confidence != POINT_ESTIMATE  # the search's bootstrap reads per-image matches
    evaluate = make_map_evaluator(settings, img_size, matches=paired) if needs_evaluator else None
    start = time.perf_counter()
    importance = IMPORTANCES[settings.importance]
    blocks = [] if settings.layers == "auto" else plan_layer_prune(model, settings.layers, importance=importance)
    common = dict(min_keep=settings.min_keep, round_to=settings.round_to, img_size=img_size, removed_blocks=blocks, importance=importance)
    meter = None
    if settings.target_latency is not None:
        meter = LatencyMeter(model, prune_model, settings.runtime or "ort", img_size, torch.get_num_threads())
    budget = settings.budget(meter)
    auto_result = None
    if settings.max_map_drop is not None:
        auto_result = search_max_pruning(
            model, evaluate, settings.max_map_drop, settings.mode, apply=prune_model, steps=settings.auto_steps,
            recalibrate=recalibrate, search_blocks=settings.layers == "auto", max_map5095_drop=settings.max_map5095_drop,
            limit=budget, confidence=settings.map_drop_confidence, **common,
        )
        plan = auto_result.plan
        recalibrate = recalibrate if auto_result.recalibrated else None
    else:
        plan = plan_channel_prune(model, settings.mode, budget, **common)
    plan.settings["importance"] = settings.importance  # the plan's threshold is in its units
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
            pruned, report = _apply(model, plan, evaluate, recalibrate)
            report.plan_seconds = plan_seconds
            if auto_result is not None:
                report.auto = auto_result.to_dict()
            if meter is not None:
                report.latency = _latency_report(model, pruned, plan, meter)
            written += list(write_prune_outputs(staging, pruned, report, plan))
        check_output_folder(out_dir)  # again: a file put there during the run would be deleted with the old folder
    paths = {name: out_dir / name for name in written}
    return PruneOutcome(plan, report, paths, auto_result, pruned)


def _latency_report(model: Darknet, pruned: Darknet, plan: PrunePlan, meter: LatencyMeter) -> dict:
    """The compact model's measured latency: the search's timing of the plan kept, or, where the mAP
    search chose a lighter plan, a timing of its own."""
    attempts = plan.settings.get("latency_attempts", [])
    chosen = [attempt for attempt in attempts if attempt["removed"] == plan.settings.get("ranked_removed")]
    if plan.settings.get("auto") or not chosen:
        measured = measure_latency(model, pruned, meter.runtime, meter.img_size, meter.threads, meter.runs, repeats=meter.repeats)
    else:
        measured = {name: chosen[0][name] for name in ("measured_ms_before", "measured_ms_after", "measured_ratio")}
    return {**meter.describe(), **measured, "attempts": len(attempts)}
