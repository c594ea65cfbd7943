"""The demo's report.md: the comparison table, what each stage did, the figures, and the command
lines that reproduce every stage (those the pipeline recorded as it ran them)."""

from __future__ import annotations

import os
import platform
from datetime import datetime, timezone
from pathlib import Path

from yoloprune.fileio import atomic_write_text

FIGURE_CAPTIONS = {
    "gamma_quantiles": "Quantiles of |γ| during sparsity training",
    "gamma_traces": "γ of the first BN layer during sparsity training",
    "gamma_hist": "Distribution of |γ| per epoch",
    "channels": "Channels per layer before and after pruning",
}


def describe_machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.system()} {platform.release()}"


def _comparison(p, bench, table: str) -> list[str]:
    by_name = {m.name: m for m in bench.models}
    base, pruned, tuned = by_name["baseline"], by_name["pruned"], by_name["finetuned"]

    def ratios(label: str, key: str) -> str:
        return f"| {label} | {getattr(pruned, key) / getattr(base, key):.3f}x | {getattr(tuned, key) / getattr(base, key):.3f}x |"

    return [
        "## Baseline vs pruned vs finetuned",
        "",
        table,
        "Ratios in brackets are to the baseline. *pruned* is the compact model straight out of `yoloprune prune` "
        "(no finetuning: removed channels' constant outputs are folded into the next layers); *finetuned* is it after "
        f"{p.finetune_epochs} epoch(s) of training distilled from the baseline.",
        "",
        "| | pruned / baseline | finetuned / baseline |",
        "|---|---|---|",
        ratios("params", "params"),
        ratios("MACs", "gmacs"),
        ratios("latency (PyTorch)", "latency_ms_torch"),
        ratios("latency (ONNX Runtime)", "latency_ms_ort"),
        f"| mAP@0.5 change | {map_change(base, pruned)} | {map_change(base, tuned)} |",
        "",
        "mAP@0.5 change: the difference to the baseline on the same test images, with its 95 % paired bootstrap "
        "interval (every resample draws the same images for both models); an interval that holds 0 is no measurable change.",
        "",
    ]


def map_change(base, other) -> str:
    """The mAP@0.5 difference with its paired 95 % interval; one that holds 0 is no measurable change."""
    text = f"{other.map50 - base.map50:+.4f}"
    interval = other.map50_delta_ci
    if interval is None:
        return text
    text += f" ({interval[0]:+.4f} to {interval[1]:+.4f})"
    return f"{text}: no measurable change" if interval[0] <= 0 <= interval[1] else text


def _what_was_done(p, out_dir: Path, prune_report, small_gamma_share: float) -> list[str]:
    threshold = prune_report.threshold if prune_report.threshold is not None else float("nan")
    return [
        "## What was done",
        "",
        f"- Dataset: synthetic hands, {p.train_images} train / {p.val_images} valid / {p.test_images} test images at {p.img_size} px "
        "(`yoloprune data synth`); best.pt and the pruning search read the valid images, every reported mAP the test images.",
        f"- Model: YOLOv3 topology at width x{p.width_multiple:g} (`{out_dir / 'model.cfg'}`), trained from scratch for "
        f"{p.baseline_epochs} epochs ({p.optimizer}, lr {p.lr:g}, warmup + cosine).",
        f"- Sparsity training: {p.sparse_epochs} epochs from the baseline with s = {p.sparsity:g} on every BN γ"
        + (f", s / 100 after {p.sparsity_decay:.0%} of the epochs" if p.sparsity_decay else "")
        + (f", γ learning rate x{p.gamma_lr_scale:g}" if p.gamma_lr_scale != 1 else "")
        + f"; at the end {small_gamma_share:.1%} of |γ| are below 0.01.",
        "- Pruning: `--mode full` (shortcut-coupled convs pruned together)"
        + (", residual blocks removed first (as many as keep mAP@0.5 within half the tolerance)" if p.layers == "auto" else "")
        + f", then the most channels whose validation mAP@0.5 stays within {p.max_map_drop} of the sparse model "
        f"(bisection, {p.auto_steps} evaluations); threshold |γ| = {threshold:.4g}, "
        f"{len(prune_report.removed_blocks)} residual block(s) removed, kept channels rounded up to multiples of {p.round_to}, "
        f"BN statistics re-calibrated on {prune_report.calibrated_images or 0} training images (every trial of the search too).",
        f"- Finetuning: {p.finetune_epochs} epochs at lr {p.lr * p.finetune_lr_ratio:g}, distilled from the baseline.",
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
        f"The commands that ran each stage, in order (`{out_dir / 'model.cfg'}` is the model the demo writes first).",
        "",
        "```bash",
        *commands,
        "```",
        "",
    ]


def write_report(run, bench, table: str, prune_report, sparse_metrics_csv: Path, figures: dict[str, Path], seconds: float) -> Path:
    """Write `run.out/report.md` for a finished `DemoPipeline` run and return its path."""
    from yoloprune.train.metrics import read_metrics_csv

    p, out_dir = run.profile, run.out
    rows = [row for row in read_metrics_csv(sparse_metrics_csv) if row.get("gamma_frac_small") is not None]
    small = rows[-1]["gamma_frac_small"] if rows else float("nan")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    stages = ", ".join(f"{name} {value / 60:.1f}" for name, value in run.stage_seconds.items())
    lines = [
        "# yoloprune demo report",
        "",
        f"Run {when} on {describe_machine()}; profile `{p.name}`; wall time {seconds / 60:.1f} min ({stages} min).",
        "",
        *_comparison(p, bench, table),
        *_what_was_done(p, out_dir, prune_report, small),
        *_figures(figures, out_dir),
        *_reproduce(run.commands, out_dir),
    ]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
