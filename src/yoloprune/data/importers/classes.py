"""Which source classes an import keeps, in which order, under which names (`--classes`, `--merge`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from yoloprune.errors import DataError


@dataclass
class ClassMapping:
    """Source class name -> output class id; a name without an id is dropped (and counted)."""

    output_names: list[str]
    ids: dict[str, int]
    dropped: Counter = field(default_factory=Counter)

    def output_id(self, source_name: str) -> int | None:
        """The output class of a box of `source_name`, or None (counted in `dropped`) when not kept."""
        class_id = self.ids.get(source_name)
        if class_id is None:
            self.dropped[source_name] += 1
        return class_id


def build_class_mapping(
    source_names: list[str], keep: list[str] | None, merge: str | None, where: str | Path
) -> ClassMapping:
    """The mapping for a dataset whose classes are `source_names` (in their output order).

    `keep`: only these classes, in this order; a name the dataset does not have raises DataError
    naming `where` (the file or folder the classes come from). `merge`: every kept class becomes
    one class of that name.
    """
    kept = list(source_names)
    if keep is not None:
        unknown = [name for name in keep if name not in source_names]
        if unknown:
            raise DataError(
                f"--classes names {', '.join(map(repr, unknown))}, which the dataset does not have "
                f"(its classes: {', '.join(source_names) or 'none'})",
                where,
            )
        kept = list(keep)
    if merge is not None:
        return ClassMapping(output_names=[merge], ids={name: 0 for name in kept})
    return ClassMapping(output_names=kept, ids={name: i for i, name in enumerate(kept)})
