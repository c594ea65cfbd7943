"""The YOLO dataset format on disk: the `.data` spec, image lists and label files.

A dataset is a darknet-style `.data` file::

    classes = 1
    train = train.txt        # relative paths resolve against the .data file's folder
    valid = valid.txt        # model selection: best epoch, pruning search
    test = test.txt          # optional: held out, for the scores reported at the end
    names = hand.names       # one class name per line

`valid` picks the model (best epoch, pruning search); a score reported on that same split is
biased upward by the picking, so a `test` split, looked at only once at the end, gives the
unbiased number. Without a `test` line the dataset has the splits train and valid only.

`train.txt` / `valid.txt` / `test.txt` list one image path per line (relative paths resolve
against the list file's folder). The label file of an image follows the darknet convention: the
last path component named `images` (or `JPEGImages`) becomes `labels` and the extension becomes
`.txt`. Each label line is `cls cx cy w h`, the box centre and size normalised to the image width
and height.
A missing label file means the image holds no objects.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from yoloprune.errors import DataError
from yoloprune.fileio import atomic_write_text

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IMAGE_DIR_NAMES = ("images", "JPEGImages")
# Label coordinates written with 6 decimals may overshoot [0, 1] by a rounding step.
COORD_TOLERANCE = 1e-6
SPLIT_ALIASES = {"val": "valid"}  # the synthetic and Oxford Hand folders are named `val`


@dataclass
class DataSpec:
    """A parsed `.data` file; `train`, `valid`, `test` and `path` are absolute; `test` is None
    when the `.data` file has no `test` line."""

    classes: int
    train: Path
    valid: Path
    names: list[str]
    path: Path
    test: Path | None = None

    @property
    def splits(self) -> list[str]:
        """The splits this dataset has: "train", "valid", and "test" when there is one."""
        return ["train", "valid"] + (["test"] if self.test is not None else [])

    def list_for(self, split: str) -> Path:
        """The image list of `split` ("train", "valid"/"val" or "test")."""
        split = SPLIT_ALIASES.get(split, split)
        if split == "train":
            return self.train
        if split == "valid":
            return self.valid
        if split == "test":
            if self.test is None:
                raise DataError("the dataset has no test split (no 'test = ...' line)", self.path)
            return self.test
        raise ValueError(f"unknown split {split!r}: expected 'train', 'valid' or 'test'")


def _absolute(path: str | Path) -> Path:
    # Not Path.resolve(): following symlinks could move an image out of its `images` folder
    # and break the images -> labels convention.
    return Path(os.path.abspath(Path(path).expanduser()))


def _resolve(base_dir: Path, value: str) -> Path:
    return _absolute(base_dir / value)


def load_data_spec(path: str | Path) -> DataSpec:
    """Parse a darknet `.data` file. Every referenced file must exist."""
    path = _absolute(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("dataset spec not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read dataset spec: {error}", path) from None

    entries: dict[str, tuple[str, int]] = {}
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            raise DataError(f"expected 'key = value', got {raw_line.strip()!r}", path, line_no)
        key, value = (part.strip() for part in line.split("=", 1))
        entries[key] = (value, line_no)

    for key in ("classes", "train", "valid"):
        if key not in entries:
            raise DataError(f"missing required key '{key}'", path)
    classes_text, classes_line = entries["classes"]
    try:
        classes = int(classes_text)
    except ValueError:
        raise DataError(f"classes must be an integer, got {classes_text!r}", path, classes_line) from None
    if classes < 1:
        raise DataError(f"classes must be >= 1, got {classes}", path, classes_line)

    resolved: dict[str, Path] = {}
    for key in ("train", "valid", "test", "names"):
        if key not in entries:
            continue
        value, line_no = entries[key]
        target = _resolve(path.parent, value)
        if not target.is_file():
            hint = "" if Path(value).is_absolute() else " (relative paths resolve against the .data file's folder)"
            raise DataError(f"{key} file not found: {target}{hint}", path, line_no)
        resolved[key] = target

    if "names" in resolved:
        names = read_class_names(resolved["names"])
        if len(names) != classes:
            raise DataError(
                f"names file {resolved['names']} lists {len(names)} names but classes = {classes}",
                path,
                entries["names"][1],
            )
    else:
        names = [f"class{i}" for i in range(classes)]
    return DataSpec(
        classes=classes, train=resolved["train"], valid=resolved["valid"], names=names, path=path,
        test=resolved.get("test"),
    )


def read_class_names(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read class names: {error}", path) from None
    return [line.strip() for line in lines if line.strip()]


def read_image_list(path: str | Path) -> list[Path]:
    """The image paths listed in `path`, one a line; relative ones resolve against its folder."""
    return [image for _, image in read_image_entries(path)]


def read_image_entries(path: str | Path) -> list[tuple[int, Path]]:
    """Like `read_image_list`, with the line number of each entry (for error messages)."""
    path = _absolute(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError("image list not found", path) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read image list: {error}", path) from None
    entries = []
    for line_no, line in enumerate(lines, start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            entries.append((line_no, _resolve(path.parent, entry)))
    return entries


def label_path_for(image_path: str | Path) -> Path:
    """Darknet convention: the last `images`/`JPEGImages` folder becomes `labels`, extension `.txt`."""
    image_path = Path(image_path)
    parts = list(image_path.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in IMAGE_DIR_NAMES:
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


def label_numbers(fields: list[str], path: str | Path | None, line_no: int) -> list[float]:
    """The numbers of one label line's fields; DataError naming the line if one is not a finite number."""
    try:
        values = [float(field) for field in fields]
    except ValueError:
        raise DataError(f"non-numeric value in {' '.join(fields)!r}", path, line_no) from None
    if not all(math.isfinite(v) for v in values):
        raise DataError(f"non-finite value in {' '.join(fields)!r}", path, line_no)
    return values


