"""Training: the YOLOv3 loss, BN-γ sparsity, and one Trainer for baseline, sparse training and finetuning.

`train(TrainConfig(...)) -> TrainResult` runs a whole training. Names load on first use, so importing
the package does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "TrainConfig": "yoloprune.train.trainer",
    "TrainResult": "yoloprune.train.trainer",
    "Trainer": "yoloprune.train.trainer",
    "TrainingDiverged": "yoloprune.train.trainer",
    "TrainingStopped": "yoloprune.train.trainer",
    "train": "yoloprune.train.trainer",
    "read_metrics_csv": "yoloprune.train.trainer",
    "YoloLoss": "yoloprune.train.loss",
    "LossWeights": "yoloprune.train.loss",
    "apply_bn_sparsity": "yoloprune.train.sparsity",
    "resolve_sparsity_layers": "yoloprune.train.sparsity",
    "sparsity_at_epoch": "yoloprune.train.sparsity",
    "summarize_gammas": "yoloprune.train.sparsity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
