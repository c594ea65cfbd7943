"""A run's report.md: the delivered model against the baseline, the comparison table, what each
stage did, the figures, the command lines that reproduce every stage (those the pipeline recorded
as it ran them) and the commands that use the delivered model."""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from statistics import fmean

import torch

from yoloprune.eval.bootstrap import bootstrap_difference_intervals
from yoloprune.export.settings import PARITY_TOLERANCE
from yoloprune.fileio import atomic_write_text
from yoloprune.pipelines.run.profiles import PROFILES, Profile
from yoloprune.pipelines.run.recover import ROW_NAMES, choice_text
from yoloprune.train.metrics import read_metrics_csv

FIGURE_CAPTIONS = {
    "gamma_quantiles": "Quantiles of |γ| during sparsity training",
    "gamma_traces": "γ of the first BN layer during sparsity training",
    "gamma_hist": "Distribution of |γ| per epoch",
    "channels": "Channels per layer before and after pruning",
}


@dataclass
class RunRecord:
    """What the stages of one run produced, for its report."""

    dataset_text: str  # one phrase: which images, how many, at what size
    prune_report: object  # prune.report.PruneReport
    sparse_metrics_csv: Path
    valid_scores: dict = field(default_factory=dict)  # recovery -> recover.ValidScore
    chosen: str = ""  # the recovery delivered
    bench: object = None  # bench.benchmark.BenchResult
    table: str = ""
    runtimes: dict[str, float] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0
    delivered: object = None  # recover.DeliveredModel


def describe_machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} thread(s)), {platform.system()} {platform.release()}"


ROW_MEANINGS = {
    "baseline": "the detector as trained (best validation epoch)",
    "baseline-equal-epochs": "control: the baseline trained on without the penalty for the sparse + finetune epochs",
    "sparse": "after sparsity training, the model that is pruned",
    "pruned": "the compact model straight out of `yoloprune prune`, no finetuning (removed channels' constant "
    "outputs folded into the next layers)",
    "finetuned": "the pruned model after finetuning, distilled from the baseline",
    "scratch": "the pruned architecture trained from random init with the baseline's recipe for the pipeline's total epochs",
}

# (row, reference, what the difference asks)
QUESTIONS = (
    ("finetuned", "baseline", "does the finetuned model detect as well as the detector it came from?"),
    ("scratch", "baseline", "does the pruned architecture trained from scratch detect as well as the baseline?"),
    ("finetuned", "baseline-equal-epochs", "... as well as that detector given the same training epochs?"),
    ("finetuned", "scratch", "is pruning worth more than training the small architecture from scratch?"),
    ("finetuned int8", "finetuned", "does INT8 keep the finetuned model's accuracy?"),
    ("scratch int8", "scratch", "does INT8 keep the scratch model's accuracy?"),
    ("pruned", "sparse", "does the pruning search keep its promise on images it never saw?"),
)


def _row_meaning(name: str) -> str:
    if name.endswith(" int8"):
        return f"the {name[:-5]} model's ONNX export quantized to INT8 (`export --int8`), run in ONNX Runtime"
    return ROW_MEANINGS[name]


def _comparison(bench, table: str) -> list[str]:
    by_name = {m.name: m for m in bench.models}
    base = by_name["baseline"]
    lines = [
        "## Models",
        "",
        table,
        "Ratios in brackets are to the baseline.",
        "",
        *(f"- *{name}*: {_row_meaning(name)}." for name in by_name),
        "",
    ]
    compared = [name for name in by_name if name not in ("baseline", "baseline-equal-epochs", "sparse")]
    lines += ["| | " + " | ".join(f"{name} / baseline" for name in compared) + " |", "|---" * (len(compared) + 1) + "|"]
    for label, key in (("params", "params"), ("MACs", "gmacs"), ("latency (PyTorch)", "latency_ms_torch"), ("latency (ONNX Runtime)", "latency_ms_ort")):
        ratios = [getattr(by_name[name], key) for name in compared]
        lines.append(f"| {label} | " + " | ".join("-" if value is None else f"{value / getattr(base, key):.3f}x" for value in ratios) + " |")
    lines += [
        "",
        "## What the pipeline beats and what it does not",
        "",
        "Each difference is measured on the same test images for both models, with its 95 % paired bootstrap interval "
        "(every resample draws the same images for both); an interval that holds 0 is no measurable change.",
        "",
        "| question | models | mAP@0.5 change | mAP@0.5:0.95 change | verdict |",
        "|---|---|---|---|---|",
    ]
    for row, reference, question in QUESTIONS:
        if row in by_name and reference in by_name:
            a, b = by_name[row], by_name[reference]
            delta = paired_change(a, b)
            lines.append(
                f"| {question} | {row} − {reference} | {_change_text(a.map50 - b.map50, delta.get('map50_delta_ci'))} "
                f"| {_change_text(a.map - b.map, delta.get('map_delta_ci'))} | {verdict(delta.get('map50_delta_ci'), delta.get('map_delta_ci'), row, reference)} |"
            )
    lines.append("")
    return lines


