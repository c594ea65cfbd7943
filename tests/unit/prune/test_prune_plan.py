"""Planning: thresholds, budgets, min-keep, rounding, coupled groups, layer choice, auto search, BN recalibration."""

import json
import math

import pytest
import torch

from helpers import CONFIGS, FIXTURES, heads, max_diff, randomize_bn, sparse_nano
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.graph import analyze_graph, safe_prunable_conv_indices
from yoloprune.darknet.residual import residual_blocks
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.errors import CfgError
from yoloprune.prune.apply import build_compact_model, mask_model, prune_model
from yoloprune.prune.auto import search_max_pruning
from yoloprune.prune.budget import MacsTarget, ParamsTarget, Ratio, Threshold
from yoloprune.prune.calibrate import recalibrate_batchnorm
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.importance import bn_scale
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.report import build_prune_report


def test_plan_round_trips_through_json(tmp_path):
    model = sparse_nano()
    plan = plan_channel_prune(model, "full", Ratio(0.5), removed_blocks=plan_layer_prune(model, 2))
    plan.save(tmp_path / "plan.json")
    assert PrunePlan.load(tmp_path / "plan.json") == plan
    assert PrunePlan.from_dict(json.loads(plan.to_json())) == plan
    assert "mode=full" in str(plan)


@pytest.mark.parametrize("mode", ["safe", "full"])
def test_ratio_removes_the_lowest_gammas(mode):
    model = sparse_nano()
    plan = plan_channel_prune(model, mode, Ratio(0.6))
    if mode == "safe":
        assert set(plan.candidate_layers) == set(safe_prunable_conv_indices(model.cfg))
    # a shared channel set ranks a channel by its members' max |γ|; a lone conv by its own
    graph = analyze_graph(model.cfg)
    gammas = bn_scale(model)
    importance = {}
    for idx in plan.candidate_layers:
        members = graph.group_for(idx).convs if mode == "full" else (idx,)
        importance[idx] = torch.stack([gammas[m] for m in members]).amax(dim=0)
    removed = [float(importance[i][c]) for i, kept in plan.kept_channels.items() for c in range(plan.channels_before[i]) if c not in kept]
    assert removed and max(removed) <= plan.threshold
    for idx in plan.candidate_layers:
        kept = plan.kept_channels.get(idx, range(plan.channels_before[idx]))
        below = [c for c in kept if importance[idx][c] < plan.threshold]
        assert not below or len(kept) == 1  # only min_keep (1) keeps a channel under the threshold


def test_full_mode_prunes_a_coupled_group_together_by_its_max_gamma():
    model = sparse_nano()
    graph = analyze_graph(model.cfg)
    chain = max(graph.coupled_groups, key=lambda g: len(g.convs))
    first, second = chain.convs[0], chain.convs[1]
    with torch.no_grad():
        for idx in chain.convs:
            model.layers[idx].bn.weight[:3] = 0.0
        model.layers[second].bn.weight[2] = 5.0  # channel 2 matters in one summand: it must stay
    plan = plan_channel_prune(model, "full", Threshold(1e-9))
    kept_lists = {tuple(plan.kept_channels[idx]) for idx in chain.convs}
    assert len(kept_lists) == 1
    kept = kept_lists.pop()
    assert 0 not in kept and 1 not in kept and 2 in kept
    assert first in plan.candidate_layers


@pytest.mark.parametrize("min_keep", [3, 0.25])
def test_min_keep_never_leaves_a_layer_empty(min_keep):
    model = sparse_nano()
    plan = plan_channel_prune(model, "full", Ratio(1.0), min_keep=min_keep)
    for idx in plan.candidate_layers:
        width = plan.channels_before[idx]
        expected = min(width, min_keep) if min_keep >= 1 else math.ceil(min_keep * width)
        assert plan.channels_after(idx) == max(1, expected)
    pruned = prune_model(model, plan)
    with torch.no_grad():
        pruned.forward_heads(torch.rand(1, 3, 64, 64))


