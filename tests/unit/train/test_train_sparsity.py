"""The sparsity regularisers: the layer sets computed from the cfg graph, the L1 and polarization
gradient steps (against s·sign(γ) and a finite-difference oracle), the MACs weighting against
hand-counted costs, the schedule, the sparsity target's climb, the γ statistics."""

from __future__ import annotations

from helpers import ROOT

import pytest
import torch

from yoloprune.darknet.cfg import ConvBlock, ShortcutBlock, UpsampleBlock, load_cfg
from yoloprune.darknet.graph import bn_conv_indices, safe_prunable_conv_indices
from yoloprune.darknet.model import Darknet
from yoloprune.train.regularisers import L1Sparsity, Polarization, build_regulariser
from yoloprune.train.settings import TrainSettings
from yoloprune.train.sparsity import SMALL_GAMMA, resolve_sparsity_layers, sparsity_at_epoch, summarize_gammas

ROOT = ROOT
FIXTURES = ROOT / "tests" / "fixtures"
NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"


def test_safe_set_of_the_seed_cfg_has_42_layers():
    cfg = load_cfg(FIXTURES / "yolov3-hand.cfg")
    assert len(safe_prunable_conv_indices(cfg)) == 42
    assert len(resolve_sparsity_layers(cfg, "all")) == len(bn_conv_indices(cfg)) == 72


@pytest.mark.parametrize("name", ["yolov3-hand.cfg", "yolov3.cfg", "yolov3-spp.cfg", "yolov3-tiny.cfg"])
def test_safe_set_excludes_every_shortcut_summand_and_upsample_input(name):
    cfg = load_cfg(FIXTURES / name)
    safe = set(safe_prunable_conv_indices(cfg))
    assert safe <= set(bn_conv_indices(cfg))
    for idx, block in enumerate(cfg.layers):
        if isinstance(block, (ShortcutBlock, UpsampleBlock)):
            for input_idx in cfg.inputs_of(idx):
                if isinstance(cfg.layers[input_idx], ConvBlock):
                    assert input_idx not in safe, f"{name}: layer {input_idx} feeds [{block.section}] {idx}"


def regulariser_for(cfg, img_size: int = 64, **settings):
    """The regulariser `yoloprune train` builds for these settings (s = 0.01 unless given)."""
    return build_regulariser(TrainSettings(**{"sparsity": 0.01, **settings}), cfg, img_size)


def model_with_random_gammas(seed: int = 0, low: float = -1.0) -> Darknet:
    torch.manual_seed(seed)
    model = Darknet(str(NANO_CFG))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(low, 1)  # both signs by default, so sign(γ) matters
    return model


def test_l1_step_adds_exactly_s_sign_gamma_to_the_chosen_gamma_grads():
    model = model_with_random_gammas()
    sum(head.sum() for head in model(torch.rand(2, 3, 64, 64))).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    regulariser = regulariser_for(model.cfg, sparsity=0.003, sparsity_layers="safe")
    assert isinstance(regulariser, L1Sparsity) and regulariser.at_epoch(0) == 0.003
    chosen = safe_prunable_conv_indices(model.cfg)
    assert regulariser.penalised == chosen
    regulariser.regularize(model)
    for name, parameter in model.named_parameters():
        layer_idx = int(name.split(".")[1])
        if name.endswith("bn.weight") and layer_idx in chosen:
            assert torch.equal(parameter.grad, before[name] + 0.003 * torch.sign(parameter.detach()))
        else:
            assert torch.equal(parameter.grad, before[name]), name


def test_sparsity_schedule_constant_and_decayed():
    assert [sparsity_at_epoch(0.01, e, 10) for e in range(10)] == [0.01] * 10
    decayed = [sparsity_at_epoch(0.01, e, 10, decay_fraction=0.7, decay_factor=0.01) for e in range(10)]
    assert decayed[:7] == [0.01] * 7 and decayed[7:] == pytest.approx([1e-4] * 3)


def test_gamma_summary_quantiles_and_small_fraction():
    model = Darknet(str(NANO_CFG))
    chosen = resolve_sparsity_layers(model.cfg, "all")
    with torch.no_grad():
        for k, idx in enumerate(chosen):
            gamma = model.layers[idx].bn.weight
            gamma.copy_(torch.linspace(-1, 1, gamma.numel()) * (k + 1) / len(chosen))
    stats = summarize_gammas(model, chosen)
    values = torch.cat([model.layers[idx].bn.weight.detach().abs() for idx in chosen])
    quantiles = [stats[f"gamma_q{q}"] for q in (0, 25, 50, 75, 100)]
    assert quantiles == sorted(quantiles)
    assert quantiles[0] == pytest.approx(float(values.min())) and quantiles[-1] == pytest.approx(float(values.max()))
    assert stats["gamma_frac_small"] == pytest.approx(float((values < SMALL_GAMMA).float().mean()))
    assert stats["gamma_first"] == pytest.approx(model.layers[chosen[0]].bn.weight.tolist())


