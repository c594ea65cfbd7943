"""One Trainer for baseline training, sparsity (BN-γ L1) training and finetuning after pruning.

`train(TrainConfig(...)) -> TrainResult` is the whole API; `Trainer` exposes the pieces for callers
that add loss terms (`extra_loss_terms`) or watch progress (`callbacks`).

Per step: forward (AMP autocast on CUDA only) → YOLOv3 loss (+ extra terms) → backward → AMP unscale →
clipping of the task gradient → sparsity subgradient s·sign(γ) on the chosen BN layers (unclipped, so
with SGD a penalised γ moves by lr·s per step from the penalty) → optimizer step → LR schedule step →
EMA update. A non-finite loss stops training with `TrainingDiverged`; the checkpoints on disk
are then those of the last completed epoch.

Output folder `out/`:
- `last.pt`: written after every epoch; the model (the EMA copy when EMA is on) plus everything to
  resume: optimizer, scheduler, AMP scaler, epoch, RNG states (torch/numpy/python/loader, stored as
  tensors and lists so `torch.load(weights_only=True)` reads them), the metrics history, the raw
  training weights when EMA is on, and the train config.
- `best.pt`: the model of the epoch with the highest mAP@0.5 so far (written when evaluated).
- `metrics.csv`: one row per completed epoch (see `METRIC_COLUMNS`); `gamma_first` holds the signed γ
  vector of the first considered BN layer as a JSON list, `gamma_hist` the counts of |γ| per bin of
  `gamma_hist_edges` (log-spaced, see `sparsity.GAMMA_HIST_EDGES`). It is rewritten from the history kept in
  `last.pt` after every epoch, so a resumed run never loses or repeats rows.
- `tb/`: TensorBoard scalars (losses, lr, mAP, γ quantiles) and γ histograms.

`resume=True` restarts from `out/last.pt` at the epoch after the last completed one; an epoch that
was interrupted part-way is run again from its start.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_checkpoint, load_model, load_state_dict_checked, save_checkpoint
from yoloprune.errors import DataError, SettingsError, WeightsError, YoloPruneError
from yoloprune.fileio import atomic_write_text
from yoloprune.train import distributed
from yoloprune.train.ema import ModelEMA
from yoloprune.train.loss import LossWeights, YoloLoss
from yoloprune.train.sparsity import (
    SPARSITY_LAYER_SETS,
    apply_bn_sparsity,
    collect_gammas,
    resolve_sparsity_layers,
    sparsity_at_epoch,
    summarize_gammas,
)

log = logging.getLogger(__name__)

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "loss",
    "loss_box",
    "loss_obj",
    "loss_cls",
    "sparsity",
    "img_per_s",
    "epoch_s",
    "map50",
    "map",
    "precision",
    "recall",
    "gamma_q0",
    "gamma_q25",
    "gamma_q50",
    "gamma_q75",
    "gamma_q100",
    "gamma_frac_small",
    "gamma_first_layer",
    "gamma_first",
    "gamma_hist",
    "gamma_hist_edges",
)


class TrainingDiverged(YoloPruneError):
    """The loss became NaN/inf; the last completed epoch's checkpoint is kept."""


class TrainingStopped(Exception):
    """Raised by a callback (or `max_steps`) to end training early, as an interruption would."""


