"""Layer pruning: remove whole residual blocks (conv, conv, shortcut).

A block's branch adds act(BN(conv(...))) of its second conv to the block's input. The less that
output varies, the less the block does beyond adding a constant, and the variation of a BN output
channel scales with its |γ|. So a block's importance is the mean channel importance of its second
conv (by default `prune.importance.bn_scale`: |γ|); the blocks with the lowest importance are
removed, and `prune.apply` keeps adding their constant act(β) through the shortcut, so a block
whose branch is constant is removed without changing the output.
"""

from __future__ import annotations

import torch

from yoloprune.darknet.residual import ResidualBlock, residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.errors import CfgError
from yoloprune.prune.importance import Importance, bn_scale


def _block_score(scores: dict[int, torch.Tensor], block: ResidualBlock) -> float:
    return float(torch.as_tensor(scores[block.second]).double().mean())


def plan_layer_prune(model: Darknet, num_blocks: int, importance: Importance = bn_scale) -> list[ResidualBlock]:
    """The `num_blocks` removable residual blocks with the lowest importance, in cfg order."""
    blocks = residual_blocks(model.cfg)
    if num_blocks < 0 or num_blocks > len(blocks):
        raise CfgError(f"cannot remove {num_blocks} residual blocks: the cfg has {len(blocks)} removable ones", model.cfg.path)
    scores = importance(model)  # once for all blocks
    ranked = sorted(blocks, key=lambda block: (_block_score(scores, block), block.shortcut))
    return sorted(ranked[:num_blocks], key=lambda block: block.shortcut)