# ---------------------------------------------------------------------------------------------- MACs weighting


def macs_by_hand(out_side: int, filters: int, in_channels: int, size: int) -> int:
    """A conv's multiply-adds from its cfg fields: every output pixel of every filter sums in_channels x size² products."""
    return out_side * out_side * filters * in_channels * size * size


# size 64: conv0 (3x3, 64²) → conv1 (3x3 s2, 32²) → conv2 (1x1) → conv3 (3x3) → shortcut conv1 + conv3 →
# maxpool (16²) → conv6 (1x1) → route conv6, maxpool → conv8 (1x1) → head (1x1, 6 filters) → yolo
COSTED_CFG = (
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=2\npad=1\nactivation=leaky\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nstride=1\npad=1\nactivation=leaky\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=16\nsize=3\nstride=1\npad=1\nactivation=leaky\n\n"
    "[shortcut]\nfrom=-3\nactivation=linear\n\n"
    "[maxpool]\nsize=2\nstride=2\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=8\nsize=1\nstride=1\npad=1\nactivation=leaky\n\n"
    "[route]\nlayers=-1,-2\n\n"
    "[convolutional]\nbatch_normalize=1\nfilters=24\nsize=1\nstride=1\npad=1\nactivation=leaky\n"
)


def costed_cfg_text() -> str:
    from helpers import YOLO_HEAD

    return "[net]\nwidth=64\nheight=64\nchannels=3\n\n" + COSTED_CFG + "\n" + YOLO_HEAD


def costed_cfg():
    from yoloprune.darknet.cfg import parse_cfg

    return parse_cfg(costed_cfg_text())


def hand_channel_costs() -> dict[int, float]:
    """What removing one output channel of each BN conv of COSTED_CFG saves, counted by hand: its
    filter (the conv's MACs / filters) plus, per conv reading the channel, that conv's MACs per input
    channel. conv1 and conv3 are summed by the shortcut and share their channels: the three convs
    reading that set (conv2 directly, conv6 through the maxpool, conv8 through the maxpool and the
    route) are split evenly between them."""
    per_filter = {
        0: macs_by_hand(64, 1, 3, 3),
        1: macs_by_hand(32, 1, 8, 3),
        2: macs_by_hand(32, 1, 16, 1),
        3: macs_by_hand(32, 1, 8, 3),
        6: macs_by_hand(16, 1, 16, 1),
        8: macs_by_hand(16, 1, 24, 1),
    }
    per_input_channel = {  # the MACs one input channel costs the reading conv
        1: macs_by_hand(32, 16, 1, 3),
        2: macs_by_hand(32, 8, 1, 1),
        3: macs_by_hand(32, 16, 1, 3),
        6: macs_by_hand(16, 8, 1, 1),
        8: macs_by_hand(16, 24, 1, 1),
        9: macs_by_hand(16, 6, 1, 1),  # the head
    }
    shared = (per_input_channel[2] + per_input_channel[6] + per_input_channel[8]) / 2
    return {
        0: per_filter[0] + per_input_channel[1],
        1: per_filter[1] + shared,
        2: per_filter[2] + per_input_channel[3],
        3: per_filter[3] + shared,
        6: per_filter[6] + per_input_channel[8],
        8: per_filter[8] + per_input_channel[9],
    }


def test_macs_weights_are_proportional_to_the_hand_counted_channel_cost():
    cfg = costed_cfg()
    costs = hand_channel_costs()
    layers = resolve_sparsity_layers(cfg, "all")
    assert layers == sorted(costs)
    weights = regulariser_for(cfg, sparsity_weighting="macs").weights
    for i in layers:
        for j in layers:
            assert weights[i] / weights[j] == pytest.approx(costs[i] / costs[j], rel=1e-12)
    # conv2's channel (16384 + 147456 MACs) costs twice conv1's (73728 + (8192 + 2048 + 6144) / 2): twice the weight
    assert costs[2] == 2 * costs[1] and weights[2] == pytest.approx(2 * weights[1], rel=1e-12)


