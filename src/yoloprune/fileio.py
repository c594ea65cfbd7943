"""Atomic file writes: write a temp file beside the target, flush it to disk, then rename over it.

A crash, Ctrl-C or power loss mid-write leaves the previous file intact, never a truncated one: the
temp file's data is fsynced before the rename (otherwise the rename can reach the disk before the
data does), and the folder is fsynced after it so that the rename itself is durable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from yoloprune.errors import YoloPruneError


def fsync_file(path: str | Path) -> None:
    """Flush a closed file's data to disk."""
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def fsync_directory(path: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its renames are durable without it
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it: put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success rename it to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp_name)
    # mkstemp's file is private (0600); a result file gets the mode any new file would (0666 - umask)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        fsync_file(tmp_path)
        os.replace(tmp_path, path)
        fsync_directory(path.parent)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    import torch  # heavy: the torch-free modules that write files (stage, settings checks) import this one too

    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside `path` (hidden: `.NAME.tmp-XXXX`) to fill; when the block
    ends without an exception it becomes `path`, replacing whatever had that name wholesale. On an
    exception it is removed and `path` is left as it was. `path` never holds a mix of old and new
    files: during a replacement it is absent for the instant between two renames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(4)
    tmp = path.parent / f".{path.name}.tmp-{token}"
    tmp.mkdir()  # not tempfile.mkdtemp: its folder is private (0700), this one gets the umask's mode
    try:
        yield tmp
        fsync_directory(tmp)
        # A rename cannot replace a non-empty folder, so an old one is renamed aside first, the new one
        # renamed in, and only then is the old one deleted: a crash at any point leaves a complete
        # folder (the old one, at worst under its hidden `.old-` name), never a half-deleted one.
        old = path.parent / f".{path.name}.old-{token}" if os.path.lexists(path) else None
        if old is not None:
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except BaseException:
            if old is not None:
                os.rename(old, path)
            raise
        fsync_directory(path.parent)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def check_replaceable_folder(out_dir: Path, is_own: Callable[[Path], bool], command: str) -> None:
    """Refuse an output folder that `atomic_directory` could not replace without deleting the user's
    own files: something that is not a folder, or a folder holding an entry `is_own` does not
    recognise as a previous `command` run's output. Raises YoloPruneError naming up to five of them."""
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise YoloPruneError(f"{out_dir}: the output path exists and is not a folder")
    foreign = sorted(p.name for p in out_dir.iterdir() if not is_own(p))
    if foreign:
        listed = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise YoloPruneError(
            f"{out_dir}: not replacing this output folder, it holds files {command} did not write ({listed}); "
            "move them or choose another --out"
        )
