"""Image and box transforms of the loader: letterbox, random scale/translate, HSV jitter, flip, mosaic.

Images are HWC uint8 BGR (as OpenCV reads them). Boxes travel as `labels_xyxy_px`, an (n, 5) float32
array `cls x1 y1 x2 y2` in pixels of the current image, so that every geometric step is one
multiply-add on the corners; they become normalised `cx cy w h` only when a sample is finished.

Every random draw comes from the `numpy.random.Generator` passed in, so a seeded generator gives a
reproducible sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import cv2
import numpy as np

PAD_VALUE = 114  # neutral grey: the padding carries no edge for the network to latch onto


@dataclass(frozen=True)
class LetterboxInfo:
    """How an image was placed in the letterboxed square: `out = original * scale + (pad_x, pad_y)`."""

    scale: float
    pad_x: float
    pad_y: float


@dataclass
class AugmentConfig:
    """Training augmentation settings; `create_dataloader(..., **aug)` fills these by keyword."""

    hsv_h: float = 0.015  # hue gain range, fraction of the hue circle
    hsv_s: float = 0.5  # saturation gain range: gain in [1 - s, 1 + s]
    hsv_v: float = 0.35  # value gain range
    flip: float = 0.5  # probability of a horizontal flip
    scale: float = 0.3  # zoom factor drawn from [1 - scale, 1 + scale] on top of the letterbox fit
    translate: float = 0.1  # shift drawn from [-translate, translate] × img_size on each axis
    mosaic: float = 0.0  # probability that a sample is a 2×2 mosaic of four images
    multi_scale: bool | tuple[int, int] = False  # True: per-batch size in [2/3, 3/2] × img_size
    min_box_px: float = 2.0  # boxes narrower or shorter than this after augmentation are dropped
    min_visible: float = 0.2  # boxes keeping less than this share of their area after clipping are dropped

    @classmethod
    def from_kwargs(cls, **kwargs) -> "AugmentConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown augmentation option(s) {unknown}; known: {sorted(known)}")
        return cls(**kwargs)


def cxcywh_norm_to_xyxy_px(labels_cxcywh_norm: np.ndarray, width: float, height: float) -> np.ndarray:
    """(n, 5) `cls cx cy w h` normalised -> (n, 5) `cls x1 y1 x2 y2` in pixels."""
    out = np.empty_like(labels_cxcywh_norm, dtype=np.float32)
    out[:, 0] = labels_cxcywh_norm[:, 0]
    cx, cy = labels_cxcywh_norm[:, 1] * width, labels_cxcywh_norm[:, 2] * height
    half_w, half_h = labels_cxcywh_norm[:, 3] * width / 2, labels_cxcywh_norm[:, 4] * height / 2
    out[:, 1], out[:, 2], out[:, 3], out[:, 4] = cx - half_w, cy - half_h, cx + half_w, cy + half_h
    return out


def xyxy_px_to_cxcywh_norm(labels_xyxy_px: np.ndarray, width: float, height: float) -> np.ndarray:
    """(n, 5) `cls x1 y1 x2 y2` in pixels -> (n, 5) `cls cx cy w h` normalised."""
    out = np.empty_like(labels_xyxy_px, dtype=np.float32)
    out[:, 0] = labels_xyxy_px[:, 0]
    x1, y1, x2, y2 = labels_xyxy_px[:, 1], labels_xyxy_px[:, 2], labels_xyxy_px[:, 3], labels_xyxy_px[:, 4]
    out[:, 1], out[:, 2] = (x1 + x2) / (2 * width), (y1 + y2) / (2 * height)
    out[:, 3], out[:, 4] = (x2 - x1) / width, (y2 - y1) / height
    return out


def compute_letterbox(height: int, width: int, out_size: int) -> LetterboxInfo:
    """Fit an image of `height`×`width` into an `out_size` square, centred, keeping its aspect ratio."""
    scale = out_size / max(height, width)
    new_w, new_h = round(width * scale), round(height * scale)
    return LetterboxInfo(scale=scale, pad_x=(out_size - new_w) // 2, pad_y=(out_size - new_h) // 2)


def letterbox(image: np.ndarray, out_size: int) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize `image` to fit an `out_size` square (aspect kept) and pad the rest with grey."""
    height, width = image.shape[:2]
    info = compute_letterbox(height, width, out_size)
    new_w, new_h = round(width * info.scale), round(height * info.scale)
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    pad_x, pad_y = int(info.pad_x), int(info.pad_y)
    boxed = cv2.copyMakeBorder(
        image,
        pad_y,
        out_size - new_h - pad_y,
        pad_x,
        out_size - new_w - pad_x,
        cv2.BORDER_CONSTANT,
        value=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )
    # The returned info states the exact placement: rounding the resized size changes the scale slightly.
    return boxed, LetterboxInfo(scale=new_w / width, pad_x=pad_x, pad_y=pad_y)


