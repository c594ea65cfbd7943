"""`compare`: prune one sparse-trained model with every pruner at every MACs budget, then score each
pruned model as it comes out and after BN re-calibration, on the same images.

Re-calibration draws its training images once (`image_loader`, fixed shuffle seed) and gives the
very same batches to every model, the unpruned one included (a control: what re-estimating BN
statistics does by itself). Scores are COCO mAP with 95 % bootstrap intervals over the images
(`eval.validator.Validator`); latency is batch 1, all models timed interleaved.
"""

from __future__ import annotations

import copy
import itertools
import logging
from dataclasses import dataclass, field

import torch

from yoloprune.bench.profile import time_interleaved, torch_runner, torch_threads
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.darknet.weights import load_model
from yoloprune.data.dataset import image_loader
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator
from yoloprune.pipelines.compare.pruners import (
    TP_IMPORTANCES,
    MacsCounter,
    Pruner,
    rounding_statement,
    torch_pruning_pruner,
    torch_pruning_version,
    yoloprune_pruner,
)
from yoloprune.pipelines.compare.settings import CompareSettings
from yoloprune.prune.calibrate import recalibrate_batchnorm
from yoloprune.settings import resolve_device

log = logging.getLogger(__name__)

UNPRUNED = "sparse model, unpruned"


@dataclass
class CompareRow:
    target: float | None  # None: the unpruned model
    key: str
    pruner: str
    accepted: bool
    macs_ratio: float | None
    params_ratio: float | None = None
    note: str = ""
    # {"uncalibrated": DetectionMetrics.to_dict() less matches, "calibrated": ...}; empty when missed
    metrics: dict = field(default_factory=dict)
    latency_ms: float | None = None
    latency_ratio: float | None = None
    model: Darknet | None = field(default=None, repr=False)  # the pruned model, before re-calibration

    def to_dict(self) -> dict:
        return {name: value for name, value in vars(self).items() if name != "model"}


@dataclass
class CompareResult:
    settings: CompareSettings
    img_size: int
    split: str
    images: int
    calibration_images: int
    macs_unpruned: int
    params_unpruned: int
    tp_version: str | None
    rounding: str
    threads: int
    rows: list[CompareRow]


def build_pruners(settings: CompareSettings, img_size: int, macs: MacsCounter, tp_version: str | None) -> list[Pruner]:
    """yoloprune safe, full, full + blocks; Torch-Pruning's default and like-for-like importances."""
    common = dict(round_to=settings.round_to, macs=macs, tolerance=settings.tolerance)
    pruners = [yoloprune_pruner("safe", 0, img_size=img_size, **common), yoloprune_pruner("full", 0, img_size=img_size, **common)]
    if settings.layers:
        pruners.append(yoloprune_pruner("full", settings.layers, img_size=img_size, **common))
    if tp_version is None:
        log.warning("torch-pruning is not installed (pip install 'torch-pruning>=1.5'): its rows are left out")
    else:
        pruners += [torch_pruning_pruner(key, steps=settings.tp_steps, **common) for key in TP_IMPORTANCES]
    return pruners


def _calibration_batches(validator: Validator, settings: CompareSettings, img_size: int) -> list:
    """The first `calibrate` shuffled training images, held so that every model sees the same ones."""
    loader = image_loader(validator.spec, "train", img_size, settings.batch, settings.workers, shuffle=True, skip_bad=True, device=validator.device)
    return list(itertools.islice(loader, -(-settings.calibrate // settings.batch)))


def compare_pruners(settings: CompareSettings) -> CompareResult:
    """Every pruner at every budget of `settings`, scored without and with BN re-calibration."""
    with torch_threads(settings.threads):
        return _compare(settings)


def _compare(settings: CompareSettings) -> CompareResult:
    device = resolve_device(settings.device)
    model = load_model(settings.cfg, settings.weights, device).eval()
    img_size = settings.img_size or model.cfg.net.width
    evaluation = EvalSettings(
        data=settings.data, split=settings.split, img_size=img_size, batch=settings.batch, workers=settings.workers,
        device=settings.device, intervals=True,
    )
    validator = Validator(evaluation, progress=False)
    batches = _calibration_batches(validator, settings, img_size)
    macs = MacsCounter(model, img_size)
    tp_version = torch_pruning_version()
    pruners = build_pruners(settings, img_size, macs, tp_version)

    def score(row: CompareRow, pruned: Darknet) -> None:
        row.metrics["uncalibrated"] = _metrics(validator(pruned))
        calibrated = copy.deepcopy(pruned)
        recalibrate_batchnorm(calibrated, batches, settings.calibrate, device)
        row.metrics["calibrated"] = _metrics(validator(calibrated))

    base = CompareRow(None, "unpruned", UNPRUNED, True, 1.0, 1.0, model=model)
    score(base, model)
    rows = [base]
    total = len(settings.targets) * len(pruners)
    for number, (target, pruner) in enumerate(itertools.product(settings.targets, pruners), start=1):
        outcome = pruner.prune(model, target)
        row = CompareRow(target, pruner.key, pruner.label, outcome.accepted, outcome.macs_ratio, note=outcome.note, model=outcome.model)
        if outcome.accepted:
            row.params_ratio = count_parameters(outcome.model) / count_parameters(model)
            score(row, outcome.model)
        rows.append(row)
        _log_row(number, total, row)
    if settings.runs:
        _add_latency(rows, img_size, settings.runs, device)
    images = rows[0].metrics["uncalibrated"]["images"]
    return CompareResult(
        settings=settings, img_size=img_size, split=validator.split, images=images,
        calibration_images=min(settings.calibrate, sum(len(batch[0]) for batch in batches)),
        macs_unpruned=macs.base, params_unpruned=count_parameters(model), tp_version=tp_version,
        rounding=rounding_statement(settings.round_to, tp_version), threads=torch.get_num_threads(), rows=rows,
    )


def _metrics(metrics) -> dict:
    values = metrics.to_dict()
    return {name: values[name] for name in ("map50", "map50_ci", "map", "map_ci", "images")}


def _log_row(number: int, total: int, row: CompareRow) -> None:
    if not row.accepted:
        log.info("[%d/%d] MACs %g, %s: missed (%s)", number, total, row.target, row.pruner, row.note)
        return
    before, after = row.metrics["uncalibrated"], row.metrics["calibrated"]
    log.info(
        "[%d/%d] MACs %g, %s: x%.4f MACs, x%.3f params, mAP@0.5 %.4f, %.4f re-calibrated (%s)",
        number, total, row.target, row.pruner, row.macs_ratio, row.params_ratio, before["map50"], after["map50"], row.note,
    )


def _add_latency(rows: list[CompareRow], img_size: int, runs: int, device) -> None:
    """Median batch-1 latency of every accepted model (re-calibration changes no shape), all timed
    interleaved so that the machine's slow patches hit every model alike."""
    timed = [row for row in rows if row.model is not None]
    x = torch.rand(1, 3, img_size, img_size, device=device)
    times = time_interleaved({str(i): torch_runner(row.model, x) for i, row in enumerate(timed)}, runs=runs, warmup=5)
    for i, row in enumerate(timed):
        values = sorted(times[str(i)])
        row.latency_ms = values[len(values) // 2]
    for row in timed:
        row.latency_ratio = row.latency_ms / timed[0].latency_ms
