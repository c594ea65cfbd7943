"""One Trainer for baseline training, sparsity training and finetuning after pruning.

`train(TrainSettings(...)) -> TrainResult` is the whole API; `Trainer` exposes the pieces for callers
that add loss terms (`extra_loss_terms`) or watch progress (`callbacks`, see `callbacks`).

Per step: forward (AMP autocast on CUDA only) → YOLOv3 loss (+ extra terms) → backward → AMP unscale →
clipping of the task gradient → the sparsity regulariser's gradient (`regularisers`: L1 or
polarization on the chosen BN γ, unclipped) → optimizer step → the regulariser's constraint →
LR schedule step → EMA update. A non-finite loss stops training with `TrainingDiverged`; the
checkpoints on disk are then those of the last completed epoch.

Everything that changes as the run trains lives in one `state.TrainState` (`trainer.state`), which
`checkpoint` saves after every epoch and a resume restores.

Output folder `out/`:
- `last.pt`: written after every epoch, everything a resume needs (see `checkpoint`).
- `best.pt`: the model of the epoch with the highest mAP@0.5 so far (written when evaluated).
- `metrics.csv`: one row per completed epoch (see `metrics`).
- `tb/`: TensorBoard scalars and γ histograms (see `callbacks.TensorBoardLogger`).

With a sparsity target (`sparsity_target=F`) the run ends after the epoch whose `sparse_macs_share`
reaches F (evaluated and saved as a last epoch is), else after `epochs`; meanwhile s doubles when the
share stalls (`sparsity.adapt_sparsity`). The learning-rate schedule stays planned over `epochs`.

`resume=True` restarts from `out/last.pt` at the epoch after the last completed one; an epoch that
was interrupted part-way is run again from its start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_model
from yoloprune.data.dataset import create_dataloader, load_data_spec
from yoloprune.errors import DataError, SettingsError, YoloPruneError
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator
from yoloprune.settings import resolve_device
from yoloprune.train import distributed
from yoloprune.train.callbacks import ProgressBar, TensorBoardLogger, TrainCallback
from yoloprune.train.checkpoint import check_resumed_settings, load_resume_state, save_training_state
from yoloprune.train.distill import OutputDistillation, check_teacher_heads
from yoloprune.train.ema import ModelEMA
from yoloprune.train.loss import LossWeights, YoloLoss
from yoloprune.train.metrics import EpochMeter, write_metrics_csv
from yoloprune.train.optim import build_optimizer, build_param_groups, build_scheduler
from yoloprune.train.regularisers import Regulariser, build_regulariser
from yoloprune.train.settings import TrainSettings
from yoloprune.train.state import TrainState, seed_everything

log = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainCallback", "TrainResult", "TrainingDiverged", "TrainingStopped", "train"]


class TrainingDiverged(YoloPruneError):
    """The loss became NaN/inf; the last completed epoch's checkpoint is kept."""


class TrainingStopped(Exception):
    """Raised by a callback (or `max_steps`) to end training early, as an interruption would."""


@dataclass
class TrainResult:
    out_dir: Path
    last: Path
    best: Path | None
    metrics_csv: Path
    epochs_completed: int
    final_metrics: dict  # the last evaluated row's map50/map/precision/recall (empty if never evaluated)
    best_map50: float | None
    stopped_early: bool = False
    target_reached: bool = False  # the sparsity target ended the run before `epochs`


