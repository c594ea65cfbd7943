"""COCO instances JSON -> YOLO.

The file holds `images` (`id`, `file_name` relative to the images folder, `width`, `height`),
`annotations` (`image_id`, `category_id`, `bbox`, `iscrowd`) and `categories` (`id`, `name`); the
classes are the categories in the order of their ids. `bbox` is `[x, y, width, height]` in pixels
from the image's top-left corner, continuous coordinates: the box spans [x, x + width] ×
[y, y + height]. A box with no width or height is skipped as degenerate.

Crowd regions (`iscrowd` 1) are dropped and counted. COCO's evaluation ignores them: a detection
matching one counts neither as a true nor as a false positive. This project's labels have no
ignore flag, and as ordinary boxes a crowd region (one box around many objects) would teach and
score the detector wrongly; dropped, a detection on one of its objects counts as a false positive.

A COCO file publishes no split: the images are split by fractions. Images with no annotation are
kept, with an empty label file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm

from yoloprune.data.dataset import read_image
from yoloprune.data.importers.classes import build_class_mapping
from yoloprune.data.importers.options import ImportOptions
from yoloprune.data.importers.writer import ImportSummary, SourceBox, SourceImage, write_import
from yoloprune.errors import DataError


def load_coco_json(path: Path) -> dict:
    """The parsed file, checked to hold the three lists; DataError (with the line) when it does not."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"malformed JSON: {error.msg}", path, error.lineno) from None
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read annotation file: {getattr(error, 'strerror', None) or error}", path) from None
    if not isinstance(data, dict):
        raise DataError("not a COCO instances file: the top level is not an object", path)
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"not a COCO instances file: no '{key}' list", path)
    return data


def _field(entry: object, key: str, kind: type | tuple, where: str, path: Path):
    if not isinstance(entry, dict) or key not in entry:
        raise DataError(f"{where} has no '{key}'", path)
    value = entry[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: '{key}' has the wrong type ({type(value).__name__})", path)
    return value


def coco_categories(data: dict, path: Path) -> dict[int, str]:
    """Category id -> name, in the order of the ids."""
    names: dict[int, str] = {}
    for k, category in enumerate(data["categories"]):
        where = f"categories[{k}]"
        category_id, name = _field(category, "id", int, where, path), _field(category, "name", str, where, path)
        if category_id in names:
            raise DataError(f"{where}: category id {category_id} appears twice", path)
        if name in names.values():
            raise DataError(f"{where}: category name {name!r} appears twice", path)
        names[category_id] = name
    return dict(sorted(names.items()))


def _coco_image(entry: object, k: int, path: Path, images_dir: Path) -> tuple[int, SourceImage]:
    where = f"images[{k}]"
    image_id, file_name = _field(entry, "id", int, where, path), _field(entry, "file_name", str, where, path)
    image_path = images_dir / file_name
    if not image_path.is_file():
        raise DataError(f"image not found: {image_path} ({where}, id {image_id})", path)
    height, width = read_image(image_path).shape[:2]
    annotated = (entry.get("width"), entry.get("height"))
    if annotated != (None, None) and annotated != (width, height):
        raise DataError(f"{where} says {annotated[0]}×{annotated[1]} but {image_path.name} is {width}×{height}", path)
    return image_id, SourceImage(image_path, image_path, width, height)


def coco_images(data: dict, path: Path, images_dir: Path) -> dict[int, SourceImage]:
    """Image id -> its image (decoded: it must be readable, and gives the size), without boxes yet."""
    images: dict[int, SourceImage] = {}
    for k, entry in enumerate(tqdm(data["images"], desc="reading COCO images", unit="img", disable=None, leave=False)):
        image_id, source = _coco_image(entry, k, path, images_dir)
        if image_id in images:
            raise DataError(f"images[{k}]: image id {image_id} appears twice", path)
        images[image_id] = source
    return images


def _bbox(annotation: dict, where: str, path: Path) -> tuple[float, float, float, float]:
    bbox = _field(annotation, "bbox", list, where, path)
    if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        raise DataError(f"{where}: bbox must be four finite numbers [x, y, width, height], got {bbox}", path)
    return tuple(float(v) for v in bbox)


def add_coco_boxes(
    data: dict, path: Path, images: dict[int, SourceImage], categories: dict[int, str], summary: ImportSummary
) -> None:
    """Put every annotation's box into its image; crowd regions and degenerate boxes are counted instead."""
    for k, annotation in enumerate(data["annotations"]):
        where = f"annotations[{k}]"
        image_id = _field(annotation, "image_id", int, where, path)
        category_id = _field(annotation, "category_id", int, where, path)
        if image_id not in images:
            raise DataError(f"{where}: image_id {image_id} is not in 'images'", path)
        if category_id not in categories:
            raise DataError(f"{where}: category_id {category_id} is not in 'categories'", path)
        x, y, width, height = _bbox(annotation, where, path)
        if annotation.get("iscrowd", 0):
            summary.count("crowd", images[image_id].image)
        elif width <= 0 or height <= 0:
            summary.count("degenerate", images[image_id].image)
        else:
            images[image_id].boxes.append(SourceBox(categories[category_id], (x, y, x + width, y + height)))


def import_coco(
    annotations: str | Path, images_dir: str | Path, out: str | Path, options: ImportOptions | None = None
) -> ImportSummary:
    """Import a COCO instances file and its images folder into a YOLO dataset at `out` (see the module)."""
    options = options or ImportOptions()
    annotations, images_dir = Path(annotations), Path(images_dir)
    if not images_dir.is_dir():
        raise DataError("images folder not found", images_dir)
    data = load_coco_json(annotations)
    summary = ImportSummary("COCO", annotations)
    categories = coco_categories(data, annotations)
    mapping = build_class_mapping(list(categories.values()), options.classes, options.merge, annotations)
    images = coco_images(data, annotations, images_dir)
    add_coco_boxes(data, annotations, images, categories, summary)
    write_import(list(images.values()), out, options, mapping, summary, "data coco")
    return summary
