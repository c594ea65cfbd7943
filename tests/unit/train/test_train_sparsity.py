"""BN-γ sparsity: the gradient step, the layer sets computed from the cfg graph, the schedule, the γ statistics."""

from __future__ import annotations

from helpers import ROOT

from pathlib import Path

import pytest
import torch

from yoloprune.darknet.cfg import ConvBlock, ShortcutBlock, UpsampleBlock, load_cfg
from yoloprune.darknet.graph import bn_conv_indices, safe_prunable_conv_indices
from yoloprune.darknet.model import Darknet
from yoloprune.train.sparsity import (
    SMALL_GAMMA,
    apply_bn_sparsity,
    resolve_sparsity_layers,
    sparsity_at_epoch,
    summarize_gammas,
)

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


def test_sparsity_step_changes_exactly_the_chosen_gamma_grads():
    torch.manual_seed(0)
    model = Darknet(str(NANO_CFG))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-1, 1)  # both signs, so sign(γ) matters
    sum(head.sum() for head in model(torch.rand(2, 3, 64, 64))).backward()
    before = {name: p.grad.clone() for name, p in model.named_parameters()}
    chosen = safe_prunable_conv_indices(model.cfg)
    s = 0.003
    apply_bn_sparsity(model, s, chosen)
    for name, parameter in model.named_parameters():
        layer_idx = int(name.split(".")[1])
        if name.endswith("bn.weight") and layer_idx in chosen:
            assert torch.equal(parameter.grad, before[name] + s * torch.sign(parameter.detach()))
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
    from yoloprune.train.sparsity import macs_sparsity_weights

    cfg = costed_cfg()
    costs = hand_channel_costs()
    layers = resolve_sparsity_layers(cfg, "all")
    assert layers == sorted(costs)
    weights = macs_sparsity_weights(cfg, layers, 64)
    for i in layers:
        for j in layers:
            assert weights[i] / weights[j] == pytest.approx(costs[i] / costs[j], rel=1e-12)
    # conv2's channel (16384 + 147456 MACs) costs twice conv1's (73728 + (8192 + 2048 + 6144) / 2): twice the weight
    assert costs[2] == 2 * costs[1] and weights[2] == pytest.approx(2 * weights[1], rel=1e-12)


@pytest.mark.parametrize("layer_set", ["all", "safe"])
def test_macs_weights_average_one_over_the_penalised_channels(layer_set):
    from yoloprune.train.sparsity import macs_sparsity_weights

    for cfg in (costed_cfg(), load_cfg(NANO_CFG)):
        layers = resolve_sparsity_layers(cfg, layer_set)
        weights = macs_sparsity_weights(cfg, layers, 64)
        assert set(weights) == set(layers)
        per_channel = [weights[idx] for idx in layers for _ in range(cfg.layers[idx].filters)]
        assert sum(per_channel) / len(per_channel) == pytest.approx(1.0, rel=1e-12)


def test_a_weighted_step_moves_the_expensive_layers_gamma_more():
    from yoloprune.train.sparsity import macs_sparsity_weights

    model = Darknet.from_text(costed_cfg_text())
    layers = resolve_sparsity_layers(model.cfg, "all")
    weights = macs_sparsity_weights(model.cfg, layers, 64)
    gammas = [model.layers[idx].bn.weight for idx in layers]
    before = {idx: model.layers[idx].bn.weight.detach().clone() for idx in layers}  # all 1 (fresh BN)
    optimizer = torch.optim.SGD(gammas, lr=0.1)
    optimizer.zero_grad(set_to_none=False)  # a zero task gradient: only the penalty moves γ
    s = 0.01
    apply_bn_sparsity(model, s, layers, weights)
    costs = hand_channel_costs()
    for idx in layers:
        assert torch.allclose(model.layers[idx].bn.weight.grad, torch.full_like(before[idx], s * weights[idx]))
    optimizer.step()
    moved = {idx: float((before[idx] - model.layers[idx].bn.weight.detach()).mean()) for idx in layers}
    assert moved[0] > moved[2] > moved[1] > moved[8]  # the hand-counted costs' order
    assert costs[0] > costs[2] > costs[1] > costs[8]
    assert moved[2] == pytest.approx(2 * moved[1], rel=1e-3)  # float32 γ near 1


def test_sparsity_weighting_is_a_checked_setting_that_a_resume_may_not_change(tmp_path):
    from yoloprune.errors import SettingsError, YoloPruneError
    from yoloprune.train.checkpoint import check_resumed_settings
    from yoloprune.train.settings import TrainSettings

    with pytest.raises(SettingsError) as caught:
        TrainSettings(sparsity=0.01, sparsity_weighting="flops")
    assert caught.value.setting == "sparsity_weighting"
    saved = TrainSettings(cfg=str(NANO_CFG), sparsity=0.01, sparsity_weighting="macs")
    assert saved.to_dict()["sparsity_weighting"] == "macs"  # what the checkpoint's meta records
    state = {"meta": {"train_config": saved.to_dict()}}
    with pytest.raises(YoloPruneError, match="sparsity_weighting"):
        check_resumed_settings(state, TrainSettings(cfg=str(NANO_CFG), sparsity=0.01), tmp_path / "last.pt")
    check_resumed_settings(state, TrainSettings(cfg=str(NANO_CFG), sparsity=0.01, sparsity_weighting="macs"), tmp_path / "last.pt")


# ---------------------------------------------------------------------------------------------- latency weighting

SCRIPTED_KEY = {"cpu": "scripted", "runtime": "ort", "runtime_version": "scripted", "threads": 1, "img_size": 64}


