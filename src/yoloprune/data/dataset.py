"""The training/evaluation loader: YOLO image lists -> letterboxed batches.

A batch is `(images, targets, paths)`:
- `images`: float32 (N, 3, S, S), RGB in [0, 1], each image letterboxed into the S×S square;
- `targets`: float32 (M, 6) rows `img_idx cls cx cy w h`, box centre/size normalised to the S×S square;
- `paths`: the N image paths as strings.

Labels are read and checked once, when the dataset is built; images are decoded when a sample is
drawn. Bad input raises DataError naming the file (and line); with `skip_bad=True` each bad item is
logged and left out instead, and the count is logged.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from yoloprune.data.spec import DataSpec, label_path_for, load_data_spec, read_image_entries, read_labels
from yoloprune.data.transforms import AugmentConfig, SampleTransform, compose_mosaic, cxcywh_norm_to_xyxy_px
from yoloprune.errors import DataError
from yoloprune.settings import STRIDE, check_img_size

__all__ = [
    "DataSpec",
    "load_data_spec",
    "YoloDataset",
    "YoloDataLoader",
    "MultiScaleBatchSampler",
    "collate_samples",
    "create_dataloader",
    "image_loader",
    "read_image",
    "multi_scale_sizes",
]

log = logging.getLogger(__name__)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image as HWC uint8 BGR; DataError when it is missing or not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise DataError("image not found", path)
    # np.fromfile + imdecode copes with non-ASCII paths, where cv2.imread fails on some platforms.
    try:
        encoded = np.fromfile(str(path), dtype=np.uint8)
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if encoded.size else None
    except (OSError, cv2.error):
        image = None
    if image is None or image.size == 0:
        raise DataError("cannot decode image (corrupt or not an image)", path)
    return image


def multi_scale_sizes(img_size: int, multi_scale: bool | tuple[int, int]) -> list[int]:
    """The input sizes a multi-scale batch may take: multiples of 32 in the given range."""
    if multi_scale is True:
        low, high = img_size * 2 / 3, img_size * 3 / 2
    else:
        low, high = multi_scale
    sizes = list(range(max(STRIDE, math.ceil(low / STRIDE) * STRIDE), int(high) + 1, STRIDE))
    if not sizes:
        raise ValueError(f"multi_scale range {multi_scale} holds no multiple of {STRIDE}")
    return sizes


class YoloDataset(Dataset):
    """Images of one image list with their labels; an item is `(image uint8 3×S×S RGB, labels (n, 5), path)`.

    `index` may be an int or `(int, size)`; the second form (used by multi-scale batches) sets S.
    """

    def __init__(
        self,
        list_file: str | Path,
        img_size: int,
        augment: bool = False,
        num_classes: int | None = None,
        skip_bad: bool = False,
        seed: int = 0,
        augment_config: AugmentConfig | None = None,
    ):
        check_img_size(img_size)
        self.list_file = Path(list_file)
        self.img_size = img_size
        self.augment = augment
        self.skip_bad = skip_bad
        self.seed = seed
        self.config = augment_config or AugmentConfig()
        self.transform = SampleTransform(augment=augment, config=self.config)
        self.image_paths: list[Path] = []
        # Per image: (n, 5) float32 `cls cx cy w h` normalised to the original image.
        self.labels: list[np.ndarray] = []
        self.missing_label_count = 0
        self.skipped_count = 0
        self._load_index(num_classes)
        self._bad_indices: set[int] = set()
        self._rng: np.random.Generator | None = None
        self._rng_worker_seed: int | None = None

    def _skip_or_raise(self, error: DataError) -> None:
        if not self.skip_bad:
            raise error
        self.skipped_count += 1
        log.warning("skipping %s", error)

    def _load_index(self, num_classes: int | None) -> None:
        entries = read_image_entries(self.list_file)
        if not entries:
            raise DataError("image list is empty", self.list_file)
        for line_no, image_path in entries:
            if not image_path.is_file():
                self._skip_or_raise(DataError(f"image not found: {image_path}", self.list_file, line_no))
                continue
            try:
                labels = read_labels(label_path_for(image_path), num_classes)
            except DataError as error:
                self._skip_or_raise(error)
                continue
            if labels is None:
                self.missing_label_count += 1
                labels = np.zeros((0, 5), dtype=np.float32)
            self.image_paths.append(image_path)
            self.labels.append(labels)
        if self.missing_label_count:
            log.info(
                "%s: %d of %d images have no label file (read as holding no objects)",
                self.list_file,
                self.missing_label_count,
                len(entries),
            )
        if self.skipped_count:
            log.warning("%s: skipped %d bad item(s)", self.list_file, self.skipped_count)
        if not self.image_paths:
            raise DataError("no usable images", self.list_file)

    def __len__(self) -> int:
        return len(self.image_paths)

    def _generator(self) -> np.random.Generator:
        """A generator per process: each DataLoader worker gets its own stream from torch's worker seed."""
        worker = torch.utils.data.get_worker_info()
        if worker is not None:
            if self._rng_worker_seed != worker.seed:
                self._rng_worker_seed = worker.seed
                self._rng = np.random.default_rng(worker.seed)
        elif self._rng is None:
            self._rng = np.random.default_rng(self.seed)
        return self._rng

    def _load(self, index: int) -> tuple[int, np.ndarray, np.ndarray]:
        """Decode image `index` (or, when skipping bad items, the next readable one) with pixel labels."""
        for _ in range(len(self.image_paths)):
            if index not in self._bad_indices:
                try:
                    image = read_image(self.image_paths[index])
                except DataError as error:
                    if not self.skip_bad:
                        raise
                    self._bad_indices.add(index)
                    log.warning("skipping %s (%d unreadable so far in this process)", error, len(self._bad_indices))
                else:
                    height, width = image.shape[:2]
                    return index, image, cxcywh_norm_to_xyxy_px(self.labels[index], width, height)
            index = (index + 1) % len(self.image_paths)
        raise DataError("no readable image left", self.list_file)

    def __getitem__(self, index: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, str]:
        index, out_size = index if isinstance(index, tuple) else (index, self.img_size)
        rng = self._generator()
        if self.augment and self.config.mosaic > 0 and rng.random() < self.config.mosaic:
            index, image, labels_xyxy_px = self._load(index)
            tiles = [(image, labels_xyxy_px)]
            for other in rng.integers(0, len(self), 3):
                tiles.append(self._load(int(other))[1:])
            image, labels_xyxy_px = compose_mosaic(
                [t[0] for t in tiles], [t[1] for t in tiles], out_size, rng, self.config.scale
            )
        else:
            index, image, labels_xyxy_px = self._load(index)
            image, labels_xyxy_px = self.transform.geometric(image, labels_xyxy_px, out_size, rng)
        image, labels_xyxy_px = self.transform.photometric(image, labels_xyxy_px, rng)
        labels_cxcywh_norm = self.transform.finish(labels_xyxy_px, out_size)
        chw_rgb = np.ascontiguousarray(image[:, :, ::-1].transpose(2, 0, 1))
        return torch.from_numpy(chw_rgb), torch.from_numpy(labels_cxcywh_norm), str(self.image_paths[index])


