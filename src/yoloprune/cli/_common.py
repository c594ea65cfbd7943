"""What the commands share on the command line: a parser built from a settings class, and how a
model is named."""

from __future__ import annotations

import argparse
from typing import Callable

from yoloprune.settings import add_arguments

CFG_HELP = "darknet .cfg (optional when --weights is a .pt, which carries its cfg)"
WEIGHTS_HELP = "darknet .weights or yoloprune .pt"


def add_model_arguments(parser: argparse.ArgumentParser, weights_required: bool = True, weights_help: str = WEIGHTS_HELP) -> None:
    """`--cfg` and `--weights`, with the seed's spellings (`--model_def`, `--weights_path`, `-pre`)."""
    parser.add_argument("--cfg", "--model_def", dest="cfg", help=CFG_HELP)
    parser.add_argument("--weights", "--weights_path", "-pre", dest="weights", required=weights_required, help=weights_help)


def add_command(
    subparsers, name: str, settings_class, handler: Callable[[argparse.Namespace], int], help: str, description: str,
    model: bool = False, defaults: bool = True, weights_help: str = WEIGHTS_HELP,
) -> argparse.ArgumentParser:
    """A command whose flags are the fields of `settings_class` (after `--cfg`/`--weights` with
    `model=True`); `handler` gets the parsed namespace, the CLI reports bad values under their flags."""
    parser = subparsers.add_parser(name, help=help, description=description)
    if model:
        add_model_arguments(parser, weights_help=weights_help)
    add_arguments(parser, settings_class, defaults=defaults)
    parser.set_defaults(func=handler, settings_class=settings_class)
    return parser
