"""Saving and restoring a training run's state, and the settings a resumed run continues with.

`last.pt` (written after every epoch) holds the model (the EMA copy when EMA is on) plus everything a
resume needs: optimizer, scheduler, AMP scaler, epoch, RNG states (torch/numpy/python/CUDA and the
train loader's generator, stored as tensors and lists so that `torch.load(weights_only=True)` reads
them), the metrics history, the s of the next epoch (a sparsity target raises it), the raw training
weights when EMA is on, and the settings under the meta key "train_config". `best.pt` has the same layout.

Resuming: `resolve_resume` fills the settings not given from the saved run's, `check_resumed_settings`
refuses a resume that would change the experiment, `load_resumed_model` and `restore_training_state`
put model, optimizer and RNGs back where the last completed epoch left them.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_checkpoint, load_model, load_state_dict_checked, save_checkpoint
from yoloprune.errors import WeightsError, YoloPruneError
from yoloprune.stage import settings_changes
from yoloprune.train.settings import RESUMABLE_CHANGES, TrainSettings

if TYPE_CHECKING:
    from yoloprune.train.trainer import Trainer

LAST_NAME = "last.pt"
SETTINGS_KEY = "train_config"  # the meta key of the saved settings; older checkpoints use it too


# ------------------------------------------------------------------------------------------ RNG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def capture_rng_state(loader_generator: torch.Generator | None = None) -> dict:
    """torch/numpy/python (and CUDA, the loader's) RNG states as tensors and lists (loadable with weights_only=True)."""
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
    if loader_generator is not None:
        state["loader"] = loader_generator.get_state()
    return state


def restore_rng_state(state: dict, loader_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(
        ("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    )
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if state.get("loader") is not None and loader_generator is not None:
        loader_generator.set_state(state["loader"])


# ------------------------------------------------------------------------------------------ saving


def save_training_state(trainer: Trainer, path: Path) -> None:
    """The trainer's model and everything a resume needs, as one checkpoint."""
    settings = trainer.settings
    saved_model = trainer.ema.module if trainer.ema is not None else trainer.bare_model
    extra: dict = {
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "epoch": trainer.epoch,
        "global_step": trainer.global_step,
        "history": trainer.history,
        "best_map50": trainer.best_map50,
        "sparsity_s": trainer.sparsity_s,
        "rng": capture_rng_state(getattr(trainer.train_loader, "generator", None)),
    }
    if trainer.use_amp:
        extra["scaler"] = trainer.scaler.state_dict()
    if trainer.ema is not None:
        # The saved model is the average; a resume continues training from the raw weights.
        extra["train_state_dict"] = {k: v.detach().cpu() for k, v in trainer.bare_model.state_dict().items()}
        extra["ema_updates"] = trainer.ema.updates
    meta = {
        "kind": "train",
        "epoch": trainer.epoch,
        "epochs": settings.epochs,
        "img_size": trainer.img_size,
        "sparsity": settings.sparsity,
        "sparsity_decay": settings.sparsity_decay,
        "sparsity_layers": trainer.sparsity_layers,
        "ema": trainer.ema is not None,
        SETTINGS_KEY: settings.to_dict(),
    }
    save_checkpoint(path, saved_model, meta=meta, **extra)


# ------------------------------------------------------------------------------------------ resuming


def load_resume_state(out: str | Path) -> dict:
    """The checkpoint a resume starts from: `out/last.pt`."""
    last = Path(out) / LAST_NAME
    if not last.exists():
        raise WeightsError("no last.pt to resume from", last)
    return load_checkpoint(last)


def saved_settings(state: dict) -> dict | None:
    """The settings a checkpoint was trained with, as plain data (None in checkpoints without them)."""
    return (state.get("meta") or {}).get(SETTINGS_KEY)


def resolve_resume(given: dict) -> TrainSettings:
    """The settings of a run from the values given; when they ask to resume, the saved run's settings
    fill in every value not given. A dict value given (one key set by a flag, such as the mosaic
    probability in `augment_options`) updates the saved dict key by key."""
    if not given.get("resume"):
        return TrainSettings.from_dict(given)
    saved = dict(saved_settings(load_resume_state(given.get("out", TrainSettings.out))) or {})
    saved.pop("max_steps", None)  # a step limit belongs to the invocation that set it
    merged = {**saved, **given}
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            merged[key] = {**saved[key], **value}
    return TrainSettings.from_dict(merged)


def check_resumed_settings(state: dict, settings: TrainSettings, path: Path) -> None:
    """Refuse to resume with settings that would make it another run than the one in the checkpoint
    (a changed penalty or learning rate would also rebuild the optimizer's parameter groups)."""
    saved = saved_settings(state)
    if saved is None:
        return
    # Settings the saved run does not know (added to TrainSettings since) cannot have changed.
    current = {key: value for key, value in settings.to_dict().items() if key in saved and key not in RESUMABLE_CHANGES}
    changes = settings_changes({key: saved[key] for key in current}, current)
    if changes:
        raise YoloPruneError(
            f"{path}: cannot resume with other settings than the saved run's ({'; '.join(changes)}): "
            "resume without changing them, or train into a new output folder"
        )


def load_resumed_model(state: dict, path: Path) -> Darknet:
    """The model training continues from, on the CPU: the raw training weights when EMA was on."""
    model = load_model(None, path, device="cpu")
    if "train_state_dict" in state:
        load_state_dict_checked(model, state["train_state_dict"], path)
    return model


def restore_training_state(trainer: Trainer, state: dict) -> None:
    """Put the optimizer, schedule, scaler, counters, EMA and RNGs back as the checkpoint saved them."""
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    if "scaler" in state and trainer.use_amp:
        trainer.scaler.load_state_dict(state["scaler"])
    trainer.epoch = int(state["epoch"])
    trainer.global_step = int(state.get("global_step", trainer.epoch * trainer.steps_per_epoch))
    trainer.history = list(state.get("history", []))
    trainer.best_map50 = state.get("best_map50")
    trainer.sparsity_s = float(state.get("sparsity_s", trainer.settings.sparsity))  # older checkpoints: never adapted
    if trainer.ema is not None:
        trainer.ema.module.load_state_dict(state["state_dict"])
        trainer.ema.updates = int(state.get("ema_updates", 0))
    if "rng" in state:
        restore_rng_state(state["rng"], getattr(trainer.train_loader, "generator", None))
