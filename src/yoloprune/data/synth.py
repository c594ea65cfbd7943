"""A synthetic hand-detection dataset that ships with the tool (no download needed).

Each image holds 1–6 articulated hands — a palm with 0–5 extended fingers and a thumb, random pose,
rotation, mirror, foreshortening, 5–50 % of the image side, a skin tone, shading and a forearm or
sleeve — on a cluttered textured background, among look-alikes that are not hands (faces, bare
arms, skin-coloured blobs, finger-like shapes in other colours), with partial occlusion, lighting
changes, blur, sensor noise and JPEG artefacts. Hands may be cut by the image border or hidden
behind objects; a hand whose visible part falls under `Scene.min_visible` of its area is left unlabelled,
as an annotator would.

The box of a hand covers palm, fingers and thumb (not the forearm), clipped to the image — the
Oxford Hand convention. Everything is drawn from one `numpy.random.Generator` per image, seeded by
`(seed, split, index)`, so the same seed writes byte-identical files in any order.

This module composes the scene and writes the dataset; `synth_draw` holds the drawing primitives
and colours, `synth_objects` the hands, look-alikes and occluders.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from yoloprune.data.spec import format_label_lines, write_dataset_spec
from yoloprune.data.synth_draw import (  # noqa: F401  (sample_non_skin_bgr: importable from here as before)
    box_of_mask,
    color_tuple,
    paste,
    sample_any_bgr,
    sample_non_skin_bgr,
    sample_skin_bgr,
)
from yoloprune.data.synth_objects import draw_distractor, draw_forearm, draw_hand, draw_occluder
from yoloprune.data.transforms import xyxy_px_to_cxcywh_norm
from yoloprune.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

MIN_BOX_PX = 3  # labelled boxes are at least this many pixels on each side
# Part of each image's seed: every split draws from its own random streams, so adding a split
# (or changing its size) leaves the images of the others unchanged.
SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Scene:
    """What one image may hold; the defaults are the full task, each knob makes it easier one way.

    Changing a knob changes what is drawn, never the order of the random draws: images drawn with
    the defaults stay byte-identical whatever knobs exist.
    """

    max_hands: int = 6
    min_hand_scale: float = 0.05  # smallest hand box side, as a share of the image side
    max_distractors: int = 6  # most look-alike objects (faces, bare arms, skin blobs, finger shapes)
    occlusion: float = 0.3  # chance that an object is drawn across a hand
    min_visible: float = 0.3  # share of a hand's pixels that must stay visible for it to be labelled
    hands_inside: bool = False  # every hand whole inside the image (none cut by the border)


@dataclass
class _Hand:
    mask: np.ndarray  # uint8 0..255, full hand (palm, fingers, thumb) in its local canvas
    left: int  # canvas position in the image
    top: int
    object_id: int
    area: int


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
        color = color_tuple(sample_any_bgr(rng))
        points = rng.uniform(-0.2, 1.2, (int(rng.integers(3, 7)), 2)) * size
        hull = cv2.convexHull(points.astype(np.int32))
        cv2.fillConvexPoly(image, hull, color, lineType=cv2.LINE_AA)
    if rng.random() < 0.3:  # stripes or tiles
        color = color_tuple(sample_any_bgr(rng))
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
        color = color_tuple(sample_skin_bgr(rng) if rng.random() < 0.12 else sample_any_bgr(rng))
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


# ---------------------------------------------------------------- composing


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


def render_synthetic_image(
    rng: np.random.Generator, img_size: int = 256, scene: Scene = Scene(),
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic image (uint8 BGR, img_size²) and its hand boxes `boxes_xyxy_px` (n, 4) float32.

    Hand box sides are log-uniform between `scene.min_hand_scale` and 50 % of the image side (less in
    crowded images); raising `min_hand_scale` gives an easier task (fewer tiny hands), and so do
    fewer look-alikes, less occlusion and hands kept whole inside the image.
    """
    max_hands, min_hand_scale, max_distractors = scene.max_hands, scene.min_hand_scale, scene.max_distractors
    image = draw_background(rng, img_size)
    owner = np.zeros((img_size, img_size), np.int16)  # which object each pixel shows (0 = background)
    hand_count = int(rng.choice(np.arange(1, max_hands + 1), p=_hand_count_probabilities(max_hands)))
    distractor_count = int(rng.integers(1, max_distractors + 1)) if max_distractors else 0
    # Crowded images hold smaller hands, as crowded photos do.
    largest = max(min_hand_scale, 0.5 if hand_count <= 2 else 0.5 / math.sqrt(hand_count / 2))
    order = rng.permutation(hand_count + distractor_count)
    hands: list[_Hand] = []
    next_id = 1
    for slot in order:
        object_id, next_id = next_id, next_id + 1
        if slot >= hand_count:
            draw_distractor(image, owner, object_id, rng)
            continue
        # Box side of the hand as a share of the image: log-uniform over min_hand_scale..largest.
        share = math.exp(rng.uniform(math.log(min_hand_scale), math.log(largest)))
        length_px = share * img_size / 0.95  # wrist-to-fingertip length; the box is a bit smaller
        canvas, wrist, direction, palm_width = draw_hand(rng, length_px)
        place = rng.uniform(0.02, 0.98, 2)
        left, top = _hand_position(place, canvas.mask, img_size, scene.hands_inside)
        skin = sample_skin_bgr(rng)
        draw_forearm(image, owner, wrist + (left, top), direction, palm_width, skin, next_id, rng)
        next_id += 1
        paste(image, owner, canvas, left, top, skin, object_id, rng, gloss=rng.uniform(0, 0.3))
        area = int((canvas.mask > 127).sum())
        if area:
            hands.append(_Hand(canvas.mask, left, top, object_id, area))

    for hand in hands:
        if rng.random() < scene.occlusion:
            local_box = box_of_mask(hand.mask)
            x1, y1, x2, y2 = local_box
            draw_occluder(image, owner, (x1 + hand.left, y1 + hand.top, x2 + hand.left, y2 + hand.top), next_id, rng)
            next_id += 1

    boxes = []
    for hand in hands:
        visible = int((owner == hand.object_id).sum())
        if visible < scene.min_visible * hand.area:
            continue
        x1, y1, x2, y2 = box_of_mask(hand.mask)
        x1, x2 = np.clip([x1 + hand.left, x2 + hand.left], 0, img_size)
        y1, y2 = np.clip([y1 + hand.top, y2 + hand.top], 0, img_size)
        if x2 - x1 >= MIN_BOX_PX and y2 - y1 >= MIN_BOX_PX:
            boxes.append((x1, y1, x2, y2))
    return _finish_image(image, rng), np.array(boxes, dtype=np.float32).reshape(-1, 4)


