"""Re-estimate batch-norm running statistics of a pruned model on unlabelled images.

Pruning changes what every BN downstream of a removed channel sees; folding corrects the mean of
those inputs for constant channels but not what the removed channels' variation did. Running the
pruned model over a few hundred training images and averaging each BN's batch statistics (no
gradient, no labels) re-fits mean and variance to the network as it now is.
"""

from __future__ import annotations

import logging
from typing import Iterable

import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


def recalibrate_batchnorm(model: nn.Module, batches: Iterable, num_images: int, device: str | torch.device = "cpu") -> int:
    """Replace every BN's running mean/var by the cumulative average over `num_images` images of
    `batches` (tensors N×3×H×W, or tuples whose first item is one). Returns the images used; with
    none, the statistics are left as they were."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or num_images <= 0:
        return 0
    saved = [(m.momentum, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in norms]
    was_training = model.training
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch counts equally
        norm.train()
    forward = getattr(model, "forward_heads", model)
    seen = 0
    try:
        with torch.no_grad(), tqdm(total=num_images, desc="BN recalibration", unit="img", leave=False) as progress:
            for batch in batches:
                images = batch[0] if isinstance(batch, (tuple, list)) else batch
                images = images[: num_images - seen].to(device)
                if len(images) == 0:
                    break
                forward(images)
                seen += len(images)
                progress.update(len(images))
                if seen >= num_images:
                    break
    finally:
        for norm, (momentum, mean, var, count) in zip(norms, saved):
            norm.momentum = momentum
            if seen == 0:
                norm.running_mean.copy_(mean)
                norm.running_var.copy_(var)
                norm.num_batches_tracked.copy_(count)
        model.train(was_training)
    if seen < num_images:
        log.warning("BN recalibration used %d images (%d asked for): the loader ran out", seen, num_images)
    return seen