@pytest.mark.parametrize("layer_set", ["all", "safe"])
def test_macs_weights_average_one_over_the_penalised_channels(layer_set):
    for cfg in (costed_cfg(), load_cfg(NANO_CFG)):
        layers = resolve_sparsity_layers(cfg, layer_set)
        weights = regulariser_for(cfg, sparsity_weighting="macs", sparsity_layers=layer_set).weights
        assert set(weights) == set(layers)
        per_channel = [weights[idx] for idx in layers for _ in range(cfg.layers[idx].filters)]
        assert sum(per_channel) / len(per_channel) == pytest.approx(1.0, rel=1e-12)


def test_a_weighted_step_moves_the_expensive_layers_gamma_more():
    model = Darknet.from_text(costed_cfg_text())
    layers = resolve_sparsity_layers(model.cfg, "all")
    s = 0.01
    regulariser = regulariser_for(model.cfg, sparsity=s, sparsity_weighting="macs")
    regulariser.at_epoch(0)
    weights = regulariser.weights
    gammas = [model.layers[idx].bn.weight for idx in layers]
    before = {idx: model.layers[idx].bn.weight.detach().clone() for idx in layers}  # all 1 (fresh BN)
    optimizer = torch.optim.SGD(gammas, lr=0.1)
    optimizer.zero_grad(set_to_none=False)  # a zero task gradient: only the penalty moves γ
    regulariser.regularize(model)
    costs = hand_channel_costs()
    for idx in layers:
        assert torch.allclose(model.layers[idx].bn.weight.grad, torch.full_like(before[idx], s * weights[idx]))
    optimizer.step()
    moved = {idx: float((before[idx] - model.layers[idx].bn.weight.detach()).mean()) for idx in layers}
    assert moved[0] > moved[2] > moved[1] > moved[8]  # the hand-counted costs' order
    assert costs[0] > costs[2] > costs[1] > costs[8]
    assert moved[2] == pytest.approx(2 * moved[1], rel=1e-3)  # float32 γ near 1


@pytest.mark.parametrize("name, saved_value, other", [("sparsity_weighting", "macs", "none"), ("sparsity_kind", "polarization", "l1")])
def test_the_penalty_is_a_checked_setting_that_a_resume_may_not_change(tmp_path, name, saved_value, other):
    from yoloprune.errors import SettingsError, YoloPruneError
    from yoloprune.train.checkpoint import check_resumed_settings

    with pytest.raises(SettingsError) as caught:
        TrainSettings(sparsity=0.01, **{name: "flops"})
    assert caught.value.setting == name
    saved = TrainSettings(cfg=str(NANO_CFG), sparsity=0.01, **{name: saved_value})
    assert saved.to_dict()[name] == saved_value  # what the checkpoint's meta records
    state = {"meta": {"train_config": saved.to_dict()}}
    with pytest.raises(YoloPruneError, match=name):
        check_resumed_settings(state, TrainSettings(cfg=str(NANO_CFG), sparsity=0.01, **{name: other}), tmp_path / "last.pt")
    check_resumed_settings(state, TrainSettings(cfg=str(NANO_CFG), sparsity=0.01, **{name: saved_value}), tmp_path / "last.pt")


# ---------------------------------------------------------------------------------------------- polarization


def polarization_penalty(gammas: list[torch.Tensor], weights: list[float], t: float) -> torch.Tensor:
    """Zhuang et al.'s R(γ) = Σ_i w_i·(t·|γ_i| − |γ_i − mean(γ)|), the mean over all layers' γ together,
    written out from the paper's equation."""
    mean = torch.cat(gammas).mean()
    return sum(w * (t * gamma.abs() - (gamma - mean).abs()).sum() for gamma, w in zip(gammas, weights))


