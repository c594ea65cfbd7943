"""The one validator: a dataset split, its loader, and the COCO-protocol score of any model on it.

Training (per-epoch mAP), the pruning search (mAP of every trial), `bench`, `eval` and the pruner
comparison all score models through `Validator`, so they read the same images the same way; the
images come from `yoloprune.data.dataset.image_loader`, the loader that BN re-calibration uses too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from yoloprune.data.dataset import image_loader
from yoloprune.data.spec import load_data_spec
from yoloprune.errors import DataError
from yoloprune.eval.evaluate import DetectionMetrics, evaluate_model
from yoloprune.eval.settings import EvalSettings
from yoloprune.settings import resolve_device


class Validator:
    """Scores models on one split of a dataset; the loader is built once and reused for every model.

    `max_images` keeps the first images only (held in memory: a quick score for a search)."""

    def __init__(self, settings: EvalSettings, max_images: int | None = None, progress: bool = True):
        self.settings = settings
        self.spec = load_data_spec(settings.data)
        # What reports a number reads test when there is one; what chooses (training, the pruning
        # search) asks for valid by name.
        self.split = settings.split or ("test" if self.spec.test is not None else "valid")
        self.device = resolve_device(settings.device)
        self.progress = progress
        loader = image_loader(self.spec, self.split, settings.img_size, settings.batch, settings.workers, skip_bad=settings.skip_bad, device=self.device)
        self.batches = loader if max_images is None else list(_first_images(loader, max_images))

    @property
    def list_file(self) -> Path:
        return self.spec.list_for(self.split)

    def __call__(self, model) -> DetectionMetrics:
        if model.num_classes != self.spec.classes:
            raise DataError(f"dataset has {self.spec.classes} classes, the model predicts {model.num_classes}", self.spec.path)
        return evaluate_model(
            model, self.batches, conf_thres=self.settings.conf, iou_thres=self.settings.iou, device=self.device, progress=self.progress,
            intervals=self.settings.intervals,
        )

    def map50(self, model) -> float:
        return self(model).map50

    def maps(self, model) -> tuple[float, float]:
        """(mAP@0.5, mAP@0.5:0.95) from one evaluation pass: a search judging by both pays for one."""
        metrics = self(model)
        return metrics.map50, metrics.map


def _first_images(loader, max_images: int) -> Iterator:
    seen = 0
    for images, targets, paths in loader:
        if seen >= max_images:
            break
        keep = min(len(images), max_images - seen)
        targets = targets[targets[:, 0] < keep]
        yield images[:keep], targets, paths[:keep]
        seen += keep
