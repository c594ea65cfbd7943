"""`data yolo`: the hand-gesture export (real photos, a data.yaml with another machine's absolute
paths) imports with the boxes of its raw label files; names as a mapping, `path`, list files and
polygons; bad input gives one line naming the file and writes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers import FIXTURES

from yoloprune.cli import main
from yoloprune.data.check import check_dataset
from yoloprune.data.importers.options import ImportOptions
from yoloprune.data.importers.ultralytics import import_yolo
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels

HANDS = FIXTURES / "real" / "hand-gesture"
FOLDERS = {"train": "train", "valid": "valid", "test": "test"}


def raw_labels(label_file: Path) -> np.ndarray:
    """The source's `cls cx cy w h` lines, as they are (its boxes lie inside their images)."""
    return np.array([[float(v) for v in line.split()] for line in label_file.read_text().splitlines() if line.strip()]).reshape(-1, 5)


def test_boxes_equal_the_raw_label_files_and_the_folders_are_found_beside_the_yaml(tmp_path):
    summary = import_yolo(HANDS / "data.yaml", tmp_path / "gestures")
    spec = load_data_spec(summary.data_path)
    assert spec.names == ["five", "four", "one", "three", "two"]
    for split, folder in FOLDERS.items():
        assert any(note.endswith(f"used {HANDS / folder / 'images'}") for note in summary.notes)
        images = read_image_list(spec.list_for(split))
        assert [p.name for p in images] == sorted(p.name for p in (HANDS / folder / "images").iterdir())
        for image in images:
            expected = raw_labels(HANDS / folder / "labels" / f"{image.stem}.txt")
            np.testing.assert_allclose(read_labels(label_path_for(image), 5), expected, atol=1e-6)
    assert summary.events == {}  # nothing clipped or skipped
    assert check_dataset(summary.data_path, progress=False).problems == []


def test_merge_into_hand_with_the_cli(tmp_path, capsys):
    out = tmp_path / "hands"
    assert main(["data", "yolo", str(HANDS / "data.yaml"), str(out), "--merge", "hand"]) == 0
    printed = capsys.readouterr().out
    assert f"the yaml's val folder /content/drive/MyDrive/Deep Learning/Object Detection/Hand-Gesture-Recognition-6/valid/images does not exist; used {HANDS / 'valid' / 'images'}" in printed
    spec = load_data_spec(out / "hands.data")
    assert spec.names == ["hand"]
    for split, folder in FOLDERS.items():
        for image in read_image_list(spec.list_for(split)):
            expected = raw_labels(HANDS / folder / "labels" / f"{image.stem}.txt")
            expected[:, 0] = 0
            np.testing.assert_allclose(read_labels(label_path_for(image), 1), expected, atol=1e-6)
    assert main(["data", "check", str(out / "hands.data")]) == 0
    assert main(["data", "show", str(out / "hands.data"), "--out", str(tmp_path / "grid.png"), "--count", "2", "--split", "test"]) == 0
    assert cv2.imread(str(tmp_path / "grid.png")) is not None


def test_classes_keeps_and_orders(tmp_path):
    summary = import_yolo(HANDS / "data.yaml", tmp_path / "out", ImportOptions(classes=["two", "five"]))
    raw = np.concatenate([raw_labels(p) for folder in FOLDERS.values() for p in (HANDS / folder / "labels").iterdir()])
    assert summary.class_names == ["two", "five"]
    assert sum(summary.boxes.values()) == int(np.isin(raw[:, 0], [4, 0]).sum())
    spec = load_data_spec(summary.data_path)
    kept = np.concatenate([read_labels(label_path_for(p), 2) for s in spec.splits for p in read_image_list(spec.list_for(s))])
    assert (kept[:, 0] == 0).sum() == (raw[:, 0] == 4).sum() and (kept[:, 0] == 1).sum() == (raw[:, 0] == 0).sum()


def _image(path: Path, width: int = 40, height: int = 30) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 128, np.uint8))


