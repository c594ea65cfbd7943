"""Drawing primitives of the synthetic hand dataset: colours, a local canvas for one object, shapes,
and pasting a shaded canvas into the image while recording which object owns each pixel.

Every random choice comes from the `numpy.random.Generator` passed in, in a fixed order, so that
the same seed draws the same image.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

SHIFT = 4  # fractional bits for OpenCV drawing: sub-pixel precision for small hands
SHIFT_SCALE = 1 << SHIFT

# Skin tones, BGR, from dark to pale; a tone is a random point on this polyline plus jitter.
SKIN_ANCHORS_BGR = np.array(
    [[40, 58, 92], [62, 90, 140], [95, 130, 185], [135, 165, 215], [170, 192, 235], [190, 208, 242]],
    dtype=np.float32,
)


# ---------------------------------------------------------------- colours


def sample_skin_bgr(rng: np.random.Generator) -> np.ndarray:
    position = rng.uniform(0, len(SKIN_ANCHORS_BGR) - 1)
    low = int(position)
    high = min(low + 1, len(SKIN_ANCHORS_BGR) - 1)
    frac = position - low
    tone = SKIN_ANCHORS_BGR[low] * (1 - frac) + SKIN_ANCHORS_BGR[high] * frac
    return (tone + rng.normal(0, 7, 3)).clip(0, 255).astype(np.float32)


def _hsv_to_bgr(hue: float, saturation: float, value: float) -> np.ndarray:
    pixel = np.array([[[hue % 180, saturation * 255, value * 255]]], dtype=np.uint8)
    return cv2.cvtColor(pixel, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def sample_non_skin_bgr(rng: np.random.Generator) -> np.ndarray:
    """A colour away from skin hues (OpenCV hue 0–25 is skin-like), or a grey."""
    if rng.random() < 0.25:
        return np.full(3, rng.uniform(20, 235), dtype=np.float32)
    return _hsv_to_bgr(rng.uniform(35, 165), rng.uniform(0.3, 1.0), rng.uniform(0.25, 0.95))


def sample_any_bgr(rng: np.random.Generator) -> np.ndarray:
    return _hsv_to_bgr(rng.uniform(0, 180), rng.uniform(0.0, 0.8), rng.uniform(0.15, 0.95))


def color_tuple(bgr: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(bgr, 0, 255))


# ---------------------------------------------------------------- drawing into a local canvas


class Canvas:
    """A square local drawing surface for one object: a coverage mask and a shading map."""

    def __init__(self, size: int):
        self.size = size
        self.mask = np.zeros((size, size), np.uint8)
        self.shade = np.zeros((size, size), np.uint8)

    @staticmethod
    def _fixed(point: np.ndarray) -> tuple[int, int]:
        return int(round(point[0] * SHIFT_SCALE)), int(round(point[1] * SHIFT_SCALE))

    def capsule(self, start: np.ndarray, end: np.ndarray, width: float, shade: int, outline: int) -> None:
        """A thick segment with round ends, outlined darker so that overlapping parts stay distinct."""
        thickness = max(1, int(round(width)))
        a, b = self._fixed(start), self._fixed(end)
        if outline and thickness >= 3:
            cv2.line(self.shade, a, b, outline, thickness + 2, cv2.LINE_AA, SHIFT)
        cv2.line(self.mask, a, b, 255, thickness, cv2.LINE_AA, SHIFT)
        cv2.line(self.shade, a, b, shade, thickness, cv2.LINE_AA, SHIFT)

    def polygon(self, points: np.ndarray, shade: int, outline: int) -> None:
        fixed = np.round(points * SHIFT_SCALE).astype(np.int32)
        if outline:
            cv2.polylines(self.shade, [fixed], True, outline, 2, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.mask, [fixed], 255, cv2.LINE_AA, SHIFT)
        cv2.fillPoly(self.shade, [fixed], shade, cv2.LINE_AA, SHIFT)
        if outline:
            cv2.polylines(self.shade, [fixed], True, outline, 1, cv2.LINE_AA, SHIFT)


def rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]], dtype=np.float64)


def superellipse(half_w: float, half_h: float, exponent: float, count: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    cos_t, sin_t = np.cos(t), np.sin(t)
    x = half_w * np.sign(cos_t) * np.abs(cos_t) ** (2 / exponent)
    y = half_h * np.sign(sin_t) * np.abs(sin_t) ** (2 / exponent)
    return np.stack([x, y], axis=1)


def box_of_mask(mask: np.ndarray, threshold: int = 127) -> tuple[int, int, int, int] | None:
    """Pixel box (x1, y1, x2, y2), exclusive end, of the mask's pixels above `threshold`."""
    covered = mask > threshold
    rows = np.flatnonzero(covered.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(covered.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# ---------------------------------------------------------------- compositing


def paste(
    image: np.ndarray,
    owner: np.ndarray,
    canvas: Canvas,
    left: int,
    top: int,
    color_bgr: np.ndarray,
    object_id: int,
    rng: np.random.Generator,
    gloss: float = 0.0,
) -> None:
    """Alpha-blend a shaded, coloured canvas into the image and record which pixels it now owns."""
    height, width = image.shape[:2]
    covered = box_of_mask(canvas.mask, threshold=0)
    if covered is None:
        return
    # Blend only where the object is: the canvas is often much larger than what was drawn on it.
    x1, y1 = max(left + covered[0], 0), max(top + covered[1], 0)
    x2, y2 = min(left + covered[2], width), min(top + covered[3], height)
    if x2 <= x1 or y2 <= y1:
        return
    local = (slice(y1 - top, y2 - top), slice(x1 - left, x2 - left))
    alpha = canvas.mask[local].astype(np.float32) * (1 / 255)
    shade = canvas.shade[local].astype(np.float32) * (1 / 255)
    # Directional light across the object, for a rounded look.
    light_angle = rng.uniform(0, 2 * math.pi)
    strength = rng.uniform(0.2, 0.5) / max(canvas.size, 1)
    ramp_x = np.arange(x1 - left, x2 - left, dtype=np.float32) * (strength * math.cos(light_angle))
    ramp_y = np.arange(y1 - top, y2 - top, dtype=np.float32) * (strength * math.sin(light_angle))
    light = ramp_y[:, None] + ramp_x[None, :]
    light += 0.72 - light.min()
    if gloss:
        light += gloss * np.clip(shade - 0.9, 0, None) * 5
    colored = color_bgr[None, None, :] * (shade * light)[..., None]
    region = image[y1:y2, x1:x2].astype(np.float32)
    region += (colored - region) * alpha[..., None]
    image[y1:y2, x1:x2] = region.clip(0, 255).astype(np.uint8)
    owner[y1:y2, x1:x2][alpha > 0.5] = object_id


def paste_capsule(
    image: np.ndarray,
    owner: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
    width: float,
    color_bgr: np.ndarray,
    object_id: int,
    rng: np.random.Generator,
) -> None:
    """A thick bar (arm, sleeve, stick) drawn through a local canvas so that it is shaded like the rest."""
    low = np.minimum(start, end) - width
    high = np.maximum(start, end) + width
    size = int(math.ceil(max(high - low))) + 2
    canvas = Canvas(size)
    offset = np.floor(low)
    canvas.capsule(start - offset, end - offset, width, int(rng.uniform(200, 240)), 0)
    paste(image, owner, canvas, int(offset[0]), int(offset[1]), color_bgr, object_id, rng)

