"""OpenCV's darknet importer as an independent oracle for the cfg reader, the model and the .weights writer."""

import numpy as np
import pytest
import torch

from helpers import CONFIGS, FIXTURES, opencv_head_outputs, random_model
from yoloprune.darknet.cfg import ConvBlock, load_cfg, write_cfg
from yoloprune.darknet.weights import save_darknet_weights


@pytest.mark.parametrize("cfg_path, size", [(FIXTURES / "yolov3-tiny.cfg", 416), (CONFIGS / "yolov3-hand-nano.cfg", 128)])
def test_heads_match_opencv(tmp_path, cfg_path, size):
    model = random_model(str(cfg_path), seed=1).eval()
    head_convs = [i - 1 for i in model.yolo_indices]
    assert all(isinstance(model.cfg.layers[i], ConvBlock) for i in head_convs)
    weights = tmp_path / "model.weights"
    save_darknet_weights(model, weights)
    # OpenCV reads the cfg as written by yoloprune, which also checks the writer
    written_cfg = tmp_path / "model.cfg"
    written_cfg.write_text(write_cfg(load_cfg(cfg_path)))
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    expected = opencv_head_outputs(written_cfg, weights, x, head_convs)
    with torch.no_grad():
        heads = model.forward_heads(x)
    for reference, raw in zip(expected, heads):
        ours = raw.permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
        scale = np.abs(reference).max()
        assert scale > 1e-3, "outputs must be non-trivial for the comparison to mean anything"
        assert np.abs(ours - reference).max() <= 1e-4 * scale
