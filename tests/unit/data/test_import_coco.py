"""`data coco`: boxes equal the raw JSON's converted in the test; crowd regions dropped, boxes outside
the image clipped or skipped, each counted; a seeded grouped split; bad input gives one line, writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from yoloprune.cli import main
from yoloprune.data.check import check_dataset
from yoloprune.data.importers.coco import import_coco
from yoloprune.data.importers.options import ImportOptions
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels

WIDTH, HEIGHT = 64, 48


def write_coco(root: Path, count: int = 12) -> Path:
    """`count` images named s<session>_<i>.png and an instances file: categories with gaps in their
    ids, a crowd region, a box reaching past the border, one wholly outside, one with no width,
    and an image without annotations."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(count):
        name = f"s{i % 4}_{i:02d}.png"
        cv2.imwrite(str(root / "images" / name), rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8))
        images.append({"id": 100 + i, "file_name": name, "width": WIDTH, "height": HEIGHT})
        if i == 5:
            continue  # no annotations: a negative image
        annotations.append({"id": len(annotations), "image_id": 100 + i, "category_id": 7 if i % 2 else 3,
                            "bbox": [1.5 + i, 2.0, 10.25, 8.5], "iscrowd": 0})
    annotations += [
        {"id": 90, "image_id": 100, "category_id": 3, "bbox": [0, 0, 30, 30], "iscrowd": 1},
        {"id": 91, "image_id": 101, "category_id": 7, "bbox": [50.0, 40.0, 20.0, 20.0], "iscrowd": 0},  # clipped
        {"id": 92, "image_id": 102, "category_id": 7, "bbox": [70.0, 10.0, 5.0, 5.0], "iscrowd": 0},  # outside
        {"id": 93, "image_id": 103, "category_id": 3, "bbox": [10.0, 10.0, 0.0, 5.0], "iscrowd": 0},  # no width
    ]
    categories = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
    path = root / "instances.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}, indent=1))
    return path


def expected_labels(annotations_path: Path) -> dict[str, list[tuple[int, float, float, float, float]]]:
    """File name -> (class, cx, cy, w, h): class ids by category id order, crowd regions left out,
    [x, x + w] clipped to the image, boxes with nothing left left out."""
    data = json.loads(annotations_path.read_text())
    class_of = {c["id"]: k for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))}
    name_of = {image["id"]: image["file_name"] for image in data["images"]}
    expected: dict[str, list] = {name: [] for name in name_of.values()}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        x1, y1, x2, y2 = max(x, 0), max(y, 0), min(x + w, WIDTH), min(y + h, HEIGHT)
        if a["iscrowd"] or x2 <= x1 or y2 <= y1:
            continue
        expected[name_of[a["image_id"]]].append(
            (class_of[a["category_id"]], (x1 + x2) / 2 / WIDTH, (y1 + y2) / 2 / HEIGHT, (x2 - x1) / WIDTH, (y2 - y1) / HEIGHT)
        )
    return expected


@pytest.fixture
def coco(tmp_path) -> Path:
    return write_coco(tmp_path / "coco")


def _all_images(data_path: Path) -> dict[str, tuple[str, Path]]:
    spec = load_data_spec(data_path)
    return {image.name: (split, image) for split in spec.splits for image in read_image_list(spec.list_for(split))}


def test_boxes_equal_the_raw_json(coco, tmp_path):
    summary = import_coco(coco, coco.parent / "images", tmp_path / "out")
    assert load_data_spec(summary.data_path).names == ["cat", "dog"]  # category id order: 3, 7
    images = _all_images(summary.data_path)
    expected = expected_labels(coco)
    assert sorted(images) == sorted(expected)
    for name, (_, image) in images.items():
        labels = read_labels(label_path_for(image), 2)
        assert labels is not None  # an image without boxes still gets its (empty) label file
        np.testing.assert_allclose(labels, np.array(expected[name], dtype=np.float64).reshape(-1, 5), atol=1e-6)
    totals = {event: sum(files.values()) for event, files in summary.events.items()}
    assert totals == {"crowd": 1, "clipped": 1, "outside": 1, "degenerate": 1}
    assert list(summary.events["clipped"]) == [str(coco.parent / "images" / "s1_01.png")]
    assert check_dataset(summary.data_path, progress=False).problems == []