def scripted_table(text: str, timer):
    from yoloprune.bench.latency_table import build_table
    from yoloprune.darknet.cfg import parse_cfg

    cfg = parse_cfg(text)
    return cfg, build_table(cfg, 64, timer, SCRIPTED_KEY, progress=False)


@pytest.mark.parametrize("conv0_ms", [1e-3, 1e-2])
def test_latency_weights_follow_the_hand_priced_table_rows(conv0_ms):
    """conv0 (3x3, 3 -> 16) and conv1 (1x1, 16 -> 16) before the head (1x1, 16 -> 6) on a fake CPU
    where a conv costs k·cin·cout ms, k per layer. Removing a channel of conv0 saves its own row
    (k0·3) and conv1's input (k1·16); one of conv1 saves its row (k1·16) and the head's input (kh·6)."""
    from helpers import cfg_text, conv
    from yoloprune.bench.latency_shapes import ConvShape
    from yoloprune.train.sparsity import latency_sparsity_weights

    k1, kh = 1e-4, 2e-4

    def timer(shape, channels):
        if not isinstance(shape, ConvShape):
            return 0.0
        k = conv0_ms if shape.size == 3 else k1 if shape.batch_normalize else kh
        return k * channels[0] * channels[1]

    cfg, table = scripted_table(cfg_text(conv(16, 3), conv(16, 1)), timer)
    saving = {0: conv0_ms * 3 + k1 * 16, 1: k1 * 16 + kh * 6}
    mean = (16 * saving[0] + 16 * saving[1]) / 32  # both layers have 16 channels
    weights = latency_sparsity_weights(cfg, [0, 1], table)
    assert weights == pytest.approx({idx: saving[idx] / mean for idx in (0, 1)}, rel=1e-9)
    # the conv whose rows cost 10 times more: its weight grows with its own row's share of the saving
    assert weights[0] / weights[1] == pytest.approx((conv0_ms * 3 + k1 * 16) / (k1 * 16 + kh * 6), rel=1e-9)


def multiply_add_timer(shape, channels):
    """A fake CPU on which every conv costs 1 ns per multiply-add and nothing else costs anything."""
    from yoloprune.bench.latency_shapes import ConvShape

    if not isinstance(shape, ConvShape):
        return 0.0
    (h, w), (cin, cout) = shape.in_hw, channels
    return 1e-6 * h * w / shape.stride**2 * cin * cout * shape.size**2


@pytest.mark.parametrize("layer_set", ["all", "safe"])
def test_latency_weights_are_the_macs_weights_on_a_table_that_times_multiply_adds(layer_set):
    """With latency proportional to multiply-adds the table's savings are the MACs a channel costs,
    split between the convs of a shortcut-coupled set the same way: the two weightings agree, with
    the same normalisation (mean 1 over the penalised channels)."""
    from helpers import cfg_text, conv
    from yoloprune.train.sparsity import latency_sparsity_weights, macs_sparsity_weights

    # conv1 and conv3 are summed by the shortcut (one channel set); every width is two channel blocks
    # or more, so that the table's slope over the first block is that of the multiply-adds
    text = cfg_text(conv(16, 3), conv(32, 3, stride=2), conv(16, 1), conv(32, 3), "[shortcut]\nfrom=-3\nactivation=linear\n", conv(16, 1))
    cfg, table = scripted_table(text, multiply_add_timer)
    layers = resolve_sparsity_layers(cfg, layer_set)
    by_latency, by_macs = latency_sparsity_weights(cfg, layers, table), macs_sparsity_weights(cfg, layers, 64)
    assert by_latency == pytest.approx(by_macs, rel=1e-9)
    per_channel = [by_latency[idx] for idx in layers for _ in range(cfg.layers[idx].filters)]
    assert sum(per_channel) / len(per_channel) == pytest.approx(1.0, rel=1e-12)


def test_a_table_that_predicts_no_saving_is_refused_naming_it(tmp_path):
    from helpers import cfg_text, conv
    from yoloprune.bench.latency_table import LatencyTableError
    from yoloprune.train.sparsity import latency_sparsity_weights

    cfg, table = scripted_table(cfg_text(conv(16, 3), conv(16, 1)), lambda shape, channels: 1.0)  # flat: no count is faster
    table.save(tmp_path / "flat.json")
    with pytest.raises(LatencyTableError, match="flat.json: predicts no saving"):
        latency_sparsity_weights(cfg, [0, 1], table)


# ---------------------------------------------------------------------------------------------- sparsity target


def test_sparse_macs_share_is_the_hand_counted_cost_of_the_small_gammas():
    from yoloprune.train.sparsity import channel_macs, sparse_macs_share

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
    share = sparse_macs_share(model, layers, channel_macs(model.cfg, 64), threshold)
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
        (dict(sparsity=0.01, sparsity_weighting="latency"), "latency_table", "needs a latency table"),
        (dict(sparsity=0.01, latency_table="t.json"), "latency_table", "given with `sparsity_weighting` latency"),
    ],
)
def test_target_and_latency_settings_are_checked(values, setting, text):
    from yoloprune.errors import SettingsError
    from yoloprune.train.settings import TrainSettings

    with pytest.raises(SettingsError) as caught:
        TrainSettings(**values)
    assert caught.value.setting == setting and text in caught.value.reason


def test_the_default_ceiling_is_twice_the_starting_s():
    from yoloprune.train.settings import TrainSettings

    assert TrainSettings(sparsity=0.002, sparsity_target=0.5).sparsity_ceiling == pytest.approx(0.004)
    assert TrainSettings(sparsity=0.002, sparsity_target=0.5, sparsity_max=0.016).sparsity_ceiling == 0.016