def _delivered(record: RunRecord, recover: str) -> list[str]:
    """The lead: the delivered model against the baseline, on the reported split, and where it is."""
    by_name = {m.name: m for m in record.bench.models}
    row = ROW_NAMES[record.chosen]
    base, model = by_name["baseline"], by_name[row]  # bench's intervals of each row's difference are to the baseline
    paths = record.delivered
    lines = [
        "## The delivered model",
        "",
        f"`{paths.folder}`: the *{row}* model as `{paths.cfg.name}` + `{paths.weights.name}` (darknet, OpenCV DNN), "
        f"`{paths.pt.name}` and `{paths.onnx.name}` (ONNX Runtime's boxes checked against PyTorch's within {PARITY_TOLERANCE:g}). "
        f"Measured on the {record.bench.split} split ({record.bench.images} images); changes with their 95 % paired bootstrap interval.",
        "",
        f"| | baseline | delivered ({row}) | delivered vs baseline |",
        "|---|---|---|---|",
        f"| MACs | {base.gmacs:.4f} G | {model.gmacs:.4f} G | {model.gmacs / base.gmacs:.3f}x |",
        f"| params | {base.params:,} | {model.params:,} | {model.params / base.params:.3f}x |",
        f"| latency (ONNX Runtime) | {base.latency_ms_ort:.2f} ms | {model.latency_ms_ort:.2f} ms | {model.latency_ms_ort / base.latency_ms_ort:.3f}x |",
        f"| mAP@0.5 | {base.map50:.4f} | {model.map50:.4f} | {_change_text(model.map50 - base.map50, model.map50_delta_ci)} |",
        f"| mAP@0.5:0.95 | {base.map:.4f} | {model.map:.4f} | {_change_text(model.map - base.map, model.map_delta_ci)} |",
        "",
        choice_text(recover, record.chosen, record.valid_scores),
        "",
    ]
    return lines


def paired_change(model, reference) -> dict:
    """The paired bootstrap intervals of `model − reference` (empty when either has no matches)."""
    if model.matches is None or reference.matches is None:
        return {}
    return bootstrap_difference_intervals(model.matches, reference.matches)


def _change_text(change: float, interval) -> str:
    return f"{change:+.4f}" + ("" if interval is None else f" ({interval[0]:+.4f} to {interval[1]:+.4f})")


def _better(interval, row: str, reference: str) -> str | None:
    """Who a paired interval says is better; None where it holds 0 (or there is none)."""
    if interval is not None and interval[0] > 0:
        return row
    if interval is not None and interval[1] < 0:
        return reference
    return None


def _better_text(better: str | None) -> str:
    return "no measurable change" if better is None else f"{better} better"


def verdict(interval50, interval5095, row: str, reference: str) -> str:
    """Plain words for the paired intervals of both metrics: who is better, or no measurable change;
    where the metrics disagree, each is named."""
    if interval50 is None and interval5095 is None:
        return "no interval"
    better50, better5095 = _better(interval50, row, reference), _better(interval5095, row, reference)
    if better50 == better5095:
        return _better_text(better50)
    return f"mAP@0.5: {_better_text(better50)}; mAP@0.5:0.95: {_better_text(better5095)}"


def _runtimes(scores: dict[str, float], split: str) -> list[str]:
    names = {"torch": "PyTorch", "onnxruntime": "ONNX Runtime (its ONNX export)", "opencv": "OpenCV DNN (its darknet cfg + weights)"}
    spread = max(scores.values()) - min(scores.values())
    return [
        "## The pruned model in three runtimes",
        "",
        f"{split} mAP@0.5 of *pruned*, with yoloprune's pre- and post-processing around each runtime: "
        + ", ".join(f"{names[name]} {value:.4f}" for name, value in scores.items())
        + f"; largest difference {spread:.4f}.",
        "",
    ]


