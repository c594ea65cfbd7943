"""What watches a training run: the callback hooks, the TensorBoard logger and the epoch's progress bar.

The trainer calls each callback's hooks that exist (`on_epoch_start`, `on_step_end`, `on_epoch_end`,
`on_train_end`) with itself as the first argument; its own `TensorBoardLogger` and `ProgressBar` are
callbacks too (added first, on the main process), so a caller's callbacks see the same hooks they use.
A hook reads the run from the trainer: `trainer.state` (`state.TrainState`: epoch, step, model,
optimizer, regulariser, history), `trainer.meter` (the running epoch's loss sums), `trainer.settings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from tqdm import tqdm

from yoloprune.train.sparsity import collect_gammas

EVAL_METRICS = ("map50", "map", "precision", "recall")


class TrainCallback(Protocol):
    """Optional hooks; a callback may raise `TrainingStopped` (from `on_step_end`, `on_epoch_end`) to end the run."""

    def on_epoch_start(self, trainer: Any) -> None: ...

    def on_step_end(self, trainer: Any) -> None: ...

    def on_epoch_end(self, trainer: Any, row: dict) -> None: ...

    def on_train_end(self, trainer: Any) -> None:
        """Called once the run ends, however it ends (finished, stopped or failed)."""


class TensorBoardLogger:
    """Each epoch's row as TensorBoard scalars (losses, lr, mAP, γ quantiles), plus γ histograms."""

    def __init__(self, log_dir: Path, first_epoch: int):
        from torch.utils.tensorboard import SummaryWriter  # optional: only runs that log import it

        # purge_step: a resumed run hides the events the interrupted run wrote at steps >= first_epoch.
        self.writer = SummaryWriter(str(log_dir), purge_step=first_epoch)

    def on_epoch_end(self, trainer: Any, row: dict) -> None:
        step = row["epoch"]
        for key, value in row.items():
            if key in ("epoch", "gamma_first_layer") or value is None or isinstance(value, list):
                continue
            self.writer.add_scalar(f"{_scalar_group(key)}/{key}", value, step)
        gammas = collect_gammas(trainer.state.model, trainer.state.regulariser.penalised)
        if gammas.numel():
            self.writer.add_histogram("gamma/abs_all_considered", gammas, step)
        if row.get("gamma_first") is not None:
            self.writer.add_histogram("gamma/first_layer", torch.tensor(row["gamma_first"]), step)
        self.writer.flush()

    def on_train_end(self, trainer: Any) -> None:
        self.writer.close()


def _scalar_group(key: str) -> str:
    if key.startswith("loss"):
        return "loss"
    if key.startswith("gamma"):
        return "gamma"
    return "metrics" if key in EVAL_METRICS else "train"


class ProgressBar:
    """The epoch's tqdm bar over its steps, showing the running per-image losses, lr and img/s."""

    def __init__(self) -> None:
        self.bar = None

    def on_epoch_start(self, trainer: Any) -> None:
        description = f"epoch {trainer.state.epoch + 1}/{trainer.settings.epochs}"
        self.bar = tqdm(total=len(trainer.train_loader), desc=description, leave=False, dynamic_ncols=True)

    def on_step_end(self, trainer: Any) -> None:
        meter = trainer.meter
        images_per_s = meter.images / max(meter.elapsed(), 1e-9)
        losses = {name: f"{meter.mean(name):.3f}" for name in meter.sums if name != "loss"}
        lr = trainer.state.optimizer.param_groups[0]["lr"]
        self.bar.set_postfix(losses | {"lr": f"{lr:.2e}", "img/s": f"{images_per_s:.1f}"}, refresh=False)
        self.bar.update(1)
        if self.bar.n >= self.bar.total:
            self.on_train_end(trainer)  # before the evaluation's own bar

    def on_train_end(self, trainer: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