def collate_samples(samples: list[tuple[torch.Tensor, torch.Tensor, str]]):
    """Stack images (to float in [0, 1]) and concatenate labels with their image index in front."""
    # NumPy, not torch: torch's intra-op thread pool spin-waits when the loader runs in the
    # training process on busy cores, which made this step several times slower.
    stacked = np.stack([s[0].numpy() for s in samples])
    images = torch.from_numpy(np.multiply(stacked, np.float32(1 / 255), dtype=np.float32))
    targets = [
        torch.cat((torch.full((len(labels), 1), float(i)), labels), dim=1) for i, (_, labels, _) in enumerate(samples)
    ]
    return images, torch.cat(targets, dim=0) if targets else torch.zeros((0, 6)), [s[2] for s in samples]


class MultiScaleBatchSampler(Sampler):
    """Batches of `(index, size)` pairs: one random input size per batch, a multiple of 32.

    The size sequence depends on `seed` and how many times the sampler has been iterated, so every
    process of a distributed run, iterating in step, draws the same sizes.
    """

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, sizes: list[int], seed: int = 0):
        self.sampler, self.batch_size, self.drop_last = sampler, batch_size, drop_last
        self.sizes, self.seed = list(sizes), seed
        self._iteration = 0

    def set_epoch(self, epoch: int) -> None:
        self._iteration = epoch
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self._iteration])
        self._iteration += 1
        batch: list[int] = []
        for index in self.sampler:
            batch.append(index)
            if len(batch) == self.batch_size:
                size = int(rng.choice(self.sizes))
                yield [(i, size) for i in batch]
                batch = []
        if batch and not self.drop_last:
            size = int(rng.choice(self.sizes))
            yield [(i, size) for i in batch]

    def __len__(self) -> int:
        count = len(self.sampler)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)


