"""Recovery after pruning, and the one model the run delivers.

`--recover finetune` delivers the pruned model finetuned (distilled from the baseline), `scratch`
the pruned cfg trained from random init with the baseline's recipe, `both` whichever of the two
scores higher on the validation split (`choose_recovery`). The delivered model is written to one
folder (`deliver`): its cfg, darknet `.weights`, the `.pt` checkpoint as trained, and an ONNX export
whose outputs were checked against PyTorch's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from yoloprune.darknet.weights import load_model
from yoloprune.export.darknet import export_darknet
from yoloprune.export.onnx import export_onnx
from yoloprune.fileio import atomic_output

TIE = 0.002  # validation mAP@0.5:0.95 differences up to this are a tie, decided by mAP@0.5
ROW_NAMES = {"finetune": "finetuned", "scratch": "scratch"}  # recovery -> its row in bench and the report
DELIVERED_STEM = "model"  # OUT/delivered/model.{cfg,weights,pt,onnx}


@dataclass(frozen=True)
class ValidScore:
    map: float  # mAP@0.5:0.95, the primary metric
    map50: float


def choose_recovery(scores: dict[str, ValidScore]) -> str:
    """The recovery to deliver: the highest validation mAP@0.5:0.95; those within `TIE` of it are
    told apart by mAP@0.5 (then by mAP@0.5:0.95, then by the order given)."""
    if not scores:
        raise ValueError("no recovery to choose from")
    best = max(score.map for score in scores.values())
    tied = [name for name, score in scores.items() if best - score.map <= TIE]
    return max(tied, key=lambda name: (scores[name].map50, scores[name].map))


def choice_text(recover: str, chosen: str, scores: dict[str, ValidScore]) -> str:
    """One line: which recovery was delivered and by how much it led on valid."""
    own = scores[chosen]
    text = f"Recovery `--recover {recover}`: *{ROW_NAMES[chosen]}* delivered, validation mAP@0.5:0.95 {own.map:.4f}, mAP@0.5 {own.map50:.4f}"
    others = [(name, score) for name, score in scores.items() if name != chosen]
    for name, score in others:
        text += (f"; {ROW_NAMES[name]} {score.map:.4f} / {score.map50:.4f} (lead {own.map - score.map:+.4f} mAP@0.5:0.95, "
                 f"{own.map50 - score.map50:+.4f} mAP@0.5" + (f", a tie within {TIE} decided by mAP@0.5" if abs(own.map - score.map) <= TIE else "") + ")")
    return text + "."


@dataclass
class DeliveredModel:
    folder: Path
    cfg: Path
    weights: Path
    pt: Path
    onnx: Path


def delivered_paths(folder: Path) -> DeliveredModel:
    stem = folder / DELIVERED_STEM
    return DeliveredModel(folder, stem.with_suffix(".cfg"), stem.with_suffix(".weights"), stem.with_suffix(".pt"), stem.with_suffix(".onnx"))


def deliver(checkpoint: Path, folder: Path, img_size: int) -> DeliveredModel:
    """Write the model of `checkpoint` into `folder` as cfg + .weights, .pt (the checkpoint's bytes)
    and ONNX (dynamic batch; export fails, writing nothing, when ONNX Runtime's boxes differ from
    PyTorch's by more than the export's tolerance)."""
    paths = delivered_paths(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = load_model(None, checkpoint).eval()
    export_darknet(model, folder / DELIVERED_STEM)
    export_onnx(model, paths.onnx, img_size, dynamic_batch=True)
    with atomic_output(paths.pt) as tmp:
        shutil.copyfile(checkpoint, tmp)
    return paths
