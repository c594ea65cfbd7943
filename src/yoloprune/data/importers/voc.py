"""Pascal VOC (the format LabelImg writes) -> YOLO.

Layout: `ROOT/Annotations/*.xml`, `ROOT/JPEGImages/<image>`, and where published
`ROOT/ImageSets/Main/{train,val,test}.txt` (one image id a line), kept as the split. Without
`train.txt` and `val.txt` there, every annotation file is imported and split by fractions.

Coordinates: `xmin ymin xmax ymax` are 1-based pixel indices and both corners are inside the box,
which covers pixels xmin..xmax. Where pixel i (0-based) spans [i, i + 1], that is
[xmin - 1, xmax] × [ymin - 1, ymax]: a box from 1 to the image width covers the whole image.
A box with xmax ≤ xmin or ymax ≤ ymin is skipped as degenerate (a click, not a drawn box).
`difficult` boxes are kept as ordinary boxes (and counted): the label format has no "ignore" flag,
and dropping them would teach the detector that those objects are background.
The image's own size is used; an annotated `<size>` that disagrees with it is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from tqdm import tqdm

from yoloprune.data.dataset import read_image
from yoloprune.data.importers.classes import build_class_mapping
from yoloprune.data.importers.options import ImportOptions, check_split_options
from yoloprune.data.importers.writer import (
    read_text_lines,
    ImportSummary,
    SourceBox,
    SourceImage,
    write_import,
)
from yoloprune.data.spec import IMAGE_SUFFIXES
from yoloprune.errors import DataError

# The published list of each split, in ImageSets/Main.
SPLIT_LISTS = {"train": "train.txt", "valid": "val.txt", "test": "test.txt"}


@dataclass
class XmlNode:
    """An XML element with the line it starts on (for error messages)."""

    tag: str
    line: int
    text: str = ""
    children: list[XmlNode] = field(default_factory=list)

    def find(self, tag: str) -> XmlNode | None:
        return next((child for child in self.children if child.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [child for child in self.children if child.tag == tag]


def parse_xml(path: Path) -> XmlNode:
    """The root element of an XML file; DataError with the line for malformed XML."""
    parser = expat.ParserCreate()
    stack = [XmlNode("", 0)]

    def start(tag: str, _attributes: dict) -> None:
        node = XmlNode(tag, parser.CurrentLineNumber)
        stack[-1].children.append(node)
        stack.append(node)

    def text(data: str) -> None:
        stack[-1].text += data

    parser.StartElementHandler = start
    parser.EndElementHandler = lambda _tag: stack.pop()
    parser.CharacterDataHandler = text
    try:
        parser.Parse(path.read_bytes(), True)
    except expat.ExpatError as error:
        raise DataError(f"malformed XML: {expat.ErrorString(error.code)}", path, error.lineno) from None
    except OSError as error:
        raise DataError(f"cannot read annotation file: {error.strerror}", path) from None
    return stack[0].children[0]


def _number(parent: XmlNode, tag: str, path: Path) -> float:
    node = parent.find(tag)
    if node is None:
        raise DataError(f"<{parent.tag}> has no <{tag}>", path, parent.line)
    try:
        value = float(node.text.strip())
    except ValueError:
        raise DataError(f"<{tag}> is not a number: {node.text.strip()!r}", path, node.line) from None
    if not math.isfinite(value):
        raise DataError(f"<{tag}> is not finite: {node.text.strip()!r}", path, node.line)
    return value


def _image_path(root: XmlNode, xml_path: Path, images_dir: Path) -> Path:
    """JPEGImages/<filename>, else JPEGImages/<annotation stem>.<any image suffix>."""
    filename = root.find("filename")
    candidates = [images_dir / Path(filename.text.strip()).name] if filename is not None and filename.text.strip() else []
    candidates += [images_dir / f"{xml_path.stem}{suffix}" for suffix in IMAGE_SUFFIXES]
    candidates += [images_dir / f"{xml_path.stem}{suffix.upper()}" for suffix in IMAGE_SUFFIXES]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise DataError(f"image not found: {candidates[0]}", xml_path, filename.line if filename is not None else None)
    return found


def _check_size(root: XmlNode, xml_path: Path, image_path: Path, width: int, height: int) -> None:
    size = root.find("size")
    if size is None or size.find("width") is None or size.find("height") is None:
        return
    annotated = (_number(size, "width", xml_path), _number(size, "height", xml_path))
    if annotated != (0, 0) and annotated != (width, height):  # some tools write 0 × 0
        raise DataError(
            f"<size> says {annotated[0]:g}×{annotated[1]:g} but {image_path.name} is {width}×{height}", xml_path, size.line
        )


def _object_box(obj: XmlNode, xml_path: Path, summary: ImportSummary) -> SourceBox | None:
    name = obj.find("name")
    if name is None or not name.text.strip():
        raise DataError("<object> has no <name>", xml_path, obj.line)
    bndbox = obj.find("bndbox")
    if bndbox is None:
        raise DataError("<object> has no <bndbox>", xml_path, obj.line)
    xmin, ymin, xmax, ymax = (_number(bndbox, tag, xml_path) for tag in ("xmin", "ymin", "xmax", "ymax"))
    difficult = obj.find("difficult")
    if difficult is not None and difficult.text.strip() == "1":
        summary.count("difficult", xml_path)
    if xmax <= xmin or ymax <= ymin:
        summary.count("degenerate", xml_path)
        return None
    return SourceBox(name.text.strip(), (xmin - 1, ymin - 1, xmax, ymax))


def read_voc_annotation(xml_path: Path, images_dir: Path, summary: ImportSummary) -> SourceImage:
    """One annotation file and its image (decoded: it must be readable, and gives the size)."""
    root = parse_xml(xml_path)
    if root.tag != "annotation":
        raise DataError(f"expected an <annotation> element, found <{root.tag}>", xml_path, root.line)
    image_path = _image_path(root, xml_path, images_dir)
    height, width = read_image(image_path).shape[:2]
    _check_size(root, xml_path, image_path, width, height)
    boxes = [_object_box(obj, xml_path, summary) for obj in root.findall("object")]
    return SourceImage(image_path, xml_path, width, height, [box for box in boxes if box is not None])


def find_voc_root(root: Path) -> Path:
    """`root`, or its only subfolder, holding Annotations/ and JPEGImages/."""
    def is_voc(folder: Path) -> bool:
        return (folder / "Annotations").is_dir() and (folder / "JPEGImages").is_dir()

    if is_voc(root):
        return root
    inside = [child for child in sorted(root.iterdir()) if child.is_dir() and is_voc(child)] if root.is_dir() else []
    if len(inside) == 1:
        return inside[0]
    raise DataError("not a Pascal VOC folder: expected Annotations/ and JPEGImages/ in it", root)


def published_split(root: Path) -> dict[str, str] | None:
    """Image id -> split from ImageSets/Main's train / val (/ test) lists; None without train and val."""
    main = root / "ImageSets" / "Main"
    if not all((main / SPLIT_LISTS[split]).is_file() for split in ("train", "valid")):
        return None
    split_of: dict[str, str] = {}
    for split, list_name in SPLIT_LISTS.items():
        list_path = main / list_name
        if not list_path.is_file():
            continue
        for line_no, line in enumerate(read_text_lines(list_path), start=1):
            if not line.strip():
                continue
            image_id = line.split()[0]
            if image_id in split_of and split_of[image_id] != split:
                raise DataError(f"{image_id} is also listed in {SPLIT_LISTS[split_of[image_id]]}", list_path, line_no)
            split_of[image_id] = split
            if not (root / "Annotations" / f"{image_id}.xml").is_file():
                raise DataError(f"no annotation file Annotations/{image_id}.xml for {image_id}", list_path, line_no)
    return split_of


