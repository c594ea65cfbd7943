"""`data voc`: the boxes equal an independent parse of the VOC files (BCCD's real photos), the
published split is kept, classes are selected and merged, bad input gives one line and writes nothing."""

from __future__ import annotations

import hashlib
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import FIXTURES

from yoloprune.cli import main
from yoloprune.data.check import check_dataset
from yoloprune.data.importers.options import ImportOptions
from yoloprune.data.importers.voc import import_voc
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels

BCCD = FIXTURES / "real" / "bccd" / "BCCD"
LISTS = {"train": "train.txt", "valid": "val.txt", "test": "test.txt"}


def expected_boxes(xml_path: Path) -> list[tuple[str, float, float, float, float]]:
    """(class, cx, cy, w, h) normalised, by the VOC convention: pixels xmin..xmax inclusive, 1-based,
    i.e. [xmin - 1, xmax]; boxes with xmax <= xmin or ymax <= ymin left out."""
    root = ET.parse(xml_path).getroot()
    image = cv2.imread(str(BCCD / "JPEGImages" / root.findtext("filename")))
    height, width = image.shape[:2]
    boxes = []
    for obj in root.iter("object"):
        xmin, ymin, xmax, ymax = (float(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
        if xmax <= xmin or ymax <= ymin:
            continue
        x1, y1, x2, y2 = max(xmin - 1, 0), max(ymin - 1, 0), min(xmax, width), min(ymax, height)
        boxes.append((obj.findtext("name"), (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height))
    return boxes


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        digest.update(str(path.relative_to(folder)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("voc") / "bccd"
    before = tree_digest(BCCD)
    summary = import_voc(BCCD, out)
    assert tree_digest(BCCD) == before  # the source is only read
    return out / "bccd.data", summary


def test_boxes_and_splits_equal_an_independent_parse(imported):
    data_path, summary = imported
    spec = load_data_spec(data_path)
    assert spec.names == ["Platelets", "RBC", "WBC"]  # every class of the XML files, sorted
    for split, list_name in LISTS.items():
        ids = (BCCD / "ImageSets" / "Main" / list_name).read_text().split()
        images = read_image_list(spec.list_for(split))
        assert [image.stem for image in images] == sorted(ids)
        for image in images:
            expected = expected_boxes(BCCD / "Annotations" / f"{image.stem}.xml")
            labels = read_labels(label_path_for(image), spec.classes)
            assert [spec.names[int(c)] for c in labels[:, 0]] == [box[0] for box in expected]
            np.testing.assert_allclose(labels[:, 1:], np.array([box[1:] for box in expected]).reshape(-1, 4), atol=1e-6)
            assert image.read_bytes() == (BCCD / "JPEGImages" / image.name).read_bytes()
    assert summary.events["degenerate"] == {
        str(BCCD / "Annotations" / "BloodImage_00338.xml"): 1, str(BCCD / "Annotations" / "BloodImage_00343.xml"): 1,
    }
    assert check_dataset(data_path, progress=False).problems == []


def test_classes_keep_and_order_and_merge(tmp_path):
    all_boxes = [box for xml in sorted((BCCD / "Annotations").glob("*.xml")) for box in expected_boxes(xml)]
    summary = import_voc(BCCD, tmp_path / "two", ImportOptions(classes=["WBC", "Platelets"]))
    spec = load_data_spec(summary.data_path)
    assert spec.names == ["WBC", "Platelets"]
    labels = np.concatenate([read_labels(label_path_for(p), 2) for s in spec.splits for p in read_image_list(spec.list_for(s))])
    assert (labels[:, 0] == 0).sum() == sum(box[0] == "WBC" for box in all_boxes)
    assert (labels[:, 0] == 1).sum() == sum(box[0] == "Platelets" for box in all_boxes)
    assert summary.dropped_classes == {"RBC": sum(box[0] == "RBC" for box in all_boxes)}

    merged = import_voc(BCCD, tmp_path / "one", ImportOptions(merge="cell"))
    assert load_data_spec(merged.data_path).names == ["cell"]
    assert sum(merged.boxes.values()) == len(all_boxes)


def test_without_published_lists_a_seeded_grouped_split(tmp_path):
    source = tmp_path / "voc"
    shutil.copytree(BCCD, source, ignore=shutil.ignore_patterns("ImageSets"))
    # group = the last digit of the image number: 00001 and 00011 share one, 00005 and 00015 another
    options = ImportOptions(fractions=(0.5, 0.25, 0.25), seed=3, group=r"BloodImage_\d{4}(\d)")
    first = import_voc(source, tmp_path / "a", options)
    again = import_voc(source, tmp_path / "b", options)
    split_of = {}
    for split in ("train", "valid", "test"):
        listed = (tmp_path / "a" / f"{split}.txt").read_text()
        assert listed == (tmp_path / "b" / f"{split}.txt").read_text()  # same seed, same split
        split_of.update({Path(line).stem: split for line in listed.split()})
    assert len(split_of) == 12 and set(split_of.values()) == {"train", "valid", "test"}
    for a in split_of:
        for b in split_of:
            if a[-1] == b[-1]:
                assert split_of[a] == split_of[b], (a, b)
    assert first.split_source.startswith("by fractions 0.5/0.25/0.25, seed 3")


def test_cli_imports_checks_and_shows(tmp_path, capsys):
    out = tmp_path / "cells"
    assert main(["data", "voc", str(BCCD), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "degenerate (no width or height in the source): 2 (in BloodImage_00338.xml, BloodImage_00343.xml)" in printed
    assert main(["data", "check", str(out / "cells.data")]) == 0
    assert main(["data", "show", str(out / "cells.data"), "--out", str(tmp_path / "grid.png"), "--count", "2"]) == 0
    assert cv2.imread(str(tmp_path / "grid.png")) is not None
    # a second import replaces the first one's output
    assert main(["data", "voc", str(BCCD), str(out), "--merge", "cell"]) == 0
    assert load_data_spec(out / "cells.data").names == ["cell"]


def _break_xml(root: Path) -> tuple[Path, int | None]:
    path = root / "Annotations" / "BloodImage_00003.xml"
    path.write_text(path.read_text().replace("</annotation>", ""))
    return path, None


def _break_number(root: Path) -> tuple[Path, int | None]:
    path = root / "Annotations" / "BloodImage_00004.xml"
    lines = path.read_text().splitlines(keepends=True)
    line_no = next(i for i, line in enumerate(lines, 1) if "<xmin>" in line)
    lines[line_no - 1] = "\t\t\t<xmin>left</xmin>\n"
    path.write_text("".join(lines))
    return path, line_no


def _remove_image(root: Path) -> tuple[Path, int | None]:
    (root / "JPEGImages" / "BloodImage_00005.jpg").unlink()
    return root / "Annotations" / "BloodImage_00005.xml", None


def _list_unknown_id(root: Path) -> tuple[Path, int | None]:
    path = root / "ImageSets" / "Main" / "test.txt"
    path.write_text(path.read_text() + "BloodImage_99999\n")
    return path, len(path.read_text().splitlines())


@pytest.mark.parametrize("breaker", [_break_xml, _break_number, _remove_image, _list_unknown_id])
def test_bad_input_one_line_naming_the_file_and_nothing_written(tmp_path, capsys, breaker):
    source = tmp_path / "voc"
    shutil.copytree(BCCD, source)
    bad_file, line_no = breaker(source)
    out = tmp_path / "out"
    assert main(["data", "voc", str(source), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad_file) in err[0]
    if line_no is not None:
        assert f"{bad_file}:{line_no}:" in err[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [source]  # no half-written folder beside OUT either


def test_unknown_class_and_refused_options_leave_a_previous_import(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["data", "voc", str(BCCD), str(out)]) == 0
    before = tree_digest(out)
    capsys.readouterr()
    assert main(["data", "voc", str(BCCD), str(out), "--classes", "RBC,Neutrophil"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(BCCD / "Annotations") in err[0] and "'Neutrophil'" in err[0]
    # the published split is kept: a split by fractions is refused, naming the flag
    assert main(["data", "voc", str(BCCD), str(out), "--fractions", "0.8,0.2"]) == 2
    assert capsys.readouterr().err.strip().startswith("yoloprune: error: --fractions: this source publishes its split")
    assert tree_digest(out) == before


def test_a_folder_of_other_files_is_not_replaced(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.md").write_text("keep me")
    assert main(["data", "voc", str(BCCD), str(out)]) == 2
    assert "notes.md" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.md"]
