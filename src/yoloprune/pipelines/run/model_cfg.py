"""The run's model cfg against the dataset's classes: each [yolo] layer's `classes` and the
`filters` of the conv feeding it ((classes + 5) x its anchors) must match the `.data`'s class count.
Trained from scratch, a cfg that does not is fixed (the log says what changed); given trained
weights, it is refused: the head's weights would not fit."""

from __future__ import annotations

import logging
from pathlib import Path

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, YoloBlock, copy_block, load_cfg, write_cfg
from yoloprune.errors import CfgError

log = logging.getLogger(__name__)


def head_filters(yolo: YoloBlock, classes: int) -> int:
    """What the conv feeding a [yolo] layer outputs: box (4), objectness and class scores per anchor of its mask."""
    return (classes + 5) * len(yolo.mask)


def class_mismatches(cfg: DarknetCfg, classes: int) -> list[tuple[int, str]]:
    """(cfg line, what differs) for every [yolo] layer or head conv that does not fit `classes`."""
    found = []
    for idx, block in enumerate(cfg.layers):
        if not isinstance(block, YoloBlock):
            continue
        if block.classes != classes:
            found.append((block.line, f"[yolo] classes={block.classes}"))
        head = cfg.layers[idx - 1] if idx > 0 else None
        if not isinstance(head, ConvBlock):
            raise CfgError(f"layer {idx} ([yolo]) does not read a [convolutional] layer: its head cannot be sized", cfg.path, block.line)
        if head.filters != head_filters(block, classes):
            found.append((head.line, f"[convolutional] filters={head.filters} (needs {head_filters(block, classes)})"))
    return found


def with_classes(cfg: DarknetCfg, classes: int) -> DarknetCfg:
    """`cfg` with every [yolo] layer predicting `classes` and its head conv sized for them."""
    layers = list(cfg.layers)
    for idx, block in enumerate(cfg.layers):
        if isinstance(block, YoloBlock):
            layers[idx] = copy_block(block, classes=classes)
            layers[idx - 1] = copy_block(layers[idx - 1], filters=head_filters(block, classes))
    return cfg.replace(layers)


def model_cfg_text(cfg_path: str | Path, classes: int, trained: bool) -> str:
    """The text of the cfg the run trains: `cfg_path`'s own when it fits `classes`; else, from
    scratch (`trained` False), the cfg refitted to them; with trained weights, a CfgError."""
    cfg = load_cfg(cfg_path)
    mismatches = class_mismatches(cfg, classes)
    if not mismatches:
        return Path(cfg_path).read_text(encoding="utf-8")
    line, what = mismatches[0]
    if trained:
        raise CfgError(
            f"{what}, but the dataset has {classes} classes: the weights' detection heads do not fit it "
            "(train from scratch without --weights, or give weights trained on these classes)", cfg_path, line,
        )
    log.info("%s: set to the dataset's %d classes (%s)", cfg_path, classes, "; ".join(f"line {n}: {text}" for n, text in mismatches))
    return write_cfg(with_classes(cfg, classes))
