"""The synthetic hand dataset: layout, determinism, valid labels, and the check/show commands on it."""

from __future__ import annotations

import filecmp

import cv2
import numpy as np
import pytest

from yoloprune.cli import main
from yoloprune.data.check import check_dataset
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels
from yoloprune.data.synth import Scene, generate_synthetic_dataset, render_synthetic_image


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return generate_synthetic_dataset(out, n_train=12, n_val=4, img_size=96, seed=7, progress=False)


def test_layout_and_labels(synth_data):
    spec = load_data_spec(synth_data)
    assert spec.classes == 1 and spec.names == ["hand"]
    train, valid = read_image_list(spec.train), read_image_list(spec.valid)
    assert len(train) == 12 and len(valid) == 4
    assert all(p.parent == synth_data.parent / "images" / "train" for p in train)
    assert all(p.parent == synth_data.parent / "images" / "val" for p in valid)
    box_count = 0
    for image_path in train + valid:
        image = cv2.imread(str(image_path))
        assert image.shape == (96, 96, 3)
        labels = read_labels(label_path_for(image_path), 1)  # raises on any malformed line
        assert labels is not None and len(labels) <= 6
        box_count += len(labels)
    assert box_count >= len(train + valid)  # 1–6 hands per image, rarely one hidden


def test_same_seed_gives_identical_files(synth_data, tmp_path):
    again = generate_synthetic_dataset(tmp_path / "again", n_train=12, n_val=4, img_size=96, seed=7, progress=False)
    names = ["synth.data", "synth.names", "train.txt", "valid.txt"]
    names += [f"{kind}/{split}/{i:06d}.{ext}" for kind, ext in (("images", "jpg"), ("labels", "txt"))
              for split, count in (("train", 12), ("val", 4)) for i in range(count)]
    match, mismatch, errors = filecmp.cmpfiles(synth_data.parent, again.parent, names, shallow=False)
    assert mismatch == [] and errors == []
    other = generate_synthetic_dataset(tmp_path / "other", n_train=2, n_val=0, img_size=96, seed=8, progress=False)
    assert (other.parent / "images/train/000000.jpg").read_bytes() != (synth_data.parent / "images/train/000000.jpg").read_bytes()


def test_an_image_depends_only_on_its_seed_split_and_index(synth_data, tmp_path):
    # A shorter run reproduces the first images of a longer one.
    short = generate_synthetic_dataset(tmp_path / "short", n_train=3, n_val=1, img_size=96, seed=7, progress=False)
    for name in ("images/train/000002.jpg", "labels/train/000002.txt", "labels/val/000000.txt"):
        assert (short.parent / name).read_bytes() == (synth_data.parent / name).read_bytes()


def _split_files(split: str, count: int) -> list[str]:
    kinds = (("images", "jpg"), ("labels", "txt"))
    return [f"{kind}/{split}/{i:06d}.{ext}" for kind, ext in kinds for i in range(count)]


def test_a_test_split_leaves_train_and_valid_byte_identical(synth_data, tmp_path, capsys):
    # The same dataset as `synth_data` plus 3 test images: the test split draws from its own random
    # streams, so every train and valid file stays the same, and the .data only gains its test line.
    out = tmp_path / "with_test"
    assert main(["data", "synth", str(out), "--train", "12", "--val", "4", "--test", "3", "--img-size", "96",
                 "--seed", "7"]) == 0
    assert "wrote 12 train + 4 val + 3 test images" in capsys.readouterr().out
    names = ["synth.names", "train.txt", "valid.txt"] + _split_files("train", 12) + _split_files("val", 4)
    match, mismatch, errors = filecmp.cmpfiles(synth_data.parent, out, names, shallow=False)
    assert mismatch == [] and errors == [] and len(match) == len(names)
    assert (out / "synth.data").read_text().replace("test = test.txt\n", "") == synth_data.read_text()
    # Without --test nothing of a test split is written.
    assert not (synth_data.parent / "test.txt").exists() and not (synth_data.parent / "images" / "test").exists()
    assert load_data_spec(synth_data).test is None


def test_test_split_images_are_new_and_labelled(synth_data, tmp_path):
    data = generate_synthetic_dataset(
        tmp_path / "t", n_train=12, n_val=4, n_test=3, img_size=96, seed=7, progress=False
    )
    spec = load_data_spec(data)
    assert spec.splits == ["train", "valid", "test"]
    test_images = read_image_list(spec.list_for("test"))
    assert test_images == [data.parent / "images" / "test" / f"{i:06d}.jpg" for i in range(3)]
    others = {p.read_bytes() for p in read_image_list(spec.train) + read_image_list(spec.valid)}
    for image_path in test_images:
        assert image_path.read_bytes() not in others
        assert cv2.imread(str(image_path)).shape == (96, 96, 3)
        labels = read_labels(label_path_for(image_path), 1)  # raises on any malformed line
        assert labels is not None and len(labels) <= 6
    report = check_dataset(data, progress=False)
    assert [(split.name, split.images) for split in report.splits] == [("train", 12), ("valid", 4), ("test", 3)]
    assert report.problems == [] and report.shared_images == {}


