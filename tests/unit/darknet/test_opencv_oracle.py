"""OpenCV's darknet importer as an independent oracle for the cfg reader, the model and the .weights writer.

Every darknet cfg under tests/fixtures, and the project's nano cfg: random weights written by
yoloprune's .weights writer and the cfg as yoloprune writes it back are read by
cv2.dnn.readNetFromDarknet. The input of every [yolo] layer (its head conv's output, activation
included) must equal yoloprune's within 1e-4 of its largest value, and the boxes and scores OpenCV's
[yolo] layer decodes from it (scale_x_y, new_coords) must equal those of yoloprune's decoding. The
big cfgs run at 160 px (5x5 to 20x20 grids), which keeps each under 10 s on two cores.

The random model is made so that the comparison means something at any depth (`calibrate_bn`): BN
statistics taken from the input itself keep every layer near unit scale, so mish, leaky and the
heads' logistic are exercised where they bend, not saturated, and positive BN offsets keep float32
rounding well below the tolerance. Its BNs use OpenCV's epsilon, which differs from darknet's
(test_eval_runtimes covers that difference): with darknet's 1e-5 the heads of yolov4-tiny alone,
under random_model's BN statistics, already differ from OpenCV's by 7e-5 of their scale.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import CONFIGS, FIXTURES, OPENCV_BN_EPS, assert_same_state, calibrate_bn, opencv_yolo_outputs, random_model
from yoloprune.darknet.cfg import ConvBlock, load_cfg, write_cfg
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_darknet_weights, save_darknet_weights


def _case(path: Path, size: int, slow: bool = False):
    # one xdist group per cfg: its tests share the module-scoped export on one worker
    marks = [pytest.mark.xdist_group(f"opencv-oracle-{path.stem}")] + ([pytest.mark.slow] if slow else [])
    return pytest.param((path, size), id=path.stem, marks=marks)


CASES = [
    _case(CONFIGS / "yolov3-hand-nano.cfg", 128),
    _case(FIXTURES / "yolov3-tiny.cfg", 416),
    *(_case(FIXTURES / f"{name}.cfg", 256) for name in ("yolov3-tiny-prn", "yolov4-tiny", "yolov7-tiny")),
    *(_case(FIXTURES / f"{name}.cfg", 160, slow=True) for name in ("yolov3", "yolov3-spp", "yolov4", "yolov4-csp")),
]


@dataclass
class Exported:
    model: Darknet  # eval mode, OpenCV's BN epsilon
    cfg_path: Path  # the cfg as yoloprune writes it
    weights_path: Path
    x: torch.Tensor
    heads: list[torch.Tensor]  # yoloprune's, per [yolo] layer (N, anchors, H, W, 5 + classes)
    opencv: list[tuple[np.ndarray, np.ndarray]]  # OpenCV's, per [yolo] layer: its input and its decoding


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory) -> Exported:
    cfg_path, size = request.param
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    model = random_model(str(cfg_path), seed=1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = OPENCV_BN_EPS
    calibrate_bn(model, x, seed=1)
    folder = tmp_path_factory.mktemp(cfg_path.stem)
    weights_path, written_cfg = folder / "model.weights", folder / "model.cfg"
    save_darknet_weights(model, weights_path)
    written_cfg.write_text(write_cfg(load_cfg(cfg_path)))
    with torch.no_grad():
        heads = model.forward_heads(x)
    opencv = opencv_yolo_outputs(written_cfg, weights_path, x, model.yolo_indices)
    return Exported(model, written_cfg, weights_path, x, heads, opencv)


def test_heads_match_opencv(exported):
    model = exported.model
    assert all(isinstance(model.cfg.layers[i - 1], ConvBlock) for i in model.yolo_indices)
    assert len(exported.opencv) == len(exported.heads)
    for (reference, _), raw in zip(exported.opencv, exported.heads):
        ours = raw.permute(0, 1, 4, 2, 3).reshape(reference.shape).numpy()
        scale = np.abs(reference).max()
        assert scale > 1e-3 and reference.std() > 0.05 * scale, "outputs must vary for the comparison to mean anything"
        assert np.abs(ours - reference).max() <= 1e-4 * scale


def test_decoding_matches_opencv(exported):
    size = exported.x.shape[-1]
    for yolo, raw, (_, reference) in zip(exported.model.yolo_layers, exported.heads, exported.opencv):
        n, anchors, h, w, d = raw.shape
        with torch.no_grad():
            decoded = yolo.decode(raw, (size, size))[0].numpy()
        # OpenCV's rows run over the cells, then the anchors; its boxes are relative to the image
        ours = decoded.reshape(anchors, h, w, d).transpose(1, 2, 0, 3).reshape(-1, d)
        np.testing.assert_allclose(ours[:, :4] / size, reference[:, :4], rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(ours[:, 4], reference[:, 4], atol=1e-4)
        # class scores: objectness x probability, where OpenCV did not zero them under its threshold
        scores = ours[:, 4:5] * ours[:, 5:]
        kept = reference[:, 5:] > 0
        assert kept.mean() > 0.1
        np.testing.assert_allclose(scores[kept], reference[:, 5:][kept], atol=1e-4)


def test_weights_read_back_into_the_written_cfg_equal(exported):
    loaded = Darknet(str(exported.cfg_path))
    load_darknet_weights(loaded, exported.weights_path)
    assert_same_state(exported.model, loaded)