def write_layout(root: Path) -> Path:
    """A yaml with `path`, names as a mapping, a train folder and a val list file; one polygon label,
    one box past the border, one with no width, one image without a label file."""
    _image(root / "ds" / "images" / "train" / "a.jpg")
    _image(root / "ds" / "images" / "train" / "b.jpg")
    _image(root / "ds" / "images" / "val" / "c.jpg")
    labels = root / "ds" / "labels"
    (labels / "train").mkdir(parents=True)
    (labels / "train" / "a.txt").write_text("1 0.5 0.5 0.2 0.4\n0 0.1 0.2 0.4 0.2 0.3 0.6\n")  # box, then triangle
    (labels / "train" / "b.txt").write_text("0 0.9 0.5 0.4 0.2\n1 0.5 0.5 0 0.3\n")  # past the right border; no width
    (root / "ds" / "val.txt").write_text("images/val/c.jpg\n")
    yaml_path = root / "data.yaml"
    yaml_path.write_text("path: ds\ntrain: images/train\nval: val.txt\nnames:\n  0: cat\n  1: dog\n")
    return yaml_path


def test_names_mapping_path_lists_and_polygons(tmp_path):
    summary = import_yolo(write_layout(tmp_path), tmp_path / "out")
    spec = load_data_spec(summary.data_path)
    assert spec.names == ["cat", "dog"] and spec.test is None
    train = {p.name: read_labels(label_path_for(p), 2) for p in read_image_list(spec.train)}
    np.testing.assert_allclose(train["a.jpg"], [[1, 0.5, 0.5, 0.2, 0.4], [0, 0.25, 0.4, 0.3, 0.4]], atol=1e-6)
    # 0.9 ± 0.2 clipped to [0.7, 1.0]
    np.testing.assert_allclose(train["b.jpg"], [[0, 0.85, 0.5, 0.3, 0.2]], atol=1e-6)
    assert [p.name for p in read_image_list(spec.valid)] == ["c.jpg"]
    b_labels = str(tmp_path / "ds" / "labels" / "train" / "b.txt")
    assert summary.events == {
        "clipped": {b_labels: 1}, "degenerate": {b_labels: 1}, "no labels": {str(tmp_path / "ds" / "images" / "val" / "c.jpg"): 1}
    }
    assert check_dataset(summary.data_path, progress=False).problems == []


def _bad_yaml(root: Path) -> tuple[Path, int | None]:
    path = root / "data.yaml"
    path.write_text("path: ds\ntrain: images/train\nval: [val.txt\nnames: {0: cat, 1: dog}\n")
    return path, 4


def _bad_columns(root: Path) -> tuple[Path, int | None]:
    path = root / "ds" / "labels" / "train" / "a.txt"
    path.write_text("1 0.5 0.5 0.2 0.4\n1 0.5 0.5 0.2\n")
    return path, 2


def _bad_class(root: Path) -> tuple[Path, int | None]:
    path = root / "ds" / "labels" / "train" / "b.txt"
    path.write_text("2 0.5 0.5 0.2 0.4\n")
    return path, 1


def _missing_folder(root: Path) -> tuple[Path, int | None]:
    shutil.rmtree(root / "ds" / "images" / "train")
    return root / "data.yaml", 2


def _missing_listed_image(root: Path) -> tuple[Path, int | None]:
    (root / "ds" / "images" / "val" / "c.jpg").unlink()
    return root / "ds" / "val.txt", 1


@pytest.mark.parametrize("breaker", [_bad_yaml, _bad_columns, _bad_class, _missing_folder, _missing_listed_image])
def test_bad_input_one_line_naming_the_file_and_nothing_written(tmp_path, capsys, breaker):
    source = tmp_path / "src"
    write_layout(source)
    bad_file, line_no = breaker(source)
    out = tmp_path / "out"
    assert main(["data", "yolo", str(source / "data.yaml"), str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad_file}:{line_no}:" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_refused_options_and_unknown_class(tmp_path, capsys):
    yaml_path = write_layout(tmp_path / "src")
    assert main(["data", "yolo", str(yaml_path), str(tmp_path / "out"), "--group", "(x)"]) == 2
    assert capsys.readouterr().err.strip().startswith("yoloprune: error: --group: this source publishes its split")
    assert main(["data", "yolo", str(yaml_path), str(tmp_path / "out"), "--classes", "dog,bird"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(yaml_path) in err[0] and "'bird'" in err[0]
    assert main(["data", "yolo", str(yaml_path), str(tmp_path / "out"), "--fractions", "0.5,0.6"]) == 2
    assert "--fractions: must be 2 or 3" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