def test_show_draws_the_test_split(synth_data, tmp_path, capsys):
    data = generate_synthetic_dataset(tmp_path / "t", n_train=1, n_val=1, n_test=2, img_size=64, seed=7, progress=False)
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(data), "--split", "test", "--out", str(out), "--img-size", "64"]) == 0
    assert cv2.imread(str(out)).shape[1] > 2 * 64
    assert main(["data", "show", str(synth_data), "--split", "test", "--out", str(out)]) == 2
    assert f"{synth_data}: the dataset has no test split" in capsys.readouterr().err


def test_boxes_lie_inside_the_image_and_on_hand_pixels():
    for index in range(20):
        image, boxes = render_synthetic_image(np.random.default_rng([1, index]), 128)
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8
        assert boxes.ndim == 2 and boxes.shape[1] == 4
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 128).all()
        assert (boxes[:, 2:] - boxes[:, :2] >= 3).all()


@pytest.mark.parametrize("max_distractors", [0, 1, 3, 6])
def test_max_distractors_bounds_the_look_alikes_drawn(monkeypatch, max_distractors):
    import yoloprune.data.synth as synth

    drawn = []
    original = synth.draw_distractor

    def counting(*args, **kwargs):
        drawn[-1] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(synth, "draw_distractor", counting)
    for index in range(40):
        drawn.append(0)
        render_synthetic_image(np.random.default_rng([2, index]), 64, Scene(max_distractors=max_distractors))
    assert max(drawn) <= max_distractors and min(drawn) == min(1, max_distractors)
    if max_distractors:
        assert max(drawn) == max_distractors  # 40 images reach the largest count


def test_check_reports_no_problems(synth_data, capsys):
    report = check_dataset(synth_data, progress=False)
    assert report.problems == [] and report.splits[0].images == 12 and report.splits[1].images == 4
    assert main(["data", "check", str(synth_data)]) == 0
    assert "problems: 0" in capsys.readouterr().out


def test_show_writes_a_grid(synth_data, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["data", "show", str(synth_data), "--out", str(out), "--count", "6", "--columns", "3",
                 "--img-size", "64"]) == 0
    grid = cv2.imread(str(out))
    assert grid.shape[0] > 2 * 64 and grid.shape[1] > 3 * 64
    assert main(["data", "show", str(synth_data), "--out", str(out), "--augment", "--mosaic", "1",
                 "--count", "4", "--img-size", "64"]) == 0


def test_synth_cli(tmp_path, capsys):
    assert main(["data", "synth", str(tmp_path / "s"), "--train", "3", "--val", "2", "--img-size", "64",
                 "--seed", "1"]) == 0
    assert "wrote 3 train + 2 val images" in capsys.readouterr().out
    assert len(read_image_list(tmp_path / "s" / "valid.txt")) == 2


def _touches_border(boxes: np.ndarray, size: int) -> np.ndarray:
    return (boxes[:, :2] <= 0).any(axis=1) | (boxes[:, 2:] >= size).any(axis=1)


def test_hands_inside_keeps_every_box_off_the_border():
    cut, inside_cut, boxes_inside = 0, 0, 0
    for index in range(40):
        rng_seed = [3, index]
        _, boxes = render_synthetic_image(np.random.default_rng(rng_seed), 96)
        _, inside = render_synthetic_image(np.random.default_rng(rng_seed), 96, Scene(hands_inside=True))
        cut += int(_touches_border(boxes, 96).sum())
        inside_cut += int(_touches_border(inside, 96).sum())
        boxes_inside += len(inside)
    assert cut > 0  # the default task does cut hands at the border, so the check below can fail
    assert inside_cut == 0 and boxes_inside > 40


def test_no_occlusion_draws_no_occluder(monkeypatch):
    import yoloprune.data.synth as synth

    calls = []
    monkeypatch.setattr(synth, "draw_occluder", lambda *args, **kwargs: calls.append(1))
    for index in range(30):
        render_synthetic_image(np.random.default_rng([4, index]), 64)
    assert calls  # the default task occludes some hands
    calls.clear()
    for index in range(30):
        render_synthetic_image(np.random.default_rng([4, index]), 64, Scene(occlusion=0.0))
    assert not calls


def test_min_visible_only_drops_labels_of_the_same_image():
    dropped = 0
    for index in range(30):
        image, boxes = render_synthetic_image(np.random.default_rng([5, index]), 96)
        strict_image, strict = render_synthetic_image(np.random.default_rng([5, index]), 96, Scene(min_visible=0.95))
        assert np.array_equal(image, strict_image)  # the knob changes the labels, not the drawing
        kept = {tuple(box) for box in boxes.tolist()}
        assert {tuple(box) for box in strict.tolist()} <= kept
        dropped += len(boxes) - len(strict)
    assert dropped > 0
