"""Seeded train / valid / test split by fractions, for sources that publish no split.

With a group pattern, images whose file names give the same group (the pattern's first
parenthesised group, e.g. one recording session) land in the same split: frames of one video on
both sides of a split would make the test score a score on training data.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from yoloprune.data.importers.options import DEFAULT_FRACTIONS
from yoloprune.errors import DataError

SPLITS = ("train", "valid", "test")


def group_keys(image_paths: list[Path], group: str | None) -> list[str]:
    """The group of each image: `group`'s first group matched in its file name, else the name itself."""
    if group is None:
        return [path.name for path in image_paths]
    pattern = re.compile(group)
    keys = []
    for path in image_paths:
        match = pattern.search(path.name)
        if match is None or match.group(1) is None:
            raise DataError(f"file name does not match --group {group!r} (every image needs a group)", path)
        keys.append(match.group(1))
    return keys


def split_by_fractions(
    image_paths: list[Path], fractions: tuple[float, ...] = DEFAULT_FRACTIONS, seed: int = 0, group: str | None = None
) -> list[str]:
    """The split ("train", "valid" or "test") of each image.

    The groups are shuffled with `seed` (from their sorted order, so the result does not depend on
    the order the images come in) and dealt out in that order: a group goes to the split whose share
    of the cumulative image count its middle falls in.
    """
    keys = group_keys(image_paths, group)
    members: dict[str, list[int]] = {}
    for index, key in enumerate(keys):
        members.setdefault(key, []).append(index)
    order = sorted(members)
    shuffled = [order[i] for i in np.random.default_rng(seed).permutation(len(order))]
    bounds = np.cumsum(fractions) / np.sum(fractions) * len(image_paths)
    assigned = [""] * len(image_paths)
    placed = 0
    for key in shuffled:
        size = len(members[key])
        middle = placed + size / 2
        split = SPLITS[min(int(np.searchsorted(bounds, middle, side="right")), len(fractions) - 1)]
        for index in members[key]:
            assigned[index] = split
        placed += size
    return assigned