@pytest.mark.parametrize("weighting", ["none", "macs"])
@pytest.mark.parametrize("t", [0.6, 1.3])
def test_polarization_gradient_is_the_finite_difference_gradient_of_its_penalty(weighting, t):
    """Oracle: central differences of the penalty itself, in float64, at γ away from every kink of
    |·| (so the penalty is differentiable there and the differences exact up to rounding)."""
    model = Darknet.from_text(costed_cfg_text()).double()
    regulariser = regulariser_for(model.cfg, sparsity=0.02, sparsity_kind="polarization", polarization_t=t, sparsity_weighting=weighting)
    assert isinstance(regulariser, Polarization) and regulariser.at_epoch(0) == 0.02
    layers = regulariser.penalised
    generator = torch.Generator().manual_seed(1)
    gammas = [model.layers[idx].bn.weight for idx in layers]
    with torch.no_grad():
        for gamma in gammas:
            gamma.copy_(torch.rand(gamma.shape, generator=generator, dtype=torch.float64) * 0.9 + 0.05)
            gamma.grad = torch.zeros_like(gamma)
    values = [gamma.detach().clone() for gamma in gammas]
    mean = float(torch.cat(values).mean())
    assert min(float((v - mean).abs().min()) for v in values) > 1e-4 < min(float(v.abs().min()) for v in values)
    weights = [regulariser.weight(idx) for idx in layers]
    assert weighting == "none" or len(set(weights)) > 2

    regulariser.regularize(model)
    step = 1e-7
    for k, gamma in enumerate(gammas):
        for i in range(gamma.numel()):
            up, down = [v.clone() for v in values], [v.clone() for v in values]
            up[k][i] += step
            down[k][i] -= step
            numeric = 0.02 * (polarization_penalty(up, weights, t) - polarization_penalty(down, weights, t)) / (2 * step)
            assert float(gamma.grad[i]) == pytest.approx(float(numeric), rel=1e-6, abs=1e-9), (layers[k], i)


def test_polarization_keeps_the_penalised_gammas_in_zero_to_the_bound_and_touches_nothing_else():
    model = model_with_random_gammas(low=-1.0)
    with torch.no_grad():
        model.layers[0].bn.weight[0] = 1.7  # above the bound
    regulariser = regulariser_for(model.cfg, sparsity_kind="polarization", polarization_bound=0.8, sparsity_layers="safe")
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    regulariser.after_step(model)
    for name, parameter in model.named_parameters():
        layer_idx = int(name.split(".")[1])
        if name.endswith("bn.weight") and layer_idx in regulariser.penalised:
            assert torch.equal(parameter, before[name].clamp(0.0, 0.8)), name
        else:
            assert torch.equal(parameter, before[name]), name
    assert not torch.equal(before["layers.0.bn.weight"], model.layers[0].bn.weight)  # layer 0 is penalised: clamped
    unpenalised = regulariser_for(model.cfg, sparsity=0.0, sparsity_kind="polarization", polarization_bound=0.8)
    model = model_with_random_gammas(low=-1.0)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    unpenalised.after_step(model)  # s = 0: no penalty, no constraint
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_polarization_alone_splits_the_gammas_into_zeros_and_the_bound_where_l1_empties_them_all():
    """Only the penalty moves γ (zero task gradient, plain SGD, γ from U(0.2, 1)): polarization ends
    with every γ at 0 or at the bound a, both groups non-empty (the paper's Lemma 3.1: R is concave,
    so its minima on [0, a]^n are vertices); L1 for as many steps brings every γ to within one step
    of 0. With t = 0.8 a γ above the mean climbs at s·(1 − t − c) and one below it falls at
    s·(1 + t + c), c = the mean's share (|c| ≤ 1), so 300 steps of 0.01 reach both ends."""
    ends = {}
    for kind in ("polarization", "l1"):
        model = model_with_random_gammas(low=0.2)
        regulariser = regulariser_for(model.cfg, sparsity=0.01, sparsity_kind=kind, polarization_t=0.8, polarization_bound=1.0)
        regulariser.at_epoch(0)
        gammas = [model.layers[idx].bn.weight for idx in regulariser.penalised]
        optimizer = torch.optim.SGD(gammas, lr=1.0)
        for _ in range(300):
            optimizer.zero_grad(set_to_none=False)
            regulariser.regularize(model)
            optimizer.step()
            regulariser.after_step(model)
        ends[kind] = torch.cat([gamma.detach().flatten() for gamma in gammas])
    polarized = ends["polarization"]
    at_zero, at_bound = polarized == 0, polarized == 1.0
    assert bool((at_zero | at_bound).all()) and 0 < int(at_zero.sum()) < polarized.numel()
    assert float(ends["l1"].abs().max()) <= 0.01


# ---------------------------------------------------------------------------------------------- sparsity target


