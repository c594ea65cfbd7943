"""Oxford Hand conversion, on a fixture written with scipy.io.savemat in the real dataset's layout."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from hypothesis import given, settings
from hypothesis import strategies as st

from yoloprune.cli import main
from yoloprune.data.oxford_hand import convert_oxford_hand, corners_to_box_xyxy, read_hand_corners
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels
from yoloprune.errors import DataError

SPLIT_FOLDERS = {
    "training": "training_dataset/training_data",
    "validation": "validation_dataset/validation_data",
    "test": "test_dataset/test_data",
}


def _hand(corners_yx, field_names=("a", "b", "c", "d"), extra=True) -> np.ndarray:
    """A 1×1 MATLAB struct: four `[y x]` corner fields, then optional extra fields."""
    names = list(field_names) + (["class", "truncated"] if extra else [])
    record = np.zeros((1, 1), dtype=[(name, object) for name in names])
    for name, corner in zip(field_names, corners_yx):
        record[0, 0][name] = np.array([corner], dtype=np.float64)
    if extra:
        record[0, 0]["class"] = "L"
        record[0, 0]["truncated"] = np.array([[0.0]])
    return record


def _write_mat(path: Path, hands: list[np.ndarray]) -> None:
    cells = np.empty((1, len(hands)), dtype=object)
    for k, hand in enumerate(hands):
        cells[0, k] = hand
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"boxes": cells})


def _rect_corners(x1, y1, x2, y2):
    """MATLAB `[y x]` corners (1-based pixel centres) of a box whose continuous extent is x1..x2, y1..y2."""
    return [(y1 + 0.5, x1 + 0.5), (y1 + 0.5, x2 + 0.5), (y2 + 0.5, x2 + 0.5), (y2 + 0.5, x1 + 0.5)]


def _write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))


# The source split folders of each output image folder, in the converter's order.
OFFICIAL_SOURCES = {"train": ["training"], "val": ["validation"], "test": ["test"]}
REFERENCE_SOURCES = {"train": ["training", "validation"], "val": ["test"]}


def _source_of(root: Path, converted: Path, reference_split: bool) -> Path:
    """The source image of a converted one. With the reference split, training and validation share
    a folder: training wins a name clash, validation gets a prefix."""
    if converted.name.startswith("validation_"):
        assert reference_split
        return root / SPLIT_FOLDERS["validation"] / "images" / converted.name[len("validation_") :]
    sources = (REFERENCE_SOURCES if reference_split else OFFICIAL_SOURCES)[converted.parent.name]
    for source in sources:
        if (root / SPLIT_FOLDERS[source] / "images" / converted.name).exists():
            return root / SPLIT_FOLDERS[source] / "images" / converted.name
    raise AssertionError(converted)


@pytest.fixture
def hand_dataset(tmp_path) -> Path:
    """Several images per split; a box partly outside its image; extra struct fields; a missing .mat."""
    root = tmp_path / "src" / "hand_dataset"
    plan = {
        "training": [
            ("Buffy_1", 60, 40, [_hand(_rect_corners(5, 5, 20, 30)), _hand(_rect_corners(30, 10, 50, 25), extra=False)]),
            ("Buffy_2", 50, 50, [_hand(_rect_corners(-10, 20, 15, 60))]),  # partly outside: clipped
            ("VOC_3", 40, 30, []),  # no hands
            ("VOC_4", 40, 30, None),  # no annotation file: skipped
        ],
        "validation": [
            ("Buffy_1", 64, 48, [_hand(_rect_corners(2, 2, 12, 12), field_names=("p", "q", "r", "s"))]),  # name clash
            ("movie_5", 64, 48, [_hand(_rect_corners(70, 2, 90, 12))]),  # wholly outside: dropped, counted
        ],
        "test": [
            ("test_1", 48, 48, [_hand(_rect_corners(10, 10, 30, 40))]),
            ("test_2", 48, 64, [_hand([(5, 5), (1, 20), (30, 40), (40, 2)])]),  # rotated quadrilateral
        ],
    }
    for split, items in plan.items():
        folder = root / SPLIT_FOLDERS[split]
        (folder / "annotations").mkdir(parents=True, exist_ok=True)
        for name, width, height, hands in items:
            _write_image(folder / "images" / f"{name}.jpg", width, height)
            if hands is not None:
                _write_mat(folder / "annotations" / f"{name}.mat", hands)
    return root


def test_rectangle_corners_give_back_the_rectangle():
    box = corners_to_box_xyxy(np.array(_rect_corners(3, 4, 20, 31)), 100, 100)
    np.testing.assert_allclose(box, [3, 4, 20, 31])


@settings(max_examples=100, deadline=None)
@given(
    corners=st.lists(
        st.tuples(st.floats(-50, 150, allow_nan=False), st.floats(-50, 150, allow_nan=False)), min_size=4, max_size=4
    ),
    width=st.integers(1, 120),
    height=st.integers(1, 120),
)
def test_box_is_the_clipped_hull_of_the_corners(corners, width, height):
    corners_yx = np.array(corners)
    box = corners_to_box_xyxy(corners_yx, width, height)
    xs, ys = corners_yx[:, 1] - 0.5, corners_yx[:, 0] - 0.5
    if box is None:
        assert xs.max() <= 0 or xs.min() >= width or ys.max() <= 0 or ys.min() >= height or np.ptp(xs) == 0 or np.ptp(ys) == 0
        return
    x1, y1, x2, y2 = box
    assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    # Every corner, clipped to the image, lies in the box, and the box touches the clipped extremes.
    assert np.all((np.clip(xs, 0, width) >= x1) & (np.clip(xs, 0, width) <= x2))
    assert np.all((np.clip(ys, 0, height) >= y1) & (np.clip(ys, 0, height) <= y2))
    assert x1 == np.clip(xs.min(), 0, width) and x2 == np.clip(xs.max(), 0, width)
    assert y1 == np.clip(ys.min(), 0, height) and y2 == np.clip(ys.max(), 0, height)


def test_corners_are_read_by_position(tmp_path):
    path = tmp_path / "x.mat"
    corners = [(1, 2), (3, 4), (5, 6), (7, 8)]
    _write_mat(path, [_hand(corners, field_names=("w", "x", "y", "z")), _hand(corners)])
    for hand in read_hand_corners(path):
        np.testing.assert_array_equal(hand, corners)


# Per layout: the splits of the .data, the images and boxes of each output image folder. Training
# holds 3 usable images (VOC_4 has no .mat) with 3 boxes, validation 2 with 1 (movie_5's hand lies
# outside its image), test 2 with 2.
LAYOUTS = {
    False: (["train", "valid", "test"], {"train": 3, "val": 2, "test": 2}, {"train": 3, "val": 1, "test": 2}),
    True: (["train", "valid"], {"train": 5, "val": 2}, {"train": 4, "val": 2}),
}


@pytest.mark.parametrize("reference_split", [False, True], ids=["official", "reference"])
def test_convert_layout_split_and_boxes(hand_dataset, tmp_path, caplog, reference_split):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        # The parent of hand_dataset is accepted too.
        summary = convert_oxford_hand(hand_dataset.parent, out, progress=False, reference_split=reference_split)
    splits, images, boxes = LAYOUTS[reference_split]
    spec = load_data_spec(out / "hand.data")
    assert spec.classes == 1 and spec.names == ["hand"]
    assert spec.splits == splits
    assert summary.images == images and summary.boxes == boxes
    listed = {split: read_image_list(spec.list_for(split)) for split in spec.splits}
    folders = {"train": "train", "valid": "val", "test": "test"}
    for split, paths in listed.items():
        assert len(paths) == images[folders[split]]
        assert all(p.parent == out / "images" / folders[split] for p in paths)
    if reference_split:
        assert spec.test is None and "test" not in (out / "hand.data").read_text()
        assert len({p.name for p in listed["train"]}) == 5  # the two Buffy_1 images both survive
    else:
        assert [p.name for p in listed["test"]] == ["test_1.jpg", "test_2.jpg"]
        assert [p.name for p in listed["valid"]] == ["Buffy_1.jpg", "movie_5.jpg"]  # no prefix needed
    assert [reason for _, reason in summary.skipped] == ["no annotation file"]
    assert "VOC_4.jpg: no annotation file" in caplog.text
    assert summary.boxes_outside == 1
    assert "skipped: 1 image(s)" in summary.format() and "no annotation file" in summary.format()

    for image_path in [path for paths in listed.values() for path in paths]:
        image = cv2.imread(str(image_path))
        labels = read_labels(label_path_for(image_path), 1)
        assert labels is not None
        source = _source_of(hand_dataset, image_path, reference_split)
        mat_path = source.parent.parent / "annotations" / f"{source.stem}.mat"
        height, width = image.shape[:2]
        expected = [corners_to_box_xyxy(c, width, height) for c in read_hand_corners(mat_path)]
        expected = [b for b in expected if b is not None]
        assert len(labels) == len(expected)
        for (_, cx, cy, w, h), (x1, y1, x2, y2) in zip(labels, expected):
            np.testing.assert_allclose([(cx - w / 2) * width, (cy - h / 2) * height], [x1, y1], atol=1e-3)
            np.testing.assert_allclose([(cx + w / 2) * width, (cy + h / 2) * height], [x2, y2], atol=1e-3)


def test_mat_without_boxes(hand_dataset, tmp_path, caplog):
    bad = hand_dataset / SPLIT_FOLDERS["test"] / "annotations" / "test_1.mat"
    scipy.io.savemat(str(bad), {"hands": np.zeros((1, 1))})
    with pytest.raises(DataError) as info:
        convert_oxford_hand(hand_dataset, tmp_path / "out", progress=False)
    assert str(bad) in str(info.value) and "no 'boxes' variable" in str(info.value)
    with caplog.at_level(logging.WARNING):
        summary = convert_oxford_hand(hand_dataset, tmp_path / "out", skip_bad=True, progress=False)
    assert summary.images["test"] == 1 and len(summary.skipped) == 2
    assert "no 'boxes' variable" in caplog.text


def test_corrupt_image_and_mat(hand_dataset, tmp_path):
    folder = hand_dataset / SPLIT_FOLDERS["training"]
    (folder / "images" / "Buffy_2.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match="Buffy_2.jpg: cannot decode image"):
        convert_oxford_hand(hand_dataset, tmp_path / "out", progress=False)
    (folder / "annotations" / "Buffy_1.mat").write_bytes(b"not a mat file")
    summary = convert_oxford_hand(hand_dataset, tmp_path / "out", skip_bad=True, progress=False)
    assert summary.images["train"] == 1 and len(summary.skipped) == 3  # of Buffy_1, Buffy_2, VOC_3


def test_not_an_oxford_folder(tmp_path):
    with pytest.raises(DataError, match="not an Oxford Hand folder"):
        convert_oxford_hand(tmp_path, tmp_path / "out", progress=False)


def test_cli(hand_dataset, tmp_path, capsys):
    assert main(["data", "oxford-hand", str(hand_dataset), str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "splits: official (train = training, valid = validation, test = test)" in printed
    assert "train: 3 images, 3 boxes" in printed and "valid: 2 images, 1 boxes" in printed
    assert "test: 2 images, 2 boxes" in printed
    assert main(["data", "check", str(tmp_path / "out" / "hand.data")]) == 0
    assert f"test ({tmp_path / 'out' / 'test.txt'}): 2 images" in capsys.readouterr().out

    assert main(["data", "oxford-hand", str(hand_dataset), str(tmp_path / "ref"), "--reference-split"]) == 0
    printed = capsys.readouterr().out
    assert "splits: the reference project's (train = training + validation, valid = test; no test split)" in printed
    assert "train: 5 images, 4 boxes" in printed and "valid: 2 images, 2 boxes" in printed
    assert "test:" not in printed
    assert main(["data", "check", str(tmp_path / "ref" / "hand.data")]) == 0
    assert "test (" not in capsys.readouterr().out

    (hand_dataset / SPLIT_FOLDERS["test"] / "annotations" / "test_2.mat").write_bytes(b"x")
    assert main(["data", "oxford-hand", str(hand_dataset), str(tmp_path / "out2")]) == 2
    assert "test_2.mat" in capsys.readouterr().err
