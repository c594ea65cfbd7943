"""The text level of a darknet cfg: `[section]` blocks of `key=value` options, and typed access to
them that consumes each key it reads, so that whatever is left over can be checked against what
darknet itself reads (see `darknet.cfg`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from yoloprune.darknet.blocks import ACTIVATIONS
from yoloprune.errors import CfgError

CHANGES_THE_NETWORK = "it changes the network; yoloprune would build a different model than darknet"
CHANGES_WEIGHT_READING = "it changes how darknet reads the .weights file; yoloprune would load different weights"


@dataclass
class RawBlock:
    section: str
    line: int
    options: dict[str, str]
    option_lines: dict[str, int]


def split_blocks(text: str, path: str | None) -> list[RawBlock]:
    blocks: list[RawBlock] = []
    for line_no, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]") or len(line) < 3:
                raise CfgError(f"malformed section header {line!r}", path, line_no)
            blocks.append(RawBlock(line[1:-1].strip().lower(), line_no, {}, {}))
            continue
        if "=" not in line:
            raise CfgError(f"expected 'key=value' or '[section]', got {line!r}", path, line_no)
        if not blocks:
            raise CfgError("option before the first [section]", path, line_no)
        key, value = (part.strip() for part in line.split("=", 1))
        if not key:
            raise CfgError(f"empty key in {line!r}", path, line_no)
        block = blocks[-1]
        if key in block.options:
            raise CfgError(f"duplicate key {key!r} in [{block.section}]", path, line_no)
        block.options[key] = value
        block.option_lines[key] = line_no
    return blocks


def is_number(value: float) -> Callable[[str], bool]:
    """A check that an option's text is the number `value` (darknet reads "1" and "1.0" alike)."""

    def check(text: str) -> bool:
        try:
            return float(text) == value
        except ValueError:
            return False

    return check


def never(text: str) -> bool:
    return False


class Options:
    """Typed, consuming access to one raw block's options; what darknet reads but does not change the
    forward pass becomes `extra`, anything else is refused."""

    def __init__(self, raw: RawBlock, path: str | None):
        self.raw, self.path = raw, path
        self.remaining = dict(raw.options)
        self.accepted: set[str] = set()  # keys that change the network, checked to be at a neutral value

    def error(self, key: str | None, message: str) -> CfgError:
        line = self.raw.option_lines.get(key, self.raw.line) if key else self.raw.line
        return CfgError(f"[{self.raw.section}] {message}", self.path, line)

    def has(self, key: str) -> bool:
        return key in self.remaining

    def int(self, key: str, default: int | None = None, *, minimum: int | None = None) -> int:
        if key not in self.remaining:
            if default is None:
                raise self.error(None, f"missing required key {key!r}")
            return default
        text = self.remaining.pop(key)
        try:
            value = int(text)
        except ValueError:
            raise self.error(key, f"{key}: expected an integer, got {text!r}") from None
        if minimum is not None and value < minimum:
            raise self.error(key, f"{key}: must be >= {minimum}, got {value}")
        return value

    def ints(self, key: str, required: bool = True) -> tuple[int, ...] | None:
        if key not in self.remaining:
            if required:
                raise self.error(None, f"missing required key {key!r}")
            return None
        text = self.remaining.pop(key)
        try:
            values = tuple(int(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise self.error(key, f"{key}: expected comma-separated integers, got {text!r}") from None
        if not values:
            raise self.error(key, f"{key}: empty list")
        return values

    def activation(self, default: str = "linear") -> str:
        value = self.remaining.pop("activation", default).lower()
        if value not in ACTIVATIONS:
            raise self.error("activation", f"activation: unsupported {value!r} (supported: {', '.join(ACTIVATIONS)})")
        return value

    def check_number(self, key: str) -> None:
        """A numeric option yoloprune reads from `extra` (e.g. [yolo] scale_x_y): check that it is one."""
        if key in self.remaining:
            try:
                float(self.remaining[key])
            except ValueError:
                raise self.error(key, f"{key}: expected a number, got {self.remaining[key]!r}") from None
            self.accepted.add(key)

    def not_supported(self, key: str, supported: str | None, why: str = CHANGES_THE_NETWORK) -> CfgError:
        """The refusal of `key` at the value the file gives; `supported` names the values that would do."""
        only = f", only {supported}" if supported is not None else ""
        return self.error(key, f"{key}={self.raw.options[key]}: not supported{only} ({why})")

    def refuse_unless(self, key: str, neutral: Callable[[str], bool], supported: str | None, why: str = CHANGES_THE_NETWORK) -> None:
        """`key` makes darknet compute something yoloprune does not: accept it (into `extra`) only at
        a value where it does not, which `supported` names for the message (None: at no value)."""
        if key not in self.remaining:
            return
        if not neutral(self.remaining[key]):
            raise self.not_supported(key, supported, why)
        self.accepted.add(key)

    def extra(self, passive: frozenset[str]) -> dict[str, str]:
        """The options left after the typed ones, in file order: `passive` and accepted keys; raises on
        the first other key."""
        for key in self.remaining:
            if key not in passive and key not in self.accepted:
                raise self.error(key, f"unknown key {key!r} (darknet does not read it here; misspelt?)")
        extra, self.remaining = self.remaining, {}
        return extra
