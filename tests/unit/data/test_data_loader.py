"""The loader: batch layout, boxes that follow the pixels through letterbox/augmentation, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from yoloprune.data.dataset import YoloDataset, create_dataloader, multi_scale_sizes
from yoloprune.data.transforms import letterbox, unletterbox_boxes_xyxy
from yoloprune.errors import DataError, SettingsError

IMAGE_SHAPES = [(64, 96), (96, 64), (80, 80), (48, 128)]  # (height, width), deliberately not square


def _make_dataset(root: Path, count: int = 8, seed: int = 0) -> Path:
    """Dark noisy images holding bright rectangles whose labels are exactly those rectangles."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for i in range(count):
        height, width = IMAGE_SHAPES[i % len(IMAGE_SHAPES)]
        image = rng.integers(0, 40, (height, width, 3), dtype=np.uint8)
        rows = []
        for _ in range(int(rng.integers(1, 4))):
            w, h = int(rng.integers(12, width // 2)), int(rng.integers(12, height // 2))
            x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
            image[y : y + h, x : x + w] = 255
            rows.append(f"{i % 2} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} {w / width:.6f} {h / height:.6f}")
        cv2.imwrite(str(root / "images" / f"{i}.png"), image)
        (root / "labels" / f"{i}.txt").write_text("\n".join(rows) + "\n")
        lines.append(f"images/{i}.png")
    list_file = root / "list.txt"
    list_file.write_text("\n".join(lines) + "\n")
    return list_file


@pytest.fixture
def list_file(tmp_path):
    return _make_dataset(tmp_path / "ds")


def _boxes_px(targets: torch.Tensor, size: int) -> np.ndarray:
    cx, cy, w, h = (targets[:, k].numpy() * size for k in range(2, 6))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _assert_boxes_cover_bright_pixels(images: torch.Tensor, targets: torch.Tensor) -> None:
    size = images.shape[-1]
    for (img_idx, *_), (x1, y1, x2, y2) in zip(targets.numpy(), _boxes_px(targets, size)):
        # Shrink by a pixel: interpolation blurs the rectangle's edge.
        inner = images[int(img_idx), :, int(np.ceil(y1)) + 1 : int(y2) - 1, int(np.ceil(x1)) + 1 : int(x2) - 1]
        if inner.numel():
            assert inner.mean() > 0.75, "a box lies over pixels that are not its object"


def test_batch_layout(list_file):
    loader = create_dataloader(list_file, 64, batch_size=3, num_classes=2)
    images, targets, paths = next(iter(loader))
    assert images.shape == (3, 3, 64, 64) and images.dtype == torch.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert targets.dtype == torch.float32 and targets.shape[1] == 6
    assert set(targets[:, 0].long().tolist()) <= {0, 1, 2}
    assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 4:] > 0).all()
    assert len(paths) == 3 and paths[0].endswith("0.png")
    assert len(loader) == 3  # 8 images in batches of 3


def test_letterbox_keeps_boxes_on_their_pixels(list_file):
    for images, targets, _ in create_dataloader(list_file, 96, batch_size=4):
        _assert_boxes_cover_bright_pixels(images, targets)


def test_letterbox_round_trip():
    image = np.zeros((50, 120, 3), np.uint8)
    boxed, info = letterbox(image, 96)
    assert boxed.shape == (96, 96, 3)
    boxes = np.array([[0, 0, 120, 50], [10.5, 3, 60, 40]], np.float32)
    moved = boxes.copy()
    moved[:, [0, 2]] = moved[:, [0, 2]] * info.scale + info.pad_x
    moved[:, [1, 3]] = moved[:, [1, 3]] * info.scale + info.pad_y
    assert moved[0, 0] == 0 and moved[0, 2] == 96  # the long side fills the square
    np.testing.assert_allclose(unletterbox_boxes_xyxy(moved, info), boxes, atol=1e-4)


@pytest.mark.parametrize("mosaic", [0.0, 1.0])
def test_augmentation_keeps_boxes_on_their_pixels(list_file, mosaic):
    loader = create_dataloader(
        list_file, 64, batch_size=4, augment=True, shuffle=True, seed=1, hsv_v=0.0, mosaic=mosaic, scale=0.5
    )
    box_count = 0
    for _ in range(3):
        for images, targets, _ in loader:
            assert images.shape[-2:] == (64, 64)
            assert ((targets[:, 2:] >= 0) & (targets[:, 2:] <= 1)).all() and (targets[:, 4:] > 0).all()
            _assert_boxes_cover_bright_pixels(images, targets)
            box_count += len(targets)
    assert box_count > 0


