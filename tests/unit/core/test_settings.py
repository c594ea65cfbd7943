"""Settings dataclasses are the one source of each command's flags, defaults and checks."""

from __future__ import annotations

import argparse
import dataclasses
import shlex
from dataclasses import dataclass

import pytest

from yoloprune.cli import build_parser, main
from yoloprune.errors import SettingsError
from yoloprune.settings import add_arguments, from_arguments, option, to_arguments


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its words: "train", "data synth", ..."""
    found = {}

    def walk(parser: argparse.ArgumentParser, words: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found[" ".join((*words, name))] = sub
                    walk(sub, (*words, name))

    walk(build_parser(), ())
    return found


SETTINGS_COMMANDS = {words: parser for words, parser in command_parsers().items() if parser.get_default("settings_class")}


def test_every_command_with_defaults_has_a_settings_class():
    assert set(SETTINGS_COMMANDS) >= {"train", "prune", "eval", "detect", "bench", "export", "info", "demo", "data synth", "data show"}


@pytest.mark.parametrize("words", sorted(SETTINGS_COMMANDS))
def test_flag_defaults_are_the_fields_defaults(words):
    """What a flag means when it is not given is the field's default, read from the class itself."""
    parser = SETTINGS_COMMANDS[words]
    cls = parser.get_default("settings_class")
    flags = {}
    for action in parser._actions:
        flags.setdefault(action.dest, action)  # the first action of a dest sets its default (--quick is a shorthand)
    for field in dataclasses.fields(cls):
        if field.name not in flags or flags[field.name].required:
            continue
        default = flags[field.name].default
        if default is argparse.SUPPRESS:  # train: a flag not given is filled from a resumed run, else the field's default
            continue
        expected = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        assert default == expected, (words, field.name)


def test_a_train_settings_object_prints_flags_that_rebuild_it():
    from yoloprune.train.checkpoint import resolve_resume
    from yoloprune.train.settings import TrainSettings
    from yoloprune.cli.train import field_values

    settings = TrainSettings(
        data="d.data", cfg="c.cfg", out="o", epochs=3, batch_size=4, img_size=96, lr=0.000123456789, optimizer="adam",
        sparsity=0.004, sparsity_layers="safe", gamma_lr_scale=10.0, augment=False, amp=False, ema=True, ema_decay=0.99, skip_bad=True,
        teacher_weights="t.pt", warmup_epochs=0.0, max_steps=5,
    )
    words = shlex.split(" ".join(to_arguments(settings)))
    parsed = SETTINGS_COMMANDS["train"].parse_args(words)
    assert resolve_resume(field_values(vars(parsed))) == settings


def test_prune_settings_print_flags_that_rebuild_them():
    from yoloprune.prune.settings import PruneSettings

    settings = PruneSettings(mode="safe", max_map_drop=0.02, layers="auto", round_to=8, data="x y/d.data", img_size=128, calibrate=0)
    words = ["--weights", "w.pt", "--out", "o", *shlex.split(" ".join(to_arguments(settings)))]
    assert from_arguments(PruneSettings, SETTINGS_COMMANDS["prune"].parse_args(words)) == settings


@dataclass
class Example:
    count: int = option(3, help="how many")
    hidden: float = 0.5  # no flag


def test_a_field_without_a_flag_cannot_be_printed_unless_at_its_default():
    assert to_arguments(Example(count=4)) == ["--count 4"]
    with pytest.raises(ValueError, match="hidden"):
        to_arguments(Example(hidden=0.25))


def test_help_says_the_default_once_from_the_field():
    parser = argparse.ArgumentParser()
    add_arguments(parser, Example)
    assert "how many (default 3)" in parser.format_help()


@pytest.mark.parametrize(
    "command, message",
    [
        ("eval --weights w.pt --data d.data --img-size 100", "--img-size: must be a positive multiple of 32, got 100"),
        ("bench --model a=x.pt --img-size 64 --runs 0", "--runs: must be a whole number >= 1, got 0"),
        ("export --weights w.pt --out m.onnx --opset 11", "--opset: must be >= 13, got 11"),
        ("data synth out --img-size 100", "--img-size: must be a positive multiple of 32, got 100"),
        ("info c.cfg --img-size 31", "--img-size: must be a positive multiple of 32, got 31"),
        ("detect --weights w.pt --source s --out o --conf 2", "--conf: must be in [0, 1], got 2.0"),
        ("prune --weights w.pt --out o --ratio 0.5 --device nowhere", "--device: 'nowhere' is not a device name"),
    ],
)
def test_a_bad_value_is_one_line_naming_its_flag_before_any_file_is_read(command, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(shlex.split(command)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_library_errors_name_fields_not_flags():
    from yoloprune.prune.settings import PruneSettings

    with pytest.raises(SettingsError) as caught:
        PruneSettings(ratio=0.5, calibrate=10)
    assert caught.value.setting == "calibrate" and "`data`" in caught.value.reason and "--" not in str(caught.value)
