"""darknet/graph.py: channel sets, prunable layers, residual blocks and cfg-only cost counts."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import CONFIGS, FAMILY_CFGS, FIXTURES, GROUPED_ROUTE, cfg_text, conv
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.cfg import ConvBlock, ShortcutBlock, load_cfg, parse_cfg
from yoloprune.darknet.cost import count_cfg_macs, count_cfg_params
from yoloprune.darknet.graph import analyze_graph, prunable_conv_indices, safe_prunable_conv_indices
from yoloprune.darknet.network import infer_output_hw
from yoloprune.darknet.residual import residual_blocks
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.darknet.edit import build_pruned_cfg

ALL_CFGS = [FIXTURES / f"{name}.cfg" for name in ("yolov3", "yolov3-tiny", "yolov3-spp", "yolov3-hand", "prune_yolov3-hand", *FAMILY_CFGS)] + [
    CONFIGS / "yolov3-hand-nano.cfg",
    CONFIGS / "yolov3-hand-small.cfg",
]


def test_seed_rule_gives_42_layers_on_the_hand_cfg():
    cfg = load_cfg(FIXTURES / "yolov3-hand.cfg")
    assert len(safe_prunable_conv_indices(cfg)) == 42
    assert prunable_conv_indices(cfg, "safe") == safe_prunable_conv_indices(cfg)


@pytest.mark.parametrize("cfg_path", ALL_CFGS, ids=lambda p: p.stem)
def test_channel_sets_are_consistent(cfg_path):
    cfg = load_cfg(cfg_path)
    graph = analyze_graph(cfg)
    convs = [i for i, b in enumerate(cfg.layers) if isinstance(b, ConvBlock)]
    # every conv belongs to exactly one set, all members of a set have the same width
    assert sorted(i for g in graph.groups.values() for i in g.convs) == convs
    for group in graph.groups.values():
        assert {cfg.layers[i].filters for i in group.convs} == {group.channels}
    # the channel map of every layer covers exactly its output channels
    for idx, spans in enumerate(graph.channel_maps):
        assert sum(s.size for s in spans) == graph.out_channels[idx]
    # both summands of every shortcut are in one set, or else no set in them may be pruned;
    # convs feeding a head never prunable
    for idx, block in enumerate(cfg.layers):
        if isinstance(block, ShortcutBlock):
            a, b = (graph.channel_maps[j] for j in cfg.inputs_of(idx))
            one_set = len(a) == len(b) == 1 and a[0].group == b[0].group
            assert one_set or not any(graph.groups[s.group].prunable for s in a + b if s.group >= 0)
    for yolo_idx in cfg.yolo_indices:
        assert not graph.group_for(yolo_idx - 1).prunable
    # safe ⊆ full ⊆ BN convs; safe convs are never part of a shortcut chain
    safe, full = set(prunable_conv_indices(cfg, "safe")), set(prunable_conv_indices(cfg, "full"))
    assert safe <= full
    assert all(cfg.layers[i].batch_normalize for i in full)
    assert all(len(graph.group_for(i).convs) == 1 for i in safe)


def test_residual_chains_are_coupled_groups():
    cfg = load_cfg(FIXTURES / "yolov3.cfg")
    graph = analyze_graph(cfg)
    # Darknet-53: a stride-2 conv followed by 1, 2, 8, 8, 4 residual blocks
    assert sorted(len(g.convs) for g in graph.coupled_groups) == [2, 3, 5, 9, 9]
    assert len(residual_blocks(cfg)) == 23
    assert not residual_blocks(load_cfg(FIXTURES / "yolov3-tiny.cfg"))


def test_shortcut_of_unequal_widths_leaves_both_summands_whole():
    # layer 3 adds conv 0 (8 channels) to conv 2 (4): darknet sums the first 4 channels, so removing
    # a channel from either would shift which channels of the other one it meets
    text = cfg_text(conv(8, 3), conv(4), conv(4, 3), "[shortcut]\nfrom=-3\nactivation=linear\n", conv(8), size=32)
    cfg = parse_cfg(text)
    graph = analyze_graph(cfg)
    assert graph.out_channels[3] == 4  # the previous layer's width
    assert prunable_conv_indices(cfg, "full") == [1, 4]
    assert any("shortcut 3 over the first 4 channels only" in r for r in graph.group_for(0).reasons)
    assert any("shortcut 3 over the first 4 channels only" in r for r in graph.group_for(2).reasons)
    # convs 1-2 look like a residual block, but without them the shortcut would output 8 channels
    assert residual_blocks(cfg) == []


def test_unequal_shortcuts_of_yolov3_tiny_prn_fix_their_summands():
    cfg = load_cfg(FIXTURES / "yolov3-tiny-prn.cfg")
    graph = analyze_graph(cfg)
    # shortcuts 22 and 25 add conv 8 (256 channels) to the 128 of conv 20's set (convs 20 and 23)
    assert graph.group_for(23).convs == (20, 23)
    assert not graph.group_for(8).prunable and not graph.group_for(20).prunable
    assert [g.convs for g in graph.prunable_groups()] == [(0,), (2,), (4,), (6,), (10, 12), (14, 15)]


def test_route_groups_and_grouped_convs_are_not_prunable():
    text = cfg_text(conv(8, 3), GROUPED_ROUTE, conv(4, 3, groups=4), conv(4), size=32)
    cfg = parse_cfg(text)
    graph = analyze_graph(cfg)
    assert prunable_conv_indices(cfg, "full") == [3]
    assert any("read by grouped conv 2" in r for r in graph.group_for(0).reasons)
    assert any("grouped conv" in r for r in graph.group_for(2).reasons)
    # the grouped route reads the upper half of layer 0
    assert [(s.group, s.start, s.stop) for s in graph.channel_maps[1]] == [(0, 4, 8)]


def test_a_route_groups_split_couples_the_halves_of_a_whole_set_only():
    # conv 0 read whole by the grouped route: prunable, its halves coupled; convs 2 and 3 concatenated
    # before a grouped route: a half boundary would fall inside one of them
    text = cfg_text(conv(8, 3), GROUPED_ROUTE, conv(4), conv(4), "[route]\nlayers=-1,-2\n", GROUPED_ROUTE, conv(4), size=32)
    cfg = parse_cfg(text)
    graph = analyze_graph(cfg)
    assert graph.group_for(0).prunable and graph.group_for(0).parts == 2
    assert any("through a concatenation" in r for r in graph.group_for(2).reasons + graph.group_for(3).reasons)
    assert prunable_conv_indices(cfg, "full") == [0, 6]
    assert safe_prunable_conv_indices(cfg) == [0, 6]


@pytest.mark.parametrize("cfg_path, size", [(FIXTURES / "yolov3-tiny.cfg", 64), (CONFIGS / "yolov3-hand-nano.cfg", 96)], ids=["tiny", "nano"])
def test_cfg_macs_and_params_match_torch(cfg_path, size):
    cfg = load_cfg(cfg_path)
    for variant in (cfg, build_pruned_cfg(cfg, {i: max(1, cfg.layers[i].filters // 3) for i in prunable_conv_indices(cfg, "full")})):
        model = Darknet(variant).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            heads = model.forward_heads(torch.zeros(1, 3, size, size))
        assert count_cfg_macs(variant, size) * 2 == counter.get_total_flops()
        assert count_cfg_params(variant) == count_parameters(model)
        hw = infer_output_hw(variant, (size, size))
        assert [tuple(h.shape[2:4]) for h in heads] == [hw[i] for i in variant.yolo_indices]


def test_cfg_params_match_known_counts():
    # the counts in the design notes (darknet's own reports)
    assert count_cfg_params(load_cfg(FIXTURES / "yolov3.cfg")) == 61_949_149
    assert count_cfg_params(load_cfg(FIXTURES / "yolov3-tiny.cfg")) == 8_852_366
    assert count_cfg_params(load_cfg(FIXTURES / "yolov3-hand.cfg")) == 61_523_734
    assert abs(2 * count_cfg_macs(load_cfg(FIXTURES / "yolov3.cfg"), 416) / 1e9 - 65.86) < 0.01


def test_builder_cfgs_have_the_hand_structure():
    for width in (0.0625, 0.25, 1.0):
        cfg = parse_cfg(build_yolov3_cfg_text(width, classes=1))
        assert len(safe_prunable_conv_indices(cfg)) == 42
        assert len(residual_blocks(cfg)) == 23


def test_safe_set_skips_what_the_graph_rules_out():
    # a conv read by a grouped conv must not be pruned in either mode
    text = cfg_text(conv(8, 3), conv(8, 3, groups=2), conv(4, 3), size=32)
    cfg = parse_cfg(text)
    assert safe_prunable_conv_indices(cfg) == [2]
