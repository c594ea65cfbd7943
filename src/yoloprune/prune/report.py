"""What pruning did, as data and as files: report.json, channels.png, the pruned cfg/weights/checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

from yoloprune.darknet.cfg import ConvBlock, save_cfg
from yoloprune.darknet.graph import count_cfg_macs
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.fileio import atomic_output, atomic_write_text
from yoloprune.prune.plan import PrunePlan, format_json

log = logging.getLogger(__name__)

PRUNED_FILES = ("pruned.cfg", "pruned.weights", "pruned.pt", "report.json", "channels.png")  # what write_prune_outputs writes


def build_prune_report(model: Darknet, pruned: Darknet, plan: PrunePlan, apply_seconds: float | None = None) -> dict:
    """Per conv layer channels before/after; params and MACs (multiply-adds at plan.img_size) before/after."""
    params_before, params_after = count_parameters(model), count_parameters(pruned)
    macs_before, macs_after = count_cfg_macs(model.cfg, plan.img_size), count_cfg_macs(pruned.cfg, plan.img_size)
    layers = []
    for idx, block in enumerate(model.cfg.layers):
        if isinstance(block, ConvBlock):
            layers.append(
                {
                    "layer": idx,
                    "channels_before": block.filters,
                    "channels_after": plan.channels_after(idx),
                    "candidate": idx in plan.candidate_layers,
                    "removed": idx in plan.removed_layers,
                }
            )
    return {
        "mode": plan.mode,
        "threshold": plan.threshold,
        "settings": plan.settings,
        "img_size": plan.img_size,
        "params_before": params_before,
        "params_after": params_after,
        "params_ratio": params_after / params_before,
        "macs_before": macs_before,
        "macs_after": macs_after,
        "macs_ratio": macs_after / macs_before,
        "bflops_before": 2 * macs_before / 1e9,  # darknet's convention: 2 x MACs
        "bflops_after": 2 * macs_after / 1e9,
        "channels_removed": plan.pruned_channel_count,
        "candidate_layers": len(plan.candidate_layers),
        "layers_pruned": len(plan.kept_channels),
        "removed_blocks": [list(block.layers) for block in plan.removed_blocks],
        "apply_seconds": apply_seconds,
        "layers": layers,
    }


def plot_channels(report: dict, path: str | Path) -> None:
    """Bar chart of each conv layer's channels before (light) and after (dark) pruning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["layers"]
    positions = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(8.0, 0.16 * len(rows)), 4.0))
    ax.bar(positions, [r["channels_before"] for r in rows], color="#bcd4ea", label="before")
    ax.bar(positions, [r["channels_after"] for r in rows], color="#1f5b94", label="after")
    step = max(1, len(rows) // 25)
    ax.set_xticks(positions[::step], [str(r["layer"]) for r in rows][::step], fontsize=7)
    ax.set_xlabel("conv layer (cfg index)")
    ax.set_ylabel("channels")
    title = f"{report['mode']} pruning: params x{report['params_ratio']:.3f}, MACs x{report['macs_ratio']:.3f}"
    if report["removed_blocks"]:
        title += f", {len(report['removed_blocks'])} residual blocks removed"
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_prune_outputs(out_dir: str | Path, pruned: Darknet, report: dict, plan: PrunePlan | None = None) -> dict[str, Path]:
    """Write pruned.cfg, pruned.weights, pruned.pt, report.json and channels.png into `out_dir`."""
    from yoloprune.darknet.weights import save_checkpoint, save_darknet_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in PRUNED_FILES}
    save_cfg(pruned.cfg, paths["pruned.cfg"])
    save_darknet_weights(pruned, paths["pruned.weights"])
    meta = {"pruned": {k: v for k, v in report.items() if k != "layers"}}
    if plan is not None:
        meta["plan"] = plan.to_dict()
    save_checkpoint(paths["pruned.pt"], pruned, meta=meta)
    atomic_write_text(paths["report.json"], format_json(report) + "\n")
    plot_channels(report, paths["channels.png"])
    return paths