def unletterbox_boxes_xyxy(boxes_xyxy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map (n, 4) pixel boxes of the letterboxed image back to the original image."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).copy()
    boxes[:, [0, 2]] = (boxes[:, [0, 2]] - info.pad_x) / info.scale
    boxes[:, [1, 3]] = (boxes[:, [1, 3]] - info.pad_y) / info.scale
    return boxes


def scale_translate(
    image: np.ndarray,
    labels_xyxy_px: np.ndarray,
    out_size: int,
    rng: np.random.Generator,
    scale: float,
    translate: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox-fit `image` into `out_size`, then zoom and shift it at random — one warp for both."""
    height, width = image.shape[:2]
    zoom = out_size / max(height, width) * rng.uniform(1 - scale, 1 + scale)
    shift_x = (out_size - width * zoom) / 2 + rng.uniform(-translate, translate) * out_size
    shift_y = (out_size - height * zoom) / 2 + rng.uniform(-translate, translate) * out_size
    matrix = np.array([[zoom, 0.0, shift_x], [0.0, zoom, shift_y]], dtype=np.float32)
    warped = cv2.warpAffine(
        image,
        matrix,
        (out_size, out_size),
        flags=cv2.INTER_LINEAR if zoom < 4 else cv2.INTER_NEAREST,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(PAD_VALUE, PAD_VALUE, PAD_VALUE),
    )
    moved = labels_xyxy_px.copy()
    moved[:, [1, 3]] = moved[:, [1, 3]] * zoom + shift_x
    moved[:, [2, 4]] = moved[:, [2, 4]] * zoom + shift_y
    return warped, moved


def clip_and_filter_boxes(
    labels_xyxy_px: np.ndarray, width: int, height: int, min_box_px: float, min_visible: float
) -> np.ndarray:
    """Clip boxes to the image; drop those now thinner than `min_box_px` or mostly outside."""
    if len(labels_xyxy_px) == 0:
        return labels_xyxy_px
    area_before = (labels_xyxy_px[:, 3] - labels_xyxy_px[:, 1]) * (labels_xyxy_px[:, 4] - labels_xyxy_px[:, 2])
    clipped = labels_xyxy_px.copy()
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0, width)
    clipped[:, [2, 4]] = clipped[:, [2, 4]].clip(0, height)
    box_w, box_h = clipped[:, 3] - clipped[:, 1], clipped[:, 4] - clipped[:, 2]
    visible = box_w * box_h / np.maximum(area_before, 1e-9)
    keep = (box_w >= min_box_px) & (box_h >= min_box_px) & (visible >= min_visible)
    return clipped[keep]


def jitter_hsv(image: np.ndarray, rng: np.random.Generator, hue: float, saturation: float, value: float) -> np.ndarray:
    """Random gains on hue, saturation and value, applied through lookup tables (cheap on uint8)."""
    if hue == 0 and saturation == 0 and value == 0:
        return image
    gain_h, gain_s, gain_v = rng.uniform(-1, 1, 3) * (hue, saturation, value) + (0.0, 1.0, 1.0)
    hsv_h, hsv_s, hsv_v = cv2.split(cv2.cvtColor(image, cv2.COLOR_BGR2HSV))
    levels = np.arange(256, dtype=np.float32)
    # OpenCV's 8-bit hue runs over 0..179.
    lut_h = ((levels + gain_h * 180) % 180).astype(np.uint8)
    lut_s = (levels * gain_s).clip(0, 255).astype(np.uint8)
    lut_v = (levels * gain_v).clip(0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hsv_h, lut_h), cv2.LUT(hsv_s, lut_s), cv2.LUT(hsv_v, lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def flip_horizontal(image: np.ndarray, labels_xyxy_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    width = image.shape[1]
    flipped = labels_xyxy_px.copy()
    flipped[:, 1], flipped[:, 3] = width - labels_xyxy_px[:, 3], width - labels_xyxy_px[:, 1]
    return np.ascontiguousarray(image[:, ::-1]), flipped


def compose_mosaic(
    images: list[np.ndarray],
    labels_xyxy_px: list[np.ndarray],
    out_size: int,
    rng: np.random.Generator,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile four images around a random centre of an `out_size` square.

    Each image is fitted to about half the square (times a random zoom) and placed with one corner
    on the centre point, cut where it leaves the square; boxes move and are cut with it.
    """
    canvas = np.full((out_size, out_size, 3), PAD_VALUE, dtype=np.uint8)
    center_x, center_y = (int(v) for v in rng.uniform(0.3 * out_size, 0.7 * out_size, 2))
    placed = []
    for quadrant, (image, labels) in enumerate(zip(images, labels_xyxy_px)):
        height, width = image.shape[:2]
        zoom = out_size / 2 / max(height, width) * rng.uniform(1 - scale, 1 + scale)
        new_w, new_h = max(1, round(width * zoom)), max(1, round(height * zoom))
        resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        left = center_x - new_w if quadrant in (0, 2) else center_x
        top = center_y - new_h if quadrant in (0, 1) else center_y
        # Intersection of the placed image with the canvas, in canvas and in image coordinates.
        x1, y1 = max(left, 0), max(top, 0)
        x2, y2 = min(left + new_w, out_size), min(top + new_h, out_size)
        if x2 > x1 and y2 > y1:
            canvas[y1:y2, x1:x2] = resized[y1 - top : y2 - top, x1 - left : x2 - left]
        moved = labels.copy()
        moved[:, [1, 3]] = moved[:, [1, 3]] * (new_w / width) + left
        moved[:, [2, 4]] = moved[:, [2, 4]] * (new_h / height) + top
        # Cut boxes to this tile's visible window so they do not claim a neighbour's pixels.
        moved[:, [1, 3]] = moved[:, [1, 3]].clip(x1, max(x1, x2))
        moved[:, [2, 4]] = moved[:, [2, 4]].clip(y1, max(y1, y2))
        placed.append(moved)
    return canvas, np.concatenate(placed, axis=0) if placed else np.zeros((0, 5), np.float32)


@dataclass
class SampleTransform:
    """Turns one decoded image and its labels into a training or evaluation sample."""

    augment: bool
    config: AugmentConfig = field(default_factory=AugmentConfig)

    def geometric(
        self, image: np.ndarray, labels_xyxy_px: np.ndarray, out_size: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Place one image into the `out_size` square: plain letterbox, or random zoom/shift when augmenting."""
        if not self.augment:
            boxed, info = letterbox(image, out_size)
            moved = labels_xyxy_px.copy()
            moved[:, [1, 3]] = moved[:, [1, 3]] * info.scale + info.pad_x
            moved[:, [2, 4]] = moved[:, [2, 4]] * info.scale + info.pad_y
            return boxed, moved
        return scale_translate(image, labels_xyxy_px, out_size, rng, self.config.scale, self.config.translate)

    def photometric(
        self, image: np.ndarray, labels_xyxy_px: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        if not self.augment:
            return image, labels_xyxy_px
        cfg = self.config
        image = jitter_hsv(image, rng, cfg.hsv_h, cfg.hsv_s, cfg.hsv_v)
        if rng.random() < cfg.flip:
            image, labels_xyxy_px = flip_horizontal(image, labels_xyxy_px)
        return image, labels_xyxy_px

    def finish(self, labels_xyxy_px: np.ndarray, out_size: int) -> np.ndarray:
        """Clip and filter boxes, then normalise them to the square."""
        # Without augmentation nothing leaves the image, so only degenerate boxes could be dropped;
        # keep evaluation labels intact apart from clipping.
        min_px = self.config.min_box_px if self.augment else 0.0
        min_visible = self.config.min_visible if self.augment else 0.0
        kept = clip_and_filter_boxes(labels_xyxy_px, out_size, out_size, min_px, min_visible)
        return xyxy_px_to_cxcywh_norm(kept, out_size, out_size)