def _hand_position(place: np.ndarray, mask: np.ndarray, img_size: int, inside: bool) -> tuple[int, int]:
    """Canvas position (left, top) for a hand whose canvas centre falls at `place` (shares of the
    image side, in 0.02..0.98); with `inside`, `place` spans the positions that keep the hand's box
    whole in the image instead."""
    box = box_of_mask(mask) if inside else None
    if box is None:
        center = place * img_size
        return int(center[0] - mask.shape[1] / 2), int(center[1] - mask.shape[0] / 2)
    x1, y1, x2, y2 = box
    t = (place - 0.02) / 0.96
    return int(-x1 + t[0] * (img_size - (x2 - x1))), int(-y1 + t[1] * (img_size - (y2 - y1)))


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
    n_test: int = 0,
    scene: Scene = Scene(),
) -> Path:
    """Write a synthetic hand dataset to `out_dir` and return its `.data` path.

    Layout: `synth.data`, `synth.names`, `train.txt`, `valid.txt`, `images/{train,val}/NNNNNN.jpg`,
    `labels/{train,val}/NNNNNN.txt`. Image `i` of a split depends only on `(seed, split, i)`.
    With `n_test` > 0 also `test.txt`, `images/test/`, `labels/test/` and a `test` line in the
    `.data`; with 0 nothing of a test split is written, so datasets without one reproduce byte for byte.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    if img_size < 32:
        raise ValueError(f"img_size must be >= 32, got {img_size}")
    listed: dict[str, list[Path]] = {}
    splits = [("train", n_train), ("val", n_val)] + ([("test", n_test)] if n_test > 0 else [])
    for split, count in splits:
        image_dir, label_dir = out_dir / "images" / split, out_dir / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
        listed[split] = []
        for index in tqdm(range(count), desc=f"synth {split}", unit="img", disable=not progress, leave=False):
            rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
            image, boxes_xyxy = render_synthetic_image(rng, img_size, scene)
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
    data_path = write_dataset_spec(out_dir, "synth", [class_name], listed["train"], listed["val"], listed.get("test"))
    log.info("wrote %s images to %s", " + ".join(f"{count} {split}" for split, count in splits), out_dir)
    return data_path
