"""Evaluation: NMS, box geometry, COCO-protocol metrics, and drawing detections on images."""
