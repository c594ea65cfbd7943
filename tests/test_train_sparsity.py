"""BN-γ sparsity: the gradient step, the layer sets computed from the cfg graph, the schedule, the γ statistics."""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
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
