"""What every figure shares: a pyplot that draws without a display, and an atomic PNG save."""

from __future__ import annotations

from pathlib import Path

from yoloprune.fileio import atomic_output


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported on first use: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: str | Path, bbox_inches: str | None = "tight") -> Path:
    """Save `fig` as a 110-dpi PNG (a reader never sees a half-written file) and close it."""
    path = Path(path)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches=bbox_inches)
    pyplot().close(fig)
    return path
