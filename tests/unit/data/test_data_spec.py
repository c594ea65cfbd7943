"""The YOLO dataset format: `.data` parsing, image lists, the label-path convention, label lines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from yoloprune.data.spec import (
    format_label_lines,
    label_path_for,
    load_data_spec,
    parse_label_text,
    read_image_list,
    read_labels,
    write_dataset_spec,
)
from yoloprune.errors import DataError


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_relative_paths_resolve_against_the_data_folder(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    _write(root / "lists" / "train.txt", "../images/a.jpg\n")
    _write(root / "lists" / "valid.txt", "")
    _write(root / "hand.names", "hand\n")
    data = _write(root / "hand.data", "classes= 1\ntrain = lists/train.txt\nvalid=lists/valid.txt\n# note\nnames = hand.names\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    spec = load_data_spec(data.relative_to(tmp_path))
    assert spec.classes == 1 and spec.names == ["hand"]
    assert spec.train == root / "lists" / "train.txt"
    assert spec.valid.is_absolute() and spec.path == data
    assert read_image_list(spec.train) == [root / "images" / "a.jpg"]


def test_names_default_when_absent(tmp_path):
    _write(tmp_path / "t.txt", "")
    data = _write(tmp_path / "x.data", "classes=3\ntrain=t.txt\nvalid=t.txt\n")
    assert load_data_spec(data).names == ["class0", "class1", "class2"]


@pytest.mark.parametrize(
    "text, fragment, line",
    [
        ("classes=1\ntrain=missing.txt\nvalid=t.txt\n", "train file not found", 2),
        ("classes=1\ntrain=t.txt\nvalid=t.txt\ntest=gone.txt\n", "test file not found", 4),
        ("classes=1\ntrain=t.txt\nvalid=t.txt\nnames=nope.names\n", "names file not found", 4),
        ("classes=two\ntrain=t.txt\nvalid=t.txt\n", "integer", 1),
        ("classes=1\nvalid=t.txt\n", "missing required key 'train'", None),
        ("classes=1\ntrain t.txt\n", "key = value", 2),
        ("classes=2\ntrain=t.txt\nvalid=t.txt\nnames=one.names\n", "lists 1 names", 4),
    ],
)
def test_bad_data_spec_names_file_and_line(tmp_path, text, fragment, line):
    _write(tmp_path / "t.txt", "")
    _write(tmp_path / "one.names", "hand\n")
    data = _write(tmp_path / "bad.data", text)
    with pytest.raises(DataError) as info:
        load_data_spec(data)
    assert fragment in str(info.value)
    assert str(data) in str(info.value)
    assert info.value.line == line


def test_test_split_is_optional(tmp_path, monkeypatch):
    _write(tmp_path / "ds" / "train.txt", "")
    _write(tmp_path / "ds" / "valid.txt", "")
    _write(tmp_path / "ds" / "lists" / "test.txt", "")
    with_test_text = "classes=1\ntrain=train.txt\nvalid=valid.txt\ntest = lists/test.txt\n"
    _write(tmp_path / "ds" / "with.data", with_test_text)
    without = _write(tmp_path / "ds" / "without.data", "classes=1\ntrain=train.txt\nvalid=valid.txt\n")
    monkeypatch.chdir(tmp_path)
    spec = load_data_spec("ds/with.data")
    assert spec.test == tmp_path / "ds" / "lists" / "test.txt" and spec.test.is_absolute()
    assert spec.splits == ["train", "valid", "test"]
    assert spec.list_for("test") == spec.test
    assert spec.list_for("val") == spec.list_for("valid") == spec.valid

    spec = load_data_spec(without)
    assert spec.test is None and spec.splits == ["train", "valid"]
    with pytest.raises(DataError, match="no test split") as info:
        spec.list_for("test")
    assert str(without) in str(info.value)
    with pytest.raises(ValueError, match="unknown split"):
        spec.list_for("holdout")


def test_missing_data_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_data_spec(tmp_path / "absent.data")


@pytest.mark.parametrize(
    "image, label",
    [
        ("/d/images/train/a.jpg", "/d/labels/train/a.txt"),
        ("/d/images/x/images/b.PNG", "/d/images/x/labels/b.txt"),  # the last `images` folder is the one
        ("/voc/JPEGImages/c.jpeg", "/voc/labels/c.txt"),
        ("/flat/d.jpg", "/flat/d.txt"),
    ],
)
def test_label_path_convention(image, label):
    assert label_path_for(image) == Path(label)


def test_label_lines_round_trip():
    rng = np.random.default_rng(0)
    classes = rng.integers(0, 5, 20)
    boxes = rng.uniform(0.01, 1.0, (20, 4))
    labels = parse_label_text(format_label_lines(classes, boxes), 5)
    assert labels.shape == (20, 5) and labels.dtype == np.float32
    np.testing.assert_array_equal(labels[:, 0], classes)
    np.testing.assert_allclose(labels[:, 1:], boxes, atol=1e-6)


def test_blank_lines_and_empty_files_mean_no_objects():
    assert parse_label_text("", 1).shape == (0, 5)
    assert parse_label_text("\n0 0.5 0.5 0.1 0.1\n\n", 1).shape == (1, 5)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("0 0.5 0.5 0.1", "expected 5 columns"),
        ("0 0.5 0.5 0.1 0.1 7", "expected 5 columns"),
        ("0 0.5 abc 0.1 0.1", "non-numeric"),
        ("0 0.5 nan 0.1 0.1", "non-finite"),
        ("0 1.2 0.5 0.1 0.1", "[0, 1]"),
        ("0 0.5 -0.1 0.1 0.1", "[0, 1]"),
        ("0 0.5 0.5 1.5 0.1", "[0, 1]"),
        ("2 0.5 0.5 0.1 0.1", "class id 2 >= classes (2)"),
        ("-1 0.5 0.5 0.1 0.1", "non-negative integer"),
        ("0.5 0.5 0.5 0.1 0.1", "non-negative integer"),
        ("0 0.5 0.5 0 0.1", "must be > 0"),
        ("0 0.5 0.5 0.1 -0.2", "must be > 0"),
    ],
)
def test_bad_label_line_names_file_and_line(tmp_path, line, fragment):
    label_file = _write(tmp_path / "labels" / "a.txt", f"0 0.5 0.5 0.2 0.2\n{line}\n")
    with pytest.raises(DataError) as info:
        read_labels(label_file, num_classes=2)
    assert fragment in str(info.value)
    assert info.value.line == 2 and f"{label_file}:2" in str(info.value)


def test_missing_label_file_reads_as_none(tmp_path):
    assert read_labels(tmp_path / "absent.txt", 1) is None


def test_write_dataset_spec_round_trips(tmp_path):
    images = [tmp_path / "images" / "train" / f"{i}.jpg" for i in range(3)]
    outside = tmp_path.parent / "elsewhere.jpg"
    data = write_dataset_spec(tmp_path, "toy", ["a", "b"], images + [outside], images[:1])
    spec = load_data_spec(data)
    assert spec.classes == 2 and spec.names == ["a", "b"]
    assert read_image_list(spec.train) == images + [outside]
    assert read_image_list(spec.valid) == images[:1]
    assert "images/train/0.jpg" in spec.train.read_text()  # portable: relative inside the folder
    assert spec.test is None and not (tmp_path / "test.txt").exists()
    assert "test" not in data.read_text()


def test_write_dataset_spec_with_a_test_split(tmp_path):
    images = [tmp_path / "images" / split / "0.jpg" for split in ("train", "val", "test")]
    data = write_dataset_spec(tmp_path, "toy", ["a"], images[:1], images[1:2], images[2:])
    spec = load_data_spec(data)
    assert spec.splits == ["train", "valid", "test"]
    assert read_image_list(spec.test) == images[2:]
    assert spec.test.read_text() == "images/test/0.jpg\n"