def test_round_keeps_multiples_of_8_by_top_gamma():
    model = Darknet(str(CONFIGS / "yolov3-hand-small.cfg")).eval()
    randomize_bn(model)
    plan = plan_channel_prune(model, "safe", Ratio(0.7), round_to=8)
    gammas = bn_scale(model)
    for idx, kept in plan.kept_channels.items():
        assert len(kept) % 8 == 0
        top = torch.sort(gammas[idx], descending=True, stable=True).indices[: len(kept)]
        assert sorted(top.tolist()) == kept


@pytest.mark.parametrize("mode, target", [("full", MacsTarget), ("full", ParamsTarget), ("safe", ParamsTarget)])
def test_budget_search_lands_within_one_percent(mode, target):
    model = sparse_nano()
    plan = plan_channel_prune(model, mode, target(0.4))
    pruned = prune_model(model, plan)
    report = build_prune_report(model, pruned, plan)
    achieved = report.macs_ratio if target is MacsTarget else report.params_ratio
    assert abs(achieved / 0.4 - 1) <= 0.01
    # the cfg-only prediction made while planning is what the built model has
    assert plan.params_after == count_parameters(pruned)
    assert plan.macs_after == count_cfg_macs(pruned.cfg, plan.img_size)


def test_a_custom_importance_decides_what_is_kept():
    model = sparse_nano()
    with torch.no_grad():
        gammas = {idx: layer.bn.weight.abs().clone() for idx, layer in enumerate(model.layers) if getattr(layer, "bn", None) is not None}

    def smallest_gamma_first(m):  # the reverse of network slimming: a large |γ| is the least important
        return {idx: -layer.bn.weight.detach().abs() for idx, layer in enumerate(m.layers) if getattr(layer, "bn", None) is not None}

    # threshold -cut removes the channels whose reversed score -|γ| is below -cut, i.e. |γ| > cut
    candidates = safe_prunable_conv_indices(model.cfg)
    cut = float(torch.cat([gammas[idx] for idx in candidates]).median())
    plan = plan_channel_prune(model, "safe", Threshold(-cut), importance=smallest_gamma_first)
    for idx in candidates:
        expected = [c for c in range(len(gammas[idx])) if gammas[idx][c] <= cut]
        if not expected:  # min_keep = 1: the most important channel, here the one of smallest |γ|
            expected = [int(torch.argmin(gammas[idx]))]
        assert plan.kept_channels.get(idx, list(range(len(gammas[idx])))) == expected
    assert plan.kept_channels != plan_channel_prune(model, "safe", Threshold(cut)).kept_channels
    # blocks too: the reversed score removes the blocks whose second conv has the largest mean |γ|
    blocks = residual_blocks(model.cfg)
    by_mean = sorted(blocks, key=lambda b: -float(gammas[b.second].mean()))
    assert plan_layer_prune(model, 2, importance=smallest_gamma_first) == sorted(by_mean[:2], key=lambda b: b.shortcut)


def test_more_pruning_never_costs_more():
    model = sparse_nano()
    macs = [plan_channel_prune(model, "full", Ratio(r), round_to=4).macs_after for r in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)]
    assert macs == sorted(macs, reverse=True) and macs[0] > macs[-1]


def test_layer_pruning_picks_the_least_important_blocks():
    model = sparse_nano()
    blocks = plan_layer_prune(model, 5)
    others = [b for b in residual_blocks(model.cfg) if b not in blocks]
    mean_gamma = {b: float(model.layers[b.second].bn.weight.detach().abs().mean()) for b in residual_blocks(model.cfg)}  # by hand
    assert max(mean_gamma[b] for b in blocks) <= min(mean_gamma[b] for b in others)
    plan = plan_channel_prune(model, "full", removed_blocks=blocks)
    pruned = prune_model(model, plan)
    assert len(pruned.cfg.layers) == len(model.cfg.layers) - 15
    report = build_prune_report(model, pruned, plan)
    assert report.params_after < report.params_before
    with pytest.raises(CfgError, match="removable"):
        plan_layer_prune(model, 24)


