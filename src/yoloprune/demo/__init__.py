"""The demo: the whole chain on the embedded synthetic dataset (`pipeline`), its sizes (`profiles`)
and its report (`report`). Names load on first use, so that the command line reads the profiles
without importing torch."""

from __future__ import annotations

from yoloprune.lazy import lazy_getattr

_EXPORTS = {
    "DemoProfile": "yoloprune.demo.profiles",
    "DemoSettings": "yoloprune.demo.profiles",
    "PROFILES": "yoloprune.demo.profiles",
    "DemoResult": "yoloprune.demo.pipeline",
    "run_demo": "yoloprune.demo.pipeline",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