def _model_description(cfg_path: Path) -> str:
    """What the cfg's first comment line says of the model (the builder writes e.g. "YOLOv3 topology,
    width x0.25, 1 class"), up to its class count; else the cfg's file name."""
    first = cfg_path.read_text(encoding="utf-8").splitlines()[0]
    if not first.startswith("#"):
        return cfg_path.name
    return re.split(r", \d+ class", first.lstrip("# "))[0]


def _calibration_text(prune_report) -> str:
    if prune_report.calibrated_images:
        return f"BN statistics re-calibrated on {prune_report.calibrated_images} training images (every trial of the search too)."
    auto = prune_report.auto or {}
    if auto.get("map50_recalibrated") is not None:
        return (f"BN statistics not re-calibrated: re-calibration lowered the sparse model's validation mAP@0.5 "
                f"from {auto['map50_before']:.4f} to {auto['map50_recalibrated']:.4f}.")
    return "BN statistics not re-calibrated."


def _anchor_text(fit) -> str:
    if fit is None:
        return ""
    return (f", anchors fitted to the {fit.boxes} training boxes (mean best IoU {fit.mean_iou:.3f}; the builder's "
            f"COCO-scaled anchors: {fit.previous_mean_iou:.3f})")


# A baseline has plateaued when its validation mAP@0.5 gained less than this over the last quarter
# of its epochs: the mean of its last two evaluations against the mean of the two evaluations that
# end at three quarters of the epochs (two each, because one evaluation on 200 images moves by ~0.03).
PLATEAU_GAIN = 0.01


def plateau_gain(rows: list[dict], epochs: int) -> tuple[float, int, int] | None:
    """(gain, epoch at ¾, last epoch) of the validation mAP@0.5 in a metrics.csv's `rows`, as
    `PLATEAU_GAIN` defines it; None when there are too few evaluations before ¾ of the epochs."""
    evaluated = [(row["epoch"], row["map50"]) for row in rows if row.get("map50") is not None]
    before = [(epoch, value) for epoch, value in evaluated if epoch <= epochs * 3 / 4]
    if len(before) < 2 or len(evaluated) - len(before) < 2:
        return None
    gain = fmean(value for _, value in evaluated[-2:]) - fmean(value for _, value in before[-2:])
    return gain, before[-1][0], evaluated[-1][0]


def _plateau_text(metrics_csv: Path, epochs: int) -> str:
    found = plateau_gain(read_metrics_csv(metrics_csv), epochs) if metrics_csv.is_file() else None
    if found is None:
        return ""
    gain, quarter_epoch, last_epoch = found
    state = "plateaued" if gain < PLATEAU_GAIN else "still rising"
    return (f"; validation mAP@0.5 gained {gain:+.3f} from epoch {quarter_epoch} to {last_epoch} (mean of two "
            f"evaluations each): {state}")


def _baseline_text(run, out_dir: Path) -> str:
    p, cfg = run.profile, out_dir / "model.cfg"
    if run.given_weights:
        return f"- Model: {_model_description(cfg)} (`{cfg}`); the baseline is the weights given to the run (not trained here)."
    return (
        f"- Model: {_model_description(cfg)} (`{cfg}`)" + _anchor_text(run.anchor_fit) + ", trained from scratch for "
        f"{p.baseline_epochs} epochs ({p.optimizer}, lr {p.lr:g}, warmup + cosine"
        + ("" if p.ema_decay is None else f", weights averaged (EMA, decay {p.ema_decay:g}) for evaluation and the saved model") + ")"
        + _plateau_text(out_dir / "baseline" / "metrics.csv", p.baseline_epochs) + "."
    )


def _recovery_text(run, out_dir: Path) -> list[str]:
    p, lines = run.profile, []
    if run.recover in ("finetune", "both"):
        lines.append(f"- Finetuning: {p.finetune_epochs} epochs at lr {p.lr * p.finetune_lr_ratio:g}, distilled from the baseline.")
    scratch = (f"*scratch* trains `{out_dir / 'prune' / 'pruned.cfg'}` from random init for {p.total_epochs} epochs with the "
               "baseline's recipe")
    if run.recover in ("scratch", "both"):
        lines.append(f"- From scratch: {scratch}" + (" (also the control of that name)." if run.controls else "."))
    if run.controls:
        lines.append(
            f"- Controls: *baseline-equal-epochs* continues the baseline for {p.sparse_epochs + p.finetune_epochs} epochs with the "
            "sparsity stage's recipe and no penalty" + ("." if run.recover != "finetune" else f"; {scratch}.")
        )
    return lines


