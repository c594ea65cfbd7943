"""The named recipes of `run` and `demo` (`--profile`): epochs, input size, batch, learning rate,
sparsity, pruning tolerance, ... (`Profile`); importable without torch. The synthetic data each
profile's demo generates, and the demo model's width, are the demo's (`pipelines.demo`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """The recipe of one run: how every stage trains, prunes and measures."""

    name: str
    img_size: int
    batch: int
    baseline_epochs: int
    sparse_epochs: int
    finetune_epochs: int
    lr: float
    sparsity: float
    sparsity_decay: float | None  # fraction of the sparse epochs after which s drops 100x
    max_map_drop: float  # the auto pruning's mAP@0.5 tolerance (no finetune)
    round_to: int  # kept channel counts rounded up to a multiple of this (vector width of CPU conv kernels)
    auto_steps: int
    distill_weight: float
    bench_runs: int
    eval_every: int = 1
    optimizer: str = "sgd"  # for all three trainings
    gamma_lr_scale: float = 1.0  # sparsity training: learning-rate multiplier of the penalised γ
    finetune_lr_ratio: float = 0.2  # finetune lr = lr · this
    layers: int | str = 0  # residual blocks the pruning removes, or "auto" (chosen by the mAP search)
    max_map5095_drop: float | None = None  # the auto pruning's mAP@0.5:0.95 tolerance too (None: mAP@0.5 alone)
    # The auto pruning's one-sided confidence that a trial keeps its tolerances (paired bootstrap over
    # the validation images); 0.5 judges each trial by its point estimate.
    map_drop_confidence: float = 0.5
    # The trainings from random init (baseline, scratch) evaluate and save an exponential moving average
    # of the weights with this decay (None: the weights as trained). The trainings that start from the
    # baseline keep their recipe, so sparse, finetuned and baseline-equal-epochs compare like for like.
    ema_decay: float | None = None
    # The cfg's anchors refitted to the training boxes (`data anchors`) before a baseline is trained
    # from scratch (docs/demo-profiles.md: what fitting gained on the demo's data).
    fit_anchors: bool = True

    @property
    def total_epochs(self) -> int:
        """Baseline + sparse + finetune epochs: what the scratch model trains for."""
        return self.baseline_epochs + self.sparse_epochs + self.finetune_epochs


PROFILES = {
    "quick": Profile(
        name="quick", img_size=128, batch=16, baseline_epochs=3, sparse_epochs=2, finetune_epochs=1, lr=0.001, sparsity=0.005,
        sparsity_decay=None, max_map_drop=0.01, round_to=1, auto_steps=3, distill_weight=1.0, bench_runs=5,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto", ema_decay=0.99,
    ),
    # A task the demo's detector learns to convergence within the CPU budget, its baseline's weights
    # averaged so that the report's plateau rule measures the training, not the noise of single
    # evaluations; the measurements behind each number are in docs/demo-profiles.md.
    "default": Profile(
        name="default", img_size=96, batch=16, baseline_epochs=48, sparse_epochs=40, finetune_epochs=4, lr=0.001, sparsity=0.004,
        sparsity_decay=None, max_map_drop=0.01, round_to=8, auto_steps=7, distill_weight=1.0, bench_runs=30, eval_every=2,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto", max_map5095_drop=0.01, ema_decay=0.995,
    ),
    # An earlier default at 128 px, 40 epochs without weight averaging; on its demo data the baseline
    # stays under test mAP@0.5 0.5 within the budget.
    "lookalikes": Profile(
        name="lookalikes", img_size=128, batch=16, baseline_epochs=40, sparse_epochs=10, finetune_epochs=4, lr=0.001, sparsity=0.004,
        sparsity_decay=None, max_map_drop=0.01, round_to=8, auto_steps=7, distill_weight=1.0, bench_runs=30, eval_every=4,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto", max_map5095_drop=0.01,
    ),
    # The earlier default for the harder synthetic task at 160 px, kept for comparison; about 29
    # minutes on its demo data without its controls.
    "hard": Profile(
        name="hard", img_size=160, batch=16, baseline_epochs=20, sparse_epochs=16, finetune_epochs=5, lr=0.001, sparsity=0.004,
        sparsity_decay=None, max_map_drop=0.01, round_to=8, auto_steps=7, distill_weight=1.0, bench_runs=30, eval_every=4,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto", max_map5095_drop=0.01,
    ),
    # The seed-scale recipe, for a machine with a GPU (the demo runs it on the 61.5 M-parameter
    # yolov3-hand.cfg at 416 px).
    "full": Profile(
        name="full", img_size=416, batch=16, baseline_epochs=100, sparse_epochs=100, finetune_epochs=30, lr=0.01, sparsity=0.001,
        sparsity_decay=0.7, max_map_drop=0.01, round_to=16, auto_steps=8, distill_weight=1.0, bench_runs=30,
    ),
}

PROFILE_HELP = (
    "quick: tiny data and few epochs (smoke run); default: about 30 min for the demo on a 2-core CPU; "
    "lookalikes: an earlier default at 128 px; hard: an earlier default at 160 px (about an hour); "
    "full: seed-scale, 416 px, 100 + 100 + 30 epochs (GPU)"
)
