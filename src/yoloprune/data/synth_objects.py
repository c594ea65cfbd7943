"""The objects of a synthetic scene: articulated hands with their forearms, the look-alikes that are
not hands (faces, bare arms and feet, blobs, finger-like shapes) and the objects that occlude hands.

Every random choice comes from the `numpy.random.Generator` passed in, in a fixed order, so that
the same seed draws the same image: reordering two draws changes every image after them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from yoloprune.data.synth_draw import (
    Canvas,
    paste,
    paste_capsule,
    rotation,
    sample_any_bgr,
    sample_non_skin_bgr,
    sample_skin_bgr,
    superellipse,
)

# ---------------------------------------------------------------- hands


@dataclass
class _HandPose:
    """One hand's shape in its canonical frame: palm centred at the origin, fingers towards -y, in
    units of the wrist-to-fingertip length; `transform` maps that frame onto the canvas."""

    palm_w: float
    palm_h: float
    finger_w: float
    finger_len: float
    squash: float  # a hand seen edge-on looks narrower
    transform: np.ndarray  # rotation, mirror, foreshortening and scale to pixels
    center: np.ndarray  # of the canvas
    extended: set[int]  # 0 = thumb, 1..4 index..pinky
    spread: float
    finger_shade: int
    outline: int

    def to_canvas(self, points: np.ndarray) -> np.ndarray:
        return np.atleast_2d(points) @ self.transform.T + self.center


def _sample_hand_pose(rng: np.random.Generator, length_px: float, center: np.ndarray) -> _HandPose:
    palm_w = rng.uniform(0.40, 0.52)
    palm_h = rng.uniform(0.42, 0.52)
    finger_w = palm_w * rng.uniform(0.2, 0.25)
    finger_len = rng.uniform(0.40, 0.52)
    mirror = 1.0 if rng.random() < 0.5 else -1.0
    angle = rng.uniform(0, 2 * math.pi)
    squash = rng.uniform(0.55, 1.0)
    transform = rotation(angle) @ np.diag([squash * mirror, 1.0]) * length_px
    extended_count = int(rng.choice(6, p=[0.12, 0.12, 0.14, 0.14, 0.16, 0.32]))
    extended = set(rng.choice(5, extended_count, replace=False).tolist())
    spread = rng.uniform(0.0, 1.2)
    finger_shade = int(rng.uniform(200, 245))
    outline = int(rng.uniform(110, 160))
    return _HandPose(palm_w, palm_h, finger_w, finger_len, squash, transform, center, extended, spread, finger_shade, outline)


def _draw_fingers(canvas: Canvas, pose: _HandPose, length_px: float, rng: np.random.Generator) -> None:
    """Index to pinky, three phalanges each; a curled finger shows only its knuckle."""
    for finger in range(1, 5):
        base_x = (finger - 2.5) * pose.palm_w * 0.26
        base = np.array([base_x, -pose.palm_h * 0.38])
        direction = (finger - 2.5) * 0.2 * pose.spread + rng.normal(0, 0.06)
        relative = (0.92, 1.0, 0.94, 0.76)[finger - 1] * pose.finger_len
        if finger not in pose.extended:
            relative *= rng.uniform(0.15, 0.35)
        width = pose.finger_w * (1.05 if finger < 4 else 0.9)
        point = base
        for phalanx, share in enumerate((0.45, 0.30, 0.25)):
            direction += rng.normal(0, 0.07) + (0.06 if finger in pose.extended else 0.4) * phalanx
            step = np.array([math.sin(direction), -math.cos(direction)]) * relative * share
            following = point + step
            canvas.capsule(*pose.to_canvas(np.stack([point, following])), width * length_px * (1 - 0.08 * phalanx),
                           pose.finger_shade, pose.outline)
            point = following


def _draw_thumb(canvas: Canvas, pose: _HandPose, length_px: float, rng: np.random.Generator) -> None:
    """From the lower side of the palm: out and up when extended, across the palm when folded."""
    extended = 0 in pose.extended
    thumb_base = np.array([-pose.palm_w * 0.42, pose.palm_h * rng.uniform(0.0, 0.25)])
    thumb_angle = -rng.uniform(0.5, 1.3) if extended else rng.uniform(0.3, 1.2)
    thumb_len = pose.finger_len * (rng.uniform(0.65, 0.8) if extended else rng.uniform(0.35, 0.5))
    point = thumb_base
    for phalanx, share in enumerate((0.55, 0.45)):
        thumb_angle += rng.normal(0, 0.1) + (0.0 if extended else 0.5 * phalanx)
        step = np.array([math.sin(thumb_angle), -math.cos(thumb_angle)]) * thumb_len * share
        following = point + step
        canvas.capsule(*pose.to_canvas(np.stack([point, following])), pose.finger_w * 1.2 * length_px, pose.finger_shade, pose.outline)
        point = following


def draw_hand(rng: np.random.Generator, length_px: float) -> tuple[Canvas, np.ndarray, np.ndarray, float]:
    """Draw one hand, about `length_px` from wrist to fingertips, in a local canvas.

    Returns the canvas, the wrist point and the forearm direction (unit vector) in canvas
    coordinates, and the palm width in pixels (for the forearm).
    """
    size = int(math.ceil(length_px * 1.5)) + 6
    canvas = Canvas(size)
    pose = _sample_hand_pose(rng, length_px, np.array([size / 2, size / 2]))
    # Fingers first, palm over their bases: the dark outlines then read as knuckles.
    _draw_fingers(canvas, pose, length_px, rng)
    palm = superellipse(pose.palm_w / 2, pose.palm_h / 2, rng.uniform(2.5, 4.0))
    palm[:, 1] += rng.normal(0, 0.01, len(palm))
    canvas.polygon(pose.to_canvas(palm), int(rng.uniform(215, 255)), pose.outline if rng.random() < 0.5 else 0)
    _draw_thumb(canvas, pose, length_px, rng)

    wrist = pose.to_canvas(np.array([0.0, pose.palm_h * 0.45]))[0]
    forearm_direction = (pose.transform @ np.array([rng.normal(0, 0.15), 1.0]))
    forearm_direction /= np.linalg.norm(forearm_direction) + 1e-9
    return canvas, wrist, forearm_direction, pose.palm_w * pose.squash * length_px


# ---------------------------------------------------------------- forearms, look-alikes, occluders


def draw_forearm(image, owner, wrist_px, direction, palm_width_px, skin_bgr, object_id, rng) -> None:
    length = palm_width_px * rng.uniform(1.0, 4.0)
    width = palm_width_px * rng.uniform(0.65, 0.85)
    start = wrist_px - direction * width * 0.2
    if rng.random() < 0.55:  # a sleeve starts somewhere along the forearm
        bare = rng.uniform(0.1, 0.6) * length
        sleeve_color = sample_non_skin_bgr(rng) if rng.random() < 0.8 else sample_skin_bgr(rng) * 0.6
        paste_capsule(image, owner, start + direction * bare, start + direction * length, width * 1.3,
                      sleeve_color, object_id, rng)
        length = bare + width * 0.3
    paste_capsule(image, owner, start, start + direction * length, width, skin_bgr * rng.uniform(0.85, 1.05),
                  object_id, rng)


def _draw_face(image, owner, center, radius, object_id, rng) -> None:
    size = int(radius * 2.8) + 4
    canvas = Canvas(size)
    middle = np.array([size / 2, size / 2])
    axes = np.array([radius * rng.uniform(0.75, 0.9), radius])
    face = superellipse(axes[0], axes[1], 2.0, 28) @ rotation(rng.normal(0, 0.2)).T + middle
    canvas.polygon(face, int(rng.uniform(215, 250)), 0)
    # Eyes, brows and mouth as darker shading inside the face.
    eye_y = middle[1] - radius * 0.15
    for side in (-1, 1):
        eye = (int(middle[0] + side * axes[0] * 0.4), int(eye_y))
        cv2.circle(canvas.shade, eye, max(1, int(radius * 0.09)), 50, -1, cv2.LINE_AA)
    mouth = (int(middle[0]), int(middle[1] + radius * 0.45))
    cv2.ellipse(canvas.shade, mouth, (max(1, int(axes[0] * 0.35)), max(1, int(radius * 0.08))), 0, 0, 360, 120, -1)
    paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), sample_skin_bgr(rng),
          object_id, rng)
    # Hair over the top of the head.
    hair = Canvas(size)
    hair_color = sample_any_bgr(rng) * rng.uniform(0.2, 0.6)
    cv2.ellipse(hair.mask, (int(middle[0]), int(middle[1] - radius * 0.35)), (int(axes[0] * 1.1), int(radius * 0.75)),
                0, 180, 360, 255, -1, cv2.LINE_AA)
    hair.shade[:] = 230
    paste(image, owner, hair, int(center[0] - size / 2), int(center[1] - size / 2), hair_color, object_id, rng)


def _draw_blob(image, owner, center, radius, color_bgr, object_id, rng) -> None:
    size = int(radius * 2.4) + 4
    canvas = Canvas(size)
    outline = superellipse(radius * rng.uniform(0.4, 1.0), radius, rng.uniform(1.6, 3.5), 24)
    outline *= rng.uniform(0.85, 1.15, (len(outline), 1))
    canvas.polygon(outline @ rotation(rng.uniform(0, math.pi)).T + size / 2, int(rng.uniform(205, 250)), 0)
    paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), color_bgr, object_id, rng)


def _draw_spiky(image, owner, center, radius, color_bgr, object_id, rng) -> None:
    """A body with finger-like spikes: hand-shaped to the eye, but never skin-coloured (plants, tools)."""
    size = int(radius * 2.6) + 4
    canvas = Canvas(size)
    middle = np.array([size / 2, size / 2])
    spikes = int(rng.integers(2, 7))
    start_angle = rng.uniform(0, 2 * math.pi)
    fan = rng.uniform(0.8, 2 * math.pi)
    for k in range(spikes):
        theta = start_angle + fan * k / spikes
        tip = middle + np.array([math.cos(theta), math.sin(theta)]) * radius * rng.uniform(0.7, 1.15)
        canvas.capsule(middle, tip, radius * rng.uniform(0.12, 0.22), 225, 140)
    canvas.polygon(superellipse(radius * 0.4, radius * 0.45, 2.5) + middle, 240, 0)
    paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), color_bgr, object_id, rng)


def _draw_foot(image, owner, center, radius, object_id, rng) -> None:
    """A bare foot: a skin-coloured sole with a row of toes — the hard negative closest to a hand."""
    size = int(radius * 2.6) + 4
    canvas = Canvas(size)
    turn = rotation(rng.uniform(0, 2 * math.pi))
    sole = superellipse(radius * 0.38, radius, 2.2, 24)
    sole[:, 0] *= np.where(sole[:, 1] < 0, 1.15, 0.85)  # wider at the toes than at the heel
    canvas.polygon(sole @ turn.T + size / 2, int(rng.uniform(215, 250)), 140)
    for k in range(5):
        toe = np.array([(k - 2) * radius * 0.17, -radius * (0.95 - 0.04 * abs(k - 1))])
        canvas.capsule(*(np.stack([toe, toe]) @ turn.T + size / 2), radius * (0.2 if k == 0 else 0.14), 230, 140)
    paste(image, owner, canvas, int(center[0] - size / 2), int(center[1] - size / 2), sample_skin_bgr(rng),
          object_id, rng)


def draw_distractor(image, owner, object_id, rng) -> None:
    size = image.shape[0]
    center = rng.uniform(-0.05, 1.05, 2) * size
    radius = size * math.exp(rng.uniform(math.log(0.03), math.log(0.25)))
    kind = rng.choice(6, p=[0.2, 0.2, 0.18, 0.18, 0.14, 0.1])
    if kind == 0:
        _draw_face(image, owner, center, radius, object_id, rng)
    elif kind == 1:  # a bare arm or leg crossing the scene
        direction = rotation(rng.uniform(0, 2 * math.pi)) @ np.array([1.0, 0.0])
        length = radius * rng.uniform(2, 6)
        paste_capsule(image, owner, center - direction * length / 2, center + direction * length / 2,
                      radius * rng.uniform(0.35, 0.6), sample_skin_bgr(rng), object_id, rng)
    elif kind == 2:
        _draw_blob(image, owner, center, radius, sample_skin_bgr(rng), object_id, rng)
    elif kind == 3:
        _draw_spiky(image, owner, center, radius, sample_non_skin_bgr(rng), object_id, rng)
    elif kind == 4:
        _draw_blob(image, owner, center, radius, sample_any_bgr(rng), object_id, rng)
    else:
        _draw_foot(image, owner, center, radius, object_id, rng)


def draw_occluder(image, owner, hand_box_xyxy, object_id, rng) -> None:
    """Cover part of a hand with a held or passing object (cup, phone, bar, another object)."""
    x1, y1, x2, y2 = hand_box_xyxy
    box_w, box_h = x2 - x1, y2 - y1
    center = np.array([x1 + box_w * rng.uniform(-0.1, 1.1), y1 + box_h * rng.uniform(-0.1, 1.1)])
    color = sample_non_skin_bgr(rng)
    if rng.random() < 0.5:
        direction = rotation(rng.uniform(0, 2 * math.pi)) @ np.array([1.0, 0.0])
        length = max(box_w, box_h) * rng.uniform(0.8, 2.0)
        paste_capsule(image, owner, center - direction * length / 2, center + direction * length / 2,
                      min(box_w, box_h) * rng.uniform(0.15, 0.4), color, object_id, rng)
    else:
        _draw_blob(image, owner, center, max(box_w, box_h) * rng.uniform(0.2, 0.4), color, object_id, rng)

