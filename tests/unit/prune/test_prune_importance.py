"""`prune --importance gamma-out-norm`: |γ| times the norm of the weights that read the channel.

The oracle lists by hand which input channel of which conv reads which output channel of which conv
in a small cfg with a shortcut, a concatenating route, an upsample, a grouped route and a grouped
conv, and sums the squared weights with explicit loops."""

from __future__ import annotations

import json
import math

import torch

from helpers import YOLO_HEAD, conv, random_darknet
from yoloprune.prune.budget import Ratio
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.importance import bn_scale_out_norm

# 0 A → 1 B → 2 C; 3 shortcut C + A; 4 D; 5 route D, B; 6 upsample; 7 E; 8 second half of E; 9 F;
# 10 G (groups=2); 11 head
CFG = (
    "[net]\nwidth=64\nheight=64\nchannels=3\n\n"
    + conv(4, 3) + "\n" + conv(6) + "\n" + conv(4, 3) + "\n"
    + "[shortcut]\nfrom=-3\nactivation=linear\n\n"
    + conv(5) + "\n"
    + "[route]\nlayers=-1,-4\n\n"
    + "[upsample]\nstride=2\n\n"
    + conv(8, 3) + "\n"
    + "[route]\nlayers=-1\ngroups=2\ngroup_id=1\n\n"
    + conv(4) + "\n" + conv(4, 3, groups=2) + "\n"
    + YOLO_HEAD
)

# reading conv -> {its input channel: the (conv, output channel) pairs that input carries}, by hand
READS = {
    1: {c: [(0, c)] for c in range(4)},
    2: {c: [(1, c)] for c in range(6)},
    4: {c: [(2, c), (0, c)] for c in range(4)},  # the shortcut's sum: both summands
    7: {**{p: [(4, p)] for p in range(5)}, **{5 + c: [(1, c)] for c in range(6)}},  # D, then B at offset 5
    9: {q: [(7, 4 + q)] for q in range(4)},  # E's second half
    10: {c: [(9, c)] for c in range(4)},
    11: {c: [(10, c)] for c in range(4)},  # the head
}


def brute_force_out_norm(model) -> dict[int, torch.Tensor]:
    expected = {}
    for idx, layer in enumerate(model.layers):
        if getattr(layer, "bn", None) is None:
            continue
        gamma = layer.bn.weight.detach().double()
        # a conv no conv reads at all keeps |γ|; an unread channel of a conv that is read scores 0
        read = any(conv == idx for inputs in READS.values() for carried in inputs.values() for conv, _ in carried)
        scores = []
        for channel in range(gamma.numel()):
            total = 0.0
            for reader, inputs in READS.items():
                weight = model.layers[reader].conv.weight.detach().double()
                groups = model.cfg.layers[reader].groups
                per_group_in, per_group_out = weight.shape[1], weight.shape[0] // groups
                for position, carried in inputs.items():
                    if (idx, channel) not in carried:
                        continue
                    group = position // per_group_in
                    for f in range(group * per_group_out, (group + 1) * per_group_out):
                        for y in range(weight.shape[2]):
                            for x in range(weight.shape[3]):
                                total += float(weight[f, position % per_group_in, y, x]) ** 2
            scores.append(abs(float(gamma[channel])) * (math.sqrt(total) if read else 1.0))
        expected[idx] = torch.tensor(scores, dtype=torch.float64)
    return expected


def test_out_norm_matches_the_brute_force_oracle():
    model = random_darknet(CFG, seed=3)
    got, expected = bn_scale_out_norm(model), brute_force_out_norm(model)
    assert sorted(got) == sorted(expected) == [0, 1, 2, 4, 7, 9, 10]
    for idx in expected:
        assert torch.allclose(got[idx], expected[idx], rtol=1e-12, atol=0), idx
    assert (got[7][:4] == 0).all() and (got[7][4:] > 0).all()  # E's first half: no conv reads it


def weighted_pair():
    """conv X (8 channels) read by conv Y (8): X's channel 0 has the smallest γ (0.1) but Y reads it
    with weights 100 times the others; channel 1 has γ 0.2 and is read with weights 100 times smaller."""
    model = random_darknet("[net]\nwidth=64\nheight=64\nchannels=3\n\n" + conv(8, 3) + "\n" + conv(8) + "\n" + YOLO_HEAD)
    with torch.no_grad():
        model.layers[0].bn.weight.fill_(1.0)
        model.layers[0].bn.weight[0], model.layers[0].bn.weight[1] = 0.1, 0.2
        model.layers[1].bn.weight.fill_(1.0)
        model.layers[1].conv.weight.fill_(1.0)
        model.layers[1].conv.weight[:, 0] *= 100
        model.layers[1].conv.weight[:, 1] /= 100
        model.layers[2].conv.weight.fill_(1.0)  # the head reads Y's channels alike
    return model


def test_the_planner_keeps_a_small_gamma_channel_with_large_outgoing_weights():
    model = weighted_pair()
    # 16 candidate channels (X and Y): a ratio of 1/16 removes the lowest-ranked one
    by_gamma = plan_channel_prune(model, "full", Ratio(1 / 16))
    by_out_norm = plan_channel_prune(model, "full", Ratio(1 / 16), importance=bn_scale_out_norm)
    assert by_gamma.kept_channels == {0: [1, 2, 3, 4, 5, 6, 7]}
    assert by_out_norm.kept_channels == {0: [0, 2, 3, 4, 5, 6, 7]}


def test_prune_importance_flag_reaches_the_planner(tmp_path):
    from yoloprune.cli import main
    from yoloprune.darknet.weights import save_checkpoint

    checkpoint = tmp_path / "pair.pt"
    save_checkpoint(checkpoint, weighted_pair())
    for name, removed in (("gamma", 0), ("gamma-out-norm", 1)):
        out = tmp_path / name
        assert main(["prune", "--weights", str(checkpoint), "--out", str(out), "--ratio", str(1 / 16), "--importance", name]) == 0
        plan = json.loads((out / "plan.json").read_text())
        assert plan["settings"]["importance"] == name
        kept = {int(k): v for k, v in plan["kept_channels"].items()}
        assert kept == {0: [c for c in range(8) if c != removed]}
