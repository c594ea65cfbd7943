"""Pytest configuration and fixtures only; shared test helpers live in helpers.py (`from helpers import ...`).

Every test starts from the same random state (torch, numpy, python), so a failure reproduces and no
test depends on which tests ran before it on the same xdist worker. Hypothesis runs derandomized
(profile "ci", the default): the same examples on every run; `HYPOTHESIS_PROFILE=explore` searches anew.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings as hypothesis_settings

from helpers import FIXTURES

hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
hypothesis_settings.register_profile("explore", derandomize=False)
hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

TEST_SEED = 0
INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items) -> None:
    """Tests under tests/integration/ run several stages or commands end to end: mark them, so that
    `make test-fast` (`-m "not integration and not slow"`) runs the unit tests alone."""
    for item in items:
        if INTEGRATION in Path(item.fspath).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def fixtures_dir() -> Path:
    """The checked-in test fixtures directory."""
    return FIXTURES


@pytest.fixture(autouse=True)
def seeded_random_state():
    """The same torch, numpy and python random state at the start of every test."""
    random.seed(TEST_SEED)
    np.random.seed(TEST_SEED)
    torch.manual_seed(TEST_SEED)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """A synthetic dataset of 8 train and 4 valid images at 64 px (two steps per epoch at batch 4)."""
    from yoloprune.data.synth import generate_synthetic_dataset

    return generate_synthetic_dataset(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=4, img_size=64, progress=False)
