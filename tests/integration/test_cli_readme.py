"""Every command line the README shows parses with today's parsers, with the meaning it shows."""

from __future__ import annotations

from helpers import ROOT

import re
import shlex
from pathlib import Path

import pytest

from yoloprune.cli import build_parser

README = ROOT / "README.md"


def readme_command_lines() -> list[str]:
    """`yoloprune ...` lines of the fenced code blocks and inline code spans (joined over line breaks),
    from `yoloprune` on (`torchrun ... -m yoloprune train ...` included), split at `&&`."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    candidates = [line for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    candidates += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for candidate in candidates:
        for part in candidate.split("&&"):
            part = part.split(" #")[0].strip()
            found = re.search(r"(?:^|\s)(yoloprune \S.*)", part)
            if found and not re.search(r"[\[\]|<>]", found.group(1)):  # a synopsis, not a command
                commands.append(found.group(1))
    return commands


COMMANDS = readme_command_lines()


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 8, COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_parses(command):
    words = shlex.split(command)[1:]
    if words in (["--help"], ["COMMAND", "--help"]):
        pytest.skip("a help request")
    args = build_parser().parse_args(words)
    assert callable(args.func)


def parsed(command: str):
    return build_parser().parse_args(shlex.split(command)[1:])


def test_seed_spellings_mean_what_they_did():
    train = parsed("yoloprune train --model_def a.cfg -pre b.weights -sr --s 0.001 --data d.data")
    assert (train.cfg, train.weights, train.sr, train.s) == ("a.cfg", "b.weights", True, 0.001)
    evaluate = parsed("yoloprune eval --model_def a.cfg --weights_path b.pt --data_config d.data --img_size 320 --conf_thres 0.01 --nms_thres 0.5 --batch_size 4")
    assert (evaluate.cfg, evaluate.weights, evaluate.data, evaluate.img_size, evaluate.conf, evaluate.iou, evaluate.batch) == (
        "a.cfg", "b.pt", "d.data", 320, 0.01, 0.5, 4,
    )
    prune = parsed("yoloprune prune --weights w.pt --out o --round 8 --layers auto --max-map-drop 0.01 --data d.data")
    assert (prune.round_to, prune.layers, prune.max_map_drop) == (8, "auto", 0.01)
    bench = parsed("yoloprune bench --model a=x.pt --model b=y.pt --json o.json --md o.md")
    assert (bench.models, bench.json_out, bench.md_out) == (["a=x.pt", "b=y.pt"], "o.json", "o.md")
