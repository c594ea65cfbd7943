"""Anchors fitted to a dataset: k-means over the training boxes with 1 - IoU as the distance.

A box's anchor is the one whose width/height best overlap it when both are placed at one centre
(the IoU the loss matches with), so that is the distance the clusters minimise: plain Euclidean
k-means on (w, h) lets the large boxes pull every centre and leaves the small ones badly matched.
This is the method of the YOLOv2 paper and of darknet's `detector calc_anchors`.

The boxes are measured as the network sees them: each image letterboxed to the input size by
`image_loader` (no augmentation), so a non-square image's boxes shrink with its longer side.
Darknet's COCO anchors, made for 80 classes at 416 px, can fit a small one-class dataset poorly;
`yoloprune data anchors --cfg` prints the mean best IoU of the cfg's anchors beside the fitted ones'.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from yoloprune.darknet.cfg import YoloBlock, load_cfg, parse_cfg
from yoloprune.data.dataset import image_loader
from yoloprune.data.spec import load_data_spec
from yoloprune.errors import CfgError, DataError
from yoloprune.fileio import atomic_write_text

log = logging.getLogger(__name__)

ANCHORS_LINE = re.compile(r"^([ \t]*)anchors[ \t]*=.*$", re.MULTILINE)


def wh_iou(sizes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """(n, k) IoU of every box size with every anchor, both placed at one centre."""
    inter = np.minimum(sizes[:, None, 0], anchors[None, :, 0]) * np.minimum(sizes[:, None, 1], anchors[None, :, 1])
    return inter / (sizes[:, None].prod(-1) + anchors[None].prod(-1) - inter)


def mean_best_iou(sizes: np.ndarray, anchors: np.ndarray) -> float:
    """How well `anchors` cover the boxes: the mean, over boxes, of the IoU with their best anchor."""
    return float(wh_iou(sizes, np.asarray(anchors, dtype=np.float64)).max(1).mean())


def box_sizes(data: str | Path, img_size: int, split: str = "train", progress: bool = True) -> np.ndarray:
    """(n, 2) width and height in input pixels of every box of `split`, letterboxed to `img_size`."""
    loader = image_loader(load_data_spec(data), split, img_size, batch=32)
    sizes = [targets[:, 4:6].numpy() * img_size for _, targets, _ in tqdm(loader, desc="reading boxes", unit="batch", disable=not progress, leave=False)]
    sizes = np.concatenate(sizes) if sizes else np.zeros((0, 2))
    return sizes[(sizes > 0).all(1)].astype(np.float64)


def fit_anchors(sizes: np.ndarray, count: int, seed: int = 0, iterations: int = 300) -> np.ndarray:
    """`count` anchors (w, h), smallest area first, by k-means with 1 - IoU distance.

    Seeded like k-means++ (each next centre drawn with probability growing with its distance to
    the nearest chosen one) and updated with the median box of each cluster, which a few very
    large boxes cannot drag. Deterministic for a given `seed`."""
    sizes = np.asarray(sizes, dtype=np.float64)
    if len(sizes) < count:
        raise ValueError(f"{count} anchors need at least as many boxes, got {len(sizes)}")
    rng = np.random.default_rng(seed)
    centres = [sizes[rng.integers(len(sizes))]]
    for _ in range(count - 1):
        distance = 1 - wh_iou(sizes, np.array(centres)).max(1)
        weights = distance**2
        centres.append(sizes[rng.choice(len(sizes), p=weights / weights.sum())] if weights.sum() > 0 else sizes[rng.integers(len(sizes))])
    centres = np.array(centres)
    assignment = None
    for _ in range(iterations):
        nearest = wh_iou(sizes, centres).argmax(1)
        if assignment is not None and np.array_equal(nearest, assignment):
            break
        assignment = nearest
        for k in range(count):
            members = sizes[assignment == k]
            if len(members):
                centres[k] = np.median(members, axis=0)
    return centres[np.argsort(centres.prod(1), kind="stable")]


@dataclass
class AnchorFit:
    anchors: list[tuple[int, int]]  # rounded to whole pixels, smallest area first
    boxes: int
    mean_iou: float  # the fitted anchors' mean best IoU over the boxes
    previous_mean_iou: float | None = None  # the cfg's own anchors', when a cfg was given

    def format(self) -> str:
        text = "anchors = " + ",  ".join(f"{w},{h}" for w, h in self.anchors)
        lines = [text, f"mean best IoU over {self.boxes} boxes: {self.mean_iou:.3f}"]
        if self.previous_mean_iou is not None:
            lines[-1] += f" (the cfg's anchors: {self.previous_mean_iou:.3f})"
        return "\n".join(lines)


def fit_dataset_anchors(data: str | Path, img_size: int, count: int = 9, seed: int = 0, split: str = "train",
                        cfg_anchors=None, progress: bool = True) -> AnchorFit:
    """Anchors for the boxes of `data`'s `split` at `img_size`; with `cfg_anchors`, their fit too."""
    sizes = box_sizes(data, img_size, split, progress)
    if len(sizes) < count:
        raise DataError(f"{len(sizes)} boxes in the {split} split, too few to fit {count} anchors", data)
    anchors = [(max(1, round(w)), max(1, round(h))) for w, h in fit_anchors(sizes, count, seed)]
    previous = mean_best_iou(sizes, np.array(cfg_anchors)) if cfg_anchors else None
    fit = AnchorFit(anchors, len(sizes), mean_best_iou(sizes, np.array(anchors)), previous)
    log.info("fitted %d anchors on %d boxes: mean best IoU %.3f", count, len(sizes), fit.mean_iou)
    return fit


def run_anchor_fit(settings, progress: bool = True) -> AnchorFit:
    """The `data anchors` command (`data.settings.AnchorSettings`): fit, and with `out` write the
    cfg with the fitted anchors (as many as the cfg has, unless `num` says otherwise)."""
    cfg = load_cfg(settings.cfg) if settings.cfg else None
    cfg_anchors = next((block.anchors for block in cfg.layers if isinstance(block, YoloBlock)), None) if cfg else None
    count = settings.num or (len(cfg_anchors) if cfg_anchors else 9)
    fit = fit_dataset_anchors(settings.data, settings.img_size or cfg.net.width, count, settings.seed, settings.split, cfg_anchors, progress)
    if settings.out:
        text = Path(settings.cfg).read_text(encoding="utf-8")
        try:
            atomic_write_text(settings.out, with_anchors(text, fit.anchors))
        except ValueError as error:
            raise CfgError(str(error), settings.cfg) from None
    return fit


def with_anchors(cfg_text: str, anchors: list[tuple[int, int]]) -> str:
    """The cfg text with the `anchors =` line of every [yolo] section replaced, everything else
    (comments, the order of keys) as it was. Each head keeps its mask: anchor i of the list is still
    anchor i, smallest first as darknet orders them, so the number of anchors must not change."""
    text = ",  ".join(f"{w},{h}" for w, h in anchors)
    replaced = ANCHORS_LINE.sub(lambda match: f"{match.group(1)}anchors = {text}", cfg_text)
    counts = {len(block.anchors) for block in parse_cfg(cfg_text).layers if isinstance(block, YoloBlock)}
    if counts != {len(anchors)}:
        raise ValueError(f"the cfg's [yolo] layers have {sorted(counts)} anchors, got {len(anchors)}")
    return replaced
