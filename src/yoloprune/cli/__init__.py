"""Command line: `yoloprune <command> ...`.

The cli package is the only place that parses arguments or configures logging. Each module in it
defines one command group: a `register(subparsers)` function that adds its parser and sets
`func` to a handler taking the parsed namespace, and `settings_class` to the settings dataclass the
flags fill (`yoloprune.settings`), so that a bad value is reported under its flag. Commands are discovered, so adding one is adding a file.
Heavy imports (torch, cv2) happen inside the handlers to keep `yoloprune --help` fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from yoloprune import __version__
from yoloprune.errors import SettingsError, YoloPruneError
from yoloprune.settings import flags_in_text, with_flag


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="yoloprune",
        description="Network slimming for darknet YOLOv3-family detectors: "
        "data → train (sparse) → prune → finetune → eval → bench → export.",
    )
    parser.add_argument("--version", action="version", version=f"yoloprune {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        result = args.func(args)
    except YoloPruneError as error:  # settings named by the flags the user typed, where the command has them
        settings_class = getattr(args, "settings_class", None)
        if settings_class is not None:
            error = with_flag(settings_class, error) if isinstance(error, SettingsError) else flags_in_text(settings_class, str(error))
        print(f"yoloprune: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a read-only or full output folder, a path that is not a folder...
        where = f"{error.filename}: " if error.filename else ""
        print(f"yoloprune: error: {where}{error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("yoloprune: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)
