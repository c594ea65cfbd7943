"""The state of a training run: everything that changes as it trains, which a checkpoint saves and a
resume restores, as one object (`TrainState`).

`TrainState.state_dict()` is plain data (tensors, numbers, lists and dicts), so that
`torch.load(weights_only=True)` reads it: the optimizer's, schedule's and AMP scaler's states, the
epoch, the step, the metrics history, the best mAP@0.5 so far, the regulariser's state (its s, which a
sparsity target raises), the RNG states (torch/numpy/python/CUDA and the train loader's generator), and,
when EMA is on, the raw training weights and the EMA's update count (the checkpoint's own weights are
then the average, see `saved_model`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yoloprune.darknet.weights import load_state_dict_checked
from yoloprune.train.ema import ModelEMA
from yoloprune.train.regularisers import Regulariser

STATE_KEY = "train_state"  # the checkpoint key of `TrainState.state_dict()`


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


@dataclass
class TrainState:
    """The parts of a run that a checkpoint saves, and its progress (module docstring)."""

    model: nn.Module  # the Darknet being trained (never its DDP wrapper)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    regulariser: Regulariser
    ema: ModelEMA | None = None
    loader_generator: torch.Generator | None = None
    epoch: int = 0  # the next epoch to run (0-based) = epochs completed
    global_step: int = 0  # optimizer steps over the whole run
    history: list[dict] = field(default_factory=list)  # one metrics row per completed epoch
    best_map50: float | None = None

    @property
    def saved_model(self) -> nn.Module:
        """The model a checkpoint holds as its weights (and best.pt delivers): the average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "global_step": self.global_step,
            "history": self.history,
            "best_map50": self.best_map50,
            "regulariser": self.regulariser.state_dict(),
            "rng": capture_rng_state(self.loader_generator),
        }
        if self.scaler.is_enabled():
            state["scaler"] = self.scaler.state_dict()
        if self.ema is not None:
            # The saved model is the average; a resume continues training from the raw weights.
            state["train_state_dict"] = {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
            state["ema_updates"] = self.ema.updates
        return state

    def load_state_dict(self, checkpoint: dict, path: str | Path) -> None:
        """Put everything back as `checkpoint` (a whole .pt read from `path`: its weights and, under
        STATE_KEY, `state_dict()`) saved it. Checkpoints written before the state object have the same
        keys at their top level, and the regulariser's s as "sparsity_s"."""
        state = checkpoint.get(STATE_KEY, checkpoint)
        if "train_state_dict" in state:
            load_state_dict_checked(self.model, state["train_state_dict"], path)
        if self.ema is not None:
            self.ema.module.load_state_dict(checkpoint["state_dict"])
            self.ema.updates = int(state.get("ema_updates", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state.get("global_step", 0))
        self.history = list(state.get("history", []))
        self.best_map50 = state.get("best_map50")
        self.regulariser.load_state_dict(state.get("regulariser") or {"s": state.get("sparsity_s", self.regulariser.s)})
        if "rng" in state:
            restore_rng_state(state["rng"], self.loader_generator)
