"""A synthetic hand-detection dataset that ships with the tool (no download needed).

Each image holds 1–6 articulated hands — a palm with 0–5 extended fingers and a thumb, random pose,
rotation, mirror, foreshortening, 5–50 % of the image side, a skin tone, shading and a forearm or
sleeve — on a cluttered textured background, among look-alikes that are not hands (faces, bare
arms, skin-coloured blobs, finger-like shapes in other colours), with partial occlusion, lighting
changes, blur, sensor noise and JPEG artefacts. Hands may be cut by the image border or hidden
behind objects; a hand whose visible part falls under `MIN_VISIBLE` of its area is left unlabelled,
as an annotator would.

The box of a hand covers palm, fingers and thumb (not the forearm), clipped to the image — the
Oxford Hand convention. Everything is drawn from one `numpy.random.Generator` per image, seeded by
`(seed, split, index)`, so the same seed writes byte-identical files in any order.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yoloprune.data.spec import format_label_lines, write_dataset_spec
from yoloprune.data.transforms import xyxy_px_to_cxcywh_norm
from yoloprune.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

MIN_VISIBLE = 0.3  # share of a hand's pixels that must stay visible for it to be labelled
MIN_BOX_PX = 3
MIN_HAND_SCALE = 0.05  # smallest hand box side, as a share of the image side  # labelled boxes are at least this many pixels on each side
SPLIT_CODES = {"train": 0, "val": 1}
SHIFT = 4  # fractional bits for OpenCV drawing: sub-pixel precision for small hands
SHIFT_SCALE = 1 << SHIFT

# Skin tones, BGR, from dark to pale; a tone is a random point on this polyline plus jitter.
SKIN_ANCHORS_BGR = np.array(
    [[40, 58, 92], [62, 90, 140], [95, 130, 185], [135, 165, 215], [170, 192, 235], [190, 208, 242]],
    dtype=np.float32,
)


@dataclass
class _Hand:
    mask: np.ndarray  # uint8 0..255, full hand (palm, fingers, thumb) in its local canvas
    left: int  # canvas position in the image
    top: int
    object_id: int
    area: int


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


def _color_tuple(bgr: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(bgr, 0, 255))


# ---------------------------------------------------------------- background


def _smooth_field(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [0, 1] of size×size: a few random values upsampled."""
    low = rng.random((cells, cells), dtype=np.float32)
    return cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def draw_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A textured, cluttered scene: colour blotches, large surfaces, fine texture, small objects."""
    first, second = sample_any_bgr(rng), sample_any_bgr(rng)
    # Colour blotches plus grain, composed at the grain's resolution and upsampled once.
    grain_cells = max(4, size // int(rng.choice([2, 4, 8])))
    field = _smooth_field(rng, grain_cells, int(rng.integers(2, 9)))[..., None]
    grain = rng.random((grain_cells, grain_cells, 1), dtype=np.float32) - 0.5
    small = first + (second - first) * field + grain * rng.uniform(10, 60)
    image = cv2.resize(small.clip(0, 255).astype(np.uint8), (size, size), interpolation=cv2.INTER_LINEAR)

    # Large surfaces: walls, tables, doors, clothing.
    for _ in range(int(rng.integers(0, 5))):
        color = _color_tuple(sample_any_bgr(rng))
        points = rng.uniform(-0.2, 1.2, (int(rng.integers(3, 7)), 2)) * size
        hull = cv2.convexHull(points.astype(np.int32))
        cv2.fillConvexPoly(image, hull, color, lineType=cv2.LINE_AA)
    if rng.random() < 0.3:  # stripes or tiles
        color = _color_tuple(sample_any_bgr(rng))
        step = int(rng.integers(6, 40))
        thickness = int(rng.integers(1, max(2, step // 2)))
        for offset in range(0, size, step):
            cv2.line(image, (offset, 0), (offset, size), color, thickness)
            if rng.random() < 0.5:
                cv2.line(image, (0, offset), (size, offset), color, thickness)
        # Tilt the pattern so that edges are not all axis-aligned.
        angle = rng.uniform(-40, 40)
        matrix = cv2.getRotationMatrix2D((size / 2, size / 2), angle, 1.0)
        image = cv2.warpAffine(image, matrix, (size, size), borderMode=cv2.BORDER_REFLECT)

    # Small clutter: lines, boxes, discs, scribbles; a few in skin-like colours.
    for _ in range(int(rng.integers(3, 16))):
        color = _color_tuple(sample_skin_bgr(rng) if rng.random() < 0.12 else sample_any_bgr(rng))
        kind = rng.integers(4)
        x, y = (int(v) for v in rng.integers(0, size, 2))
        extent = int(rng.uniform(0.02, 0.2) * size) + 1
        if kind == 0:
            end = (x + int(rng.integers(-3 * extent, 3 * extent)), y + int(rng.integers(-3 * extent, 3 * extent)))
            cv2.line(image, (x, y), end, color, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 1:
            cv2.rectangle(image, (x, y), (x + extent, y + int(extent * rng.uniform(0.3, 2))), color, -1)
        elif kind == 2:
            cv2.circle(image, (x, y), extent // 2 + 1, color, -1, cv2.LINE_AA)
        else:
            points = (np.array([x, y]) + rng.normal(0, extent, (int(rng.integers(3, 7)), 2))).astype(np.int32)
            cv2.polylines(image, [points], False, color, int(rng.integers(1, 3)), cv2.LINE_AA)
    return image


# ---------------------------------------------------------------- drawing into a local canvas


class _Canvas:
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


def _rotation(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]], dtype=np.float64)


def _superellipse(half_w: float, half_h: float, exponent: float, count: int = 20) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, count, endpoint=False)
    cos_t, sin_t = np.cos(t), np.sin(t)
    x = half_w * np.sign(cos_t) * np.abs(cos_t) ** (2 / exponent)
    y = half_h * np.sign(sin_t) * np.abs(sin_t) ** (2 / exponent)
    return np.stack([x, y], axis=1)


def draw_hand(rng: np.random.Generator, length_px: float) -> tuple[_Canvas, np.ndarray, np.ndarray, float]:
    """Draw one hand, about `length_px` from wrist to fingertips, in a local canvas.

    Returns the canvas, the wrist point and the forearm direction (unit vector) in canvas
    coordinates, and the palm width in pixels (for the forearm).
    """
    size = int(math.ceil(length_px * 1.5)) + 6
    canvas = _Canvas(size)
    center = np.array([size / 2, size / 2])
    # Canonical frame: palm centred at the origin, fingers towards -y, units of length_px.
    palm_w = rng.uniform(0.40, 0.52)
    palm_h = rng.uniform(0.42, 0.52)
    finger_w = palm_w * rng.uniform(0.2, 0.25)
    finger_len = rng.uniform(0.40, 0.52)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    angle = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.55, 1.0)  # a hand seen edge-on looks narrower
    transform = _rotation(angle) @ np.diag([squash * mirror, 1.0]) * length_px

    def to_canvas(points: np.ndarray) -> np.ndarray:
        return np.atleast_2d(points) @ transform.T + center

    extended_count = int(rng.choice(6, p=[0.12, 0.12, 0.14, 0.14, 0.16, 0.32]))
    extended = set(rng.choice(5, extended_count, replace=False).tolist())  # 0 = thumb, 1..4 index..pinky
    spread = rng.uniform(0.0, 1.2)

    # Fingers first, palm over their bases: the dark outlines then read as knuckles.
    finger_shade = int(rng.uniform(200, 245))
    outline = int(rng.uniform(110, 160))
    for finger in range(1, 5):
        base_x = (finger - 2.5) * palm_w * 0.26
        base = np.array([base_x, -palm_h * 0.38])
        direction = (finger - 2.5) * 0.2 * spread + rng.normal(0, 0.06)
        relative = (0.92, 1.0, 0.94, 0.76)[finger - 1] * finger_len
        if finger not in extended:
            relative *= rng.uniform(0.15, 0.35)  # curled: only the knuckle shows
        width = finger_w * (1.05 if finger < 4 else 0.9)
        point = base
        for phalanx, share in enumerate((0.45, 0.30, 0.25)):
            direction += rng.normal(0, 0.07) + (0.06 if finger in extended else 0.4) * phalanx
            step = np.array([math.sin(direction), -math.cos(direction)]) * relative * share
            following = point + step
            canvas.capsule(*to_canvas(np.stack([point, following])), width * length_px * (1 - 0.08 * phalanx),
                           finger_shade, outline)
            point = following

    palm = _superellipse(palm_w / 2, palm_h / 2, rng.uniform(2.5, 4.0))
    palm[:, 1] += rng.normal(0, 0.01, len(palm))
    canvas.polygon(to_canvas(palm), int(rng.uniform(215, 255)), outline if rng.random() < 0.5 else 0)

    # Thumb from the lower side of the palm: out and up when extended, across the palm when folded.
    thumb_base = np.array([-palm_w * 0.42, palm_h * rng.uniform(0.0, 0.25)])
    thumb_angle = -rng.uniform(0.5, 1.3) if 0 in extended else rng.uniform(0.3, 1.2)
    thumb_len = finger_len * (rng.uniform(0.65, 0.8) if 0 in extended else rng.uniform(0.35, 0.5))
    point = thumb_base
    for phalanx, share in enumerate((0.55, 0.45)):
        thumb_angle += rng.normal(0, 0.1) + (0.0 if 0 in extended else 0.5 * phalanx)
        step = np.array([math.sin(thumb_angle), -math.cos(thumb_angle)]) * thumb_len * share
        following = point + step
        canvas.capsule(*to_canvas(np.stack([point, following])), finger_w * 1.2 * length_px, finger_shade, outline)
        point = following

    wrist = to_canvas(np.array([0.0, palm_h * 0.45]))[0]
    forearm_direction = (transform @ np.array([rng.normal(0, 0.15), 1.0]))
    forearm_direction /= np.linalg.norm(forearm_direction) + 1e-9
    return canvas, wrist, forearm_direction, palm_w * squash * length_px


# ---------------------------------------------------------------- compositing


def _paste(
    image: np.ndarray,
    owner: np.ndarray,
    canvas: _Canvas,
    left: int,
    top: int,
    color_bgr: np.ndarray,
    object_id: int,
    rng: np.random.Generator,
    gloss: float = 0.0,
) -> None:
    """Alpha-blend a shaded, coloured canvas into the image and record which pixels it now owns."""
    height, width = image.shape[:2]
    covered = _box_of_mask(canvas.mask, threshold=0)
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


def _paste_capsule(
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
    canvas = _Canvas(size)
    offset = np.floor(low)
    canvas.capsule(start - offset, end - offset, width, int(rng.uniform(200, 240)), 0)
    _paste(image, owner, canvas, int(offset[0]), int(offset[1]), color_bgr, object_id, rng)


def _draw_forearm(image, owner, wrist_px, direction, palm_width_px, skin_bgr, object_id, rng) -> None:
    length = palm_width_px * rng.uniform(1.0, 4.0)
    width = palm_width_px * rng.uniform(0.65, 0.85)
    start = wrist_px - direction * width * 0.2
    if rng.random() < 0.55:  # a sleeve starts somewhere along the forearm
        bare = rng.uniform(0.1, 0.6) * length
        sleeve_color = sample_non_skin_bgr(rng) if rng.random() < 0.8 else sample_skin_bgr(rng) * 0.6
        _paste_capsule(image, owner, start + direction * bare, start + direction * length, width * 1.3,
                       sleeve_color, object_id, rng)
        length = bare + width * 0.3
    _paste_capsule(image, owner, start, start + direction * length, width, skin_bgr * rng.uniform(0.85, 1.05),
                   object_id, rng)


def _draw_face(image, owner, center, radius, object_id, rng) -> None:
    size = int(radius * 2.8) + 4
    canvas = _Canvas(size)
    middle = np.array([size / 2, size / 2])
    axes = np.array([radius * rng.uniform(0.75, 0.9), radius])
    face = _superellipse(axes[0], axes[1], 2.0, 28) @ _rotation(rng.normal(0, 0.2)).T + middle
    canvas.polygon(face, int(rng.uniform(215, 250)), 0)
    # Eyes, brows and mouth as darker shading inside the face.
    eye_y = middle[1] - radius * 0.15
    for side in (-1, 1):
        eye = (int(middle[0] + side * axes[0] * 0.4), int(eye_y))
        cv2.circle(canvas.shade, eye, max(1, int(radius * 0.09)), 50, -1, cv2.LINE_AA)
    mouth = (int(middle[0]), int(middle[1] + radius * 0.45))
    cv2.ellipse(canvas.shade, mouth, (max(1, int(axes[0] * 0.35)), max(1, int(radius * 0.08))), 0, 0, 360, 120, -1)
    _paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), sample_skin_bgr(rng),
           object_id, rng)
    # Hair over the top of the head.
    hair = _Canvas(size)
    hair_color = sample_any_bgr(rng) * rng.uniform(0.2, 0.6)
    cv2.ellipse(hair.mask, (int(middle[0]), int(middle[1] - radius * 0.35)), (int(axes[0] * 1.1), int(radius * 0.75)),
                0, 180, 360, 255, -1, cv2.LINE_AA)
    hair.shade[:] = 230
    _paste(image, owner, hair, int(center[0] - size / 2), int(center[1] - size / 2), hair_color, object_id, rng)


def _draw_blob(image, owner, center, radius, color_bgr, object_id, rng) -> None:
    size = int(radius * 2.4) + 4
    canvas = _Canvas(size)
    outline = _superellipse(radius * rng.uniform(0.4, 1.0), radius, rng.uniform(1.6, 3.5), 24)
    outline *= rng.uniform(0.85, 1.15, (len(outline), 1))
    canvas.polygon(outline @ _rotation(rng.uniform(0, math.pi)).T + size / 2, int(rng.uniform(205, 250)), 0)
    _paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), color_bgr, object_id, rng)


def _draw_spiky(image, owner, center, radius, color_bgr, object_id, rng) -> None:
    """A body with finger-like spikes: hand-shaped to the eye, but never skin-coloured (plants, tools)."""
    size = int(radius * 2.6) + 4
    canvas = _Canvas(size)
    middle = np.array([size / 2, size / 2])
    spikes = int(rng.integers(2, 7))
    start_angle = rng.uniform(0, 2 * math.pi)
    fan = rng.uniform(0.8, 2 * math.pi)
    for k in range(spikes):
        theta = start_angle + fan * k / spikes
        tip = middle + np.array([math.cos(theta), math.sin(theta)]) * radius * rng.uniform(0.7, 1.15)
        canvas.capsule(middle, tip, radius * rng.uniform(0.12, 0.22), 225, 140)
    canvas.polygon(_superellipse(radius * 0.4, radius * 0.45, 2.5) + middle, 240, 0)
    _paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), color_bgr, object_id, rng)


def _draw_foot(image, owner, center, radius, object_id, rng) -> None:
    """A bare foot: a skin-coloured sole with a row of toes — the hard negative closest to a hand."""
    size = int(radius * 2.6) + 4
    canvas = _Canvas(size)
    turn = _rotation(rng.uniform(0, 2 * math.pi))
    sole = _superellipse(radius * 0.38, radius, 2.2, 24)
    sole[:, 0] *= np.where(sole[:, 1] < 0, 1.15, 0.85)  # wider at the toes than at the heel
    canvas.polygon(sole @ turn.T + size / 2, int(rng.uniform(215, 250)), 140)
    for k in range(5):
        toe = np.array([(k - 2) * radius * 0.17, -radius * (0.95 - 0.04 * abs(k - 1))])
        canvas.capsule(*(np.stack([toe, toe]) @ turn.T + size / 2), radius * (0.2 if k == 0 else 0.14), 230, 140)
    _paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), sample_skin_bgr(rng),
           object_id, rng)


def _draw_distractor(image, owner, object_id, rng) -> None:
    size = image.shape[0]
    center = rng.uniform(-0.05, 1.05, 2) * size
    radius = size * math.exp(rng.uniform(math.log(0.03), math.log(0.25)))
    kind = rng.choice(6, p=[0.2, 0.2, 0.18, 0.18, 0.14, 0.1])
    if kind == 0:
        _draw_face(image, owner, center, radius, object_id, rng)
    elif kind == 1:  # a bare arm or leg crossing the scene
        direction = _rotation(rng.uniform(0, 2 * math.pi)) @ np.array([1.0, 0.0])
        length = radius * rng.uniform(2, 6)
        _paste_capsule(image, owner, center - direction * length / 2, center + direction * length / 2,
                       radius * rng.uniform(0.35, 0.6), sample_skin_bgr(rng), object_id, rng)
    elif kind == 2:
        _draw_blob(image, owner, center, radius, sample_skin_bgr(rng), object_id, rng)
    elif kind == 3:
        _draw_spiky(image, owner, center, radius, sample_non_skin_bgr(rng), object_id, rng)
    elif kind == 4:
        _draw_blob(image, owner, center, radius, sample_any_bgr(rng), object_id, rng)
    else:
        _draw_foot(image, owner, center, radius, object_id, rng)


def _draw_occluder(image, owner, hand_box_xyxy, object_id, rng) -> None:
    """Cover part of a hand with a held or passing object (cup, phone, bar, another object)."""
    x1, y1, x2, y2 = hand_box_xyxy
    box_w, box_h = x2 - x1, y2 - y1
    center = np.array([x1 + box_w * rng.uniform(-0.1, 1.1), y1 + box_h * rng.uniform(-0.1, 1.1)])
    color = sample_non_skin_bgr(rng)
    if rng.random() < 0.5:
        direction = _rotation(rng.uniform(0, 2 * math.pi)) @ np.array([1.0, 0.0])
        length = max(box_w, box_h) * rng.uniform(0.8, 2.0)
        _paste_capsule(image, owner, center - direction * length / 2, center + direction * length / 2,
                       min(box_w, box_h) * rng.uniform(0.15, 0.4), color, object_id, rng)
    else:
        _draw_blob(image, owner, center, max(box_w, box_h) * rng.uniform(0.2, 0.4), color, object_id, rng)


def _finish_image(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Camera effects: exposure, colour cast, blur, sensor noise (OpenCV saturating arithmetic)."""
    gain = rng.uniform(0.6, 1.3) * rng.uniform(0.88, 1.12, 3)
    offset = rng.uniform(-25, 25)
    exposure = np.concatenate([np.diag(gain), np.full((3, 1), offset)], axis=1)
    result = cv2.transform(image, exposure)
    if rng.random() < 0.35:
        result = cv2.GaussianBlur(result, (0, 0), rng.uniform(0.5, 1.6))
    elif rng.random() < 0.12:  # motion blur along a random direction
        length = int(rng.integers(3, 8))
        kernel = np.zeros((length, length), np.float32)
        cv2.line(kernel, (0, int(rng.integers(0, length))), (length - 1, int(rng.integers(0, length))), 1.0, 1)
        result = cv2.filter2D(result, -1, kernel / kernel.sum())
    noise_sigma = rng.uniform(0, 12)
    if noise_sigma > 1:
        # Mostly luminance noise (shared by the channels), as camera noise after demosaicing looks.
        noise = rng.standard_normal(result.shape[:2], dtype=np.float32) * noise_sigma
        result = cv2.add(result, cv2.merge([noise, noise, noise]), dtype=cv2.CV_8U)
    return result


