"""Atomic writes: the data reaches the disk before the rename, the rename before the call returns."""

from __future__ import annotations

import os

import pytest

from yoloprune import fileio


def test_atomic_write_fsyncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", "folder" if os.path.isdir(f"/proc/self/fd/{fd}") else os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
        real_fsync(fd)

    def replace(source, target):
        events.append(("rename", os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    fileio.atomic_write_text(tmp_path / "report.json", "{}\n")
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]
    assert events[0][1].startswith(".report.json.") and events[1] == ("rename", "report.json") and events[2] == ("fsync", "folder")
    assert (tmp_path / "report.json").read_text() == "{}\n"


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with fileio.atomic_output(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_written_files_get_the_mode_of_any_new_file(tmp_path):
    mask = os.umask(0o022)
    try:
        fileio.atomic_write_text(tmp_path / "report.md", "# report\n")
        (tmp_path / "plain.md").write_text("# report\n")
    finally:
        os.umask(mask)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == (tmp_path / "plain.md").stat().st_mode & 0o777 == 0o644
