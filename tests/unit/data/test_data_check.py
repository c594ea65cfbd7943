"""`data check`: the first problem is an error naming file and line; --skip-bad lists every problem."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from yoloprune.cli import main
from yoloprune.data.check import check_dataset
from yoloprune.data.spec import read_image_list, write_dataset_spec
from yoloprune.errors import DataError


@pytest.fixture
def dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    images = []
    for split in ("train", "val"):
        for i in range(4):
            image_path = tmp_path / "images" / split / f"{i}.jpg"
            image_path.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(image_path), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
            label_path = tmp_path / "labels" / split / f"{i}.txt"
            label_path.parent.mkdir(parents=True, exist_ok=True)
            label_path.write_text(f"{i % 2} 0.5 0.5 0.25 0.5\n1 0.2 0.2 0.1 0.1\n")
            images.append(image_path)
    return write_dataset_spec(tmp_path, "toy", ["a", "b"], images[:4], images[4:])


def test_clean_dataset(dataset):
    report = check_dataset(dataset, progress=False)
    assert report.problems == []
    assert [s.images for s in report.splits] == [4, 4]
    assert report.splits[0].boxes_per_class == {0: 2, 1: 6}
    assert "problems: 0" in report.format()


def test_the_test_split_is_checked_and_shared_images_reported(dataset, capsys):
    root = dataset.parent
    train, valid = read_image_list(root / "train.txt"), read_image_list(root / "valid.txt")
    test = []
    for i in range(2):
        image_path = root / "images" / "test" / f"{i}.jpg"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(image_path), np.zeros((32, 32, 3), np.uint8))
        test.append(image_path)
    (root / "labels" / "test").mkdir()
    (root / "labels" / "test" / "0.txt").write_text("1 0.5 0.5 0.5 0.5\n")  # 1.jpg: no label file
    write_dataset_spec(root, "toy", ["a", "b"], train, valid, test + train[:1])
    report = check_dataset(dataset, progress=False)
    assert [(split.name, split.images) for split in report.splits] == [("train", 4), ("valid", 4), ("test", 3)]
    assert report.splits[2].missing_labels == 1 and report.splits[2].boxes_per_class == {0: 1, 1: 2}
    assert report.shared_images == {("train", "test"): 1}
    assert main(["data", "check", str(dataset)]) == 0
    printed = capsys.readouterr().out
    assert f"test ({root / 'test.txt'}): 3 images" in printed
    assert "warning: 1 image(s) are listed in both train and test" in printed

    with open(root / "test.txt", "a") as listing:
        listing.write("images/test/absent.jpg\n")
    with pytest.raises(DataError, match=r"test\.txt:4: image not found"):
        check_dataset(dataset, progress=False)


def _break(dataset: Path) -> dict[str, str]:
    """Break the dataset in every way the checker knows; return what each message must name."""
    root = dataset.parent
    (root / "images/train/0.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    (root / "labels/train/1.txt").write_text("0 0.5 0.5 0.2\n")
    (root / "labels/train/2.txt").unlink()  # missing label: no objects, counted, not a problem
    (root / "labels/train/3.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 x\n")
    (root / "labels/val/0.txt").write_text("0 1.5 0.5 0.2 0.2\n")
    (root / "labels/val/1.txt").write_text("2 0.5 0.5 0.2 0.2\n")
    (root / "labels/val/2.txt").write_text("\n\n0 0.5 0.5 0.0 0.2\n")
    (root / "images/val/3.jpg").unlink()
    return {
        "images/train/0.jpg": "cannot decode image",
        "labels/train/1.txt:1": "expected 5 columns",
        "labels/train/3.txt:2": "non-numeric",
        "labels/val/0.txt:1": "[0, 1]",
        "labels/val/1.txt:1": "class id 2 >= classes (2)",
        "labels/val/2.txt:3": "must be > 0",
        "valid.txt:4": "image not found",
    }


def test_first_problem_is_an_error(dataset):
    _break(dataset)
    with pytest.raises(DataError, match=r"images/train/0\.jpg: cannot decode image"):
        check_dataset(dataset, progress=False)


def test_skip_bad_lists_every_problem(dataset, caplog, capsys):
    expected = _break(dataset)
    with caplog.at_level(logging.WARNING):
        report = check_dataset(dataset, skip_bad=True, progress=False)
    assert len(report.problems) == len(expected)
    for where, what in expected.items():
        assert any(where in p and what in p for p in report.problems), (where, what)
        assert where in caplog.text
    assert report.splits[0].missing_labels == 1 and report.splits[0].images == 1
    assert main(["data", "check", str(dataset), "--skip-bad"]) == 1
    assert f"problems: {len(expected)}" in capsys.readouterr().out
    assert main(["data", "check", str(dataset)]) == 2
    assert "cannot decode image" in capsys.readouterr().err


def test_data_spec_pointing_to_a_missing_file(dataset, capsys):
    (dataset.parent / "valid.txt").unlink()
    assert main(["data", "check", str(dataset)]) == 2
    err = capsys.readouterr().err
    assert f"{dataset}:3: valid file not found" in err and err.count("\n") == 1
