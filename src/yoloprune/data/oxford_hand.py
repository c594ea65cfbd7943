"""Convert the Oxford Hand dataset (MATLAB annotations) into a YOLO dataset.

Source layout::

    hand_dataset/
      training_dataset/training_data/{images/*.jpg, annotations/*.mat}
      validation_dataset/validation_data/{images, annotations}
      test_dataset/test_data/{images, annotations}

Each `.mat` holds `boxes`, a 1×N cell; each cell is a 1×1 struct whose first four fields are the
corners of a (possibly rotated) hand quadrilateral, each `[y x]` — row first — in MATLAB's 1-based
pixel coordinates. Extra fields may follow, so the fields are read by position, not by name.
The label of a hand is the axis-aligned box of its four corners, clipped to the image.

Output, by default the official splits: `train.txt` = training, `valid.txt` = validation (for
model selection), `test.txt` = test (821 images, held out for the reported scores); `hand.data`,
`hand.names`, `images/{train,val,test}/`, `labels/{train,val,test}/`.

With `reference_split` the Oxford Hand reference project's split instead, for numbers comparable
with its: `train.txt` = training + validation (4807), `valid.txt` = test (821), no test split. The
reference picks its model and reports its score on that same split, so such a score is optimistic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yoloprune.data.importers.writer import copy_example
from yoloprune.data.spec import IMAGE_SUFFIXES, write_dataset_spec
from yoloprune.data.transforms import xyxy_px_to_cxcywh_norm
from yoloprune.errors import DataError

log = logging.getLogger(__name__)

# (source split folder, its data folder)
SOURCE_FOLDERS = (
    ("training_dataset", "training_data"),
    ("validation_dataset", "validation_data"),
    ("test_dataset", "test_data"),
)
# The output split (image folder name) of each source split folder.
OFFICIAL_SPLITS = {"training_dataset": "train", "validation_dataset": "val", "test_dataset": "test"}
REFERENCE_SPLITS = {"training_dataset": "train", "validation_dataset": "train", "test_dataset": "val"}
# The name a split has in the `.data` file, where it differs from its folder's.
LIST_NAMES = {"val": "valid"}


def split_layout(reference_split: bool) -> dict[str, str]:
    return REFERENCE_SPLITS if reference_split else OFFICIAL_SPLITS


def describe_layout(reference_split: bool) -> str:
    """E.g. "train = training + validation, valid = test", in the order of the output splits."""
    sources: dict[str, list[str]] = {}
    for source, out_split in split_layout(reference_split).items():
        sources.setdefault(out_split, []).append(source.split("_")[0])
    return ", ".join(f"{LIST_NAMES.get(split, split)} = {' + '.join(names)}" for split, names in sources.items())


def corners_to_box_xyxy(corners_yx: np.ndarray, width: int, height: int) -> np.ndarray | None:
    """Axis-aligned pixel box (x1, y1, x2, y2) of four MATLAB `[y x]` corners, clipped to the image.

    MATLAB pixel k (1-based) has its centre at k; in continuous image coordinates, where pixel i
    (0-based) spans [i, i + 1], that centre is at k − 0.5. Returns None when nothing of the box
    lies inside the image.
    """
    corners_yx = np.asarray(corners_yx, dtype=np.float64).reshape(-1, 2)
    if not np.isfinite(corners_yx).all():
        raise ValueError(f"non-finite corner coordinates {corners_yx.tolist()}")
    xs, ys = corners_yx[:, 1] - 0.5, corners_yx[:, 0] - 0.5
    x1, x2 = np.clip([xs.min(), xs.max()], 0, width)
    y1, y2 = np.clip([ys.min(), ys.max()], 0, height)
    if x2 <= x1 or y2 <= y1:
        return None
    return np.array([x1, y1, x2, y2], dtype=np.float64)


def read_hand_corners(mat_path: str | Path) -> list[np.ndarray]:
    """The corner sets `(4, 2)` `[y x]` of every hand annotated in one `.mat` file."""
    import scipy.io

    mat_path = Path(mat_path)
    try:
        contents = scipy.io.loadmat(str(mat_path), squeeze_me=False, struct_as_record=True)
    except Exception as error:  # scipy raises many types (ValueError, TypeError, MatReadError) for bad files
        raise DataError(f"cannot read MATLAB file: {error}", mat_path) from None
    if "boxes" not in contents:
        keys = sorted(k for k in contents if not k.startswith("__"))
        raise DataError(f"no 'boxes' variable (found {keys})", mat_path)
    cells = np.asarray(contents["boxes"])
    hands = []
    for k, cell in enumerate(cells.reshape(-1)):
        record = np.asarray(cell).reshape(-1)
        if record.size != 1 or record.dtype.names is None or len(record.dtype.names) < 4:
            raise DataError(f"boxes{{{k + 1}}} is not a struct with four corner fields", mat_path)
        try:
            corners = np.stack([np.asarray(record[0][i], dtype=np.float64).reshape(2) for i in range(4)])
        except (ValueError, TypeError):
            raise DataError(f"boxes{{{k + 1}}}: a corner is not a [y x] pair of numbers", mat_path) from None
        hands.append(corners)
    return hands


@dataclass
class ConversionSummary:
    reference_split: bool = False
    images: dict[str, int] = field(default_factory=dict)  # per output split: "train", "val", "test"
    boxes: dict[str, int] = field(default_factory=dict)
    boxes_outside: int = 0  # annotated hands lying wholly outside their image
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    data_path: Path | None = None

    def format(self) -> str:
        if self.reference_split:
            layout = f"splits: the reference project's ({describe_layout(True)}; no test split)"
        else:
            layout = f"splits: official ({describe_layout(False)})"
        lines = [layout]
        lines += [
            f"{LIST_NAMES.get(split, split)}: {count} images, {self.boxes.get(split, 0)} boxes"
            for split, count in self.images.items()
        ]
        if self.boxes_outside:
            lines.append(f"boxes dropped (entirely outside their image): {self.boxes_outside}")
        lines.append(f"skipped: {len(self.skipped)} image(s)")
        reasons: dict[str, int] = {}
        for _, reason in self.skipped:
            reasons[reason.split(":")[0]] = reasons.get(reason.split(":")[0], 0) + 1
        lines += [f"  {count} × {reason}" for reason, count in sorted(reasons.items())]
        if self.data_path is not None:
            lines.append(f"dataset spec: {self.data_path}")
        return "\n".join(lines)


def _find_root(src: Path) -> Path:
    for candidate in (src, src / "hand_dataset"):
        if all((candidate / split / data).is_dir() for split, data in SOURCE_FOLDERS):
            return candidate
    expected = ", ".join(f"{split}/{data}" for split, data in SOURCE_FOLDERS)
    raise DataError(f"not an Oxford Hand folder: expected {expected} (or hand_dataset/ holding them)", src)


def _hand_labels(hands: list[np.ndarray], width: int, height: int, mat_path: Path, summary: ConversionSummary) -> np.ndarray:
    """YOLO labels `(n, 5)` (class 0, normalised cx cy w h) of the hands that lie in the image; the
    others are counted in `summary.boxes_outside`."""
    boxes = []
    for corners in hands:
        try:
            box = corners_to_box_xyxy(corners, width, height)
        except ValueError as error:
            raise DataError(str(error), mat_path) from None
        if box is None:
            summary.boxes_outside += 1
        else:
            boxes.append(box)
    labels_xyxy_px = np.array([(0.0, *box) for box in boxes], dtype=np.float32).reshape(-1, 5)
    return xyxy_px_to_cxcywh_norm(labels_xyxy_px, width, height)


def convert_oxford_hand(
    src: str | Path, out: str | Path, skip_bad: bool = False, progress: bool = True, reference_split: bool = False
) -> ConversionSummary:
    """Convert the Oxford Hand folder `src` into a YOLO dataset in `out`: the official train / valid /
    test splits, or with `reference_split` the reference project's train / valid (see the module).

    An image without an annotation file is skipped (logged, counted). A bad image or `.mat`
    raises DataError, or with `skip_bad` is logged, counted and skipped.
    """
    from tqdm import tqdm

    from yoloprune.data.dataset import read_image

    src, out = Path(src), Path(out)
    root = _find_root(src)
    layout = split_layout(reference_split)
    out_splits = list(dict.fromkeys(layout.values()))
    summary = ConversionSummary(
        reference_split=reference_split,
        images={split: 0 for split in out_splits},
        boxes={split: 0 for split in out_splits},
    )
    listed: dict[str, list[Path]] = {split: [] for split in out_splits}
    used_names: dict[str, set[str]] = {split: set() for split in out_splits}

    def skip(path: Path, reason: str) -> None:
        summary.skipped.append((str(path), reason))
        log.warning("skipping %s: %s", path, reason)

    for split_dir, data_dir in SOURCE_FOLDERS:
        out_split = layout[split_dir]
        folder = root / split_dir / data_dir
        image_paths = sorted(p for p in (folder / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for image_path in tqdm(image_paths, desc=split_dir, unit="img", disable=not progress, leave=False):
            mat_path = folder / "annotations" / f"{image_path.stem}.mat"
            if not mat_path.is_file():
                skip(image_path, "no annotation file")
                continue
            try:
                image = read_image(image_path)
                hands = read_hand_corners(mat_path)
            except DataError as error:
                if not skip_bad:
                    raise
                skip(Path(error.path or image_path), error.reason)
                continue
            height, width = image.shape[:2]
            labels_cxcywh_norm = _hand_labels(hands, width, height, mat_path, summary)
            # With the reference split, training and validation share one output folder; keep names unique.
            name = image_path.name
            if name in used_names[out_split]:
                name = f"{split_dir.split('_')[0]}_{name}"
            used_names[out_split].add(name)
            listed[out_split].append(copy_example(image_path, labels_cxcywh_norm, out, out_split, name))
            summary.images[out_split] += 1
            summary.boxes[out_split] += len(labels_cxcywh_norm)
    summary.data_path = write_dataset_spec(out, "hand", ["hand"], listed["train"], listed["val"], listed.get("test"))
    return summary
