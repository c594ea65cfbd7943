"""The settings of a training run: one dataclass that the CLI fills from flags and the demo builds directly.

`TrainSettings` checks its values when built (`validate`, raising `SettingsError` naming the field)
and round-trips through plain data (`to_dict`/`from_dict`) for the checkpoint's meta, where it is
stored under the key "train_config" so that checkpoints written before the rename still resume.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from yoloprune.errors import SettingsError
from yoloprune.settings import check_img_size, is_whole, option, require

OPTIMIZERS = ("sgd", "adam")
SPARSITY_LAYER_SETS = ("all", "safe")  # named sets of BN layers under the penalty (see train.sparsity)
# The penalty on the BN γ (train.regularisers): L1 (network slimming) or polarization (Zhuang et al. 2020).
SPARSITY_KINDS = ("l1", "polarization")
# How the penalty is shared among the layers: the same s everywhere, or s scaled by what a channel of
# the layer costs in MACs (`darknet.cost.channel_macs`, normalised by `train.sparsity.normalised_weights`).
SPARSITY_WEIGHTINGS = ("none", "macs")
SMALL_GAMMA = 0.01  # |γ| below this counts as "pruned away": the logged fraction, the default --sparsity-target-threshold
# --sparsity-target doubles s when the sparse share stalls, up to this multiple of the starting s unless
# --sparsity-max says otherwise: one doubling, because s climbing several doublings cost the sparse
# model its accuracy on the demo's data (docs/recipes.md).
SPARSITY_MAX_FACTOR = 2
# Settings that may differ when a run is resumed: how long it runs, where and how it reports. Any
# other change (the penalty, the learning rates, the data, the model) would make the resumed run a
# different experiment than the one its checkpoint and metrics.csv describe.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "device", "workers", "eval_every", "progress", "tensorboard", "max_steps", "skip_bad", "conf_thres", "iou_thres"}
)


@dataclass
class TrainSettings:
    """Everything a training run needs; the CLI fills it from flags, the demo builds it directly."""

    data: str | Path | None = option(None, help="dataset .data file")
    cfg: str | Path | None = option(None, aliases=("--model_def",), help="darknet .cfg (optional when --weights is a .pt)")
    weights: str | Path | None = option(None, aliases=("-pre",), help="initial weights: .pt (carries its cfg) or darknet .weights")
    out: str | Path = option("runs/train", help="output folder")
    epochs: int = option(30, help="epochs")
    batch_size: int = option(16, flag="--batch", help="batch size per process")
    img_size: int | None = option(None, help="square input size, a multiple of 32", default_text="the cfg's width")
    lr: float = option(0.01, help="peak learning rate; warmup then cosine")
    optimizer: str = option(
        "sgd", choices=OPTIMIZERS,
        help="sgd (Nesterov momentum) or adam (AdamW: converges in fewer steps on short CPU runs; try --lr 0.001)",
    )
    lr_final_ratio: float = 0.05  # cosine ends at lr · this
    momentum: float = 0.937
    weight_decay: float = option(5e-4, help="weight decay on conv weights (never on BN γ/β or biases)")
    warmup_epochs: float = option(1.0, help="linear LR warmup length in epochs")
    sparsity: float = option(0.0, help="strength s of the BN-γ penalty: with l1, adds s·sign(γ) to γ.grad each step")
    sparsity_kind: str = option(
        "l1", choices=SPARSITY_KINDS,
        help="the penalty on γ: l1 pushes every γ towards 0; polarization (t·|γ| - |γ - mean γ|, γ kept in "
        "[0, --polarization-bound]) pushes γ to two groups, at 0 and at the bound (docs/sparsity.md)",
    )
    polarization_t: float = option(
        1.0, metavar="T", help="polarization's t: a larger t sends more γ to 0 (the penalty alone leaves a share 1/2 + t/4 at 0, for t up to 2)",
    )
    polarization_bound: float = option(1.0, metavar="A", help="polarization keeps each penalised γ in [0, A] (the paper's a)")
    sparsity_layers: str | list[int] = option(
        "all", choices=SPARSITY_LAYER_SETS, help="BN layers under the penalty: all BN convs or the seed's safe prunable set",
    )
    sparsity_weighting: str = option(
        "none", choices=SPARSITY_WEIGHTINGS,
        help="none: the same s on every penalised γ; macs: s times a weight proportional to the MACs one "
        "channel of the layer costs (its filter and its slice of the convs reading it), mean 1 over the penalised channels",
    )
    sparsity_target: float | None = option(
        None, metavar="F",
        help="train until the share of the penalised channels' MACs with |γ| below --sparsity-target-threshold reaches F "
        "(at most --epochs epochs), doubling s up to --sparsity-max whenever that share stalls",
    )
    sparsity_target_threshold: float = option(SMALL_GAMMA, metavar="T", help="|γ| below this counts as prunable for --sparsity-target")
    sparsity_max: float | None = option(
        None, metavar="S", help="the largest s --sparsity-target may raise s to", default_text=f"{SPARSITY_MAX_FACTOR} x --sparsity",
    )
    sparsity_decay: float | None = option(None, metavar="F", help="after fraction F of the epochs, multiply s by --sparsity-decay-factor")
    sparsity_decay_factor: float = option(0.01, help="factor applied by --sparsity-decay")
    # With Adam a parameter moves at most about lr per step, so at lr 1e-3 a γ of 1 needs ~1000 steps
    # to reach 0; 10 lets the penalty empty the unimportant channels within a few epochs. SGD needs no boost.
    gamma_lr_scale: float = option(1.0, help="learning-rate multiplier for the penalised BN γ during sparsity training (~10 with --optimizer adam)")
    device: str = option("cpu", help="cpu, cuda, cuda:N")
    resume: bool = option(False, help="continue from OUT/last.pt; flags not given take the saved run's values")
    workers: int = option(0, help="data loader worker processes")
    eval_every: int = option(1, help="evaluate on the valid split every K epochs and at the end (0 = never)")
    ema: bool = option(False, help="keep an exponential moving average of the weights; it is evaluated and saved")
    ema_decay: float = option(
        0.9999, help="the average's decay per step: it spans about 1 / (1 - decay) steps (0.99 for runs of tens of epochs)",
    )
    seed: int = option(0, help="random seed")
    skip_bad: bool = option(False, help="log and skip unreadable images/labels instead of stopping")
    augment: bool = option(True, flag="--no-augment", help="train without augmentation")
    augment_options: dict = field(default_factory=dict)  # AugmentConfig fields for the train loader (--mosaic)
    grad_clip: float = option(10.0, help="max gradient norm, 0 = off")
    neighbour_cells: bool = option(
        False, help="also train the neighbouring cells whose stretched centre (scale_x_y > 1) reaches the box centre "
        "(YOLOv5-style; yolov4-csp / yolov7 heads, scale_x_y = 2)",
    )
    amp: bool = option(True, flag="--no-amp", help="disable mixed precision on CUDA")
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    loss_weights: dict = field(default_factory=dict)  # LossWeights fields: box, obj, cls
    loss_options: dict = field(default_factory=dict)  # YoloLoss keywords: ignore_thresh, anchor_iou_thresh, ...
    teacher_cfg: str | Path | None = option(None, help="cfg of the teacher (optional when --teacher-weights is a .pt)")
    teacher_weights: str | Path | None = option(
        None, help="distil from this model (.pt or .weights): finetune a pruned model with the unpruned one as teacher",
    )
    distill_weight: float = option(1.0, help="weight of the distillation term")
    tensorboard: bool = option(True, flag="--no-tensorboard", help="do not write OUT/tb")
    progress: bool = option(True, flag="--no-progress", help="no progress bars")
    max_steps: int | None = option(None, help="stop after this many optimizer steps in this invocation (smoke tests)")

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting whose value cannot work."""

        def check(ok: bool, name: str, expected: str) -> None:
            require(ok, name, expected, getattr(self, name))

        for name in ("epochs", "batch_size"):
            check(is_whole(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1")
        check_img_size(self.img_size)
        check(self.lr > 0, "lr", "> 0")
        check(self.gamma_lr_scale > 0, "gamma_lr_scale", "> 0")
        check(0 <= self.lr_final_ratio <= 1, "lr_final_ratio", "in [0, 1]")
        check(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        for name in ("weight_decay", "warmup_epochs", "sparsity", "sparsity_decay_factor", "grad_clip", "distill_weight"):
            check(getattr(self, name) >= 0, name, ">= 0")
        check(self.sparsity_decay is None or 0 <= self.sparsity_decay <= 1, "sparsity_decay", "a fraction of the epochs in [0, 1]")
        check(0 < self.ema_decay < 1, "ema_decay", "in (0, 1)")
        check(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(repr(name) for name in OPTIMIZERS))
        for name in ("workers", "eval_every"):
            check(is_whole(getattr(self, name)) and getattr(self, name) >= 0, name, "a whole number >= 0")
        check(self.max_steps is None or (is_whole(self.max_steps) and self.max_steps >= 1), "max_steps", "a whole number >= 1")
        check(self.sparsity_weighting in SPARSITY_WEIGHTINGS, "sparsity_weighting", " or ".join(repr(name) for name in SPARSITY_WEIGHTINGS))
        check(self.sparsity_kind in SPARSITY_KINDS, "sparsity_kind", " or ".join(repr(name) for name in SPARSITY_KINDS))
        check(self.polarization_t > 0, "polarization_t", "> 0")
        check(self.polarization_bound > 0, "polarization_bound", "> 0")
        check(not isinstance(self.sparsity_layers, str) or self.sparsity_layers in SPARSITY_LAYER_SETS, "sparsity_layers", f"one of {SPARSITY_LAYER_SETS} or a list of layers")
        self._validate_sparsity_target()

    def _validate_sparsity_target(self) -> None:
        target = self.sparsity_target
        require(target is None or 0 < target < 1, "sparsity_target", "a fraction in (0, 1)", target)
        require(self.sparsity_target_threshold > 0, "sparsity_target_threshold", "> 0", self.sparsity_target_threshold)
        require(self.sparsity_max is None or target is not None, "sparsity_max", "given with `sparsity_target`", self.sparsity_max)
        if target is None:
            return
        if not self.sparsity > 0:
            raise SettingsError("sparsity_target", "needs the penalty on: give `sparsity` > 0 (the s it starts from)")
        # The decay lowers s on a schedule while the target raises it on progress: they would fight.
        require(self.sparsity_decay is None, "sparsity_decay", "left out with `sparsity_target`", self.sparsity_decay)
        require(self.sparsity_ceiling >= self.sparsity, "sparsity_max", f">= `sparsity` ({self.sparsity:g})", self.sparsity_max)

    @property
    def sparsity_ceiling(self) -> float:
        """The largest s `sparsity_target` may raise s to: `sparsity_max`, by default 2 x `sparsity`."""
        return self.sparsity_max if self.sparsity_max is not None else SPARSITY_MAX_FACTOR * self.sparsity

    def to_dict(self) -> dict:
        """Plain data for the checkpoint's meta (paths as strings)."""
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainSettings":
        """Settings from plain data; keys that are no field (dropped since the data was saved) are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

