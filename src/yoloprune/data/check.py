"""Validate a YOLO dataset: every listed image decodes, every label line is well formed."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from yoloprune.data.dataset import read_image
from yoloprune.data.spec import DataSpec, label_path_for, load_data_spec, read_image_entries, read_labels
from yoloprune.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class SplitReport:
    name: str
    list_file: Path
    images: int = 0  # listed and usable
    missing_labels: int = 0  # no label file: read as holding no objects
    empty_images: int = 0  # usable images holding no objects (missing or empty label file)
    boxes_per_class: dict[int, int] = field(default_factory=dict)
    box_sizes_norm: list[np.ndarray] = field(default_factory=list)  # (n, 2) w, h per image
    image_sizes: set[tuple[int, int]] = field(default_factory=set)  # (width, height)
    duplicates: int = 0

    def add_image(self, labels: np.ndarray | None) -> None:
        """Count one usable image and its labels (None: no label file, read as holding no objects)."""
        self.images += 1
        if labels is None:
            self.missing_labels += 1
            labels = np.zeros((0, 5), np.float32)
        if len(labels) == 0:
            self.empty_images += 1
        for cls in labels[:, 0].astype(int):
            self.boxes_per_class[int(cls)] = self.boxes_per_class.get(int(cls), 0) + 1
        self.box_sizes_norm.append(labels[:, 3:5])

    def format(self, names: list[str]) -> list[str]:
        boxes = sum(self.boxes_per_class.values())
        lines = [
            f"{self.name} ({self.list_file}): {self.images} images, {boxes} boxes, "
            f"{self.empty_images} without objects ({self.missing_labels} without a label file)"
        ]
        for cls, count in sorted(self.boxes_per_class.items()):
            lines.append(f"  class {cls} {names[cls]!r}: {count} boxes")
        if boxes:
            sizes = np.concatenate(self.box_sizes_norm)
            side = np.sqrt(sizes[:, 0] * sizes[:, 1])
            low, median, high = np.percentile(side, [0, 50, 100])
            lines.append(f"  box size sqrt(w*h) of the image: min {low:.3f}, median {median:.3f}, max {high:.3f}")
        if self.image_sizes:
            widths = [w for w, _ in self.image_sizes]
            heights = [h for _, h in self.image_sizes]
            lines.append(
                f"  image sizes: {len(self.image_sizes)} distinct, width {min(widths)}–{max(widths)}, "
                f"height {min(heights)}–{max(heights)}"
            )
        if self.duplicates:
            lines.append(f"  listed more than once: {self.duplicates} image(s)")
        return lines


@dataclass
class CheckReport:
    spec: DataSpec
    splits: list[SplitReport]
    problems: list[str] = field(default_factory=list)
    # Images listed in two splits, per pair of split names: a held-out split must not share images.
    shared_images: dict[tuple[str, str], int] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"dataset {self.spec.path}: {self.spec.classes} class(es) {self.spec.names}"]
        for split in self.splits:
            lines += split.format(self.spec.names)
        for (first, second), count in self.shared_images.items():
            lines.append(f"warning: {count} image(s) are listed in both {first} and {second}")
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {problem}" for problem in self.problems]
        return "\n".join(lines)


def check_dataset(
    data_path: str | Path, skip_bad: bool = False, decode_images: bool = True, progress: bool = True
) -> CheckReport:
    """Check every image and label of every split: train, valid, and test when the `.data` has one.

    By default the first problem raises DataError (naming file and line); with `skip_bad` each
    problem is logged and collected in `report.problems`, and the check goes on.
    """
    spec = load_data_spec(data_path)
    report = CheckReport(spec=spec, splits=[])

    def problem(error: DataError) -> None:
        if not skip_bad:
            raise error
        report.problems.append(str(error))
        log.warning("bad: %s", error)

    seen_by_split: dict[str, set[Path]] = {}
    for name in spec.splits:
        split, seen_by_split[name] = _check_split(spec, name, problem, decode_images, progress)
        report.splits.append(split)
    for first, second in itertools.combinations(spec.splits, 2):
        shared = len(seen_by_split[first] & seen_by_split[second])
        if shared:
            report.shared_images[(first, second)] = shared
    return report


def _check_split(
    spec: DataSpec, name: str, problem: Callable[[DataError], None], decode_images: bool, progress: bool
) -> tuple[SplitReport, set[Path]]:
    """The report of one split and the images it lists; each bad item goes to `problem` and is left out."""
    list_file = spec.list_for(name)
    split = SplitReport(name=name, list_file=list_file)
    seen: set[Path] = set()
    entries = read_image_entries(list_file)
    if not entries:
        problem(DataError("image list is empty", list_file))
    for line_no, image_path in tqdm(entries, desc=f"check {name}", unit="img", disable=not progress, leave=False):
        if image_path in seen:
            split.duplicates += 1
        seen.add(image_path)
        if not image_path.is_file():
            problem(DataError(f"image not found: {image_path}", list_file, line_no))
            continue
        try:
            if decode_images:
                image = read_image(image_path)
                split.image_sizes.add((image.shape[1], image.shape[0]))
            labels = read_labels(label_path_for(image_path), spec.classes)
        except DataError as error:
            problem(error)
            continue
        split.add_image(labels)
    return split, seen
