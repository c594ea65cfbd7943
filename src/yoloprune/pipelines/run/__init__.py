"""`run`: the whole chain on one dataset and darknet cfg (`stages`: their order; `pipeline`: each
stage; `recover`: the recovery chosen and the model delivered; `report`: report.md), with named
recipes (`profiles`) and settings (`settings`) that import without torch. Names load on first use."""

from __future__ import annotations

from yoloprune.lazy import lazy_getattr

_EXPORTS = {
    "PROFILES": "yoloprune.pipelines.run.profiles",
    "Profile": "yoloprune.pipelines.run.profiles",
    "RunSettings": "yoloprune.pipelines.run.settings",
    "RunResult": "yoloprune.pipelines.run.pipeline",
    "run_on_data": "yoloprune.pipelines.run.stages",
    "choose_recovery": "yoloprune.pipelines.run.recover",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
