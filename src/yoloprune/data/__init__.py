"""YOLO datasets: the `.data` format, the loader, the importers (Pascal VOC, COCO, Ultralytics, Oxford
Hand) and the synthetic dataset.

Heavy modules (cv2, torch) load on first use of a name, so importing the package stays cheap.
"""

from __future__ import annotations

from yoloprune.lazy import lazy_getattr

_EXPORTS = {
    "DataSpec": "yoloprune.data.spec",
    "load_data_spec": "yoloprune.data.spec",
    "read_image_list": "yoloprune.data.spec",
    "label_path_for": "yoloprune.data.spec",
    "create_dataloader": "yoloprune.data.dataset",
    "YoloDataset": "yoloprune.data.dataset",
    "AugmentConfig": "yoloprune.data.transforms",
    "letterbox": "yoloprune.data.transforms",
    "unletterbox_boxes_xyxy": "yoloprune.data.transforms",
    "generate_synthetic_dataset": "yoloprune.data.synth",
    "convert_oxford_hand": "yoloprune.data.oxford_hand",
    "ImportOptions": "yoloprune.data.importers.options",
    "import_voc": "yoloprune.data.importers.voc",
    "import_coco": "yoloprune.data.importers.coco",
    "import_yolo": "yoloprune.data.importers.ultralytics",
    "check_dataset": "yoloprune.data.check",
    "render_sample_grid": "yoloprune.data.show",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
