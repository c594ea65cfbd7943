"""Channel pruning checked against an oracle that shares no code with the folding in `prune.apply`:
the unpruned network with the γ of every pruned channel set to 0, run by OpenCV DNN from its darknet
export.

In eval mode a BN channel with γ = 0 outputs β exactly, so the channel outputs the constant act(β):
precisely what the compact model claims to have folded into the layers that read it. The two networks
agree wherever that constant is truly constant. A 1×1 conv sees it at every position; a larger conv
sees the zero padding instead under some taps at the border, where the compact model (which adds the
constant under every tap) differs, and every later layer's window carries that difference further
inward. So the comparison is exact everywhere when every reader of a pruned channel is a 1×1 conv,
and otherwise covers the positions the padding cannot reach (`reach_of_padding`).

Residual blocks removed whole are left out: they match this oracle only when their branch is constant.
"""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import CONFIGS, FIXTURES, opencv_model_heads, random_model, sparse_nano
from yoloprune.darknet.cfg import ConvBlock, DarknetCfg, MaxpoolBlock, UpsampleBlock
from yoloprune.darknet.model import Darknet
from yoloprune.prune.apply import prune_model
from yoloprune.prune.budget import Ratio, Threshold
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.plan import PrunePlan

TINY, NANO = FIXTURES / "yolov3-tiny.cfg", CONFIGS / "yolov3-hand-nano.cfg"


def zero_gamma_oracle(model: Darknet, plan: PrunePlan) -> Darknet:
    """A copy of the unpruned `model` whose pruned channels have γ = 0 (and so output act(β))."""
    oracle = copy.deepcopy(model)
    with torch.no_grad():
        for idx, kept in plan.kept_channels.items():
            pruned = torch.ones(plan.channels_before[idx], dtype=torch.bool)
            pruned[kept] = False
            oracle.layers[idx].bn.weight[pruned] = 0
    return oracle


def reach_of_padding(cfg: DarknetCfg, size: int, pruned_convs: set[int]) -> list[torch.Tensor]:
    """Per layer: a (1, 1, H, W) map, 1 where the layer's output may differ between the oracle and the
    compact model. A difference starts in a conv larger than 1×1 whose input carries a pruned channel's
    constant (an output of a pruned conv, through any layers but convs, which absorb it), at the output
    positions whose window covers padding; from there each layer's window spreads it. Maxpool and
    upsample are exact on a constant (darknet's maxpool padding never wins a max)."""
    maps: list[torch.Tensor] = []
    carries: list[bool] = []  # the output holds a pruned channel's constant
    for idx, block in enumerate(cfg.layers):
        inputs = [j for j in cfg.inputs_of(idx) if j >= 0]
        if inputs:  # routes and shortcuts join maps of one size
            reach = torch.stack([maps[j] for j in inputs]).amax(dim=0)
        else:
            reach = torch.zeros(1, 1, size, size)
        carries_in = any(carries[j] for j in inputs)
        if isinstance(block, ConvBlock):
            pad = block.padding_px
            reach = F.max_pool2d(F.pad(reach, (pad,) * 4, value=float(carries_in)), block.size, block.stride)
            carries.append(idx in pruned_convs)
        else:
            if isinstance(block, MaxpoolBlock):
                total = block.padding_total
                reach = F.max_pool2d(F.pad(reach, (total // 2, total - total // 2) * 2), block.size, block.stride)
            elif isinstance(block, UpsampleBlock):
                reach = F.interpolate(reach, scale_factor=block.stride, mode="nearest")
            carries.append(carries_in)
        maps.append(reach)
    return maps


def compare_with_the_oracle(model: Darknet, plan: PrunePlan, size: int, folder) -> tuple[int, int]:
    """Assert that the compact model equals the oracle where the padding cannot reach (both run by
    OpenCV); returns (positions compared, positions left out) over all heads."""
    assert plan.kept_channels and not plan.removed_blocks
    compact = prune_model(model, plan)
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = opencv_model_heads(zero_gamma_oracle(model, plan), folder, "oracle", x)
    actual = opencv_model_heads(compact, folder, "compact", x)
    reach = reach_of_padding(model.cfg, size, set(plan.kept_channels))
    compared = left_out = 0
    for head, oracle_out, compact_out in zip(model.yolo_indices, expected, actual):
        interior = (reach[head - 1][0, 0] == 0).numpy()
        scale = np.abs(oracle_out).max()
        assert scale > 1e-3, "outputs must be non-trivial for the comparison to mean anything"
        assert np.abs(compact_out - oracle_out)[:, :, interior].max() <= 1e-4 * scale
        compared, left_out = compared + int(interior.sum()), left_out + int((~interior).sum())
        if not interior.all():  # the border is left out because it does differ there
            assert np.abs(compact_out - oracle_out)[:, :, ~interior].max() > 1e-3 * scale
    return compared, left_out


def convs_read_only_by_1x1_convs(cfg: DarknetCfg) -> list[int]:
    readers: dict[int, list] = {}
    for idx, block in enumerate(cfg.layers):
        for j in cfg.inputs_of(idx):
            readers.setdefault(j, []).append(block)
    return [
        idx
        for idx, block in enumerate(cfg.layers)
        if isinstance(block, ConvBlock) and block.batch_normalize
        and idx in readers and all(isinstance(r, ConvBlock) and r.size == 1 for r in readers[idx])
    ]


@pytest.mark.parametrize("cfg_path, size", [(TINY, 416), (NANO, 128)], ids=["yolov3-tiny", "yolov3-nano"])
def test_pruning_channels_read_by_1x1_convs_equals_the_oracle_everywhere(tmp_path, cfg_path, size):
    model = random_model(str(cfg_path), seed=1).eval()  # every |γ| in [0.5, 1.5]
    targets = convs_read_only_by_1x1_convs(model.cfg)
    assert targets
    with torch.no_grad():  # every other channel of the targets falls under the threshold
        for idx in targets:
            model.layers[idx].bn.weight[::2] *= 0.01
    plan = plan_channel_prune(model, "full", Threshold(0.1))
    assert sorted(plan.kept_channels) == targets
    compared, left_out = compare_with_the_oracle(model, plan, size, tmp_path)
    assert left_out == 0 and compared > 0


@pytest.mark.parametrize(
    "cfg_path, size, options",
    [
        (TINY, 416, dict(mode="full", budget=Ratio(0.5))),
        # Darknet-53's 3×3 convs carry the border ~13 cells into the 1/32 head: a large input leaves an interior
        (NANO, 1024, dict(mode="full", budget=Ratio(0.6))),
        (NANO, 1024, dict(mode="safe", budget=Ratio(0.6))),
    ],
    ids=["yolov3-tiny-full", "yolov3-nano-full", "yolov3-nano-safe"],
)
def test_pruning_by_ratio_equals_the_oracle_away_from_the_padding(tmp_path, cfg_path, size, options):
    model = sparse_nano() if cfg_path == NANO else random_model(str(cfg_path), seed=1).eval()
    plan = plan_channel_prune(model, **options)
    compared, left_out = compare_with_the_oracle(model, plan, size, tmp_path)
    assert compared >= 9 * len(model.yolo_indices) and left_out > 0
