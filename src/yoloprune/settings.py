"""Settings dataclasses as the single source of each command's defaults, checks and flags.

A settings class declares its fields with `option(...)`: the default, the help text and, where the
command line spells it differently, the flag and its aliases. From that one declaration come

- the command's argparse flags (`add_arguments`): name, type, choices, default and "(default ...)"
  in the help, so a default is written once;
- the object from parsed flags (`from_arguments`), whose `__post_init__` checks raise
  `SettingsError(field, reason)`; the CLI reports them under the flag the user typed (`with_flag`);
- the flags back from an object (`to_arguments`): what the demo prints as its reproduce commands.

Checks shared by several settings live here too: `check_img_size` (the input size is a multiple of
the coarsest head stride) and `resolve_device`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Iterable

from yoloprune.errors import SettingsError

STRIDE = 32  # the coarsest YOLO head stride: a network input must be a multiple of it

_KEYS = "yoloprune"  # the key of our entry in a field's metadata


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    choices: tuple | None = None,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    default_text: str | None = None,
    required: bool = False,
    positional: bool = False,
    repeat: bool = False,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with its command-line form.

    `flag` defaults to `--field-name`; `aliases` are further spellings (the seed's `--model_def`...).
    A bool field whose default is False becomes `--flag` (store_true); one whose default is True gets
    a `flag` such as `--no-augment` (store_false). `parse` converts the text where the type alone
    cannot (`int | str`); `default_text` says the default in words where the value is None;
    `repeat` collects a flag given several times into a list.
    """
    meta = {
        _KEYS: dict(
            help=help, flag=flag, aliases=aliases, choices=choices, parse=parse, metavar=metavar,
            default_text=default_text, required=required, positional=positional, repeat=repeat,
        )
    }
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _cli(field: dataclasses.Field) -> dict | None:
    return field.metadata.get(_KEYS)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of a settings class that have a command-line form, in declaration order."""
    return [f for f in dataclasses.fields(cls) if _cli(f) is not None]


def flag_of(cls, name: str) -> str:
    """The flag a field is given with (`img_size` -> `--img-size`); a positional's name as is."""
    for field in dataclasses.fields(cls):
        if field.name == name and _cli(field) is not None:
            spec = _cli(field)
            if spec["positional"]:
                return field.name.upper()
            return spec["flag"] or "--" + name.replace("_", "-")
    return name


