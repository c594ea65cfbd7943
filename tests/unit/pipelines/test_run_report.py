"""The run report's plateau rule on hand-written validation curves."""

from __future__ import annotations

import pytest

from yoloprune.pipelines.run.report import PLATEAU_GAIN, plateau_gain


def _rows(values_by_epoch: dict[int, float], epochs: int) -> list[dict]:
    return [{"epoch": e, "map50": values_by_epoch.get(e)} for e in range(1, epochs + 1)]


def test_gain_is_the_mean_of_the_last_two_minus_the_two_ending_at_three_quarters():
    curve = {2: 0.1, 4: 0.3, 6: 0.50, 8: 0.52, 10: 0.55, 12: 0.61}  # 12 epochs: ¾ is epoch 9
    gain, quarter_epoch, last_epoch = plateau_gain(_rows(curve, 12), 12)
    assert (quarter_epoch, last_epoch) == (8, 12)
    assert gain == pytest.approx((0.55 + 0.61) / 2 - (0.50 + 0.52) / 2)
    assert gain >= PLATEAU_GAIN  # still rising


def test_a_flat_noisy_end_is_a_plateau_and_too_few_evaluations_give_none():
    curve = {4: 0.5, 8: 0.70, 12: 0.66, 16: 0.71, 20: 0.65}
    gain, _, _ = plateau_gain(_rows(curve, 20), 20)
    assert gain == pytest.approx((0.71 + 0.65) / 2 - (0.70 + 0.66) / 2) and gain < PLATEAU_GAIN
    assert plateau_gain(_rows({20: 0.7}, 20), 20) is None
    assert plateau_gain(_rows({4: 0.1, 8: 0.2, 12: 0.3, 20: 0.4}, 20), 20) is None  # one evaluation after ¾
