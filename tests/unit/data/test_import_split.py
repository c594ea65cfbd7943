"""The split by fractions of the importers: shares as asked, reproducible, independent of input order."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from yoloprune.data.importers.split import split_by_fractions
from yoloprune.errors import DataError


def test_shares_seed_and_input_order():
    paths = [Path(f"img_{i:03d}.jpg") for i in range(100)]
    split = dict(zip(paths, split_by_fractions(paths, (0.7, 0.15, 0.15), seed=5)))
    assert Counter(split.values()) == {"train": 70, "valid": 15, "test": 15}
    shuffled = [paths[i] for i in np.random.default_rng(1).permutation(len(paths))]
    assert dict(zip(shuffled, split_by_fractions(shuffled, (0.7, 0.15, 0.15), seed=5))) == split
    assert dict(zip(paths, split_by_fractions(paths, (0.7, 0.15, 0.15), seed=6))) != split
    assert set(split_by_fractions(paths, (0.8, 0.2), seed=5)) == {"train", "valid"}


def test_groups_stay_together_and_every_name_needs_one():
    paths = [Path(f"session{k}_frame{i}.jpg") for k in range(10) for i in range(k + 1)]  # groups of 1..10 frames
    assigned = split_by_fractions(paths, (0.6, 0.2, 0.2), seed=0, group=r"^(session\d+)_")
    by_session: dict[str, set[str]] = {}
    for path, split in zip(paths, assigned):
        by_session.setdefault(path.name.split("_")[0], set()).add(split)
    assert all(len(splits) == 1 for splits in by_session.values())
    with pytest.raises(DataError, match="does not match --group"):
        split_by_fractions([*paths, Path("stray.jpg")], (0.6, 0.2, 0.2), group=r"^(session\d+)_")
