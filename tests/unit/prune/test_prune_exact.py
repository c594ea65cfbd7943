"""Pruning changes nothing it should not: exactness of β folding, compact == keep-size masked model."""

import pytest
import torch

from helpers import cfg_text, conv, heads, max_diff, random_darknet, sparse_nano
from yoloprune.darknet.cfg import ConvBlock
from yoloprune.darknet.model import Darknet
from yoloprune.prune.apply import build_compact_model, mask_model, prune_model
from yoloprune.prune.budget import MacsTarget, Ratio, Threshold
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.report import build_prune_report


def build(*sections: str) -> Darknet:
    return random_darknet(cfg_text(*sections))


def zero_gammas(model: Darknet, channels_by_layer: dict[int, list[int]]) -> int:
    """Set γ = 0 for some channels (their output becomes exactly act(β)); returns how many."""
    with torch.no_grad():
        for idx, channels in channels_by_layer.items():
            model.layers[idx].bn.weight[channels] = 0
    return sum(len(c) for c in channels_by_layer.values())


def prune_the_zeros(model: Darknet, mode: str):
    """A plan removing exactly the candidate channels whose importance is 0."""
    return plan_channel_prune(model, mode, Threshold(1e-12))


X = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))

# Each case: the layers (pruned channels feed only 1x1 convs), the channels zeroed per layer, the mode.
EXACT_CASES = {
    "plain_chain": ([conv(8, 3), conv(8), conv(6)], {0: [1, 4, 5], 1: [0, 7], 2: [2]}, "safe"),
    "shortcut_chain": (
        [conv(8, 3), conv(4), conv(8), "[shortcut]\nfrom=-3\nactivation=linear\n", conv(4), conv(8), "[shortcut]\nfrom=-3\nactivation=linear\n", conv(5)],
        {0: [2, 6], 2: [2, 6], 5: [2, 6], 1: [3], 4: [0]},
        "full",
    ),
    "leaky_shortcut": (
        [conv(8, 3), conv(4), conv(8), "[shortcut]\nfrom=-3\nactivation=leaky\n", conv(5)],
        {0: [0, 5], 2: [0, 5]},
        "full",
    ),
    "route_concat": ([conv(8, 3), conv(6), "[route]\nlayers=-1,-2\n", conv(5)], {0: [0, 3], 1: [1, 5]}, "safe"),
    "upsample_maxpool": (
        [conv(8, 3), conv(8, 1, stride=2), conv(8), "[upsample]\nstride=2\n", "[maxpool]\nsize=2\nstride=1\n", "[route]\nlayers=-1,0\n", conv(5)],
        {0: [1, 2], 2: [0, 5, 6]},
        "full",
    ),
    "mish_relu_linear": ([conv(8, 3, activation="mish"), conv(8, activation="relu"), conv(6, activation="linear"), conv(4)], {0: [0, 2], 1: [5], 2: [1, 3]}, "safe"),
}


@pytest.mark.parametrize("case", EXACT_CASES, ids=list(EXACT_CASES))
def test_zero_gamma_channels_prune_exactly_before_1x1_consumers(case):
    sections, zeroed_channels, mode = EXACT_CASES[case]
    model = build(*sections)
    zeroed = zero_gammas(model, zeroed_channels)
    plan = prune_the_zeros(model, mode)
    assert plan.pruned_channel_count == zeroed
    pruned = prune_model(model, plan)
    report = build_prune_report(model, pruned, plan)
    assert report.params_after < report.params_before
    for idx, channels in zeroed_channels.items():
        assert not set(channels) & set(plan.kept_channels[idx])
    assert max_diff(heads(model, X), heads(pruned, X)) <= 1e-4


def test_3x3_consumer_is_exact_on_interior_pixels():
    model = build(conv(8, 3), conv(8, 3), conv(6))
    zero_gammas(model, {0: [0, 3, 4]})
    plan = prune_the_zeros(model, "safe")
    pruned = prune_model(model, plan)
    original, compact = heads(model, X), heads(pruned, X)
    assert max_diff(original, compact, border=1) <= 1e-4
    assert max_diff(original, compact) > 1e-3  # the zero-padded border is where folding cannot be exact


