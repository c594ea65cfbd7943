"""How to slim a model in rounds (`SlimSettings`): the `slim` command's defaults and checks,
importable without torch. The runner is `pipelines.slim.run_slimming`."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.errors import SettingsError
from yoloprune.prune.settings import POINT_ESTIMATE, PRUNE_MODES, parse_layers
from yoloprune.settings import check_img_size, is_whole, option, require, resolve_device
from yoloprune.train.settings import OPTIMIZERS


@dataclass
class SlimSettings:
    """Iterative slimming: `rounds` times prune a slice, re-calibrate BN, finetune distilled from the
    original model, and check the validation mAP; see `pipelines.slim.run_slimming`."""

    data: str | None = option(None, help="dataset .data file: calibration and finetuning read its training images, the checks its validation images")
    rounds: int = option(2, help="prune-and-finetune rounds")
    target_flops: float | None = option(
        None,
        help="keep this fraction of the original MACs after the last round; round r keeps F^(r/K) of them "
        "(each round's budget is set from the model it starts with, so the rounds' shortfalls do not add up)",
    )
    max_map_drop: float | None = option(
        None,
        help="a round passes when its finetuned valid mAP@0.5 stays within this of the original model's; the first "
        "round that fails stops the loop. Without --target-flops, each round also prunes as far as this "
        "tolerance allows against the model it starts with (the prune --max-map-drop search)",
    )
    max_map5095_drop: float | None = option(
        None,
        help="with --max-map-drop: a round passes only if its finetuned valid mAP@0.5:0.95 also stays within this "
        "of the original model's (and each mAP search holds it too)",
    )
    map_drop_confidence: float = option(
        POINT_ESTIMATE,
        help="with --max-map-drop and no --target-flops: each round's mAP search accepts a trial only when the one-sided "
        "lower confidence bound, at this confidence, of its valid mAP minus the round's starting model's (paired bootstrap) "
        "stays within each tolerance, as in prune; 0.5: the point estimate (the rounds' own checks read point estimates)",
    )
    epochs_per_round: int = option(2, help="finetuning epochs after each round's pruning")
    lr: float = option(0.01, help="peak finetuning learning rate (cosine schedule)")
    optimizer: str = option("sgd", choices=OPTIMIZERS, help="finetuning optimizer: sgd or adam (AdamW; try --lr 0.0005)")
    # A round starts from trained weights: a warmup from zero would spend the round's few epochs
    # re-learning what the weights already hold (the demo finetunes with none).
    warmup_epochs: float = option(0.0, help="linear learning-rate warmup of each finetuning, in epochs")
    distill_weight: float = option(1.0, help="weight of the distillation term (the teacher is the original model, --weights)")
    # Finetuning without the penalty lets the small γ grow back, so the next round's cut falls on a
    # dense model again and costs far more than the first; the penalty keeps γ sparse between cuts.
    sparsity: float = option(
        0.0, help="BN-γ L1 weight s in the finetuning of every round but the last, so that the next round cuts a sparse model again (0 = off)",
    )
    gamma_lr_scale: float = option(1.0, help="learning-rate multiplier for the penalised BN γ in those finetunings (~10 with --optimizer adam)")
    mode: str = option("full", choices=PRUNE_MODES, help="which convs are candidates, as in prune --mode")
    layers: int | str = option(
        0, parse=parse_layers,
        help="residual blocks to remove in round 1 (lowest mean |γ|); 'auto' (only with --max-map-drop and no "
        "--target-flops): every round's search chooses how many",
    )
    round_to: int = option(1, flag="--round", help="round kept channel counts up to a multiple of this (e.g. 8)")
    calibrate: int | None = option(None, help="training images each round's BN re-calibration uses (0 = off)", default_text="256")
    auto_steps: int = option(7, help="evaluations of each round's --max-map-drop bisection (without --target-flops)")
    img_size: int | None = option(None, help="input size for MAC counts, calibration, finetuning and evaluation", default_text="the cfg's width")
    batch: int = option(16, help="images per batch for finetuning, calibration and evaluation")
    workers: int = option(0, help="data loader worker processes")
    device: str = option("cpu", help="cpu, cuda, cuda:N")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting whose value cannot work."""
        if not self.data:
            raise SettingsError("data", "must be given: each round re-calibrates and finetunes on its training images and is checked on its validation images")
        require(is_whole(self.rounds) and self.rounds >= 1, "rounds", "a whole number >= 1", self.rounds)
        if self.target_flops is None and self.max_map_drop is None:
            raise SettingsError("target_flops", "say how far to slim: `target_flops`, `max_map_drop`, or both")
        require(self.target_flops is None or 0 < self.target_flops <= 1, "target_flops", "in (0, 1]", self.target_flops)
        require(self.max_map_drop is None or self.max_map_drop >= 0, "max_map_drop", ">= 0", self.max_map_drop)
        require(self.max_map5095_drop is None or self.max_map_drop is not None, "max_map5095_drop", "given with `max_map_drop`", self.max_map5095_drop)
        require(self.max_map5095_drop is None or self.max_map5095_drop >= 0, "max_map5095_drop", ">= 0", self.max_map5095_drop)
        require(POINT_ESTIMATE <= self.map_drop_confidence < 1, "map_drop_confidence", "in [0.5, 1)", self.map_drop_confidence)
        require(
            self.map_drop_confidence == POINT_ESTIMATE or (self.max_map_drop is not None and self.target_flops is None),
            "map_drop_confidence", "given with `max_map_drop` and without `target_flops` (it is the mAP search's)", self.map_drop_confidence,
        )
        require(is_whole(self.epochs_per_round) and self.epochs_per_round >= 1, "epochs_per_round", "a whole number >= 1", self.epochs_per_round)
        require(self.lr > 0, "lr", "> 0", self.lr)
        require(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        for name in ("warmup_epochs", "distill_weight", "sparsity"):
            require(getattr(self, name) >= 0, name, ">= 0", getattr(self, name))
        require(self.gamma_lr_scale > 0, "gamma_lr_scale", "> 0", self.gamma_lr_scale)
        require(self.mode in PRUNE_MODES, "mode", " or ".join(PRUNE_MODES), self.mode)
        require(self.layers == "auto" or (is_whole(self.layers) and self.layers >= 0), "layers", "a block count >= 0 or 'auto'", self.layers)
        if self.layers == "auto" and (self.max_map_drop is None or self.target_flops is not None):
            # with a MACs target each round's amount is fixed by the budget; only the mAP search chooses blocks
            raise SettingsError("layers", "'auto' needs `max_map_drop` without `target_flops`; give a block count")
        for name in ("round_to", "batch", "auto_steps"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1", getattr(self, name))
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
        require(self.calibrate is None or (is_whole(self.calibrate) and self.calibrate >= 0), "calibrate", "a whole number >= 0", self.calibrate)
        check_img_size(self.img_size)
        resolve_device(self.device)

    def round_target(self, round_index: int) -> float | None:
        """The fraction of the original MACs round `round_index` (1-based) ends at: F^(r/K)."""
        if self.target_flops is None:
            return None
        return self.target_flops ** (round_index / self.rounds)
