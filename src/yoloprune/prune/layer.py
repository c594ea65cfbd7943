"""Layer pruning: remove whole residual blocks (conv, conv, shortcut).

A block's branch adds act(BN(conv(...))) of its second conv to the block's input. The less that
output varies, the less the block does beyond adding a constant, and the variation of a BN output
channel scales with its |γ|. So a block's importance is the mean |γ| of its second conv; the blocks
with the lowest importance are removed, and `prune.apply` keeps adding their constant act(β)
through the shortcut, so a block whose branch is constant is removed without changing the output.
"""

from __future__ import annotations

from yoloprune.darknet.graph import ResidualBlock, residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.errors import CfgError


def block_importance(model: Darknet, block: ResidualBlock) -> float:
    return float(model.layers[block.second].bn.weight.detach().abs().mean())


def plan_layer_prune(model: Darknet, num_blocks: int) -> list[ResidualBlock]:
    """The `num_blocks` removable residual blocks with the lowest importance, in cfg order."""
    blocks = residual_blocks(model.cfg)
    if num_blocks < 0 or num_blocks > len(blocks):
        raise CfgError(f"cannot remove {num_blocks} residual blocks: the cfg has {len(blocks)} removable ones", model.cfg.path)
    ranked = sorted(blocks, key=lambda block: (block_importance(model, block), block.shortcut))
    return sorted(ranked[:num_blocks], key=lambda block: block.shortcut)