@pytest.mark.parametrize(
    "options",
    [
        dict(mode="safe", budget=Ratio(0.6)),
        dict(mode="full", budget=Ratio(0.7), min_keep=0.1),
        dict(mode="full", budget=MacsTarget(0.3), round_to=4),
        dict(mode="full", budget=Ratio(0.5), layers=4),
        dict(mode="safe", layers=3),
    ],
    ids=["safe", "full", "full-budget-round", "full+layers", "layers-only"],
)
def test_compact_model_equals_keep_size_masked_model(options):
    model = sparse_nano()
    options = dict(options)
    blocks = plan_layer_prune(model, options.pop("layers", 0))
    plan = plan_channel_prune(model, removed_blocks=blocks, **options)
    masked, compact = mask_model(model, plan), build_compact_model(model, plan)
    assert sum(b.filters for b in compact.cfg.layers if isinstance(b, ConvBlock)) < sum(
        b.filters for b in model.cfg.layers if isinstance(b, ConvBlock)
    )
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(2))
    assert max_diff(heads(masked, x), heads(compact, x)) <= 1e-4
    with torch.no_grad():  # eval-mode decoded boxes agree too
        assert (masked(x) - compact(x)).abs().max() <= 1e-3


def test_removing_a_block_with_constant_branch_is_exact():
    block = [conv(4), conv(8, 3), "[shortcut]\nfrom=-3\nactivation=linear\n"]
    model = build(conv(8, 3), *block, *block, *block, conv(5, 3))
    # layer 5 is the second conv of the middle block: γ = 0 makes the branch output act(β) everywhere
    with torch.no_grad():
        model.layers[5].bn.weight.zero_()
    blocks = plan_layer_prune(model, 1)
    assert [b.layers for b in blocks] == [(4, 5, 6)]
    plan = plan_channel_prune(model, "full", removed_blocks=blocks)
    pruned = prune_model(model, plan)
    assert len(pruned.cfg.layers) == len(model.cfg.layers) - 3
    assert build_prune_report(model, pruned, plan).removed_blocks == [[4, 5, 6]]
    assert max_diff(heads(model, X), heads(pruned, X), border=1) <= 1e-4


def test_removing_blocks_and_channels_together_matches_masked_on_a_chain():
    block = [conv(4), conv(8, 3), "[shortcut]\nfrom=-3\nactivation=linear\n"]
    model = build(conv(8, 3), *block, *block, *block, conv(5))
    zero_gammas(model, {0: [1, 7], 2: [1, 7], 5: [1, 7], 8: [1, 7]})
    with torch.no_grad():
        model.layers[5].bn.weight.zero_()
    blocks = plan_layer_prune(model, 1)
    plan = plan_channel_prune(model, "full", Ratio(0.1), removed_blocks=blocks)
    pruned = prune_model(model, plan)
    assert max_diff(heads(mask_model(model, plan), X), heads(pruned, X)) <= 1e-4
    assert max_diff(heads(model, X), heads(pruned, X), border=1) <= 1e-4


def test_removed_block_read_by_a_route_is_replaced_by_its_input():
    model = sparse_nano()
    routed = [j for i, b in enumerate(model.cfg.layers) if b.section == "route" for j in model.cfg.inputs_of(i) if j != i - 1]
    shortcut = max(j for j in routed if model.cfg.layers[j].section == "shortcut")  # the last block of a stage
    with torch.no_grad():
        model.layers[shortcut - 1].bn.weight.zero_()
    blocks = plan_layer_prune(model, 1)
    assert [b.shortcut for b in blocks] == [shortcut]
    plan = plan_channel_prune(model, "full", Ratio(0.3), removed_blocks=blocks)
    compact = build_compact_model(model, plan)
    # the route that read the removed shortcut now reads the block's input (new index: unchanged, it precedes the block)
    block_input = shortcut - 3
    new_routes = [compact.cfg.inputs_of(i) for i, b in enumerate(compact.cfg.layers) if b.section == "route"]
    assert any(block_input in inputs for inputs in new_routes)
    x = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(4))
    assert max_diff(heads(mask_model(model, plan), x), heads(compact, x)) <= 1e-4


def test_zero_removed_gammas_is_what_the_compact_model_computes_where_consumers_are_1x1():
    """The zeroed-γ network (the prune report's folding reference) leaves the model as it was, zeroes
    exactly the planned channels, and equals the compact model when every consumer is 1×1."""
    from yoloprune.prune.apply import zero_removed_gammas

    model = build(conv(8, 3), conv(8), conv(6))
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    plan = plan_channel_prune(model, "safe", Ratio(0.5))
    zeroed = zero_removed_gammas(model, plan)
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    for idx, kept in plan.kept_channels.items():
        gamma = zeroed.layers[idx].bn.weight
        assert set(torch.nonzero(gamma == 0).flatten().tolist()) == set(range(len(gamma))) - set(kept)
    assert max_diff(heads(zeroed, X), heads(prune_model(model, plan), X)) < 1e-5