def _what_was_done(run, out_dir: Path, record: RunRecord, small_gamma_share: float) -> list[str]:
    p, prune_report = run.profile, record.prune_report
    threshold = prune_report.threshold if prune_report.threshold is not None else float("nan")
    return [
        "## What was done",
        "",
        f"- Dataset: {record.dataset_text}; best.pt, the pruning search and the choice of recovery read the valid images, "
        f"every reported mAP the {record.bench.split} images.",
        _baseline_text(run, out_dir),
        f"- Sparsity training: {p.sparse_epochs} epochs from the baseline with s = {p.sparsity:g} on every BN γ"
        + (f", s / 100 after {p.sparsity_decay:.0%} of the epochs" if p.sparsity_decay else "")
        + (f", γ learning rate x{p.gamma_lr_scale:g}" if p.gamma_lr_scale != 1 else "")
        + f"; at the end {small_gamma_share:.1%} of |γ| are below 0.01.",
        "- Pruning: `--mode full` (shortcut-coupled convs pruned together)"
        + (", residual blocks removed first (as many as keep mAP@0.5 within half the tolerance)" if p.layers == "auto" else "")
        + f", then the most channels whose validation mAP@0.5 stays within {p.max_map_drop}"
        + ("" if p.max_map5095_drop is None else f" (and mAP@0.5:0.95 within {p.max_map5095_drop})")
        + " of the sparse model "
        f"(bisection, {p.auto_steps} evaluations); threshold |γ| = {threshold:.4g}, "
        f"{len(prune_report.removed_blocks)} residual block(s) removed, kept channels rounded up to multiples of {p.round_to}, "
        + _calibration_text(prune_report),
        *_recovery_text(run, out_dir),
        "",
    ]


def _figures(figures: dict[str, Path], out_dir: Path) -> list[str]:
    lines = ["## Figures", ""]
    for stem, caption in FIGURE_CAPTIONS.items():
        if stem in figures:
            lines += [f"### {caption}", "", f"![{caption}]({figures[stem].relative_to(out_dir)})", ""]
    return lines


def _reproduce(commands: list[str], out_dir: Path) -> list[str]:
    return [
        "## Reproduce stage by stage",
        "",
        f"The commands that ran each stage, in order (`{out_dir / 'model.cfg'}` is the model the run writes first).",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]


def _use(record: RunRecord, data: str, img_size: int, out_dir: Path) -> list[str]:
    """The commands that score and run the delivered model."""
    model = record.delivered.pt
    return [
        "## Use the delivered model",
        "",
        "```bash",
        f"yoloprune eval --weights {model} --data {data} --split {record.bench.split} --img-size {img_size}",
        f"yoloprune detect --weights {model} --source IMAGES --out {out_dir / 'detections'} --img-size {img_size}",
        "```",
        "",
        f"`IMAGES`: an image or a folder of images. `{record.delivered.cfg.name}` + `{record.delivered.weights.name}` load in darknet "
        f"and OpenCV DNN, `{record.delivered.onnx.name}` in ONNX Runtime.",
        "",
    ]


def profile_text(profile: Profile) -> str:
    """`profile `NAME`` and the settings this run changed from the named profile's."""
    named = PROFILES.get(profile.name)
    changed = [f"{f.name} {getattr(profile, f.name)}" for f in fields(profile) if named and getattr(profile, f.name) != getattr(named, f.name)]
    return f"profile `{profile.name}`" + (f" with {', '.join(changed)}" if changed else "")


def write_report(run, record: RunRecord, data: str) -> Path:
    """Write `run.out/report.md` for a finished run (`pipeline.RunPipeline`) and return its path."""
    p, out_dir = run.profile, run.out
    rows = [row for row in read_metrics_csv(record.sparse_metrics_csv) if row.get("gamma_frac_small") is not None]
    small = rows[-1]["gamma_frac_small"] if rows else float("nan")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = ", ".join(f"{name} {value / 60:.1f}" for name, value in run.stage_seconds.items())
    lines = [
        "# yoloprune run report",
        "",
        f"Run {when} on {describe_machine()}; {profile_text(p)}; wall time {record.seconds / 60:.1f} min ({stages} min).",
        "",
        *_delivered(record, run.recover),
        *_comparison(record.bench, record.table),
        *_runtimes(record.runtimes, record.bench.split),
        *_what_was_done(run, out_dir, record, small),
        *_figures(record.figures, out_dir),
        *_reproduce(run.commands, out_dir),
        *_use(record, data, p.img_size, out_dir),
    ]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
