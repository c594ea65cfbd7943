"""A PNG grid of dataset samples with their boxes drawn — to see what the network will see."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np

from yoloprune.data.dataset import YoloDataset
from yoloprune.data.spec import load_data_spec
from yoloprune.data.transforms import AugmentConfig
from yoloprune.fileio import atomic_write_bytes

BOX_COLOR_BGR = (0, 255, 0)


def render_sample_grid(
    data_path: str | Path,
    out_path: str | Path,
    split: str = "train",
    count: int = 16,
    columns: int = 4,
    img_size: int = 256,
    augment: bool = False,
    seed: int = 0,
    skip_bad: bool = False,
    **aug,
) -> Path:
    """Draw `count` samples of `split` (first ones, or augmented draws with `augment`) into one PNG."""
    spec = load_data_spec(data_path)
    dataset = YoloDataset(
        spec.list_for(split),
        img_size,
        augment=augment,
        num_classes=spec.classes,
        skip_bad=skip_bad,
        seed=seed,
        augment_config=AugmentConfig.from_kwargs(**aug),
    )
    count = min(count, len(dataset)) if not augment else count
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    gap = 4
    grid = np.full((rows * (img_size + gap) + gap, columns * (img_size + gap) + gap, 3), 255, np.uint8)
    thickness = max(1, img_size // 256)
    for k in range(count):
        image_rgb, labels, _ = dataset[k % len(dataset)]
        tile = np.ascontiguousarray(image_rgb.numpy().transpose(1, 2, 0)[:, :, ::-1])
        for cls, cx, cy, w, h in labels.numpy():
            x1, y1 = int(round((cx - w / 2) * img_size)), int(round((cy - h / 2) * img_size))
            x2, y2 = int(round((cx + w / 2) * img_size)), int(round((cy + h / 2) * img_size))
            cv2.rectangle(tile, (x1, y1), (x2, y2), BOX_COLOR_BGR, thickness)
            if spec.classes > 1:
                cv2.putText(tile, spec.names[int(cls)], (x1, max(10, y1 - 2)), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                            BOX_COLOR_BGR, 1, cv2.LINE_AA)
        row, col = divmod(k, columns)
        top, left = gap + row * (img_size + gap), gap + col * (img_size + gap)
        grid[top : top + img_size, left : left + img_size] = tile
    ok, encoded = cv2.imencode(".png", grid)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    out_path = Path(out_path)
    atomic_write_bytes(out_path, encoded.tobytes())
    return out_path