def test_other_topologies_compact_equals_masked():
    # yolov3-tiny: maxpools (size 2 stride 1 too), a route to an earlier layer, no shortcuts
    torch.manual_seed(0)
    model = randomize_bn(Darknet(str(FIXTURES / "yolov3-tiny.cfg"))).eval()
    plan = plan_channel_prune(model, "full", Ratio(0.6))
    assert plan.kept_channels
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(heads(mask_model(model, plan), x), heads(build_compact_model(model, plan), x)) <= 1e-4


@pytest.mark.slow  # builds the 63M-parameter model
def test_spp_compact_equals_masked():
    torch.manual_seed(0)
    model = randomize_bn(Darknet(str(FIXTURES / "yolov3-spp.cfg"))).eval()
    plan = plan_channel_prune(model, "full", Ratio(0.8), removed_blocks=plan_layer_prune(model, 4))
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(heads(mask_model(model, plan), x), heads(build_compact_model(model, plan), x)) <= 1e-4


def test_auto_search_finds_the_largest_acceptable_pruning():
    model = sparse_nano()
    full_params = count_parameters(model)

    def fake_map50(m):  # accuracy that falls with the parameters removed
        return count_parameters(m) / full_params

    result = search_max_pruning(model, fake_map50, max_map_drop=0.6, mode="full", apply=prune_model, steps=7)
    assert result.map50_before == 1.0
    assert result.map50_after >= 0.4
    accepted = [t for t in result.trials if t.accepted]
    rejected = [t for t in result.trials if not t.accepted]
    assert accepted and rejected
    assert result.plan.settings["ratio"] == max(t.ratio for t in accepted)
    assert all(t.map50 < 0.4 for t in rejected)
    # the bisection brackets the boundary tightly
    assert min(t.ratio for t in rejected) - max(t.ratio for t in accepted) <= 1 / 32


def test_auto_search_chooses_the_block_count_within_half_the_tolerance():
    from yoloprune.darknet.residual import residual_blocks

    model = sparse_nano()
    full_blocks, full_params = len(residual_blocks(model.cfg)), count_parameters(model)
    assert full_blocks >= 3

    def fake_map50(m):  # each removed block costs 0.1, removed parameters cost a little
        removed = full_blocks - len(residual_blocks(m.cfg))
        return 1.0 - 0.1 * removed - 0.05 * (1 - count_parameters(m) / full_params)

    result = search_max_pruning(model, fake_map50, max_map_drop=0.25, mode="full", apply=prune_model, steps=5, search_blocks=True)
    # half the tolerance (0.125) allows one block; the channel search then spends the rest
    assert len(result.plan.removed_blocks) == 1
    block_trials = [t for t in result.trials if t.ratio == 0.0]
    assert {t.blocks: t.accepted for t in block_trials}.get(2) is False
    channel_trials = [t for t in result.trials if t.ratio > 0]
    assert channel_trials and all(t.blocks == 1 for t in channel_trials)
    assert result.plan.settings["ratio"] > 0 and result.map50_after >= 0.75


def test_recalibration_matches_the_batch_statistics():
    model = sparse_nano()
    images = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    before = model.layers[0].bn.running_mean.clone()
    assert recalibrate_batchnorm(model, [], 4) == 0
    assert torch.equal(model.layers[0].bn.running_mean, before)
    used = recalibrate_batchnorm(model, [(images[:2],), (images[2:],)], 5)
    assert used == 5 and not model.training
    with torch.no_grad():  # the first BN sees the conv output; each batch's mean counts once
        batch_means = [model.layers[0].conv(batch).mean(dim=(0, 2, 3)) for batch in (images[:2], images[2:5])]
    assert torch.allclose(model.layers[0].bn.running_mean, sum(batch_means) / 2, atol=1e-5)
    assert model.layers[0].bn.momentum == 0.03


def test_unreachable_budget_warns_and_prunes_as_far_as_allowed(caplog):
    model = sparse_nano()
    plan = plan_channel_prune(model, "safe", MacsTarget(0.01))
    assert "not reachable" in caplog.text
    most = plan_channel_prune(model, "safe", Ratio(1.0))
    assert plan.macs_after == most.macs_after and plan.settings["achieved"] > 0.01