@dataclass
class TrainConfig:
    """Everything a training run needs; the CLI fills it from flags, the demo builds it directly."""

    data: str | Path | None = None
    cfg: str | Path | None = None
    weights: str | Path | None = None  # .pt (carries its cfg) or darknet .weights
    out: str | Path = "runs/train"
    epochs: int = 30
    batch_size: int = 16
    img_size: int | None = None  # default: the cfg's [net] width
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (Nesterov momentum) or "adam" (AdamW: converges in fewer steps on short CPU runs)
    lr_final_ratio: float = 0.05  # cosine ends at lr · this
    momentum: float = 0.937
    weight_decay: float = 5e-4  # conv weights only: never on BN γ/β or biases
    warmup_epochs: float = 1.0
    sparsity: float = 0.0
    sparsity_layers: str | list[int] = "all"
    sparsity_decay: float | None = None  # fraction of epochs after which s is scaled by sparsity_decay_factor
    sparsity_decay_factor: float = 0.01
    # Learning-rate multiplier for the penalised γ during sparsity training. With Adam a parameter moves
    # at most about lr per step, so at lr 1e-3 a γ of 1 needs ~1000 steps to reach 0; 10 lets the
    # penalty empty the unimportant channels within a few epochs. SGD needs no boost (keep 1).
    gamma_lr_scale: float = 1.0
    device: str = "cpu"
    resume: bool = False
    workers: int = 0
    eval_every: int = 1
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    skip_bad: bool = False
    augment: bool = True
    augment_options: dict = field(default_factory=dict)  # AugmentConfig fields for the train loader
    grad_clip: float = 10.0  # max gradient norm; 0 disables
    amp: bool = True  # used on CUDA only
    conf_thres: float = 0.001
    iou_thres: float = 0.6
    loss_weights: dict = field(default_factory=dict)  # LossWeights fields: box, obj, cls
    loss_options: dict = field(default_factory=dict)  # YoloLoss keywords: ignore_thresh, anchor_iou_thresh, ...
    teacher_cfg: str | Path | None = None  # knowledge distillation from this model (finetuning a pruned one)
    teacher_weights: str | Path | None = None
    distill_weight: float = 1.0
    tensorboard: bool = True
    progress: bool = True
    max_steps: int | None = None  # stop (like an interruption) after this many steps in this invocation

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SettingsError naming the first setting whose value cannot work."""
        from yoloprune.data.dataset import STRIDE

        def require(ok: bool, setting: str, expected: str) -> None:
            if not ok:
                raise SettingsError(setting, f"must be {expected}, got {getattr(self, setting)!r}")

        for name in ("epochs", "batch_size"):
            require(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "a whole number >= 1")
        require(self.img_size is None or (_is_int(self.img_size) and self.img_size > 0 and self.img_size % STRIDE == 0), "img_size", f"a positive multiple of {STRIDE}")
        require(self.lr > 0, "lr", "> 0")
        require(self.gamma_lr_scale > 0, "gamma_lr_scale", "> 0")
        require(0 <= self.lr_final_ratio <= 1, "lr_final_ratio", "in [0, 1]")
        require(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        for name in ("weight_decay", "warmup_epochs", "sparsity", "sparsity_decay_factor", "grad_clip", "distill_weight"):
            require(getattr(self, name) >= 0, name, ">= 0")
        require(self.sparsity_decay is None or 0 <= self.sparsity_decay <= 1, "sparsity_decay", "a fraction of the epochs in [0, 1]")
        require(0 < self.ema_decay < 1, "ema_decay", "in (0, 1)")
        require(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(repr(name) for name in OPTIMIZERS))
        for name in ("workers", "eval_every"):
            require(_is_int(getattr(self, name)) and getattr(self, name) >= 0, name, "a whole number >= 0")
        require(self.max_steps is None or (_is_int(self.max_steps) and self.max_steps >= 1), "max_steps", "a whole number >= 1")
        require(not isinstance(self.sparsity_layers, str) or self.sparsity_layers in SPARSITY_LAYER_SETS, "sparsity_layers", f"one of {SPARSITY_LAYER_SETS} or a list of layers")

    def to_dict(self) -> dict:
        """Plain data for the checkpoint's meta (paths as strings)."""
        return {key: (str(value) if isinstance(value, Path) else value) for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


OPTIMIZERS = ("sgd", "adam")
# Settings that may differ when a run is resumed: how long it runs, where and how it reports. Any
# other change (the penalty, the learning rates, the data, the model) would make the resumed run a
# different experiment than the one its checkpoint and metrics.csv describe.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "resume", "device", "workers", "eval_every", "progress", "tensorboard", "max_steps", "skip_bad", "conf_thres", "iou_thres"}
)


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


class TrainCallback(Protocol):
    """Optional hooks; a callback may raise `TrainingStopped` to end the run."""

    def on_step_end(self, trainer: "Trainer") -> None: ...

    def on_epoch_end(self, trainer: "Trainer", row: dict) -> None: ...


# An extra loss term (knowledge distillation, ...): (images, heads, targets) -> (loss, parts to log).
ExtraLossTerm = Callable[[torch.Tensor, list, torch.Tensor], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]


# ---------------------------------------------------------------------------------------------- helpers


