"""Cfg surgery: a new cfg with conv widths changed and residual blocks taken out.

Plain cfg in, cfg out (no weights), so that a planner can price a candidate cut from the cfg alone
and the applier can build the network the cut leaves.
"""

from __future__ import annotations

from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, RouteBlock, ShortcutBlock, copy_block
from yoloprune.darknet.residual import ResidualBlock


def build_pruned_cfg(
    cfg: DarknetCfg,
    filters: dict[int, int] | None = None,
    removed_blocks: list[ResidualBlock] | tuple[ResidualBlock, ...] = (),
) -> DarknetCfg:
    """The cfg with conv `filters` changed and residual blocks removed; route/shortcut references
    are renumbered (relative ones stay relative) and a reference to a removed block's shortcut
    points to the block's input, which is what that shortcut outputs once the block is gone."""
    filters = filters or {}
    removed_shortcuts = {block.shortcut: block for block in removed_blocks}
    removed = {idx for block in removed_blocks for idx in block.layers}
    alias: dict[int, int] = {}  # removed shortcut -> the kept layer standing for its output
    new_index: dict[int, int] = {}
    layers = []

    def target(old_idx: int) -> int:
        return new_index[alias.get(old_idx, old_idx)]

    def rewrite(old_idx: int, new_idx: int, ref: int) -> int:
        new_target = target(cfg.resolve(old_idx, ref))
        return new_target - new_idx if ref < 0 else new_target

    for idx, block in enumerate(cfg.layers):
        if idx in removed:
            if idx in removed_shortcuts:
                before = removed_shortcuts[idx].first - 1
                alias[idx] = alias.get(before, before)
            continue
        new_idx = len(layers)
        new_index[idx] = new_idx
        if isinstance(block, ConvBlock):
            block = copy_block(block, filters=filters.get(idx, block.filters))
        elif isinstance(block, RouteBlock):
            block = copy_block(block, layers=tuple(rewrite(idx, new_idx, ref) for ref in block.layers))
        elif isinstance(block, ShortcutBlock):
            block = copy_block(block, from_=rewrite(idx, new_idx, block.from_))
        if not isinstance(block, RouteBlock) and idx > 0 and target(idx - 1) != new_idx - 1:
            raise ValueError(f"layer {idx} would lose its input (layer {idx - 1}) when removing {sorted(removed)}")
        layers.append(block)
    return cfg.replace(layers)