def test_grouped_split_keeps_each_session_together(coco, tmp_path):
    options = ImportOptions(fractions=(0.5, 0.25, 0.25), seed=1, group=r"^(s\d)_")
    summary = import_coco(coco, coco.parent / "images", tmp_path / "out", options)
    split_of_session: dict[str, set[str]] = {}
    for name, (split, _) in _all_images(summary.data_path).items():
        split_of_session.setdefault(name[:2], set()).add(split)
    assert all(len(splits) == 1 for splits in split_of_session.values())
    assert set().union(*split_of_session.values()) == {"train", "valid", "test"}  # 4 sessions of 3 images: 2 / 1 / 1
    assert summary.images == {"train": 6, "valid": 3, "test": 3}


def test_classes_and_merge(coco, tmp_path):
    expected = expected_labels(coco)
    summary = import_coco(coco, coco.parent / "images", tmp_path / "dogs", ImportOptions(classes=["dog"]))
    assert load_data_spec(summary.data_path).names == ["dog"]
    assert sum(summary.boxes.values()) == sum(box[0] == 1 for boxes in expected.values() for box in boxes)
    assert summary.dropped_classes == {"cat": sum(box[0] == 0 for boxes in expected.values() for box in boxes)}
    merged = import_coco(coco, coco.parent / "images", tmp_path / "pets", ImportOptions(merge="pet"))
    assert sum(merged.boxes.values()) == sum(len(boxes) for boxes in expected.values())


def test_cli(coco, tmp_path, capsys):
    out = tmp_path / "pets"
    assert main(["data", "coco", str(coco), str(coco.parent / "images"), str(out), "--fractions", "0.75,0.25"]) == 0
    printed = capsys.readouterr().out
    assert "boxes dropped: crowd regions (iscrowd=1): 1 (in s0_00.png)" in printed
    assert "boxes clipped to the image: 1 (in s1_01.png)" in printed
    assert not (out / "test.txt").exists()  # no test share, no test split
    assert main(["data", "check", str(out / "pets.data")]) == 0


def _malformed(data: dict, path: Path) -> int | None:
    path.write_text(json.dumps(data, indent=1)[:-20])
    return len(path.read_text().splitlines())


def _bad_bbox(data: dict, path: Path) -> None:
    data["annotations"][2]["bbox"] = [1, 2, 3]
    path.write_text(json.dumps(data))


def _unknown_category(data: dict, path: Path) -> None:
    data["annotations"][0]["category_id"] = 99
    path.write_text(json.dumps(data))


def _missing_image(data: dict, path: Path) -> None:
    (path.parent / "images" / data["images"][4]["file_name"]).unlink()


@pytest.mark.parametrize("breaker", [_malformed, _bad_bbox, _unknown_category, _missing_image])
def test_bad_input_one_line_and_nothing_written(coco, tmp_path, capsys, breaker):
    line_no = breaker(json.loads(coco.read_text()), coco)
    out = tmp_path / "out"
    assert main(["data", "coco", str(coco), str(coco.parent / "images"), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(coco) in err[0]
    if line_no is not None:
        assert f"{coco}:{line_no}:" in err[0]
    if breaker is _missing_image:
        assert "s0_04.png" in err[0]
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_unknown_class_is_one_line(coco, tmp_path, capsys):
    assert main(["data", "coco", str(coco), str(coco.parent / "images"), str(tmp_path / "out"), "--classes", "cat,cow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(coco) in err[0] and "'cow'" in err[0]
    assert not (tmp_path / "out").exists()
