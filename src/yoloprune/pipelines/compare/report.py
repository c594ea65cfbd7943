"""What `compare` writes: OUT.md (the command that made it, how it was measured, the table),
OUT.json (the same rows, with intervals and notes) and OUT.png (mAP@0.5 against MACs)."""

from __future__ import annotations

import json
from pathlib import Path

from yoloprune import __version__
from yoloprune.eval.bootstrap import format_with_interval
from yoloprune.fileio import atomic_write_text
from yoloprune.pipelines.compare.run import UNPRUNED, CompareResult, CompareRow
from yoloprune.settings import to_arguments
from yoloprune.viz.figure import pyplot, save_png

COLUMNS = (
    "MACs budget", "pruner", "MACs", "params", "latency (torch)",
    "mAP@0.5 as pruned", "mAP@0.5 BN re-calibrated", "mAP@0.5:0.95 as pruned", "mAP@0.5:0.95 BN re-calibrated",
)


def command_line(result: CompareResult) -> str:
    """The `yoloprune compare ...` command that rebuilds these settings."""
    return " ".join(["yoloprune compare", *to_arguments(result.settings)])


def _header(result: CompareResult) -> list[str]:
    settings = result.settings
    latency = (
        f" Latency: PyTorch eager on {settings.device}, batch 1, {result.threads} thread{'s' if result.threads > 1 else ''}, median of {settings.runs} runs, "
        "all models interleaved."
        if settings.runs else ""
    )
    tools = f"yoloprune {__version__}" + (f", Torch-Pruning {result.tp_version}" if result.tp_version else ", Torch-Pruning not installed")
    return [
        f"Made by `{command_line(result)}` ({tools}).",
        "",
        f"Sparse model `{settings.weights}` at {result.img_size} px, pruned to each MACs budget without finetuning. "
        f"mAP on the {result.split} split ({result.images} images), ± half the 95 % bootstrap interval over images; "
        f"\"BN re-calibrated\" = batch-norm statistics re-estimated on the same {result.calibration_images} training images "
        "for every model (the unpruned row too). MACs are counted the same way for every row, from the model's own conv "
        f"modules, as a fraction of the unpruned {result.macs_unpruned / 1e9:.4f} G; a row is accepted iff "
        f"|MACs / budget - 1| <= {settings.tolerance:g}, else it is reported as missed. Channel rounding: "
        f"{result.rounding}{latency}",
        "",
    ]


def _cell(metrics: dict, name: str) -> str:
    return format_with_interval(metrics[name], metrics[f"{name}_ci"])


def _line(row: CompareRow) -> str:
    budget = "—" if row.target is None else f"{row.target:g}"
    if not row.accepted:
        reached = f"x{row.macs_ratio:.3f} at best" if row.macs_ratio is not None else row.note
        return f"| {budget} | {row.pruner} | missed: {reached} | — | — | — | — | — | — |"
    latency = "—" if row.latency_ms is None else f"{row.latency_ratio:.3f}x ({row.latency_ms:.1f} ms)"
    plain, calibrated = row.metrics["uncalibrated"], row.metrics["calibrated"]
    return (
        f"| {budget} | {row.pruner} | {row.macs_ratio:.4f}x | {row.params_ratio:.3f}x | {latency} | "
        f"{_cell(plain, 'map50')} | {_cell(calibrated, 'map50')} | {_cell(plain, 'map')} | {_cell(calibrated, 'map')} |"
    )


def markdown_table(result: CompareResult) -> str:
    lines = _header(result) + ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += [_line(row) for row in result.rows]
    return "\n".join(lines) + "\n"


def result_json(result: CompareResult) -> str:
    settings = result.settings
    record = {
        "command": command_line(result),
        "yoloprune": __version__,
        "torch_pruning": result.tp_version,
        "weights": settings.weights,
        "data": settings.data,
        "split": result.split,
        "images": result.images,
        "img_size": result.img_size,
        "calibration_images": result.calibration_images,
        "tolerance": settings.tolerance,
        "round_to": settings.round_to,
        "rounding": result.rounding,
        "macs_unpruned": result.macs_unpruned,
        "params_unpruned": result.params_unpruned,
        "threads": result.threads,
        "latency_runs": settings.runs,
        "rows": [row.to_dict() for row in result.rows],
    }
    return json.dumps(record, indent=2) + "\n"


def plot_map_vs_macs(result: CompareResult, path: str | Path) -> Path:
    """mAP@0.5 against MACs per pruner: solid after BN re-calibration, dashed as pruned; bars are the
    95 % intervals."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    base = result.rows[0]
    pruned = [row for row in result.rows[1:] if row.accepted]
    for number, key in enumerate(dict.fromkeys(row.key for row in pruned)):
        rows = sorted((row for row in pruned if row.key == key), key=lambda row: row.macs_ratio)
        color = f"C{number}"
        for which, style in (("calibrated", "-"), ("uncalibrated", "--")):
            values = [row.metrics[which]["map50"] for row in rows]
            errors = [[v - row.metrics[which]["map50_ci"][0] for v, row in zip(values, rows)],
                      [row.metrics[which]["map50_ci"][1] - v for v, row in zip(values, rows)]]
            label = rows[0].pruner + (" + BN re-cal." if which == "calibrated" else "")
            ax.errorbar([row.macs_ratio for row in rows], values, yerr=errors, color=color, linestyle=style, marker="o",
                        markersize=4, capsize=2, label=label)
    ax.axhline(base.metrics["uncalibrated"]["map50"], color="grey", linestyle=":", label=UNPRUNED)
    ax.set_xlabel("MACs / unpruned MACs")
    ax.set_ylabel(f"mAP@0.5 on {result.split} ({result.images} images), no finetuning")
    ax.set_title("One sparse model pruned to equal MACs budgets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    return save_png(fig, path)


SUFFIXES = (".md", ".json", ".png")


def output_paths(out: str | Path) -> dict[str, Path]:
    """OUT.md, OUT.json, OUT.png; OUT may be given with one of those suffixes already."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in SUFFIXES else out
    return {suffix: stem.parent / (stem.name + suffix) for suffix in SUFFIXES}


def write_outputs(result: CompareResult, out: str | Path) -> str:
    """OUT.md, OUT.json and OUT.png, each written atomically; returns the Markdown."""
    paths = output_paths(out)
    table = markdown_table(result)
    atomic_write_text(paths[".md"], table)
    atomic_write_text(paths[".json"], result_json(result))
    plot_map_vs_macs(result, paths[".png"])
    return table
