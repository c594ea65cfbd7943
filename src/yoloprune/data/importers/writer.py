"""Write a YOLO dataset: boxes clipped and normalised, images copied, lists and spec written.

`SourceImage` is what every importer reads: the image, the file its boxes come from, and the boxes
in pixels, continuous coordinates (the image spans [0, width] × [0, height]). `write_import` turns
a list of them into the dataset folder, atomically: it is built in a hidden folder beside OUT and
renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yoloprune.data.importers.classes import ClassMapping
from yoloprune.data.importers.options import DEFAULT_FRACTIONS, ImportOptions
from yoloprune.data.importers.split import SPLITS, split_by_fractions
from yoloprune.data.spec import format_label_lines, write_dataset_spec
from yoloprune.data.transforms import xyxy_px_to_cxcywh_norm
from yoloprune.errors import DataError
from yoloprune.fileio import atomic_directory, atomic_output, atomic_write_text, check_replaceable_folder, fsync_file

# The image / label folder of each split (the `.data` names the lists train, valid, test).
SPLIT_FOLDERS = {"train": "train", "valid": "val", "test": "test"}
# A box reaching this far past the border counts as clipped; less is rounding in the source file.
CLIP_TOLERANCE_PX = 0.01
REPORT_FILE = "import.txt"
OWN_ENTRIES = ("images", "labels", "train.txt", "valid.txt", "test.txt", REPORT_FILE)
# What can happen to a source box or image, in the order the summary lists them.
EVENTS = {
    "clipped": "boxes clipped to the image",
    "degenerate": "boxes skipped: degenerate (no width or height in the source)",
    "outside": "boxes skipped: wholly outside the image",
    "crowd": "boxes dropped: crowd regions (iscrowd=1)",
    "class": "boxes dropped: class not kept",
    "difficult": "difficult boxes (kept as ordinary boxes)",
    "no labels": "images without a label file (no objects)",
}
LISTED_FILES = 5  # files named per event on the terminal; import.txt names them all


@dataclass
class SourceBox:
    name: str  # the source's class name
    xyxy_px: tuple[float, float, float, float]


@dataclass
class SourceImage:
    image: Path
    # The file named when one of its boxes is clipped or skipped: its annotation file, or the image
    # itself where one annotation file holds every image's boxes.
    annotation: Path
    width: int
    height: int
    boxes: list[SourceBox] = field(default_factory=list)
    split: str | None = None  # "train" / "valid" / "test" as published; None: split by fractions


@dataclass
class ImportSummary:
    source_format: str  # "Pascal VOC", "COCO", "Ultralytics YOLO"
    source: Path
    split_source: str = ""
    class_names: list[str] = field(default_factory=list)
    images: dict[str, int] = field(default_factory=dict)
    boxes: dict[str, int] = field(default_factory=dict)
    events: dict[str, dict[str, int]] = field(default_factory=dict)  # event -> {file: count}
    dropped_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    data_path: Path | None = None

    def count(self, event: str, path: str | Path, n: int = 1) -> None:
        files = self.events.setdefault(event, {})
        files[str(path)] = files.get(str(path), 0) + n

    def total(self, event: str) -> int:
        return sum(self.events.get(event, {}).values())

    def _event_lines(self, every_file: bool) -> list[str]:
        lines = []
        for event, description in EVENTS.items():
            files = self.events.get(event)
            if not files:
                continue
            if every_file:
                lines.append(f"{description}: {self.total(event)}")
                lines += [f"  {count} × {path}" for path, count in sorted(files.items())]
                continue
            names = sorted(Path(path).name for path in files)
            more = f" and {len(names) - LISTED_FILES} more files (all in {REPORT_FILE})" if len(names) > LISTED_FILES else ""
            lines.append(f"{description}: {self.total(event)} (in {', '.join(names[:LISTED_FILES])}{more})")
            if event == "class":
                lines.append("  " + ", ".join(f"{name}: {n}" for name, n in sorted(self.dropped_classes.items())))
        return lines

    def format(self, every_file: bool = False) -> str:
        """The summary printed after an import; `every_file` names every file (the import.txt text)."""
        lines = [f"source: {self.source_format}, {self.source}", f"splits: {self.split_source}", *self.notes]
        lines.append(f"classes ({len(self.class_names)}): {', '.join(self.class_names)}")
        lines += [f"{split}: {count} images, {self.boxes.get(split, 0)} boxes" for split, count in self.images.items()]
        lines += self._event_lines(every_file)
        if self.data_path is not None:
            lines.append(f"dataset spec: {self.data_path}")
        return "\n".join(lines)


def read_text_lines(path: Path) -> list[str]:
    """The lines of a source text file (a list, a label file); DataError when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read: {getattr(error, 'strerror', None) or error}", path) from None


def clip_box(xyxy_px: tuple[float, ...], width: int, height: int) -> tuple[np.ndarray, bool]:
    """The box clipped to the image, and whether it reached past a border by more than the tolerance."""
    box = np.asarray(xyxy_px, dtype=np.float64)
    clipped = np.clip(box, 0, [width, height, width, height])
    return clipped, bool(np.abs(clipped - box).max() > CLIP_TOLERANCE_PX)