def test_sparse_macs_share_is_the_hand_counted_cost_of_the_small_gammas():
    model = Darknet.from_text(costed_cfg_text())
    layers = resolve_sparsity_layers(model.cfg, "all")
    threshold = 0.03125  # a power of two: the same number as a float32 γ and as a Python float
    with torch.no_grad():
        for k, idx in enumerate(layers):
            gamma = model.layers[idx].bn.weight
            values = torch.linspace(-0.05, 0.05, gamma.numel()) * (k + 1) / 3  # both signs, more small ones early
            values[0] = threshold  # exactly at the threshold: not below it
            gamma.copy_(values)
    costs = hand_channel_costs()
    small = total = 0.0
    for idx in layers:
        for value in model.layers[idx].bn.weight.tolist():
            total += costs[idx]
            small += costs[idx] if abs(value) < threshold else 0.0
    assert 0 < small < total
    share = regulariser_for(model.cfg, sparsity_target_threshold=threshold).log(model)["sparse_macs_share"]
    assert share == pytest.approx(small / total, rel=1e-12)


def test_s_doubles_when_the_share_stalls_over_two_epochs_at_one_s():
    """A scripted share path through the decision: gains under 0.01 over two epochs run at the
    current s double s; an epoch still at the old s is waited for; the ceiling holds."""
    from yoloprune.train.sparsity import adapt_sparsity

    shares = [0.0, 0.004, 0.008, 0.03, 0.05, 0.055, 0.058, 0.06, 0.061, 0.062, 0.062, 0.063]
    # by hand: after epoch 3 the gain over epochs 2-3 is 0.008 -> double; epochs 4-5 at 0.002 gain 0.042,
    # 5-6 0.025: keep; 6-7 gain 0.008 -> 0.004; 8-9 gain 0.003 -> 0.008 = the ceiling (8 x 0.001), then held
    expected = [0.001, 0.001, 0.001, 0.002, 0.002, 0.002, 0.002, 0.004, 0.004, 0.008, 0.008, 0.008]
    s, path, used = 0.001, [], []
    for share in shares:
        used.append(s)
        path.append((s, share))
        s = adapt_sparsity(path, ceiling=0.008)
    assert used == pytest.approx(expected)


def test_s_never_goes_down():
    from yoloprune.train.sparsity import adapt_sparsity

    falling = [(0.01, 0.3), (0.01, 0.2), (0.01, 0.1)]  # a shrinking share is a stall too
    assert adapt_sparsity(falling, ceiling=0.08) == 0.02
    assert adapt_sparsity(falling, ceiling=0.01) == 0.01  # at the ceiling it stays
    assert adapt_sparsity([(0.01, 0.0), (0.01, 0.0)], ceiling=0.08) == 0.01  # two epochs: no gain measurable yet


@pytest.mark.parametrize(
    "values, setting, text",
    [
        (dict(sparsity=0.01, sparsity_target=1.0), "sparsity_target", "a fraction in (0, 1)"),
        (dict(sparsity=0.01, sparsity_target=0.0), "sparsity_target", "a fraction in (0, 1)"),
        (dict(sparsity_target=0.5), "sparsity_target", "needs the penalty on"),
        (dict(sparsity=0.01, sparsity_target=0.5, sparsity_decay=0.5), "sparsity_decay", "left out with `sparsity_target`"),
        (dict(sparsity=0.01, sparsity_target=0.5, sparsity_max=0.001), "sparsity_max", ">= `sparsity` (0.01)"),
        (dict(sparsity=0.01, sparsity_max=0.1), "sparsity_max", "given with `sparsity_target`"),
        (dict(sparsity=0.01, sparsity_target=0.5, sparsity_target_threshold=0.0), "sparsity_target_threshold", "> 0"),
        (dict(sparsity=0.01, sparsity_weighting="latency"), "sparsity_weighting", "'none' or 'macs'"),
        (dict(sparsity=0.01, sparsity_kind="hoyer"), "sparsity_kind", "'l1' or 'polarization'"),
        (dict(sparsity=0.01, sparsity_kind="polarization", polarization_t=0.0), "polarization_t", "> 0"),
        (dict(sparsity=0.01, sparsity_kind="polarization", polarization_bound=-1.0), "polarization_bound", "> 0"),
    ],
)
def test_sparsity_settings_are_checked(values, setting, text):
    from yoloprune.errors import SettingsError
    from yoloprune.train.settings import TrainSettings

    with pytest.raises(SettingsError) as caught:
        TrainSettings(**values)
    assert caught.value.setting == setting and text in caught.value.reason


def test_the_default_ceiling_is_twice_the_starting_s():
    from yoloprune.train.settings import TrainSettings

    assert TrainSettings(sparsity=0.002, sparsity_target=0.5).sparsity_ceiling == pytest.approx(0.004)
    assert TrainSettings(sparsity=0.002, sparsity_target=0.5, sparsity_max=0.016).sparsity_ceiling == 0.016