def build_param_groups(model: nn.Module, weight_decay: float, lr: float, scaled: Sequence[nn.Parameter] = (), lr_scale: float = 1.0) -> list[dict]:
    """Conv weights decay; BN γ/β and biases do not (decay on γ would fight or fake the sparsity).
    The `scaled` parameters (the penalised γ) get `lr · lr_scale` in a group of their own."""
    scaled_ids = {id(parameter) for parameter in scaled} if lr_scale != 1.0 else set()
    decayed, plain, boosted = [], [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (boosted if id(parameter) in scaled_ids else decayed if parameter.ndim > 1 else plain).append(parameter)
    groups = [{"params": decayed, "weight_decay": weight_decay, "lr": lr}, {"params": plain, "weight_decay": 0.0, "lr": lr}]
    if boosted:
        groups.append({"params": boosted, "weight_decay": 0.0, "lr": lr * lr_scale})
    return groups


def build_optimizer(name: str, param_groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum (the YOLOv3 recipe; plain SGD at momentum 0) or AdamW with β1 = momentum.

    The sparsity penalty is added to γ.grad before the step, so with AdamW the penalty is normalised
    like any gradient: every γ whose task gradient is small moves towards 0 at about lr per step.
    """
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adam":
        return torch.optim.AdamW(param_groups, lr=lr, betas=(momentum, 0.999))
    raise SettingsError("optimizer", f"unknown optimizer {name!r}: expected 'sgd' or 'adam'")


def lr_factor_at(step: int, total_steps: int, warmup_steps: int, final_ratio: float) -> float:
    """Linear warmup from 0 to 1 over `warmup_steps`, then cosine from 1 down to `final_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def capture_rng_state() -> dict:
    """torch/numpy/python RNG states as tensors and lists (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_state[0], "state": list(py_state[1]), "gauss_next": py_state[2]},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _format_csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return json.dumps([round(float(v), 6) for v in value])
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_metrics_csv(path: Path, rows: Sequence[dict]) -> None:
    """The whole table, atomically (it is small; rewriting keeps it consistent with the checkpoint)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for row in rows:
        writer.writerow([_format_csv_value(row.get(column)) for column in METRIC_COLUMNS])
    atomic_write_text(path, buffer.getvalue())


def read_metrics_csv(path: str | Path) -> list[dict]:
    """Rows of a metrics.csv with numbers parsed and `gamma_first` decoded from JSON."""
    rows = []
    with open(path, newline="", encoding="utf-8") as handle:
        for raw in csv.DictReader(handle):
            row: dict = {}
            for key, text in raw.items():
                if text == "":
                    row[key] = None
                elif key in ("gamma_first", "gamma_hist", "gamma_hist_edges"):
                    row[key] = json.loads(text)
                elif key in ("epoch", "gamma_first_layer"):
                    row[key] = int(text)
                else:
                    row[key] = float(text)
            rows.append(row)
    return rows


def _metric_value(metrics: Any, key: str) -> float | None:
    value = metrics.get(key) if isinstance(metrics, dict) else getattr(metrics, key, None)
    return None if value is None else float(value)


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(
        self,
        config: TrainConfig,
        callbacks: Sequence[TrainCallback] = (),
        extra_loss_terms: Sequence[ExtraLossTerm] = (),
    ):
        self.config = config
        self.callbacks = list(callbacks)
        self.extra_loss_terms = list(extra_loss_terms)
        self.out_dir = Path(config.out)
        self.context = distributed.read_distributed_env()
        self.device = self._choose_device(config.device)
        self.epoch = 0  # the next epoch to run (0-based) = epochs completed
        self.step_in_epoch = 0
        self.global_step = 0
        self.steps_this_run = 0
        self.history: list[dict] = []
        self.best_map50: float | None = None
        self._writer = None

    # ------------------------------------------------------------------------------------ set-up

    def _choose_device(self, name: str) -> torch.device:
        if name.startswith("cuda"):
            if not torch.cuda.is_available():
                raise YoloPruneError(f"--device {name}: CUDA is not available on this machine")
            if self.context.enabled:
                return torch.device("cuda", self.context.local_rank)
        return torch.device(name)

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
        """The Darknet module itself (unwrapped from DDP)."""
        return getattr(self.model, "module", self.model)

    def setup(self) -> None:
        config = self.config
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        distributed.init_distributed(self.context, self.device)
        seed_everything(config.seed + self.context.rank)
        resume_state = self._load_resume_state() if config.resume else None
        if resume_state is not None:
            self._check_resumed_settings(resume_state)
            self.model = load_model(None, self.last_path, device="cpu")
            if "train_state_dict" in resume_state:
                load_state_dict_checked(self.model, resume_state["train_state_dict"], self.last_path)
        else:
            if config.cfg is None and config.weights is None:
                raise YoloPruneError("no model given: pass --cfg, or --weights with a .pt checkpoint")
            self.model = load_model(config.cfg, config.weights, device="cpu")
        self.model.to(self.device)
        self.img_size = config.img_size or self.bare_model.cfg.net.width
        self.sparsity_layers = resolve_sparsity_layers(self.bare_model.cfg, config.sparsity_layers)
        if config.teacher_weights is not None:
            from yoloprune.train.distill import OutputDistillation, check_teacher_heads

            teacher = load_model(config.teacher_cfg, config.teacher_weights, device=self.device)
            check_teacher_heads(teacher.cfg, self.bare_model.cfg, self.img_size, config.teacher_weights)
            self.extra_loss_terms.append(OutputDistillation(teacher, config.distill_weight))
        self.loss_fn = YoloLoss.for_model(self.bare_model, weights=LossWeights(**config.loss_weights), **config.loss_options)
        self._build_loaders()
        penalised = [self.bare_model.layers[idx].bn.weight for idx in self.sparsity_layers] if config.sparsity else []
        groups = build_param_groups(self.bare_model, config.weight_decay, config.lr, penalised, config.gamma_lr_scale)
        self.optimizer = build_optimizer(config.optimizer, groups, config.lr, config.momentum)
        self.steps_per_epoch = len(self.train_loader)
        total_steps = config.epochs * self.steps_per_epoch
        warmup_steps = round(config.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor_at(step, total_steps, warmup_steps, config.lr_final_ratio)
        )
        self.use_amp = config.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.ema = ModelEMA(self.bare_model, decay=config.ema_decay) if config.ema else None
        if resume_state is not None:
            self._restore(resume_state)
        if self.context.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            if config.tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.out_dir / "tb"), purge_step=self.epoch)

    def _load_resume_state(self) -> dict | None:
        if not self.last_path.exists():
            raise WeightsError("--resume: no last.pt to resume from", self.last_path)
        return load_checkpoint(self.last_path)

    def _check_resumed_settings(self, state: dict) -> None:
        """Refuse to resume with settings that would make it another run than the one in last.pt
        (a changed penalty or learning rate would also rebuild the optimizer's parameter groups)."""
        from yoloprune.stage import settings_changes

        saved = (state.get("meta") or {}).get("train_config")
        if saved is None:
            return
        # Settings the saved run does not know (added to TrainConfig since) cannot have changed.
        current = {key: value for key, value in self.config.to_dict().items() if key in saved and key not in RESUMABLE_CHANGES}
        changes = settings_changes({key: saved[key] for key in current}, current)
        if changes:
            raise YoloPruneError(
                f"{self.last_path}: cannot resume with other settings than the saved run's ({'; '.join(changes)}): "
                "resume without changing them, or train into a new output folder"
            )

    def _restore(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.use_amp:
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", self.epoch * self.steps_per_epoch))
        self.history = list(state.get("history", []))
        self.best_map50 = state.get("best_map50")
        if self.ema is not None:
            self.ema.module.load_state_dict(state["state_dict"])
            self.ema.updates = int(state.get("ema_updates", 0))
        if "rng" in state:
            restore_rng_state(state["rng"])
            loader_state = state["rng"].get("loader")
            generator = getattr(self.train_loader, "generator", None)
            if loader_state is not None and generator is not None:
                generator.set_state(loader_state)
        if self.is_main:
            # The csv may hold a row of the epoch that was interrupted before its checkpoint landed.
            write_metrics_csv(self.metrics_path, self.history)
        log.info("resuming %s at epoch %d/%d", self.last_path, self.epoch + 1, self.config.epochs)

    def _build_loaders(self) -> None:
        from yoloprune.data.dataset import create_dataloader, load_data_spec

        config = self.config
        if config.data is None:
            raise DataError("no dataset given: pass --data FILE.data")
        spec = load_data_spec(config.data)
        if spec.classes != self.bare_model.num_classes:
            raise DataError(f"dataset has {spec.classes} classes but the model's [yolo] layers have {self.bare_model.num_classes}", config.data)
        self.data_spec = spec
        self.train_loader = create_dataloader(
            spec.train,
            self.img_size,
            config.batch_size,
            augment=config.augment,
            workers=config.workers,
            shuffle=True,
            skip_bad=config.skip_bad,
            distributed=self.context.enabled,
            seed=config.seed,
            num_classes=spec.classes,
            pin_memory=self.device.type == "cuda",
            **(config.augment_options if config.augment else {}),
        )
        self.valid_loader = None
        if self.is_main and config.eval_every > 0:
            self.valid_loader = create_dataloader(
                spec.valid,
                self.img_size,
                config.batch_size,
                workers=config.workers,
                skip_bad=config.skip_bad,
                num_classes=spec.classes,
            )

    # ------------------------------------------------------------------------------------ running

    def run(self) -> TrainResult:
        config = self.config
        stopped = False
        try:
            self.setup()
            while self.epoch < config.epochs:
                if hasattr(self.train_loader, "set_epoch"):
                    self.train_loader.set_epoch(self.epoch)
                epoch_stats = self.train_epoch()
                row = self.end_epoch(epoch_stats)
                for callback in self.callbacks:
                    if hasattr(callback, "on_epoch_end"):
                        callback.on_epoch_end(self, row)
        except TrainingStopped as stop:
            stopped = True
            log.info("training stopped at epoch %d step %d: %s", self.epoch + 1, self.step_in_epoch, stop)
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        return self._result(stopped)

    def _result(self, stopped: bool) -> TrainResult:
        evaluated = [row for row in self.history if row.get("map50") is not None]
        final = {key: evaluated[-1][key] for key in ("map50", "map", "precision", "recall")} if evaluated else {}
        return TrainResult(
            out_dir=self.out_dir,
            last=self.last_path,
            best=self.best_path if self.best_path.exists() else None,
            metrics_csv=self.metrics_path,
            epochs_completed=self.epoch,
            final_metrics=final,
            best_map50=self.best_map50,
            stopped_early=stopped,
        )

    def sparsity_now(self) -> float:
        config = self.config
        return sparsity_at_epoch(config.sparsity, self.epoch, config.epochs, config.sparsity_decay, config.sparsity_decay_factor)

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
        from tqdm import tqdm

        config = self.config
        self.model.train()
        s = self.sparsity_now()
        sums: dict[str, float] = {}
        images_seen = 0
        start = time.perf_counter()
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {self.epoch + 1}/{config.epochs}",
            disable=not (self.is_main and config.progress),
            leave=False,
            dynamic_ncols=True,
        )
        for self.step_in_epoch, (images, targets, _paths) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device)
            loss, parts = self.compute_loss(images, targets)
            finite = bool(torch.isfinite(loss))
            if self.context.enabled:
                finite = distributed.all_ranks_true(finite, self.device)
            if not finite:
                self._diverged(parts)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if config.grad_clip > 0:
                # Clip the task gradient only. The loss is a sum over the batch, so clipping is active
                # on most steps; applied after the penalty it would scale s down with it.
                nn.utils.clip_grad_norm_(self.bare_model.parameters(), config.grad_clip)
            apply_bn_sparsity(self.bare_model, s, self.sparsity_layers)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.bare_model)
            self.global_step += 1
            self.steps_this_run += 1

            batch_size = images.shape[0]
            images_seen += batch_size
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach())  # already a sum over the batch's images
            for name, value in parts.items():
                sums[name] = sums.get(name, 0.0) + float(value) * batch_size
            elapsed = time.perf_counter() - start
            if self.is_main and config.progress:
                bar.set_postfix(
                    {name: f"{sums[name] / images_seen:.3f}" for name in parts}
                    | {"lr": f"{self.optimizer.param_groups[0]['lr']:.2e}", "img/s": f"{images_seen / max(elapsed, 1e-9):.1f}"}
                )
            for callback in self.callbacks:
                if hasattr(callback, "on_step_end"):
                    callback.on_step_end(self)
            if config.max_steps is not None and self.steps_this_run >= config.max_steps:
                raise TrainingStopped(f"max_steps={config.max_steps} reached")
        bar.close()
        elapsed = time.perf_counter() - start
        images_seen = max(images_seen, 1)
        # Per-image means; the loss sum is per batch, so divide by images for a per-image figure.
        stats = {
            "loss": sums.get("loss", 0.0) / images_seen,
            "loss_box": sums.get("box", 0.0) / images_seen,
            "loss_obj": sums.get("obj", 0.0) / images_seen,
            "loss_cls": sums.get("cls", 0.0) / images_seen,
            "sparsity": s,
            "img_per_s": images_seen * self.context.world_size / max(elapsed, 1e-9),
            "epoch_s": elapsed,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        return stats

    def _diverged(self, parts: dict[str, torch.Tensor]) -> None:
        detail = ", ".join(f"{name}={float(value):.4g}" for name, value in parts.items())
        kept = f"{self.last_path} (epoch {self.epoch}) is kept" if self.last_path.exists() else "no checkpoint was written yet"
        raise TrainingDiverged(
            f"loss is not finite at epoch {self.epoch + 1}, step {self.step_in_epoch + 1} ({detail}); {kept}. "
            "Lower --lr, raise warmup, or check the labels."
        )

    def evaluate(self) -> dict:
        from yoloprune.eval.evaluate import evaluate_model

        model = self.ema.module if self.ema is not None else self.bare_model
        metrics = evaluate_model(
            model, self.valid_loader, conf_thres=self.config.conf_thres, iou_thres=self.config.iou_thres, device=self.device, progress=self.config.progress
        )
        return {key: _metric_value(metrics, key) for key in ("map50", "map", "precision", "recall")}

    def end_epoch(self, stats: dict) -> dict:
        config = self.config
        if self.context.enabled:
            # BN running statistics drift apart per rank; rank 0's become everyone's.
            distributed.broadcast_buffers(self.bare_model)
        if self.context.enabled:
            stats.update(distributed.average_over_ranks({k: stats[k] for k in ("loss", "loss_box", "loss_obj", "loss_cls")}, self.device))
        row: dict = {"epoch": self.epoch + 1, **stats}
        row.update(summarize_gammas(self.bare_model, self.sparsity_layers))
        is_last = self.epoch + 1 == config.epochs
        if self.is_main and self.valid_loader is not None and ((self.epoch + 1) % config.eval_every == 0 or is_last):
            row.update(self.evaluate())
            self.bare_model.train()
        self.epoch += 1
        self.history.append(row)
        if self.is_main:
            improved = row.get("map50") is not None and (self.best_map50 is None or row["map50"] > self.best_map50)
            if improved:
                self.best_map50 = row["map50"]
            # best.pt first: once last.pt says this epoch is done, a resume skips it, so a crash
            # between the two writes must not lose the epoch's best model.
            if improved:
                self._save(self.best_path)
            self._save(self.last_path)
            write_metrics_csv(self.metrics_path, self.history)
            self._log_tensorboard(row)
            evaluated = f", mAP@0.5 {row['map50']:.4f}, mAP {row['map']:.4f}" if row.get("map50") is not None else ""
            small = f", |γ|<0.01 {row['gamma_frac_small']:.1%}" if "gamma_frac_small" in row else ""
            log.info("epoch %d/%d: loss %.4f%s%s (%.1f img/s)", self.epoch, config.epochs, row["loss"], evaluated, small, row["img_per_s"])
        distributed.barrier()
        return row

    def _save(self, path: Path) -> None:
        saved_model = self.ema.module if self.ema is not None else self.bare_model
        extra: dict = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_map50": self.best_map50,
            "rng": capture_rng_state(),
        }
        generator = getattr(self.train_loader, "generator", None)
        if generator is not None:
            extra["rng"]["loader"] = generator.get_state()
        if self.use_amp:
            extra["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            extra["train_state_dict"] = {k: v.detach().cpu() for k, v in self.bare_model.state_dict().items()}
            extra["ema_updates"] = self.ema.updates
        meta = {
            "kind": "train",
            "epoch": self.epoch,
            "epochs": self.config.epochs,
            "img_size": self.img_size,
            "sparsity": self.config.sparsity,
            "sparsity_decay": self.config.sparsity_decay,
            "sparsity_layers": self.sparsity_layers,
            "ema": self.ema is not None,
            "train_config": self.config.to_dict(),
        }
        save_checkpoint(path, saved_model, meta=meta, **extra)

    def _log_tensorboard(self, row: dict) -> None:
        if self._writer is None:
            return
        step = row["epoch"]
        for key, value in row.items():
            if key in ("epoch", "gamma_first_layer") or value is None or isinstance(value, list):
                continue
            group = "loss" if key.startswith("loss") else "gamma" if key.startswith("gamma") else "metrics" if key in ("map50", "map", "precision", "recall") else "train"
            self._writer.add_scalar(f"{group}/{key}", value, step)
        gammas = collect_gammas(self.bare_model, self.sparsity_layers)
        if gammas.numel():
            self._writer.add_histogram("gamma/abs_all_considered", gammas, step)
        if row.get("gamma_first") is not None:
            self._writer.add_histogram("gamma/first_layer", torch.tensor(row["gamma_first"]), step)
        self._writer.flush()


def train(config: TrainConfig, callbacks: Sequence[TrainCallback] = (), extra_loss_terms: Sequence[ExtraLossTerm] = ()) -> TrainResult:
    """Run a training (baseline, sparse or finetune) as described by `config`."""
    return Trainer(config, callbacks, extra_loss_terms).run()
