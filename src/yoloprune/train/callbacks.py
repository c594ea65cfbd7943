"""What watches a training run: the callback hooks, the TensorBoard logger and the epoch's progress bar.

The trainer calls each callback's hooks that exist (`on_step_end`, `on_epoch_end`, `on_train_end`);
its own `TensorBoardLogger` is one of them, so a caller's callbacks see the same hooks it uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

import torch

from yoloprune.train.metrics import EpochMeter
from yoloprune.train.sparsity import collect_gammas

if TYPE_CHECKING:
    from yoloprune.train.trainer import Trainer

EVAL_METRICS = ("map50", "map", "precision", "recall")


class TrainCallback(Protocol):
    """Optional hooks; a callback may raise `TrainingStopped` (from `on_step_end`, `on_epoch_end`) to end the run."""

    def on_step_end(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None: ...

    def on_train_end(self, trainer: "Trainer") -> None:
        """Called once the run ends, however it ends (finished, stopped or failed)."""


class TensorBoardLogger:
    """Each epoch's row as TensorBoard scalars (losses, lr, mAP, γ quantiles), plus γ histograms."""

    def __init__(self, log_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run hides the events the interrupted run wrote at steps >= first_epoch.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_epoch)

    def on_epoch_end(self, trainer: Trainer, row: dict) -> None:
        step = row["epoch"]
        for key, value in row.items():
            if key in ("epoch", "gamma_first_layer") or value is None or isinstance(value, list):
                continue
            self.writer.add_scalar(f"{_scalar_group(key)}/{key}", value, step)
        gammas = collect_gammas(trainer.bare_model, trainer.sparsity_layers)
        if gammas.numel():
            self.writer.add_histogram("gamma/abs_all_considered", gammas, step)
        if row.get("gamma_first") is not None:
            self.writer.add_histogram("gamma/first_layer", torch.tensor(row["gamma_first"]), step)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        self.writer.close()


def _scalar_group(key: str) -> str:
    if key.startswith("loss"):
        return "loss"
    if key.startswith("gamma"):
        return "gamma"
    return "metrics" if key in EVAL_METRICS else "train"


class ProgressBar:
    """The epoch's tqdm bar over the train loader, showing the running per-image losses, lr and img/s."""

    def __init__(self, loader: Iterable, description: str, enabled: bool):
        from tqdm import tqdm

        self.enabled = enabled
        self.bar = tqdm(loader, desc=description, disable=not enabled, leave=False, dynamic_ncols=True)

    def __iter__(self) -> Iterator:
        return iter(self.bar)

    def show(self, meter: EpochMeter, part_names: Iterable[str], lr: float) -> None:
        if not self.enabled:
            return
        images_per_s = meter.images / max(meter.elapsed(), 1e-9)
        self.bar.set_postfix({name: f"{meter.mean(name):.3f}" for name in part_names} | {"lr": f"{lr:.2e}", "img/s": f"{images_per_s:.1f}"})

    def close(self) -> None:
        self.bar.close()
