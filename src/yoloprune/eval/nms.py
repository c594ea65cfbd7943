"""Non-maximum suppression: the model's decoded eval output -> per-image detections
`[x1, y1, x2, y2, score, cls]`, suppressing only within a class.

The greedy rule — walk boxes by descending score, keep a box unless a kept box of the same class
overlaps it by more than the IoU threshold — runs in OpenCV's C++ (`cv2.dnn.NMSBoxesBatched`), which
compares each box with the kept ones only. At conf 0.001 an image has hundreds of candidates and
keeps a few hundred; a whole overlap matrix per image in torch costs more than the model's forward
pass (measured on the demo model at 96 px). Boxes leave the model's device for it and the indices
come back as a torch tensor.
"""

from __future__ import annotations

import cv2
import torch

from yoloprune.eval.boxes import cxcywh_to_xyxy

# NMS compares up to candidates × kept boxes, so the candidates of one image are capped (an
# untrained model passes every anchor at conf 0.001). The cap changes nothing while the best
# `max_candidates` hold `max_det` survivors: only higher-scoring boxes suppress a box, so greedy NMS
# over the best K candidates keeps exactly the full result's survivors among them. Otherwise the
# output only misses the lowest-scoring detections.
MAX_CANDIDATES = 1000


def nms_indices(boxes_xyxy: torch.Tensor, scores: torch.Tensor, iou_thres: float, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of the boxes that greedy NMS keeps, highest score first (equal scores in input order).
    Scores must be positive (confidences above a threshold): OpenCV drops a score of 0.

    Boxes only suppress boxes of the same `groups` value (class id, or image × class); with
    `groups=None` all boxes compete.
    """
    device = boxes_xyxy.device
    if boxes_xyxy.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    boxes = boxes_xyxy.detach().to("cpu", torch.float64)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).numpy()
    ranked = scores.detach().to("cpu", torch.float64).numpy()
    if groups is None:
        kept = cv2.dnn.NMSBoxes(xywh, ranked, 0.0, iou_thres)
    else:
        kept = cv2.dnn.NMSBoxesBatched(xywh, ranked, groups.detach().to("cpu", torch.int64).numpy(), 0.0, iou_thres)
    return torch.as_tensor(kept, dtype=torch.long).reshape(-1).to(device)


def select_candidates(prediction: torch.Tensor, conf_thres: float, multi_label: bool) -> torch.Tensor:
    """Decoded predictions of one image (A, 5 + C) -> candidate detections (K, 6) above `conf_thres`.

    Score = objectness × class probability. Without `multi_label` each box keeps its best class;
    with it, every class whose score passes becomes its own detection.
    """
    prediction = prediction[prediction[:, 4] > conf_thres]  # score ≤ objectness: a cheap first cut
    boxes_xyxy = cxcywh_to_xyxy(prediction[:, :4])
    class_scores = prediction[:, 5:] * prediction[:, 4:5]
    if multi_label:
        box_idx, class_idx = (class_scores > conf_thres).nonzero(as_tuple=True)
        scores = class_scores[box_idx, class_idx]
    else:
        scores, class_idx = class_scores.max(dim=1)
        box_idx = (scores > conf_thres).nonzero(as_tuple=True)[0]
        scores, class_idx = scores[box_idx], class_idx[box_idx]
    return torch.cat([boxes_xyxy[box_idx], scores[:, None], class_idx[:, None].to(prediction.dtype)], dim=1)


def non_max_suppression(
    predictions: torch.Tensor,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    multi_label: bool = False,
    max_candidates: int = MAX_CANDIDATES,
) -> list[torch.Tensor]:
    """Class-aware NMS over a batch of decoded predictions.

    `predictions`: (N, A, 5 + C) as the model's eval output — cx, cy, w, h, objectness, class
    probabilities. Returns one (K, 6) tensor per image, `[x1, y1, x2, y2, score, cls]`, sorted by
    descending score, K ≤ `max_det`. Only the `max_candidates` best-scoring candidates of an image
    enter NMS.
    """
    if predictions.dim() != 3 or predictions.shape[-1] < 6:
        raise ValueError(f"predictions must be (N, anchors, 5 + classes), got shape {tuple(predictions.shape)}")
    detections_per_image: list[torch.Tensor] = []
    for prediction in predictions:
        candidates = select_candidates(prediction, conf_thres, multi_label)
        if candidates.shape[0] > max_candidates:
            candidates = candidates[candidates[:, 4].topk(max_candidates).indices]
        keep = nms_indices(candidates[:, :4], candidates[:, 4], iou_thres, groups=candidates[:, 5])
        detections_per_image.append(candidates[keep[:max_det]])
    return detections_per_image
