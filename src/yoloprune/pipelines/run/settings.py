"""What `run` runs on and how (`RunSettings`); importable without torch."""

from __future__ import annotations

from dataclasses import dataclass, replace

from yoloprune.pipelines.run.profiles import PROFILE_HELP, PROFILES, Profile
from yoloprune.settings import check_img_size, is_whole, option, require

# finetune: the pruned model trained on, distilled from the baseline; scratch: the pruned cfg trained
# from random init with the baseline's recipe; both: the one of the two with the better validation score.
RECOVERIES = ("finetune", "scratch", "both")
RECOVER_HELP = (
    "how the pruned model recovers: finetune (distilled from the baseline), scratch (the baseline's recipe on the pruned cfg "
    "from random init), or both, delivering the one with the higher validation mAP@0.5:0.95 (ties within 0.002: mAP@0.5)"
)


@dataclass
class RunSettings:
    """The whole chain on one dataset and darknet cfg: baseline (or `weights`), sparsity training,
    pruning to the profile's mAP tolerance, recovery, bench, report; see `pipelines.run.pipeline`."""

    data: str = option(help="dataset .data file (train, valid and test lists)")
    cfg: str = option(help="darknet .cfg of the model to prune (its classes are set to the .data's when training from scratch)")
    out: str = option(help="output folder: one folder per stage, OUT/delivered/ (the model to use) and OUT/report.md")
    weights: str | None = option(
        None, help="trained weights (.weights or .pt) of --cfg: the baseline, which is then not trained; must predict the .data's classes",
    )
    profile: str = option("default", choices=tuple(PROFILES), help=PROFILE_HELP)
    img_size: int | None = option(None, help="input size of every stage, a multiple of 32", default_text="the profile's")
    baseline_epochs: int | None = option(None, help="epochs of the baseline training", default_text="the profile's")
    sparse_epochs: int | None = option(None, help="epochs of the sparsity training", default_text="the profile's")
    finetune_epochs: int | None = option(None, help="epochs of the finetuning", default_text="the profile's")
    sparsity: float | None = option(None, help="strength s of the γ penalty in the sparsity training", default_text="the profile's")
    max_map_drop: float | None = option(
        None, help="the pruning's tolerance: the most channels whose pruned (not yet recovered) model stays within this of the "
        "sparse model's validation mAP@0.5 (and mAP@0.5:0.95 where the profile bounds it)", default_text="the profile's",
    )
    recover: str = option("both", choices=RECOVERIES, help=RECOVER_HELP)
    controls: bool = option(
        False, help="also train the controls: the baseline trained on for the sparse + finetune epochs without the penalty, "
        "and (unless a recovery trains it) the pruned cfg from scratch",
    )
    device: str = option("cpu", help="cpu, cuda, cuda:N")
    workers: int = option(0, help="data loader worker processes")
    split: str = option("test", choices=("valid", "test"), help="the split every reported mAP reads (what chooses reads valid)")

    def __post_init__(self) -> None:
        require(self.profile in PROFILES, "profile", " or ".join(PROFILES), self.profile)
        require(self.recover in RECOVERIES, "recover", " or ".join(RECOVERIES), self.recover)
        require(self.split in ("valid", "test"), "split", "valid or test", self.split)
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
        check_img_size(self.img_size)
        for name in ("baseline_epochs", "sparse_epochs", "finetune_epochs"):
            value = getattr(self, name)
            require(value is None or (is_whole(value) and value >= 1), name, "a whole number >= 1", value)
        require(self.sparsity is None or self.sparsity >= 0, "sparsity", "a number >= 0", self.sparsity)
        require(self.max_map_drop is None or 0 <= self.max_map_drop < 1, "max_map_drop", "a number in [0, 1)", self.max_map_drop)

    def profile_overrides(self) -> dict:
        """The profile's settings this run replaces: those of `PROFILE_FIELDS` given here."""
        return {name: getattr(self, name) for name in PROFILE_FIELDS if getattr(self, name) is not None}

    def recipe(self) -> Profile:
        """The profile with this run's replacements; `max_map_drop` replaces the mAP@0.5:0.95
        tolerance too where the profile has one (one number for how much the pruning may cost)."""
        profile = PROFILES[self.profile]
        overrides = self.profile_overrides()
        if "max_map_drop" in overrides and profile.max_map5095_drop is not None:
            overrides["max_map5095_drop"] = overrides["max_map_drop"]
        return replace(profile, **overrides)


# Settings of a profile that `run` may replace for one run (the profile names a recipe, the data may
# need another input size or more epochs).
PROFILE_FIELDS = ("img_size", "baseline_epochs", "sparse_epochs", "finetune_epochs", "sparsity", "max_map_drop")
