"""Stage folders that remember what produced them, so that a re-run never mixes old and new results.

A multi-stage run (the demo: data → baseline → sparse → prune → finetune) reuses or resumes the
stages whose results are still valid. A stage is valid when its settings and the *contents* of its
input files (the checkpoint it starts from, the dataset) are those recorded in its folder's
`stage.json`. Anything else — other settings, a changed input checkpoint, no record — empties the
folder, and the log says why, before the stage runs again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Mapping

from yoloprune.fileio import atomic_write_text

log = logging.getLogger(__name__)

RECORD_NAME = "stage.json"


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's content (a checkpoint is tens of MB at most: hashing it takes milliseconds)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(value: object) -> object:
    """JSON-comparable form: paths as strings, tuples as lists."""
    return json.loads(json.dumps(value, default=str, sort_keys=True))


def settings_changes(old: Mapping[str, object], new: Mapping[str, object], defaults: Mapping[str, object] = ()) -> list[str]:
    """`key old -> new` for every setting that differs (compared as plain data), sorted by key. A
    setting the old record does not hold (one added since it was written) is no change while it has
    its value in `defaults`: a new setting's default keeps the behaviour the stage ran with."""
    old, new, defaults = _plain(dict(old)), _plain(dict(new)), _plain(dict(defaults))
    return [
        f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key) and not (key not in old and key in defaults and new.get(key) == defaults[key])
    ]


class Stage:
    """One stage's folder and the fingerprint (settings + input file digests) of the run that fills it."""

    def __init__(
        self, name: str, folder: str | Path, settings: Mapping[str, object], inputs: Mapping[str, str | Path] = (),
        defaults: Mapping[str, object] = (),
    ):
        self.name = name
        self.folder = Path(folder)
        self.defaults = dict(defaults)  # the settings' default values (see `settings_changes`)
        self.fingerprint = {
            "settings": _plain(dict(settings)),
            "inputs": {key: {"path": str(path), "sha256": file_digest(path)} for key, path in dict(inputs).items()},
        }

    @property
    def record_path(self) -> Path:
        return self.folder / RECORD_NAME

    def changes(self) -> list[str]:
        """Why the folder's results are not this run's: an empty list when they are."""
        if not self.folder.exists():
            return ["no previous results"]
        try:
            recorded = json.loads(self.record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return [f"no readable {RECORD_NAME}"]
        reasons = settings_changes(recorded.get("settings", {}), self.fingerprint["settings"], self.defaults)
        old_inputs, new_inputs = recorded.get("inputs", {}), self.fingerprint["inputs"]
        for key in sorted(set(old_inputs) | set(new_inputs)):
            if (old_inputs.get(key) or {}).get("sha256") != (new_inputs.get(key) or {}).get("sha256"):
                reasons.append(f"input {key} changed")
        return reasons

    def prepare(self) -> bool:
        """Make the folder this run's: True when it already holds this run's (maybe partial) results,
        False when it was emptied (or did not exist) and the stage must start from scratch."""
        reasons = self.changes()
        if not reasons:
            return True
        if self.folder.exists():
            log.info("%s: re-running the stage (%s)", self.name, "; ".join(reasons))
            shutil.rmtree(self.folder)
        return False

    def record(self) -> None:
        """Write the fingerprint into the folder: its results (complete or resumable) belong to this run."""
        atomic_write_text(self.record_path, json.dumps(self.fingerprint, indent=2, sort_keys=True) + "\n")