def parse_label_text(text: str, num_classes: int | None, path: str | Path | None = None) -> np.ndarray:
    """Parse label lines into a float32 array (n, 5) of `cls cx cy w h`; raise DataError on a bad line.

    With `num_classes` None the class id is only checked to be a non-negative integer.
    """
    rows = []
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5:
            raise DataError(f"expected 5 columns 'cls cx cy w h', got {len(fields)}", path, line_no)
        values = label_numbers(fields, path, line_no)
        cls, cx, cy, w, h = values
        if cls != int(cls) or cls < 0:
            raise DataError(f"class id must be a non-negative integer, got {fields[0]}", path, line_no)
        if num_classes is not None and cls >= num_classes:
            raise DataError(f"class id {int(cls)} >= classes ({num_classes})", path, line_no)
        if w <= 0 or h <= 0:
            raise DataError(f"box width and height must be > 0, got w={w:g} h={h:g}", path, line_no)
        if not all(-COORD_TOLERANCE <= v <= 1 + COORD_TOLERANCE for v in (cx, cy, w, h)):
            raise DataError(f"coordinates must lie in [0, 1], got {line!r}", path, line_no)
        rows.append(values)
    labels = np.array(rows, dtype=np.float32).reshape(-1, 5)
    labels[:, 1:] = labels[:, 1:].clip(0.0, 1.0)
    return labels


def read_labels(label_path: str | Path, num_classes: int | None) -> np.ndarray | None:
    """The labels of one image as (n, 5) float32, or None when the label file does not exist."""
    label_path = Path(label_path)
    try:
        text = label_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read label file: {error}", label_path) from None
    return parse_label_text(text, num_classes, label_path)


def format_label_lines(classes: np.ndarray, boxes_cxcywh_norm: np.ndarray) -> str:
    """Label file text; fixed precision so that the same boxes always give the same bytes."""
    lines = [
        f"{int(cls)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n"
        for cls, (cx, cy, w, h) in zip(np.asarray(classes).reshape(-1), np.asarray(boxes_cxcywh_norm).reshape(-1, 4))
    ]
    return "".join(lines)


def write_dataset_spec(
    out_dir: str | Path,
    name: str,
    class_names: list[str],
    train_images: list[Path],
    valid_images: list[Path],
    test_images: list[Path] | None = None,
) -> Path:
    """Write `name.data`, `name.names`, `train.txt` and `valid.txt` in `out_dir`; return the `.data` path.

    With `test_images` (even an empty list) also `test.txt` and a `test` line; without, the files
    are the same as before the test split existed. Image paths inside `out_dir` are written
    relative to it, so the dataset folder can be moved.
    """
    out_dir = _absolute(out_dir)

    def listed(path: Path) -> str:
        path = _absolute(path)
        try:
            return path.relative_to(out_dir).as_posix()
        except ValueError:
            return str(path)

    atomic_write_text(out_dir / "train.txt", "".join(f"{listed(p)}\n" for p in train_images))
    atomic_write_text(out_dir / "valid.txt", "".join(f"{listed(p)}\n" for p in valid_images))
    test_line = ""
    if test_images is not None:
        atomic_write_text(out_dir / "test.txt", "".join(f"{listed(p)}\n" for p in test_images))
        test_line = "test = test.txt\n"
    atomic_write_text(out_dir / f"{name}.names", "".join(f"{n}\n" for n in class_names))
    data_path = out_dir / f"{name}.data"
    atomic_write_text(
        data_path,
        f"classes = {len(class_names)}\ntrain = train.txt\nvalid = valid.txt\n{test_line}names = {name}.names\n",
    )
    return data_path
