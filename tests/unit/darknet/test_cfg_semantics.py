"""Layer references darknet allows beyond YOLOv3's: a [shortcut] adding the previous layer to itself
(`from=-1`), an absolute `from=` and absolute [route] indices. OpenCV's darknet importer is the
independent oracle for the forward pass; pruning must handle them like any other reference."""

import numpy as np
import torch

from helpers import cfg_text, conv, opencv_head_outputs, random_darknet
from yoloprune.bench.profile import count_forward_macs
from yoloprune.darknet.cfg import parse_cfg
from yoloprune.darknet.cost import count_cfg_macs
from yoloprune.darknet.graph import analyze_graph
from yoloprune.darknet.residual import residual_blocks
from yoloprune.darknet.model import Darknet
from yoloprune.export.darknet import export_darknet
from yoloprune.export.onnx import export_onnx
from yoloprune.prune import Ratio, Threshold, build_compact_model, mask_model, plan_channel_prune, prune_model

SIZE = 64
SECTIONS = (
    conv(8, 3),  # 0
    conv(8),  # 1
    "[shortcut]\nfrom=-1\nactivation=linear\n",  # 2: layer 1 + layer 1
    conv(8),  # 3
    "[shortcut]\nfrom=0\nactivation=leaky\n",  # 4: layer 3 + layer 0
    "[route]\nlayers=4,0\n",  # 5: layers 4 and 0, 16 channels
    conv(8),  # 6, then the head conv (7) and [yolo] (8)
)
TEXT = cfg_text(*SECTIONS, size=SIZE)
X = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


def random_model() -> Darknet:
    return random_darknet(TEXT)


def heads(model: Darknet) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_heads(X)


def assert_matches_opencv(model: Darknet, tmp_path) -> None:
    cfg_path, weights_path = export_darknet(model, tmp_path / "model")
    head_convs = [i - 1 for i in model.yolo_indices]
    for reference, raw in zip(opencv_head_outputs(cfg_path, weights_path, X, head_convs), heads(model)):
        ours = raw.permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
        scale = np.abs(reference).max()
        assert scale > 1e-3
        assert np.abs(ours - reference).max() <= 1e-4 * scale


def test_references_resolve_as_darknet_does():
    cfg = parse_cfg(TEXT)
    assert [cfg.inputs_of(i) for i in (2, 4, 5)] == [[1, 1], [3, 0], [4, 0]]
    assert analyze_graph(cfg).consumers[1] == [2]  # the shortcut reads layer 1 twice, but is one consumer
    assert residual_blocks(cfg) == []  # neither shortcut adds the input of a two-conv block


def test_forward_matches_opencv(tmp_path):
    assert_matches_opencv(random_model(), tmp_path)


def test_macs_counted_from_the_cfg_and_by_the_forward_agree():
    # conv 0 (3x3, 3 -> 8), convs 1 and 3 (8 -> 8), conv 6 (16 -> 8), head conv 7 (8 -> 6), all at 64x64
    expected = SIZE * SIZE * (8 * 3 * 9 + 8 * 8 + 8 * 8 + 8 * 16 + 6 * 8)
    assert count_cfg_macs(parse_cfg(TEXT), SIZE) == expected
    assert count_forward_macs(random_model(), SIZE) == expected


def test_onnx_export_matches_pytorch(tmp_path):
    # the export compares ONNX Runtime's output with PyTorch's and raises ExportError if they differ
    export_onnx(random_model(), tmp_path / "model.onnx", img_size=SIZE)
    assert (tmp_path / "model.onnx").stat().st_size > 0


def test_pruning_zeroed_channels_is_exact_and_the_result_loads_in_opencv(tmp_path):
    model = random_model()
    # conv 1 is summed with itself; convs 0 and 3 are summed together, so they lose the same channels
    zeroed = {1: [2, 5, 6], 0: [1, 4], 3: [1, 4]}
    with torch.no_grad():
        for idx, channels in zeroed.items():
            model.layers[idx].bn.weight[channels] = 0
    plan = plan_channel_prune(model, "full", Threshold(1e-12))
    assert {idx: sorted(set(range(8)) - set(plan.kept_channels[idx])) for idx in zeroed} == zeroed
    pruned = prune_model(model, plan)
    assert [pruned.cfg.layers[i] for i in (2, 4, 5)] == [model.cfg.layers[i] for i in (2, 4, 5)]
    assert [pruned.cfg.layers[i].filters for i in (0, 1, 3)] == [6, 5, 6]
    for original, compact, masked in zip(heads(model), heads(pruned), heads(mask_model(model, plan))):
        assert (original - compact).abs().max() <= 1e-4  # every pruned channel feeds 1x1 convs only
        assert (masked - compact).abs().max() <= 1e-5
    assert_matches_opencv(pruned, tmp_path)


def test_compact_model_equals_masked_model_under_a_ratio_plan():
    model = random_model()
    plan = plan_channel_prune(model, "full", Ratio(0.5))
    for compact, masked in zip(heads(build_compact_model(model, plan)), heads(mask_model(model, plan))):
        assert (masked - compact).abs().max() <= 1e-5