def _plain_worker_message(error: DataError) -> str:
    """The original message of a DataError re-raised from a worker (torch wraps it in a traceback)."""
    text = str(error)
    if "Traceback" not in text:
        return text
    last_line = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{DataError.__module__}.{DataError.__name__}: "
    return last_line.split(prefix, 1)[1] if prefix in last_line else last_line


class YoloDataLoader(DataLoader):
    """A DataLoader whose data errors read the same with or without worker processes."""

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle a distributed sampler and reseed multi-scale sizes for `epoch`."""
        for sampler in (self.sampler, self.batch_sampler):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(epoch)

    def __iter__(self):
        iterator = super().__iter__()
        while True:
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except DataError as error:
                raise DataError(_plain_worker_message(error)) from None
            yield batch


def _init_worker(_worker_id: int) -> None:
    # Workers already run in parallel; OpenCV's own thread pool would only oversubscribe the cores.
    cv2.setNumThreads(0)


def create_dataloader(
    list_file: str | Path,
    img_size: int,
    batch_size: int,
    augment: bool = False,
    workers: int = 0,
    shuffle: bool = False,
    skip_bad: bool = False,
    distributed: bool = False,
    seed: int = 0,
    num_classes: int | None = None,
    pin_memory: bool = False,
    drop_last: bool = False,
    **aug,
) -> YoloDataLoader:
    """A loader over the images of `list_file`; see the module docstring for the batch layout.

    `aug` sets `AugmentConfig` fields (hsv_h, hsv_s, hsv_v, flip, scale, translate, mosaic,
    multi_scale, min_box_px, min_visible); they act only with `augment=True`. Pass `num_classes`
    to have class ids checked against it. With `distributed=True` a DistributedSampler splits the
    images between processes; call `loader.set_epoch(epoch)` every epoch to reshuffle.
    """
    config = AugmentConfig.from_kwargs(**aug)
    # Each process of a distributed run draws its own augmentation stream; the shuffle order
    # (DistributedSampler's own seed) stays shared so that the processes split the images.
    rank = torch.distributed.get_rank() if distributed else 0
    sample_seed = seed + 1_000_003 * rank
    dataset = YoloDataset(
        list_file, img_size, augment=augment, num_classes=num_classes, skip_bad=skip_bad, seed=sample_seed,
        augment_config=config,
    )
    generator = torch.Generator().manual_seed(sample_seed)
    if distributed:
        sampler: Sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    common = dict(
        num_workers=workers,
        collate_fn=collate_samples,
        worker_init_fn=_init_worker,
        pin_memory=pin_memory,
        generator=generator,
        persistent_workers=workers > 0,
    )
    if augment and config.multi_scale:
        batch_sampler = MultiScaleBatchSampler(
            sampler, batch_size, drop_last, multi_scale_sizes(img_size, config.multi_scale), seed
        )
        return YoloDataLoader(dataset, batch_sampler=batch_sampler, **common)
    return YoloDataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)


def image_loader(
    spec: DataSpec, split: str, img_size: int, batch: int, workers: int = 0, shuffle: bool = False,
    skip_bad: bool = False, device: str = "cpu",
) -> YoloDataLoader:
    """Letterboxed, un-augmented batches of one split of a dataset (`shuffle` with a fixed seed: the
    same images every run). Evaluation, BN re-calibration, INT8 calibration and anchor fitting all
    read images through it, so they see them the same way."""
    return create_dataloader(
        spec.list_for(split), img_size, batch, workers=workers, shuffle=shuffle, skip_bad=skip_bad,
        num_classes=spec.classes, pin_memory=str(device).startswith("cuda"), seed=0,
    )
