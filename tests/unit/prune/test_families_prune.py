"""Channel and layer pruning on darknet's cfgs beyond YOLOv3, checked by OpenCV DNN as the oracle.

Exact-zero pruning: a chosen third of every prunable channel set gets γ = β = 0, so those channels
output act(0) = 0 (leaky, mish, linear; the logistic convs are heads and never prunable). Removing
them changes nothing: OpenCV's heads of the pruned cfg + weights, as yoloprune writes them, must
equal OpenCV's heads of the unpruned model within 1e-4 of their scale. This runs the channel
mapping through everything these cfgs have: shortcuts of unequal widths (yolov3-tiny-prn), route
groups (yolov4-tiny), SPP maxpools concatenated with their conv (yolov4, yolov3-spp, yolov7-tiny's
SPP-CSP), CSP and ELAN concatenations, and, in the CSP cfgs, a removed residual block whose branch
is zero. The big cfgs run at 160 px.
"""

import numpy as np
import pytest
import torch

from helpers import FIXTURES, GROUPED_ROUTE, OPENCV_BN_EPS, calibrate_bn, cfg_text, conv, opencv_model_heads, random_darknet, random_model
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.graph import analyze_graph
from yoloprune.darknet.residual import residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.prune import mask_model, plan_channel_prune, prune_model
from yoloprune.prune.apply import zero_removed_gammas
from yoloprune.prune.budget import BUDGET_TOLERANCE, MacsTarget, Ratio, Threshold


def _case(name: str, size: int, slow: bool = False):
    return pytest.param((name, size), id=name, marks=[pytest.mark.xdist_group(f"families-{name}")] + ([pytest.mark.slow] if slow else []))


CASES = [
    _case("yolov3-tiny-prn", 256),
    _case("yolov4-tiny", 256),
    _case("yolov7-tiny", 256),
    _case("yolov3-spp", 160, slow=True),
    _case("yolov4", 160, slow=True),
    _case("yolov4-csp", 160, slow=True),
]


def zero_a_third_of_every_prunable_set(model: Darknet) -> int:
    """γ = β = 0 on every third channel (from a per-set start) of every prunable channel set, in all of
    the set's convs; returns how many channel positions were zeroed. With route groups every part
    loses the same number of channels, as the planner requires."""
    zeroed = 0
    with torch.no_grad():
        for group in analyze_graph(model.cfg).prunable_groups():
            width = group.channels // group.parts
            channels = [part * width + c for part in range(group.parts) for c in range(group.root % 3, width, 3)]
            for idx in group.convs:
                model.layers[idx].bn.weight[channels] = 0
                model.layers[idx].bn.bias[channels] = 0
            zeroed += len(channels)
    return zeroed


def zero_a_residual_branch(model: Darknet):
    """The last removable residual block, its branch made exactly zero (γ = β = 0 in its second conv)."""
    blocks = residual_blocks(model.cfg)
    if not blocks:
        return None
    block = blocks[-1]
    with torch.no_grad():
        model.layers[block.second].bn.weight.zero_()
        model.layers[block.second].bn.bias.zero_()
    return block


