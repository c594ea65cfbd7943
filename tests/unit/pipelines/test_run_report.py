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


def test_the_verdict_weighs_both_metrics():
    from yoloprune.pipelines.run.report import verdict

    assert verdict((0.01, 0.05), (0.002, 0.03), "scratch", "baseline") == "scratch better"
    assert verdict((-0.05, -0.01), (-0.03, -0.001), "scratch", "baseline") == "baseline better"
    assert verdict((-0.08, 0.007), (-0.07, 0.01), "scratch", "baseline") == "no measurable change"
    # one metric holds 0, the other does not: each named, never a plain "no measurable change"
    assert verdict((-0.08, 0.007), (-0.07, -0.0003), "scratch", "baseline") == (
        "mAP@0.5: no measurable change; mAP@0.5:0.95: baseline better"
    )
    assert verdict((0.01, 0.07), (-0.02, -0.001), "finetuned", "baseline") == (
        "mAP@0.5: finetuned better; mAP@0.5:0.95: baseline better"
    )
    assert verdict(None, None, "a", "b") == "no interval"


def test_run_settings_replace_only_the_profile_fields_given():
    from yoloprune.errors import SettingsError
    from yoloprune.pipelines.run.profiles import PROFILES
    from yoloprune.pipelines.run.settings import RunSettings

    settings = RunSettings(data="d.data", cfg="c.cfg", out="o", img_size=192, sparse_epochs=30, sparsity=0.008, max_map_drop=0.02)
    profile = settings.recipe()
    default = PROFILES["default"]
    assert (profile.img_size, profile.sparse_epochs, profile.sparsity, profile.max_map_drop) == (192, 30, 0.008, 0.02)
    assert default.max_map5095_drop is not None and profile.max_map5095_drop == 0.02
    assert (profile.baseline_epochs, profile.finetune_epochs, profile.lr) == (default.baseline_epochs, default.finetune_epochs, default.lr)
    assert RunSettings(data="d.data", cfg="c.cfg", out="o").profile_overrides() == {}
    with pytest.raises(SettingsError):
        RunSettings(data="d.data", cfg="c.cfg", out="o", baseline_epochs=0)
    with pytest.raises(SettingsError):
        RunSettings(data="d.data", cfg="c.cfg", out="o", max_map_drop=-0.01)


def test_the_report_names_the_settings_a_run_changed_from_its_profile():
    from yoloprune.pipelines.run.profiles import PROFILES
    from yoloprune.pipelines.run.report import profile_text
    from yoloprune.pipelines.run.settings import RunSettings

    assert profile_text(PROFILES["default"]) == "profile `default`"
    text = profile_text(RunSettings(data="d.data", cfg="c.cfg", out="o", baseline_epochs=80, max_map_drop=0.02).recipe())
    assert text.startswith("profile `default` with ")
    assert {"baseline_epochs 80", "max_map_drop 0.02", "max_map5095_drop 0.02"} == set(text.removeprefix("profile `default` with ").split(", "))
