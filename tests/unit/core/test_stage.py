"""Stage records: a stage is reused only when its settings and input files are those of its record;
a setting added since the record was written counts as unchanged at its default value."""

from __future__ import annotations

from yoloprune.stage import Stage, settings_changes


def test_settings_changes_lists_every_differing_setting():
    assert settings_changes({"a": 1, "b": [1, 2]}, {"a": 1, "b": (1, 2)}) == []  # compared as plain data
    assert settings_changes({"a": 1, "b": 2}, {"a": 3, "c": 4}) == ["a 1 -> 3", "b 2 -> None", "c None -> 4"]


def test_a_setting_added_since_the_record_is_no_change_at_its_default():
    defaults = {"new": False, "a": 1}
    assert settings_changes({"a": 1}, {"a": 1, "new": False}, defaults) == []
    assert settings_changes({"a": 1}, {"a": 1, "new": True}, defaults) == ["new None -> True"]
    # a recorded setting is compared as it was recorded, default or not
    assert settings_changes({"a": 2}, {"a": 1}, defaults) == ["a 2 -> 1"]


def test_stage_reuses_a_record_without_a_new_default_setting_and_empties_it_otherwise(tmp_path):
    folder = tmp_path / "stage"
    old = Stage("train", folder, {"epochs": 3})
    folder.mkdir()
    old.record()
    (folder / "result.txt").write_text("kept")
    assert Stage("train", folder, {"epochs": 3, "new": False}, defaults={"new": False}).prepare()
    assert (folder / "result.txt").read_text() == "kept"
    assert not Stage("train", folder, {"epochs": 3, "new": True}, defaults={"new": False}).prepare()
    assert not folder.exists()
    assert old.fingerprint["settings"] == {"epochs": 3}