@pytest.fixture(scope="module", params=CASES)
def zeroed(request, tmp_path_factory):
    """(model with a third of its prunable channels and one residual branch zeroed, zeroed count, the
    zero block or None, input, OpenCV's heads of the unpruned model, folder)."""
    name, size = request.param
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = random_model(str(FIXTURES / f"{name}.cfg"), seed=1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = OPENCV_BN_EPS
    calibrate_bn(model, x, seed=1)
    count = zero_a_third_of_every_prunable_set(model)
    block = zero_a_residual_branch(model)
    folder = tmp_path_factory.mktemp(name)
    return model, count, block, x, opencv_model_heads(model, folder, "unpruned", x), folder


@pytest.mark.parametrize("mode", ["full", "safe"])
def test_pruning_zero_channels_leaves_opencv_outputs_unchanged(zeroed, mode):
    model, count, block, x, expected, folder = zeroed
    assert count > 0
    plan = plan_channel_prune(model, mode, Threshold(1e-3), removed_blocks=[block] if block else [])
    assert not set(plan.kept_channels) & plan.removed_layers
    if mode == "full":  # every zeroed channel goes, from every member of its set
        assert plan.pruned_channel_count >= count
    assert plan.pruned_channel_count > 0
    pruned = prune_model(model, plan)
    actual = opencv_model_heads(pruned, folder, f"pruned-{mode}", x)  # the written cfg + weights load in OpenCV
    for reference, ours in zip(expected, actual):
        scale = np.abs(reference).max()
        assert scale > 1e-3 and reference.std() > 0.05 * scale, "outputs must vary for the comparison to mean anything"
        assert np.abs(ours - reference).max() <= 1e-4 * scale


@pytest.mark.parametrize("target", [0.5])
def test_macs_budget_lands_within_one_percent(zeroed, target):
    model = zeroed[0]
    plan = plan_channel_prune(model, "full", MacsTarget(target))
    achieved = count_cfg_macs(prune_model(model, plan).cfg, plan.img_size) / count_cfg_macs(model.cfg, plan.img_size)
    assert abs(achieved / target - 1) <= BUDGET_TOLERANCE


def test_yolov3_tiny_prn_prunes_around_its_unequal_shortcuts():
    model = random_model(str(FIXTURES / "yolov3-tiny-prn.cfg")).eval()
    plan = plan_channel_prune(model, "full", Ratio(0.3))
    # darknet sums only the leading channels of conv 8 and of conv 20's set: none of them may be cut
    for conv_idx in (8, 20, 23):
        assert len(plan.kept_channels.get(conv_idx, range(model.out_channels[conv_idx]))) == model.out_channels[conv_idx]
    assert plan.kept_channels, "the other convs are prunable"
    pruned = prune_model(model, plan)
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for compact, masked in zip(pruned.forward_heads(x), mask_model(model, plan).forward_heads(x)):
            assert (compact - masked).abs().max() <= 1e-4 * masked.abs().max()


@pytest.mark.parametrize("mode", ["safe", "full"])
def test_yolov4_tiny_prunes_the_convs_read_through_route_groups_by_equal_halves(mode):
    model = random_model(str(FIXTURES / "yolov4-tiny.cfg")).eval()
    plan = plan_channel_prune(model, mode, Ratio(0.5))
    for conv_idx in (2, 10, 18):  # each read by `[route] groups=2 group_id=1` right after it
        half = model.out_channels[conv_idx] // 2
        kept = torch.tensor(plan.kept_channels[conv_idx])
        assert 0 < len(kept) < 2 * half
        assert (kept < half).sum() == (kept >= half).sum()
        # each half keeps its own most important channels (the convs of its set share their channels)
        gamma = torch.stack([model.layers[idx].bn.weight.detach().abs() for idx in analyze_graph(model.cfg).group_for(conv_idx).convs]).amax(0)
        for part in (kept[kept < half], kept[kept >= half]):
            lo = int(part[0]) // half * half
            others = torch.tensor(sorted(set(range(lo, lo + half)) - set(part.tolist())), dtype=torch.long)
            if mode == "full" and len(others):
                assert gamma[part].min() >= gamma[others].max()
    x = torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for compact, masked in zip(prune_model(model, plan).forward_heads(x), mask_model(model, plan).forward_heads(x)):
            assert (compact - masked).abs().max() <= 1e-4 * masked.abs().max()


def test_the_halves_of_a_grouped_route_pair_their_channels_by_rank_not_by_index():
    # conv 0's first half needs channels 0, 1, its second half channels 6, 7 (positions 2, 3): paired
    # by index every position would stay; by rank each half keeps its two, and the model is unchanged
    text = cfg_text(conv(8), GROUPED_ROUTE, conv(6), "[route]\nlayers=0,-1\n", conv(6), size=32)
    model = random_darknet(text, seed=3)
    with torch.no_grad():
        model.layers[0].bn.weight[[2, 3, 4, 5]] = 0.0
        model.layers[0].bn.bias[[2, 3, 4, 5]] = 0.0
    plan = plan_channel_prune(model, "full", Threshold(1e-6))
    assert plan.kept_channels[0] == [0, 1, 6, 7]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (expected,), (actual,) = model.forward_heads(x), prune_model(model, plan).forward_heads(x)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_removed_constants_fold_through_route_groups_maxpools_and_concatenations():
    # every reader of a pruned channel is a 1x1 conv: the folded compact model equals, everywhere, the
    # unpruned one whose removed channels output their constant act(β) (β of both signs, leaky)
    spp = "[maxpool]\nsize=5\nstride=1\n\n[route]\nlayers=-1,-2\n"
    text = cfg_text(conv(8), GROUPED_ROUTE, conv(6), spp, conv(6), "[route]\nlayers=0,-1\n", size=32)
    model = random_darknet(text, seed=2)
    with torch.no_grad():
        for idx in (0, 2, 5):
            model.layers[idx].bn.weight[1::2] *= 0.01  # conv 0: positions 1, 3 of both halves
    plan = plan_channel_prune(model, "full", Threshold(0.1))
    assert sorted(plan.kept_channels) == [0, 2, 5] and plan.kept_channels[0] == [0, 2, 4, 6]
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        (expected,), (actual,) = zero_removed_gammas(model, plan).forward_heads(x), prune_model(model, plan).forward_heads(x)
    assert (actual - expected).abs().max() <= 1e-5 * expected.abs().max()
