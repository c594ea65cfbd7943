"""Ultralytics YOLO (a `data.yaml`, as Roboflow exports it) -> this project's layout.

The yaml names the splits (`train`, `val`, optional `test`: a folder of images, a `.txt` list of
image paths, or a list of those), relative to `path` when it has one, else to the yaml's folder,
and the classes (`names`: a list, or a mapping from class id to name). Where a folder written in
the yaml does not exist (such files often hold absolute paths of another machine), its trailing
components are looked up beside the yaml, longest first: `/home/x/set/valid/images` ->
`set/valid/images`, then `valid/images`; the summary says which folder was used.

An image's label file is found by the darknet / Ultralytics rule (the last `images` folder becomes
`labels`, the extension `.txt`); no label file means no objects. A label line is
`cls cx cy w h`, normalised to the image's width and height, or a polygon `cls x1 y1 x2 y2 ...`
(normalised points) whose bounding box is taken. A box with no width or height is skipped as
degenerate. The split is the published one.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from tqdm import tqdm

from yoloprune.data.dataset import read_image
from yoloprune.data.importers.classes import build_class_mapping
from yoloprune.data.importers.options import ImportOptions, check_split_options
from yoloprune.data.importers.writer import (
    ImportSummary,
    SourceBox,
    SourceImage,
    read_text_lines,
    write_import,
)
from yoloprune.data.spec import IMAGE_SUFFIXES, label_numbers, label_path_for
from yoloprune.errors import DataError

# The yaml key of each split.
SPLIT_KEYS = {"train": "train", "valid": "val", "test": "test"}


def load_data_yaml(path: Path) -> tuple[dict, dict[str, int]]:
    """The yaml's top-level mapping and the line of each of its keys; DataError (with the line) when malformed."""
    try:
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read dataset yaml: {getattr(error, 'strerror', None) or error}", path) from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        reason = getattr(error, "problem", None) or "not valid YAML"
        raise DataError(f"malformed YAML: {reason}", path, mark.line + 1 if mark is not None else None) from None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        raise DataError("expected a mapping of keys (train, val, names...)", path)
    lines = {key.value: key.start_mark.line + 1 for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    return data, lines


def yaml_class_names(data: dict, path: Path, lines: dict[str, int]) -> list[str]:
    """The class names in class-id order, from `names` (a list, or a mapping id -> name) and `nc`."""
    names = data.get("names")
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(f"names: the class ids must be 0..{len(names) - 1}, got {sorted(names)}", path, lines.get("names"))
        names = [names[i] for i in range(len(names))]
    if names is None and isinstance(data.get("nc"), int):
        names = [f"class{i}" for i in range(data["nc"])]
    if not isinstance(names, list) or not names:
        raise DataError("no class names: expected 'names' as a list or a mapping id -> name", path, lines.get("names"))
    names = [str(name) for name in names]
    if "nc" in data and data["nc"] != len(names):
        raise DataError(f"nc = {data['nc']} but names lists {len(names)} classes", path, lines.get("nc"))
    if len(set(names)) != len(names):
        raise DataError(f"names lists a class twice: {names}", path, lines.get("names"))
    return names


def dataset_base(data: dict, path: Path, summary: ImportSummary) -> Path:
    """The folder split paths are relative to: `path` where it exists, else the yaml's folder."""
    if not data.get("path"):
        return path.parent
    base = Path(str(data["path"])).expanduser()
    base = base if base.is_absolute() else path.parent / base
    if base.is_dir():
        return base
    summary.notes.append(f"path: {data['path']} not found; relative split paths resolve against {path.parent}")
    return path.parent


def locate(value: str, base: Path, key: str, path: Path, line: int | None, summary: ImportSummary) -> Path:
    """The folder or list a split names; where it does not exist, its trailing components beside the yaml."""
    given = Path(value).expanduser()
    candidate = given if given.is_absolute() else base / given
    if candidate.exists():
        return candidate
    parts = [part for part in given.parts if part not in ("..", ".") and part != given.anchor]
    for start in range(len(parts)):
        beside = path.parent.joinpath(*parts[start:])
        if beside.exists():
            summary.notes.append(f"the yaml's {key} folder {value} does not exist; used {beside}")
            return beside
    raise DataError(f"{key}: {value} not found (nor any of its trailing parts beside the yaml)", path, line)


def listed_images(location: Path) -> list[Path]:
    """The images of a split folder (recursively, sorted) or of a `.txt` list (one path a line)."""
    if location.is_dir():
        return sorted(p for p in location.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    images = []
    for line_no, line in enumerate(read_text_lines(location), start=1):
        if not line.strip():
            continue
        image = Path(line.strip()).expanduser()
        image = image if image.is_absolute() else location.parent / image
        if not image.is_file():
            raise DataError(f"image not found: {image}", location, line_no)
        images.append(image)
    return images


def _line_box(fields: list[str], class_count: int, label_path: Path, line_no: int) -> tuple[int, list[float]]:
    """Class id and normalised (x1, y1, x2, y2) of one label line, a box or a polygon."""
    if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
        raise DataError(f"expected 'cls cx cy w h' or a polygon 'cls x1 y1 x2 y2 ...', got {len(fields)} columns", label_path, line_no)
    values = label_numbers(fields, label_path, line_no)
    if values[0] != int(values[0]) or not 0 <= values[0] < class_count:
        raise DataError(f"class id {fields[0]} is not one of the yaml's {class_count} classes (0..{class_count - 1})", label_path, line_no)
    if len(fields) == 5:
        cx, cy, w, h = values[1:]
        return int(values[0]), [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    xs, ys = values[1::2], values[2::2]
    return int(values[0]), [min(xs), min(ys), max(xs), max(ys)]


def read_yolo_labels(image: Path, names: list[str], summary: ImportSummary) -> SourceImage:
    """One image (decoded: it must be readable, and gives the size) with the boxes of its label file."""
    height, width = read_image(image).shape[:2]
    label_path = label_path_for(image)
    if not label_path.is_file():
        summary.count("no labels", image)
        return SourceImage(image, image, width, height)
    source = SourceImage(image, label_path, width, height)
    for line_no, line in enumerate(read_text_lines(label_path), start=1):
        if not line.strip():
            continue
        class_id, (x1, y1, x2, y2) = _line_box(line.split(), len(names), label_path, line_no)
        if x2 <= x1 or y2 <= y1:
            summary.count("degenerate", label_path)
            continue
        source.boxes.append(SourceBox(names[class_id], (x1 * width, y1 * height, x2 * width, y2 * height)))
    return source


def split_sources(data: dict, path: Path, lines: dict[str, int], summary: ImportSummary) -> list[tuple[str, Path]]:
    """(split, image) of every image the yaml's train / val / test entries name."""
    base = dataset_base(data, path, summary)
    images = []
    for split, key in SPLIT_KEYS.items():
        value = data.get(key)
        if not value:
            if split != "test":
                raise DataError(f"no '{key}' split", path)
            continue
        for entry in value if isinstance(value, list) else [value]:
            location = locate(str(entry), base, key, path, lines.get(key), summary)
            found = listed_images(location)
            if not found:
                raise DataError(f"{key}: no images in {location}", path, lines.get(key))
            images += [(split, image) for image in found]
    return images


def import_yolo(data_yaml: str | Path, out: str | Path, options: ImportOptions | None = None) -> ImportSummary:
    """Import the Ultralytics dataset described by `data_yaml` into a YOLO dataset at `out` (see the module)."""
    options = options or ImportOptions()
    path = Path(data_yaml)
    check_split_options(options, published=True)
    data, lines = load_data_yaml(path)
    summary = ImportSummary("Ultralytics YOLO", path, split_source="as published (the yaml's train / val / test)")
    names = yaml_class_names(data, path, lines)
    mapping = build_class_mapping(names, options.classes, options.merge, path)
    sources = []
    for split, image in tqdm(split_sources(data, path, lines, summary), desc="reading labels", unit="img", disable=None, leave=False):
        source = read_yolo_labels(image, names, summary)
        source.split = split
        sources.append(source)
    write_import(sources, out, options, mapping, summary, "data yolo")
    return summary
