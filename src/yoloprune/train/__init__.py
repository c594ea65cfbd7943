"""Training: the YOLOv3 loss, the BN-γ sparsity regularisers, and one Trainer for baseline, sparse training and finetuning.

`train(TrainSettings(...)) -> TrainResult` runs a whole training. Names load on first use, so importing
the package does not import torch.
"""

from __future__ import annotations

from yoloprune.lazy import lazy_getattr

_EXPORTS = {
    "TrainSettings": "yoloprune.train.settings",
    "TrainCallback": "yoloprune.train.trainer",
    "TrainResult": "yoloprune.train.trainer",
    "Trainer": "yoloprune.train.trainer",
    "TrainingDiverged": "yoloprune.train.trainer",
    "TrainingStopped": "yoloprune.train.trainer",
    "train": "yoloprune.train.trainer",
    "read_metrics_csv": "yoloprune.train.metrics",
    "YoloLoss": "yoloprune.train.loss",
    "LossWeights": "yoloprune.train.loss",
    "TrainState": "yoloprune.train.state",
    "Regulariser": "yoloprune.train.regularisers",
    "L1Sparsity": "yoloprune.train.regularisers",
    "Polarization": "yoloprune.train.regularisers",
    "build_regulariser": "yoloprune.train.regularisers",
    "resolve_sparsity_layers": "yoloprune.train.sparsity",
    "sparsity_at_epoch": "yoloprune.train.sparsity",
    "summarize_gammas": "yoloprune.train.sparsity",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