def _box_of_mask(mask: np.ndarray, threshold: int = 127) -> tuple[int, int, int, int] | None:
    """Pixel box (x1, y1, x2, y2), exclusive end, of the mask's pixels above `threshold`."""
    covered = mask > threshold
    rows = np.flatnonzero(covered.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(covered.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def render_synthetic_image(
    rng: np.random.Generator, img_size: int = 256, max_hands: int = 6, min_hand_scale: float = MIN_HAND_SCALE
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 BGR, img_size²) and its hand boxes `boxes_xyxy_px` (n, 4) float32.

    Hand box sides are log-uniform between `min_hand_scale` and 50 % of the image side (less in
    crowded images); raising `min_hand_scale` gives an easier task (fewer tiny hands).
    """
    image = draw_background(rng, img_size)
    owner = np.zeros((img_size, img_size), np.int16)  # which object each pixel shows (0 = background)
    hand_count = int(rng.choice(np.arange(1, max_hands + 1), p=_hand_count_probabilities(max_hands)))
    distractor_count = int(rng.integers(1, 7))
    # Crowded images hold smaller hands, as crowded photos do.
    largest = max(min_hand_scale, 0.5 if hand_count <= 2 else 0.5 / math.sqrt(hand_count / 2))
    order = rng.permutation(hand_count + distractor_count)
    hands: list[_Hand] = []
    next_id = 1
    for slot in order:
        object_id, next_id = next_id, next_id + 1
        if slot >= hand_count:
            _draw_distractor(image, owner, object_id, rng)
            continue
        # Box side of the hand as a share of the image: log-uniform over min_hand_scale..largest.
        share = math.exp(rng.uniform(math.log(min_hand_scale), math.log(largest)))
        length_px = share * img_size / 0.95  # wrist-to-fingertip length; the box is a bit smaller
        canvas, wrist, direction, palm_width = draw_hand(rng, length_px)
        center = rng.uniform(0.02, 0.98, 2) * img_size
        left, top = int(center[0] - canvas.size / 2), int(center[1] - canvas.size / 2)
        skin = sample_skin_bgr(rng)
        _draw_forearm(image, owner, wrist + (left, top), direction, palm_width, skin, next_id, rng)
        next_id += 1
        _paste(image, owner, canvas, left, top, skin, object_id, rng, gloss=rng.uniform(0, 0.3))
        area = int((canvas.mask > 127).sum())
        if area:
            hands.append(_Hand(canvas.mask, left, top, object_id, area))

    for hand in hands:
        if rng.random() < 0.3:
            local_box = _box_of_mask(hand.mask)
            x1, y1, x2, y2 = local_box
            _draw_occluder(image, owner, (x1 + hand.left, y1 + hand.top, x2 + hand.left, y2 + hand.top), next_id, rng)
            next_id += 1

    boxes = []
    for hand in hands:
        visible = int((owner == hand.object_id).sum())
        if visible < MIN_VISIBLE * hand.area:
            continue
        x1, y1, x2, y2 = _box_of_mask(hand.mask)
        x1, x2 = np.clip([x1 + hand.left, x2 + hand.left], 0, img_size)
        y1, y2 = np.clip([y1 + hand.top, y2 + hand.top], 0, img_size)
        if x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX:
            boxes.append((x1, y1, x2, y2))
    return _finish_image(image, rng), np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _hand_count_probabilities(max_hands: int) -> np.ndarray:
    weights = np.array([0.32, 0.3, 0.16, 0.1, 0.06, 0.06][:max_hands] + [0.04] * max(0, max_hands - 6))
    return weights / weights.sum()


def generate_synthetic_dataset(
    out_dir: str | Path,
    n_train: int = 1000,
    n_val: int = 200,
    img_size: int = 256,
    seed: int = 0,
    class_name: str = "hand",
    jpeg_quality: tuple[int, int] = (60, 95),
    progress: bool = True,
    max_hands: int = 6,
    min_hand_scale: float = MIN_HAND_SCALE,
) -> Path:
    """Write a synthetic hand dataset to `out_dir` and return its `.data` path.

    Layout: `synth.data`, `synth.names`, `train.txt`, `valid.txt`, `images/{train,val}/NNNNNN.jpg`,
    `labels/{train,val}/NNNNNN.txt`. Image `i` of a split depends only on `(seed, split, i)`.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if img_size < 32:
        raise ValueError(f"img_size must be >= 32, got {img_size}")
    listed: dict[str, list[Path]] = {}
    for split, count in (("train", n_train), ("val", n_val)):
        image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        listed[split] = []
        for index in tqdm(range(count), desc=f"synth {split}", unit="img", disable=not progress, leave=False):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, boxes_xyxy = render_synthetic_image(rng, img_size, max_hands, min_hand_scale)
            quality = int(rng.integers(jpeg_quality[0], jpeg_quality[1] + 1))
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            image_path = image_dir / f"{index:06d}.jpg"
            atomic_write_bytes(image_path, encoded.tobytes())
            labels_xyxy_px = np.concatenate([np.zeros((len(boxes_xyxy), 1), np.float32), boxes_xyxy], axis=1)
            labels_cxcywh_norm = xyxy_px_to_cxcywh_norm(labels_xyxy_px, img_size, img_size)
            atomic_write_text(
                label_dir / f"{index:06d}.txt",
                format_label_lines(labels_cxcywh_norm[:, 0], labels_cxcywh_norm[:, 1:]),
            )
            listed[split].append(image_path)
    data_path = write_dataset_spec(out_dir, "synth", [class_name], listed["train"], listed["val"])
    log.info("wrote %d train + %d val images to %s", n_train, n_val, out_dir)
    return data_path
