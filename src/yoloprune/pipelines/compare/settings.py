"""What `compare` compares and how: `CompareSettings`, importable without torch."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from yoloprune.eval.settings import SPLITS
from yoloprune.settings import check_img_size, is_whole, option, require, resolve_device


class Fractions(tuple):
    """MACs budgets as a tuple of floats that prints as the flag is typed (`0.5,0.35`), so that
    `settings.to_arguments` writes a command that parses back to the same budgets."""

    def __str__(self) -> str:
        return ",".join(f"{value:g}" for value in self)


def parse_fractions(text: str) -> Fractions:
    """`--targets 0.5,0.35,0.2`: comma-separated fractions of the unpruned model's MACs."""
    try:
        return Fractions(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions such as 0.5,0.35, got {text!r}") from None


@dataclass
class CompareSettings:
    """Every pruner at every MACs budget, with and without BN re-calibration; see `compare.run`."""

    weights: str = option(help="sparse-trained yoloprune .pt (or darknet .weights with --cfg)", aliases=("--weights_path",))
    data: str = option(help=".data file: --split scores every model, its train list re-calibrates BN")
    out: str = option(help="write OUT.md (table), OUT.json (rows) and OUT.png (mAP@0.5 vs MACs)")
    cfg: str | None = option(None, help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    targets: tuple = option(
        Fractions((0.5, 0.35, 0.2)), parse=parse_fractions, metavar="F,F,...",
        help="MACs budgets, fractions of the unpruned model's MACs, comma-separated",
    )
    tolerance: float = option(
        0.01, help="one rule for every pruner: a row is accepted iff |MACs fraction / target - 1| <= this, else reported as missed",
    )
    split: str | None = option(None, choices=SPLITS, help="image list the mAP is measured on", default_text="test when the .data has one, else valid")
    img_size: int | None = option(None, help="input size for MACs, re-calibration, evaluation and latency", default_text="the cfg's width")
    round_to: int = option(8, flag="--round", help="channel rounding multiple, given to both tools (each rounds its own way; the report says how)")
    layers: int = option(15, help="residual blocks removed in the 'yoloprune full + blocks' rows (0: no such rows)")
    calibrate: int = option(256, help="training images every model is BN re-calibrated on (the same images for all)")
    tp_steps: int = option(12, help="tries per bisection of Torch-Pruning's channel ratio (when the first misses, a grid and bisections between its points follow)")
    runs: int = option(20, help="timed batch-1 runs per model for the latency column (0: no latency)")
    threads: int | None = option(
        None, help="torch CPU threads for all of it (1 is often fastest on a busy machine)", default_text="torch's",
    )
    batch: int = option(16, help="images per batch for evaluation and re-calibration")
    workers: int = option(0, help="data loader worker processes")
    device: str = option("cpu", help="cpu, cuda, cuda:N: where models are pruned, scored and timed")

    def __post_init__(self) -> None:
        self.targets = Fractions(self.targets)
        require(len(self.targets) > 0 and all(0 < t <= 1 for t in self.targets), "targets", "fractions in (0, 1]", str(self.targets))
        require(0 <= self.tolerance < 1, "tolerance", "in [0, 1)", self.tolerance)
        require(self.threads is None or (is_whole(self.threads) and self.threads >= 1), "threads", "a whole number >= 1", self.threads)
        check_img_size(self.img_size)
        for name in ("round_to", "calibrate", "tp_steps", "batch"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1", getattr(self, name))
        for name in ("layers", "runs", "workers"):
            require(is_whole(getattr(self, name)) and getattr(self, name) >= 0, name, "a whole number >= 0", getattr(self, name))
        resolve_device(self.device)
