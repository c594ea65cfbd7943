"""What pruning did, as data (`PruneReport`, saved as report.json) and as files: the pruned
cfg/weights/checkpoint. The channels-per-layer chart is drawn from a report by `viz.channels`."""

from __future__ import annotations

import json
import logging
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from yoloprune.darknet.cfg import ConvBlock, save_cfg
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.errors import YoloPruneError
from yoloprune.fileio import atomic_write_text
from yoloprune.prune.plan import PrunePlan, format_json

log = logging.getLogger(__name__)

PRUNED_FILES = ("pruned.cfg", "pruned.weights", "pruned.pt", "report.json")  # what write_prune_outputs writes

# Written only by a run that did them (timed the planning, re-calibrated BN, searched by mAP).
_RUN_ONLY_FIELDS = ("plan_seconds", "calibrated_images", "auto", "folding", "latency")


@dataclass
class LayerChannels:
    """One conv layer of the original network: its channels before and after pruning."""

    layer: int  # cfg index
    channels_before: int
    channels_after: int  # 0 when its residual block is removed
    candidate: bool  # its channels could be removed
    removed: bool  # it went with its residual block


@dataclass
class PruneReport:
    """Per conv layer channels before/after; params and MACs (multiply-adds at img_size) before/after.
    `to_dict()` is report.json's content, in its key order."""

    mode: str
    threshold: float | None
    settings: dict  # the plan's settings: how it was made
    img_size: int
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    channels_removed: int
    candidate_layers: int  # how many convs were candidates
    layers_pruned: int  # how many convs lost channels
    removed_blocks: list[list[int]]  # the cfg indices of each removed residual block
    layers: list[LayerChannels] = field(default_factory=list)
    apply_seconds: float | None = None
    plan_seconds: float | None = None
    calibrated_images: int | None = None
    auto: dict | None = None  # `prune.auto.AutoPruneResult.to_dict()`
    # What folding costs, on the validation images: mAP@0.5 of the unpruned network with the removed
    # channels' γ set to 0 (they output their constant) and of the compact model before re-calibration.
    folding: dict | None = None
    # With a latency target: the original's and the compact model's latency, timed interleaved in one
    # runtime (`prune.latency.measure_latency`), and how many compact models the search timed.
    latency: dict | None = None

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before

    @property
    def bflops_before(self) -> float:
        return 2 * self.macs_before / 1e9  # darknet's convention: 2 x MACs

    @property
    def bflops_after(self) -> float:
        return 2 * self.macs_after / 1e9

    def to_dict(self) -> dict:
        data = {
            "mode": self.mode,
            "threshold": self.threshold,
            "settings": self.settings,
            "img_size": self.img_size,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": self.params_ratio,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_ratio": self.macs_ratio,
            "bflops_before": self.bflops_before,
            "bflops_after": self.bflops_after,
            "channels_removed": self.channels_removed,
            "candidate_layers": self.candidate_layers,
            "layers_pruned": self.layers_pruned,
            "removed_blocks": self.removed_blocks,
            "apply_seconds": self.apply_seconds,
            "layers": [asdict(row) for row in self.layers],
        }
        for name in _RUN_ONLY_FIELDS:
            if getattr(self, name) is not None:
                data[name] = getattr(self, name)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "PruneReport":
        """The report of `to_dict()`; the ratios and BFLOPs in `data` are recomputed, not read."""
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"not a prune report: no {', '.join(missing)}")
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["layers"] = [LayerChannels(**row) for row in data.get("layers", [])]
        return cls(**values)

    def to_json(self) -> str:
        return format_json(self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "PruneReport":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as error:
            raise YoloPruneError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
        except (ValueError, TypeError) as error:
            raise YoloPruneError(f"{path}: {error}") from None


def build_prune_report(model: Darknet, pruned: Darknet, plan: PrunePlan, apply_seconds: float | None = None) -> PruneReport:
    """What applying `plan` to `model` gave `pruned`: counted on the two models, not predicted."""
    layers = [
        LayerChannels(idx, block.filters, plan.channels_after(idx), idx in plan.candidate_layers, idx in plan.removed_layers)
        for idx, block in enumerate(model.cfg.layers)
        if isinstance(block, ConvBlock)
    ]
    return PruneReport(
        mode=plan.mode,
        threshold=plan.threshold,
        settings=plan.settings,
        img_size=plan.img_size,
        params_before=count_parameters(model),
        params_after=count_parameters(pruned),
        macs_before=count_cfg_macs(model.cfg, plan.img_size),
        macs_after=count_cfg_macs(pruned.cfg, plan.img_size),
        channels_removed=plan.pruned_channel_count,
        candidate_layers=len(plan.candidate_layers),
        layers_pruned=len(plan.kept_channels),
        removed_blocks=[list(block.layers) for block in plan.removed_blocks],
        layers=layers,
        apply_seconds=apply_seconds,
    )


def write_prune_outputs(out_dir: str | Path, pruned: Darknet, report: PruneReport, plan: PrunePlan | None = None) -> dict[str, Path]:
    """Write pruned.cfg, pruned.weights, pruned.pt and report.json into `out_dir`."""
    from yoloprune.darknet.weights import save_checkpoint, save_darknet_weights

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {name: out_dir / name for name in PRUNED_FILES}
    save_cfg(pruned.cfg, paths["pruned.cfg"])
    save_darknet_weights(pruned, paths["pruned.weights"])
    meta = {"pruned": {k: v for k, v in report.to_dict().items() if k != "layers"}}
    if plan is not None:
        meta["plan"] = plan.to_dict()
    save_checkpoint(paths["pruned.pt"], pruned, meta=meta)
    atomic_write_text(paths["report.json"], report.to_json() + "\n")
    return paths