def import_voc(root: str | Path, out: str | Path, options: ImportOptions | None = None) -> ImportSummary:
    """Import the Pascal VOC dataset at `root` into a YOLO dataset at `out` (see the module)."""
    options = options or ImportOptions()
    root = find_voc_root(Path(root))
    split_of = published_split(root)
    check_split_options(options, split_of is not None)
    summary = ImportSummary("Pascal VOC", root, split_source="as published (ImageSets/Main)" if split_of else "")
    xml_paths = sorted((root / "Annotations").glob("*.xml"))
    if split_of is not None:
        unlisted = sum(path.stem not in split_of for path in xml_paths)
        if unlisted:
            summary.notes.append(f"annotation files in no published split (not imported): {unlisted}")
        xml_paths = [path for path in xml_paths if path.stem in split_of]
    if not xml_paths:
        raise DataError("no annotation files (*.xml) to import", root / "Annotations")
    sources = []
    for xml_path in tqdm(xml_paths, desc="reading VOC", unit="file", disable=None, leave=False):
        source = read_voc_annotation(xml_path, root / "JPEGImages", summary)
        source.split = split_of[xml_path.stem] if split_of is not None else None
        sources.append(source)
    class_names = sorted({box.name for source in sources for box in source.boxes})
    mapping = build_class_mapping(class_names, options.classes, options.merge, root / "Annotations")
    write_import(sources, out, options, mapping, summary, "data voc")
    return summary