def test_same_seed_same_batches(list_file):
    def draw(seed):
        loader = create_dataloader(list_file, 64, batch_size=4, augment=True, shuffle=True, seed=seed, mosaic=0.5)
        return [(images.clone(), targets.clone()) for images, targets, _ in loader]

    first, second, other = draw(3), draw(3), draw(4)
    for (a_img, a_tgt), (b_img, b_tgt) in zip(first, second):
        assert torch.equal(a_img, b_img) and torch.equal(a_tgt, b_tgt)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(first, other))


def test_workers_give_the_same_batches(list_file):
    def collect(workers):
        loader = create_dataloader(list_file, 64, batch_size=3, workers=workers)
        return [(images, targets, paths) for images, targets, paths in loader]

    for (a_img, a_tgt, a_paths), (b_img, b_tgt, b_paths) in zip(collect(0), collect(2)):
        assert a_paths == b_paths and torch.equal(a_img, b_img) and torch.equal(a_tgt, b_tgt)


def test_multi_scale_sizes_are_multiples_of_32(list_file):
    assert multi_scale_sizes(96, True) == [64, 96, 128]
    loader = create_dataloader(list_file, 96, batch_size=2, augment=True, shuffle=True, multi_scale=True)
    seen = set()
    for _ in range(4):
        for images, _, _ in loader:
            assert images.shape[-1] == images.shape[-2] and images.shape[-1] % 32 == 0
            seen.add(images.shape[-1])
    assert seen <= {64, 96, 128} and len(seen) > 1


def test_distributed_sampler(list_file, tmp_path):
    import torch.distributed as dist
    from torch.utils.data.distributed import DistributedSampler

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        loader = create_dataloader(list_file, 64, batch_size=4, shuffle=True, distributed=True)
        assert isinstance(loader.sampler, DistributedSampler)
        loader.set_epoch(1)
        paths = [p for _, _, batch_paths in loader for p in batch_paths]
        assert sorted(paths) == sorted(str(p) for p in loader.dataset.image_paths)
    finally:
        dist.destroy_process_group()


def test_unknown_augmentation_option(list_file):
    with pytest.raises(ValueError, match="unknown augmentation option"):
        create_dataloader(list_file, 64, batch_size=2, rotate=10)


def test_img_size_must_be_a_multiple_of_32(list_file):
    with pytest.raises(SettingsError, match="img_size: must be a positive multiple of 32, got 100"):
        create_dataloader(list_file, 100, batch_size=2)


# ------------------------------------------------------------------ bad input


def test_missing_label_file_means_no_objects_and_is_counted(list_file, caplog):
    (list_file.parent / "labels" / "1.txt").unlink()
    with caplog.at_level(logging.INFO):
        dataset = YoloDataset(list_file, 64)
    assert dataset.missing_label_count == 1 and len(dataset.labels[1]) == 0
    assert "1 of 8 images have no label file" in caplog.text


def test_missing_image_names_list_and_line(list_file):
    (list_file.parent / "images" / "2.png").unlink()
    with pytest.raises(DataError) as info:
        YoloDataset(list_file, 64)
    assert f"{list_file}:3" in str(info.value) and "image not found" in str(info.value)


def test_bad_label_raises_or_is_skipped(list_file, caplog):
    label = list_file.parent / "labels" / "3.txt"
    label.write_text("0 0.5 0.5 0.2 0.2\n5 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataError, match=r"3\.txt:2: class id 5 >= classes \(2\)"):
        YoloDataset(list_file, 64, num_classes=2)
    with caplog.at_level(logging.WARNING):
        dataset = YoloDataset(list_file, 64, num_classes=2, skip_bad=True)
    assert len(dataset) == 7 and dataset.skipped_count == 1
    assert "3.txt:2" in caplog.text and "skipped 1 bad item" in caplog.text


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_error_is_one_clean_line(list_file, workers):
    corrupt = list_file.parent / "images" / "0.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    loader = create_dataloader(list_file, 64, batch_size=4, workers=workers)
    with pytest.raises(DataError) as info:
        for _ in loader:
            pass
    message = str(info.value)
    assert message == f"{corrupt}: cannot decode image (corrupt or not an image)"


def test_corrupt_image_skipped_with_a_log(list_file, caplog):
    corrupt = list_file.parent / "images" / "0.png"
    corrupt.write_bytes(b"")
    loader = create_dataloader(list_file, 64, batch_size=8, skip_bad=True)
    with caplog.at_level(logging.WARNING):
        images, _, paths = next(iter(loader))
    assert len(images) == 8 and str(corrupt) not in paths
    assert "skipping" in caplog.text and str(corrupt) in caplog.text
