"""Darknet export: a plain `.cfg` + `.weights` pair that darknet and OpenCV DNN load."""

from __future__ import annotations

from pathlib import Path

from yoloprune.darknet.cfg import save_cfg
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import save_darknet_weights


def export_darknet(model: Darknet, out: str | Path) -> tuple[Path, Path]:
    """Write `out.cfg` and `out.weights` (a suffix on `out` is replaced)."""
    out = Path(out)
    cfg_path, weights_path = out.with_suffix(".cfg"), out.with_suffix(".weights")
    save_cfg(model.cfg, cfg_path)
    save_darknet_weights(model, weights_path)
    return cfg_path, weights_path
