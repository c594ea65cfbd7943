"""What every importer takes besides its source: class selection, split and output name."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.errors import SettingsError

DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass
class ImportOptions:
    classes: list[str] | None = None  # keep only these, in this order
    merge: str | None = None  # every kept class becomes this one
    fractions: tuple[float, ...] | None = None  # train, valid[, test]; None: DEFAULT_FRACTIONS where needed
    seed: int = 0
    group: str | None = None  # regex: images whose file names give the same group 1 share a split
    name: str | None = None  # of the .data / .names files; None: the output folder's name


def check_split_options(options: ImportOptions, published: bool) -> None:
    """Refuse `fractions` / `group` for a source whose split is published: it is kept as published."""
    if not published:
        return
    for setting in ("fractions", "group"):
        if getattr(options, setting) is not None:
            raise SettingsError(
                setting,
                "this source publishes its split, which is kept as published; `fractions` and `group` "
                "apply to sources without one",
            )