# An extra loss term (knowledge distillation, ...): (images, heads, targets) -> (loss, parts to log).
ExtraLossTerm = Callable[[torch.Tensor, list, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


class Trainer:
    def __init__(
        self,
        settings: TrainSettings,
        callbacks: Sequence[TrainCallback] = (),
        extra_loss_terms: Sequence[ExtraLossTerm] = (),
    ):
        self.settings = settings
        self.callbacks = list(callbacks)
        self.extra_loss_terms = list(extra_loss_terms)
        self.out_dir = Path(settings.out)
        self.context = distributed.read_distributed_env()
        self.device = self._choose_device(settings.device)
        self.state: TrainState | None = None  # built by `setup`
        self.meter: EpochMeter | None = None  # the running epoch's loss sums
        self.step_in_epoch = 0
        self.steps_this_run = 0

    # ------------------------------------------------------------------------------------ set-up

    def _choose_device(self, name: str) -> torch.device:
        device = resolve_device(name)
        if device.type == "cuda" and self.context.enabled:
            return torch.device("cuda", self.context.local_rank)  # one GPU per process
        return device

    @property
    def is_main(self) -> bool:
        return self.context.is_main

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def metrics_path(self) -> Path:
        return self.out_dir / "metrics.csv"

    @property
    def bare_model(self) -> Darknet:
        """The Darknet module being trained (unwrapped from DDP)."""
        return self.state.model

    def setup(self) -> None:
        settings = self.settings
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        distributed.init_distributed(self.context, self.device)
        seed_everything(settings.seed + self.context.rank)
        resume_state = load_resume_state(self.out_dir) if settings.resume else None
        model = self._load_model(resume_state)
        # channels-last: the CPU conv kernels train the demo model (x0.25, 96 px, batch 16) about 15 %
        # faster in it (2-core AVX2); only the memory layout changes (results agree to float rounding).
        model.to(self.device, memory_format=torch.channels_last)
        self.img_size = settings.img_size or model.cfg.net.width
        regulariser = build_regulariser(settings, model.cfg, self.img_size)
        if settings.teacher_weights is not None:
            self._add_distillation(model)
        self.loss_fn = YoloLoss.for_model(
            model, weights=LossWeights(**settings.loss_weights), **{"neighbour_cells": settings.neighbour_cells, **settings.loss_options},
        )
        self._build_loaders(model)
        optimizer, scheduler = self._build_optimizer(model, regulariser)
        self.use_amp = settings.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        ema = ModelEMA(model, decay=settings.ema_decay) if settings.ema else None
        self.state = TrainState(model, optimizer, scheduler, scaler, regulariser, ema, getattr(self.train_loader, "generator", None))
        if resume_state is not None:
            self._resume(resume_state)
        self.model = model
        if self.context.enabled:
            self.model = nn.parallel.DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._add_own_callbacks()

    def _add_own_callbacks(self) -> None:
        # First, so that they have seen a step or an epoch before a caller's callback may stop the run.
        own: list[Any] = []
        if self.settings.tensorboard:
            own.append(TensorBoardLogger(self.out_dir / "tb", first_epoch=self.state.epoch))
        if self.settings.progress:
            own.append(ProgressBar())
        self.callbacks[:0] = own

    def _load_model(self, resume_state: dict | None) -> Darknet:
        """On the CPU: the model to train (for a resume, the checkpoint's cfg; its weights come with the state)."""
        if resume_state is not None:
            check_resumed_settings(resume_state, self.settings, self.last_path)
            return load_model(None, self.last_path, device="cpu")
        if self.settings.cfg is None and self.settings.weights is None:
            raise SettingsError("cfg", "no model given: a cfg, or weights from a .pt checkpoint (which carries its cfg)")
        return load_model(self.settings.cfg, self.settings.weights, device="cpu")

    def _add_distillation(self, model: Darknet) -> None:
        settings = self.settings
        teacher = load_model(settings.teacher_cfg, settings.teacher_weights, device=self.device)
        check_teacher_heads(teacher.cfg, model.cfg, self.img_size, settings.teacher_weights)
        self.extra_loss_terms.append(OutputDistillation(teacher, settings.distill_weight))

    def _build_optimizer(self, model: Darknet, regulariser: Regulariser) -> tuple:
        settings = self.settings
        penalised = [model.layers[idx].bn.weight for idx in regulariser.penalised] if settings.sparsity else []
        groups = build_param_groups(model, settings.weight_decay, settings.lr, penalised, settings.gamma_lr_scale)
        optimizer = build_optimizer(settings.optimizer, groups, settings.lr, settings.momentum)
        scheduler = build_scheduler(optimizer, settings.epochs, len(self.train_loader), settings.warmup_epochs, settings.lr_final_ratio)
        return optimizer, scheduler

    def _resume(self, checkpoint: dict) -> None:
        self.state.load_state_dict(checkpoint, self.last_path)
        if self.is_main:
            # The csv may hold a row of the epoch that was interrupted before its checkpoint landed.
            write_metrics_csv(self.metrics_path, self.state.history)
        epoch, epochs = self.state.epoch + 1, self.settings.epochs
        log.info(f"{self.last_path}: all {epochs} epochs trained" if epoch > epochs else f"resuming {self.last_path} at epoch {epoch}/{epochs}")

    def _build_loaders(self, model: Darknet) -> None:
        settings = self.settings
        if settings.data is None:
            raise SettingsError("data", "no dataset given")
        spec = load_data_spec(settings.data)
        if spec.classes != model.num_classes:
            raise DataError(f"dataset has {spec.classes} classes but the model's [yolo] layers have {model.num_classes}", settings.data)
        self.data_spec = spec
        self.train_loader = create_dataloader(
            spec.train, self.img_size, settings.batch_size, augment=settings.augment, workers=settings.workers, shuffle=True,
            skip_bad=settings.skip_bad, distributed=self.context.enabled, seed=settings.seed, num_classes=spec.classes,
            pin_memory=self.device.type == "cuda", **(settings.augment_options if settings.augment else {}),
        )
        self.validator = None
        if self.is_main and settings.eval_every > 0:
            evaluation = EvalSettings(  # valid: best.pt is chosen by this score
                data=settings.data, split="valid", intervals=False, img_size=self.img_size, batch=settings.batch_size, conf=settings.conf_thres, iou=settings.iou_thres,
                workers=settings.workers, skip_bad=settings.skip_bad, device=str(self.device),
            )
            self.validator = Validator(evaluation, progress=settings.progress)

    # ------------------------------------------------------------------------------------ running

    def run(self) -> TrainResult:
        stopped = False
        try:
            self.setup()
            while self.state.epoch < self.settings.epochs and not self.target_reached:
                if hasattr(self.train_loader, "set_epoch"):
                    self.train_loader.set_epoch(self.state.epoch)
                row = self.end_epoch(self.train_epoch())
                self._fire("on_epoch_end", row)
        except TrainingStopped as stop:
            stopped = True
            log.info("training stopped at epoch %d step %d: %s", self.state.epoch + 1, self.step_in_epoch, stop)
        finally:
            self._fire("on_train_end")
        return self._result(stopped)

    def _fire(self, hook: str, *args: Any) -> None:
        """Call `hook` on every callback that has it."""
        for callback in self.callbacks:
            if hasattr(callback, hook):
                getattr(callback, hook)(self, *args)

    def _result(self, stopped: bool) -> TrainResult:
        history = self.state.history
        evaluated = [row for row in history if row.get("map50") is not None]
        final = {key: evaluated[-1][key] for key in ("map50", "map", "precision", "recall")} if evaluated else {}
        return TrainResult(
            out_dir=self.out_dir,
            last=self.last_path,
            best=self.best_path if self.best_path.exists() else None,
            metrics_csv=self.metrics_path,
            epochs_completed=self.state.epoch,
            final_metrics=final,
            best_map50=self.state.best_map50,
            stopped_early=stopped,
            target_reached=self.target_reached,
        )

    @property
    def target_reached(self) -> bool:
        """Whether the last completed epoch reached the sparsity target (read from the history, so a
        resumed run that had reached it runs no further epoch)."""
        history = self.state.history
        return bool(history) and self.state.regulariser.reaches_target(history[-1])

    def compute_loss(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=self.device.type, enabled=self.use_amp):
            heads = self.model(images)
        total, parts = self.loss_fn(heads, targets, (images.shape[2], images.shape[3]))
        for term in self.extra_loss_terms:
            extra, extra_parts = term(images, heads, targets)
            total = total + extra
            parts.update({name: value.detach() for name, value in extra_parts.items()})
        return total, parts

    def train_epoch(self) -> dict:
        settings, state = self.settings, self.state
        self.model.train()
        s = state.regulariser.at_epoch(state.epoch)
        self.meter = meter = EpochMeter()
        self._fire("on_epoch_start")
        for self.step_in_epoch, (images, targets, _paths) in enumerate(self.train_loader):
            images = images.to(self.device, non_blocking=True, memory_format=torch.channels_last)
            targets = targets.to(self.device)
            loss, parts = self.train_step(images, targets)
            meter.add(float(loss.detach()), {name: float(value) for name, value in parts.items()}, images.shape[0])
            self._fire("on_step_end")
            if settings.max_steps is not None and self.steps_this_run >= settings.max_steps:
                raise TrainingStopped(f"max_steps={settings.max_steps} reached")
        elapsed = meter.elapsed()
        # Per-image means; the loss sum is per batch, so divide by images for a per-image figure.
        return {
            "loss": meter.mean("loss"),
            "loss_box": meter.mean("box"),
            "loss_obj": meter.mean("obj"),
            "loss_cls": meter.mean("cls"),
            "sparsity": s,
            "img_per_s": max(meter.images, 1) * self.context.world_size / max(elapsed, 1e-9),
            "epoch_s": elapsed,
            "lr": state.optimizer.param_groups[0]["lr"],
        }

    def train_step(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """One optimizer step on a batch; returns its loss and loss parts."""
        state = self.state
        loss, parts = self.compute_loss(images, targets)
        finite = bool(torch.isfinite(loss))
        if self.context.enabled:
            finite = distributed.all_ranks_true(finite, self.device)
        if not finite:
            self._diverged(parts)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        state.scaler.unscale_(state.optimizer)
        if self.settings.grad_clip > 0:
            # Clip the task gradient only. The loss is a sum over the batch, so clipping is active
            # on most steps; applied after the penalty it would scale s down with it.
            nn.utils.clip_grad_norm_(state.model.parameters(), self.settings.grad_clip)
        state.regulariser.regularize(state.model)
        state.scaler.step(state.optimizer)
        state.regulariser.after_step(state.model)
        state.scaler.update()
        state.scheduler.step()
        if state.ema is not None:
            state.ema.update(state.model)
        state.global_step += 1
        self.steps_this_run += 1
        return loss, parts

    def _diverged(self, parts: dict[str, torch.Tensor]) -> None:
        detail = ", ".join(f"{name}={float(value):.4g}" for name, value in parts.items())
        epoch = self.state.epoch
        kept = f"{self.last_path} (epoch {epoch}) is kept" if self.last_path.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss is not finite at epoch {epoch + 1}, step {self.step_in_epoch + 1} ({detail}); {kept}. "
            "Lower the learning rate, lengthen the warmup, or check the labels."
        )

    def evaluate(self) -> dict:
        metrics = self.validator(self.state.saved_model)
        return {key: float(getattr(metrics, key)) for key in ("map50", "map", "precision", "recall")}

    def end_epoch(self, stats: dict) -> dict:
        settings, state = self.settings, self.state
        if self.context.enabled:
            # BN running statistics drift apart per rank; rank 0's become everyone's.
            distributed.broadcast_buffers(state.model)
            stats.update(distributed.average_over_ranks({k: stats[k] for k in ("loss", "loss_box", "loss_obj", "loss_cls")}, self.device))
        row: dict = {"epoch": state.epoch + 1, **stats}
        row.update(state.regulariser.log(state.model))
        is_last = state.epoch + 1 == settings.epochs or state.regulariser.reaches_target(row)
        if self.is_main and self.validator is not None and ((state.epoch + 1) % settings.eval_every == 0 or is_last):
            row.update(self.evaluate())
            state.model.train()
        state.epoch += 1
        state.history.append(row)
        state.regulariser.end_epoch(state.history)  # before the checkpoint, which keeps the s of the next epoch
        if self.is_main:
            self._save_epoch(row)
        distributed.barrier()
        return row

    def _save_epoch(self, row: dict) -> None:
        state = self.state
        improved = row.get("map50") is not None and (state.best_map50 is None or row["map50"] > state.best_map50)
        if improved:
            state.best_map50 = row["map50"]
            # best.pt first: once last.pt says this epoch is done, a resume skips it, so a crash
            # between the two writes must not lose the epoch's best model.
            save_training_state(self.best_path, state, self.settings, self.img_size)
        save_training_state(self.last_path, state, self.settings, self.img_size)
        write_metrics_csv(self.metrics_path, state.history)
        self._log_epoch(row)

    def _log_epoch(self, row: dict) -> None:
        evaluated = f", mAP@0.5 {row['map50']:.4f}, mAP {row['map']:.4f}" if row.get("map50") is not None else ""
        small = f", |γ|<0.01 {row['gamma_frac_small']:.1%}" if "gamma_frac_small" in row else ""
        target = self.settings.sparsity_target
        if target is not None and row.get("sparse_macs_share") is not None:
            small += f", sparse MACs {row['sparse_macs_share']:.1%} (target {target:.1%}, s {row['sparsity']:.3g})"
        log.info("epoch %d/%d: loss %.4f%s%s (%.1f img/s)", self.state.epoch, self.settings.epochs, row["loss"], evaluated, small, row["img_per_s"])
        if self.target_reached:
            log.info("sparsity target reached at epoch %d: %.1f%% of the penalised MACs have |γ| < %g (target %.1f%%); training ends here",
                     self.state.epoch, 100 * row["sparse_macs_share"], self.settings.sparsity_target_threshold, 100 * target)


def train(settings: TrainSettings, callbacks: Sequence[TrainCallback] = (), extra_loss_terms: Sequence[ExtraLossTerm] = ()) -> TrainResult:
    """Run a training (baseline, sparse or finetune) as described by `settings`."""
    return Trainer(settings, callbacks, extra_loss_terms).run()
