"""COCO-protocol metrics through faster-coco-eval, and `evaluate_model` over batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.model import Darknet
from yoloprune.eval.evaluate import DetectionMetrics, compute_detection_metrics, evaluate_model

NUM_CLASSES = 3


def random_ground_truth(seed: int, images: int = 8, max_boxes: int = 5) -> list[np.ndarray]:
    """Per image (M, 5) `[cls, x1, y1, x2, y2]`; some images have no boxes."""
    rng = np.random.default_rng(seed)
    ground_truths = []
    for _ in range(images):
        count = int(rng.integers(0, max_boxes + 1))
        top_left = rng.uniform(0, 300, (count, 2))
        size = rng.uniform(8, 90, (count, 2))
        classes = rng.integers(0, NUM_CLASSES, (count, 1))
        ground_truths.append(np.hstack([classes, top_left, top_left + size]))
    return ground_truths


def as_predictions(ground_truths: list[np.ndarray], scores: float | np.ndarray = 1.0, shift: float = 0.0) -> list[np.ndarray]:
    return [np.hstack([gt[:, 1:5] + shift, np.broadcast_to(np.asarray(scores, float), (len(gt), 1)), gt[:, :1]]) for gt in ground_truths]


@pytest.mark.parametrize("seed", [0, 1])
def test_ground_truth_as_predictions_scores_perfectly(seed):
    ground_truths = random_ground_truth(seed)
    ground_truths.append(np.zeros((0, 5)))  # an image with neither boxes nor detections
    metrics = compute_detection_metrics(as_predictions(ground_truths), ground_truths, NUM_CLASSES)
    for name in ("map50", "map", "map75", "precision", "recall", "f1", "ar100"):
        assert getattr(metrics, name) == pytest.approx(1.0), name
    assert metrics.images == len(ground_truths)
    assert metrics.ground_truths == metrics.detections == sum(len(g) for g in ground_truths)


def test_boxes_shifted_far_beyond_their_size_score_zero():
    ground_truths = random_ground_truth(2)
    metrics = compute_detection_metrics(as_predictions(ground_truths, shift=1000.0), ground_truths, NUM_CLASSES)
    assert metrics.map50 == metrics.map == metrics.precision == metrics.recall == metrics.ar100 == 0.0
    assert metrics.detections == metrics.ground_truths > 0


def test_right_box_with_wrong_class_scores_zero():
    ground_truths = random_ground_truth(3)
    predictions = as_predictions(ground_truths)
    for p in predictions:
        p[:, 5] = (p[:, 5] + 1) % NUM_CLASSES
    assert compute_detection_metrics(predictions, ground_truths, NUM_CLASSES).map50 == 0.0


def test_precision_and_recall_follow_true_and_false_positives():
    one_class = [np.array([[0, 10 + 40 * i, 10, 40 + 40 * i, 40] for i in range(4)], float) for _ in range(5)]
    # Detect the first half of each image's boxes, nothing else: recall 1/2 at precision 1.
    half = [p[:2] for p in as_predictions(one_class)]
    metrics = compute_detection_metrics(half, one_class, 1)
    assert metrics.precision == pytest.approx(1.0) and metrics.recall == pytest.approx(0.5)
    assert 0.4 < metrics.map50 < 0.6
    # Every box found, but outranked by as many far-away false positives: precision 1/2 at recall 1.
    false_positives = [np.hstack([p[:, :4] + 1000, np.full((len(p), 1), 0.9), p[:, 5:]]) for p in as_predictions(one_class)]
    mixed = [np.vstack([fp, tp]) for fp, tp in zip(false_positives, as_predictions(one_class, scores=0.5))]
    metrics = compute_detection_metrics(mixed, one_class, 1)
    assert metrics.precision == pytest.approx(0.5) and metrics.recall == pytest.approx(1.0)
    assert metrics.f1 == pytest.approx(2 / 3)


def test_no_ground_truth_at_all_gives_zeros_not_a_crash():
    empty_gt = [np.zeros((0, 5)) for _ in range(3)]
    with_detections = [np.array([[0, 0, 10, 10, 0.9, 1]], float)] * 3
    for predictions in (with_detections, [np.zeros((0, 6))] * 3):
        metrics = compute_detection_metrics(predictions, empty_gt, NUM_CLASSES)
        assert metrics.ground_truths == 0 and metrics.images == 3
        assert metrics.map50 == metrics.map == metrics.precision == metrics.recall == 0.0
    assert compute_detection_metrics([], [], NUM_CLASSES).images == 0


def test_ground_truth_without_any_detection_scores_zero():
    ground_truths = random_ground_truth(4)
    metrics = compute_detection_metrics([np.zeros((0, 6))] * len(ground_truths), ground_truths, NUM_CLASSES)
    assert metrics.map50 == metrics.recall == 0.0 and metrics.detections == 0


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="class ids"):
        compute_detection_metrics([np.zeros((0, 6))], [np.array([[5, 0, 0, 1, 1]], float)], NUM_CLASSES)
    with pytest.raises(ValueError, match="prediction sets"):
        compute_detection_metrics([np.zeros((0, 6))], [], NUM_CLASSES)
    with pytest.raises(ValueError, match="shape"):
        compute_detection_metrics([np.zeros((2, 4))], [np.zeros((0, 5))], NUM_CLASSES)


class FixedOutputModel(torch.nn.Module):
    """Returns preset decoded outputs (N, A, 5 + C), one tensor per call, in order."""

    def __init__(self, outputs: list[torch.Tensor]):
        super().__init__()
        self.outputs = list(outputs)
        self.num_classes = outputs[0].shape[-1] - 5

    def forward(self, images):
        assert not self.training
        return self.outputs.pop(0)


def make_batches(seed: int, height: int, width: int) -> tuple[list, list[torch.Tensor]]:
    """Batches (images, targets, paths) of a non-square input, and outputs that predict their targets."""
    generator = torch.Generator().manual_seed(seed)
    batches, outputs = [], []
    for batch_idx in range(2):
        targets = []
        output = torch.zeros(3, 6, 5 + NUM_CLASSES)
        for image_idx in range(3):
            count = int(torch.randint(0, 4, (1,), generator=generator))
            centres = 0.2 + 0.6 * torch.rand(count, 2, generator=generator)
            sizes = 0.05 + 0.2 * torch.rand(count, 2, generator=generator)
            classes = torch.randint(0, NUM_CLASSES, (count,), generator=generator)
            targets.append(torch.cat([torch.full((count, 1), float(image_idx)), classes[:, None].float(), centres, sizes], 1))
            scale = torch.tensor([width, height, width, height])
            output[image_idx, :count, :4] = torch.cat([centres, sizes], 1) * scale
            output[image_idx, :count, 4] = 1.0
            output[image_idx, torch.arange(count), 5 + classes] = 1.0
        images = torch.rand(3, 3, height, width, generator=generator)
        batches.append((images, torch.cat(targets), [f"b{batch_idx}_{i}.jpg" for i in range(3)]))
        outputs.append(output)
    return batches, outputs


def test_evaluate_model_compares_in_input_pixels():
    batches, outputs = make_batches(seed=0, height=64, width=96)
    model = FixedOutputModel(outputs).train()
    metrics = evaluate_model(model, batches, conf_thres=0.001, iou_thres=0.6, progress=False)
    assert metrics.map == pytest.approx(1.0) and metrics.images == 6
    assert model.training  # mode restored
    # The same outputs read with height and width swapped no longer line up.
    batches, outputs = make_batches(seed=0, height=96, width=64)
    swapped = [(images.transpose(2, 3), targets, paths) for images, targets, paths in batches]
    assert evaluate_model(FixedOutputModel(outputs), swapped, progress=False).map < 0.5


def test_evaluate_model_runs_a_darknet_model():
    torch.manual_seed(0)
    cfg_text = build_yolov3_cfg_text(0.03125, classes=NUM_CLASSES, img_size=64, stage_depths=(1, 1, 1, 1, 1))
    model = Darknet.from_text(cfg_text).train()
    batches, _ = make_batches(seed=1, height=64, width=64)
    metrics = evaluate_model(model, batches, device="cpu", progress=False)
    assert isinstance(metrics, DetectionMetrics)
    values = metrics.to_dict()
    assert {"map50", "map", "precision", "recall", "images"} <= set(values)
    for name in ("map50", "map", "map75", "precision", "recall", "f1", "ar100"):
        assert 0.0 <= values[name] <= 1.0
    assert metrics.map <= metrics.map50 and metrics.images == 6 and model.training
