"""The demo's sizes (`DemoProfile`, one per `--quick` / default / `--full`) and the `demo` command's
settings; importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.settings import is_whole, option, require


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run. `default` is sized for about 20 minutes on a 2-core laptop CPU."""

    name: str
    train_images: int
    val_images: int  # what chooses (best.pt, the pruning search) reads these
    test_images: int  # what is reported reads these
    img_size: int
    width_multiple: float  # YOLOv3 topology at this width (1.0 = the Oxford Hand reference cfg)
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
    min_hand_scale: float = 0.05  # synthetic data: smallest hand box side (share of the image)
    max_hands: int = 6
    optimizer: str = "sgd"  # for all three trainings
    gamma_lr_scale: float = 1.0  # sparsity training: learning-rate multiplier of the penalised γ
    finetune_lr_ratio: float = 0.2  # finetune lr = lr · this
    layers: int | str = 0  # residual blocks the pruning removes, or "auto" (chosen by the mAP search)


PROFILES = {
    "quick": DemoProfile(
        name="quick", train_images=64, val_images=24, test_images=24, img_size=128, width_multiple=0.0625, batch=16,
        baseline_epochs=3, sparse_epochs=2, finetune_epochs=1, lr=0.001, sparsity=0.005, sparsity_decay=None,
        max_map_drop=0.01, round_to=1, auto_steps=3, distill_weight=1.0, bench_runs=5,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto",
    ),
    # Width x0.25 at 160 px (configs/yolov3-hand-demo.cfg): as fast to train as x0.125 at 192 px and as
    # accurate, but wide enough that latency follows MACs once pruned (x0.125's early 4- and 8-channel
    # layers cannot shrink and are overhead-bound). AdamW: on a 10-minute CPU budget it reaches about
    # 1.6x the mAP@0.5 of SGD; with it the penalised γ need a 10x learning rate to reach 0 in 16 epochs.
    "default": DemoProfile(
        name="default", train_images=1000, val_images=200, test_images=1000, img_size=160, width_multiple=0.25, batch=16,
        baseline_epochs=20, sparse_epochs=16, finetune_epochs=5, lr=0.001, sparsity=0.004, sparsity_decay=None,
        max_map_drop=0.01, round_to=8, auto_steps=7, distill_weight=1.0, bench_runs=30, eval_every=4,
        min_hand_scale=0.1, max_hands=4, optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto",
    ),
    # The seed-scale run, for a machine with a GPU: the 61.5 M-parameter yolov3-hand.cfg at 416 px.
    "full": DemoProfile(
        name="full", train_images=4000, val_images=800, test_images=800, img_size=416, width_multiple=1.0, batch=16,
        baseline_epochs=100, sparse_epochs=100, finetune_epochs=30, lr=0.01, sparsity=0.001, sparsity_decay=0.7,
        max_map_drop=0.01, round_to=16, auto_steps=8, distill_weight=1.0, bench_runs=30,
    ),
}


@dataclass
class DemoSettings:
    """Where the demo writes, which profile it runs, on what."""

    out: str = option("runs/demo", help="output folder")
    profile: str = option(
        "default", choices=tuple(PROFILES),
        help="quick: tiny data and few epochs (smoke run); default: about 20 min on a 2-core CPU; "
        "full: seed-scale, yolov3-hand.cfg at 416 px (GPU)",
    )
    device: str = option("cpu", help="cpu, cuda, cuda:N")
    workers: int = option(0, help="data loader worker processes")

    def __post_init__(self) -> None:
        require(self.profile in PROFILES, "profile", " or ".join(PROFILES), self.profile)
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