def _base_type(cls, field: dataclasses.Field) -> type:
    """The field's scalar type with None removed (`int | None` -> int)."""
    hint = typing.get_type_hints(cls)[field.name]
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)] if _is_union(hint) else [hint]
    return options[0] if len(options) == 1 else object


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _default_of(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def field_defaults(settings) -> dict[str, Any]:
    """The default value of every field of a settings dataclass (or instance) that has one."""
    return {
        field.name: _default_of(field) for field in dataclasses.fields(settings)
        if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
    }


def _required(field: dataclasses.Field) -> bool:
    """A field without a default must be given; `option(required=True)` asks the same of the command
    line for a field that has a default for library callers."""
    no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
    return no_default or _cli(field)["required"]


def _help_text(field: dataclasses.Field, spec: dict, kind: type) -> str:
    text = spec["help"]
    default = _default_of(field)
    if kind is bool or _required(field) or spec["positional"] or "default" in text:
        return text
    if spec["default_text"]:
        return f"{text} (default: {spec['default_text']})"
    if default is None or default == []:
        return text
    return f"{text} (default {default:g})" if isinstance(default, float) else f"{text} (default {default})"


def add_arguments(parser: argparse.ArgumentParser, cls, exclude: Iterable[str] = (), defaults: bool = True) -> None:
    """Add a flag for every command-line field of `cls`. With `defaults=False` flags that are not
    given stay out of the parsed namespace (a resumed run fills them from its checkpoint)."""
    exclude = set(exclude)
    for field in cli_fields(cls):
        if field.name in exclude:
            continue
        spec, kind = _cli(field), _base_type(cls, field)
        names = [field.name] if spec["positional"] else [flag_of(cls, field.name), *spec["aliases"]]
        kwargs: dict[str, Any] = {"help": _help_text(field, spec, kind)}
        if not spec["positional"]:
            kwargs["dest"] = field.name
        if kind is bool:
            kwargs["action"] = "store_false" if _default_of(field) else "store_true"
        else:
            kwargs["type"] = spec["parse"] or (kind if kind in (int, float) else str)
            if spec["choices"]:
                kwargs["choices"] = spec["choices"]
            if spec["metavar"]:
                kwargs["metavar"] = spec["metavar"]
            elif not spec["positional"] and not spec["choices"]:  # named after the flag, not the field
                kwargs["metavar"] = names[0].lstrip("-").replace("-", "_").upper()
            if spec["repeat"]:
                kwargs["action"] = "append"
            if _required(field) and not spec["positional"]:
                kwargs["required"] = True
        if spec["positional"] and not _required(field):
            kwargs["nargs"] = "?"
        if not defaults and not spec["positional"]:
            kwargs["default"] = argparse.SUPPRESS
        elif not _required(field):
            kwargs["default"] = _default_of(field)
        parser.add_argument(*names, **kwargs)


def from_arguments(cls, args: argparse.Namespace | dict, **overrides):
    """An instance of `cls` from parsed flags (fields absent from `args` keep their defaults)."""
    given = vars(args) if isinstance(args, argparse.Namespace) else dict(args)
    names = {f.name for f in dataclasses.fields(cls)}
    values = {key: value for key, value in given.items() if key in names}
    values.update(overrides)
    return cls(**values)


def with_flag(cls, error: SettingsError) -> SettingsError:
    """The same error, naming the command-line flag of the field it is about (and of the fields
    its reason names)."""
    return SettingsError(flag_of(cls, error.setting), flags_in_text(cls, error.reason))


def flags_in_text(cls, text: str) -> str:
    """Library messages name other settings as `field`; on the command line they read as the flags."""
    names = {field.name for field in cli_fields(cls)}
    return re.sub(r"`(\w+)`", lambda match: flag_of(cls, match.group(1)) if match.group(1) in names else match.group(0), text)


def _format_value(value: Any) -> str:
    return _quote(repr(value) if isinstance(value, float) else str(value))  # repr: the exact float back


def _quote(text: str) -> str:
    safe = text and all(c.isalnum() or c in "-_./=:,+@%" for c in text)
    return text if safe else "'" + text.replace("'", "'\\''") + "'"


def to_arguments(settings, exclude: Iterable[str] = ()) -> list[str]:
    """The flags that make `from_arguments` rebuild `settings`: those of the fields that differ from
    their defaults, in declaration order, each as one shell-ready string (`--lr 0.001`). A field
    without a flag must hold its default, or no command line could say it: ValueError."""
    cls, exclude = type(settings), set(exclude)
    words: list[str] = []
    for field in dataclasses.fields(cls):
        value = getattr(settings, field.name)
        if field.name in exclude or value == _default_of(field):
            continue
        spec = _cli(field)
        if spec is None:
            raise ValueError(f"{cls.__name__}.{field.name} = {value!r} has no command-line flag")
        if isinstance(value, Path):
            value = str(value)
        if spec["positional"]:
            words.append(_format_value(value))
        elif isinstance(value, bool):
            words.append(flag_of(cls, field.name))  # the flag flips the default, whichever it is
        elif spec["repeat"]:
            words += [f"{flag_of(cls, field.name)} {_format_value(item)}" for item in value]
        else:
            words.append(f"{flag_of(cls, field.name)} {_format_value(value)}")
    return words


# ---------------------------------------------------------------------------------------------- shared checks


def require(ok: bool, setting: str, expected: str, value: Any) -> None:
    """Raise SettingsError(setting, 'must be <expected>, got <value>') unless `ok`."""
    if not ok:
        raise SettingsError(setting, f"must be {expected}, got {value!r}")


def is_whole(value: object) -> bool:
    """An int that is not a bool (True is an int in Python; as a count it is a mistake)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_img_size(value: int | None, setting: str = "img_size") -> None:
    """A network input size: None (the cfg's own) or a positive multiple of `STRIDE`."""
    require(value is None or (is_whole(value) and value > 0 and value % STRIDE == 0), setting, f"a positive multiple of {STRIDE}", value)


def resolve_device(name: str, setting: str = "device"):
    """`cpu`, `cuda`, `cuda:N`, or `auto` (cuda when available) as a torch.device; SettingsError for
    a name torch does not know or a CUDA device on a machine without one."""
    import torch  # heavy, and `--help` reads this module: torch loads when a device is resolved

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise SettingsError(setting, f"{name!r} is not a device name (cpu, cuda, cuda:N, auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SettingsError(setting, f"{name}: CUDA is not available on this machine")
    return device