def image_labels(source: SourceImage, mapping: ClassMapping, summary: ImportSummary) -> np.ndarray:
    """(n, 5) `cls cx cy w h` normalised: the kept boxes of one image, clipped; the others counted."""
    rows = []
    for box in source.boxes:
        class_id = mapping.output_id(box.name)
        if class_id is None:
            summary.count("class", source.annotation)
            continue
        xyxy, clipped = clip_box(box.xyxy_px, source.width, source.height)
        labels = xyxy_px_to_cxcywh_norm(np.array([[class_id, *xyxy]]), source.width, source.height)
        # A box that rounds to no width in the label file's 6 decimals would be an invalid label line.
        if round(float(labels[0, 3]), 6) <= 0 or round(float(labels[0, 4]), 6) <= 0:
            summary.count("outside", source.annotation)
            continue
        if clipped:
            summary.count("clipped", source.annotation)
        rows.append(labels[0])
    return np.array(rows, dtype=np.float32).reshape(-1, 5)


def copy_example(
    image_path: Path, labels_cxcywh_norm: np.ndarray, out: Path, folder: str, name: str, atomic: bool = True
) -> Path:
    """Copy the image to `out/images/<folder>/<name>`, write its label file; returns the copy's path.
    `atomic=False` writes plainly, for a staging folder that is flushed and renamed as a whole."""
    out_image = out / "images" / folder / name
    label_path = out / "labels" / folder / f"{Path(name).stem}.txt"
    label_text = format_label_lines(labels_cxcywh_norm[:, 0], labels_cxcywh_norm[:, 1:])
    out_image.parent.mkdir(parents=True, exist_ok=True)
    if atomic:
        with atomic_output(out_image) as tmp:
            shutil.copyfile(image_path, tmp)
        atomic_write_text(label_path, label_text)
    else:
        label_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image_path, out_image)
        label_path.write_text(label_text, encoding="utf-8")
    return out_image


def flush_folder(folder: Path) -> None:
    """Put every file under `folder` on disk before it is renamed into place. One `sync` where the
    system has it: an fsync per file costs several milliseconds each, ten times the import itself."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for path in folder.rglob("*"):
        if path.is_file():
            fsync_file(path)


def _unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `stem_2.ext`, `stem_3.ext`... when an image (or label: same stem) of that name is taken."""
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, n = name, 1
    while Path(candidate).stem in taken:
        n += 1
        candidate = f"{stem}_{n}{suffix}"
    taken.add(Path(candidate).stem)
    return candidate


def assign_splits(sources: list[SourceImage], fractions: tuple[float, ...], seed: int, group: str | None) -> None:
    """Give every source without a published split one, by fractions (see `split.split_by_fractions`)."""
    unsplit = [source for source in sources if source.split is None]
    for source, split in zip(unsplit, split_by_fractions([s.image for s in unsplit], fractions, seed, group)):
        source.split = split


def _note_shared_images(sources: list[SourceImage], summary: ImportSummary) -> None:
    splits_of: dict[Path, set[str]] = {}
    for source in sources:
        splits_of.setdefault(source.image, set()).add(source.split or "")
    shared = sum(len(splits) > 1 for splits in splits_of.values())
    if shared:
        summary.notes.append(f"warning: {shared} source images are listed in more than one split")


def write_import(
    sources: list[SourceImage], out: str | Path, options: ImportOptions, mapping: ClassMapping, summary: ImportSummary,
    command: str,
) -> Path:
    """Write the dataset of `sources` to `out`, those without a published split split by
    `options.fractions`; returns the `.data` path.

    An existing `out` is replaced only when it holds nothing but a previous import's files.
    """
    out = Path(out)
    check_replaceable_folder(out, lambda p: p.name in OWN_ENTRIES or p.suffix in (".data", ".names"), command)
    if any(source.split is None for source in sources):
        fractions = options.fractions or DEFAULT_FRACTIONS
        assign_splits(sources, fractions, options.seed, options.group)
        grouped = f", grouped by {options.group!r}" if options.group else ""
        summary.split_source = f"by fractions {'/'.join(f'{f:g}' for f in fractions)}, seed {options.seed}{grouped}"
    name = options.name or Path(out).resolve().name
    if not any(source.split == "train" for source in sources):
        raise DataError("no images for the train split", summary.source)
    _note_shared_images(sources, summary)
    splits = [split for split in SPLITS if split != "test" or any(s.split == "test" for s in sources)]
    summary.class_names = mapping.output_names
    summary.images = {split: 0 for split in splits}
    summary.boxes = {split: 0 for split in splits}
    listed: dict[str, list[Path]] = {split: [] for split in splits}
    taken: dict[str, set[str]] = {split: set() for split in splits}
    with atomic_directory(out.resolve() if out.is_symlink() else out) as staging:
        for source in sources:
            labels = image_labels(source, mapping, summary)
            unique = _unique_name(source.image.name, taken[source.split])
            copied = copy_example(source.image, labels, staging, SPLIT_FOLDERS[source.split], unique, atomic=False)
            listed[source.split].append(copied)
            summary.images[source.split] += 1
            summary.boxes[source.split] += len(labels)
        summary.dropped_classes = dict(mapping.dropped)
        summary.notes += [f"warning: the {split} split is empty" for split in splits if not summary.images[split]]
        summary.data_path = out / f"{name}.data"
        write_dataset_spec(staging, name, mapping.output_names, listed["train"], listed["valid"], listed.get("test"))
        atomic_write_text(staging / REPORT_FILE, summary.format(every_file=True) + "\n")
        flush_folder(staging)
    return summary.data_path
