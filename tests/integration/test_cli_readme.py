"""The README and docs/*.md against the code: every command line they show parses with today's
parsers, with the meaning it shows; the README's command table lists exactly the commands the CLI
registers; every relative link and repository path they name exists; the README's Python imports
resolve; docs/README.md indexes every page.

Commands under a heading that starts with "Earlier measurements" record how an earlier version was
run and are not parsed."""

from __future__ import annotations

from helpers import ROOT

import argparse
import ast
import importlib
import re
import shlex
from pathlib import Path

import pytest

from yoloprune.cli import build_parser

README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
HISTORY_HEADING = re.compile(r"Earlier measurements")
REPO_PATH = re.compile(r"(?:\.ci|configs|docs|src|tests)/[\w./-]*")
FENCE = re.compile(r"```[a-z]*\n(.*?)```", flags=re.S)


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) pairs, split at Markdown headings outside fenced code blocks."""
    found, heading, body, fenced = [], "", [], False
    for line in text.splitlines(keepends=True):
        fenced ^= line.startswith("```")
        if not fenced and re.match(r"#+ ", line):
            found.append((heading, "".join(body)))
            heading, body = line.strip(), []
        else:
            body.append(line)
    found.append((heading, "".join(body)))
    return found


def current_text(page: Path) -> str:
    """The page without the sections under an "Earlier measurements" heading (and their subsections)."""
    kept, skip_level = [], None
    for heading, body in sections(page.read_text(encoding="utf-8")):
        level = len(heading) - len(heading.lstrip("#")) if heading else 0
        if skip_level is not None and level > skip_level:
            continue
        skip_level = level if HISTORY_HEADING.search(heading) else None
        if skip_level is None:
            kept.append(f"{heading}\n{body}")
    return "\n".join(kept)


def command_lines(text: str) -> list[str]:
    """`yoloprune ...` lines of the fenced code blocks and inline code spans (joined over line breaks),
    from `yoloprune` on (`torchrun ... -m yoloprune train ...` included), split at `&&`."""
    candidates = [line for block in FENCE.findall(text) for line in block.replace("\\\n", " ").splitlines()]
    prose = FENCE.sub("", text)
    candidates += [span.replace("\n", " ") for span in re.findall(r"`([^`]+)`", prose)]
    commands = []
    for candidate in candidates:
        for part in candidate.split("&&"):
            part = part.split(" #")[0].strip()
            found = re.search(r"(?:^|\s)(yoloprune \S.*)", part)
            if found and not re.search(r"[\[\]|<>]", found.group(1)):  # a synopsis, not a command
                commands.append(found.group(1))
    return commands


COMMANDS = [(page, command) for page in PAGES for command in command_lines(current_text(page))]


def test_the_readme_and_docs_show_commands():
    in_readme = [command for page, command in COMMANDS if page == README]
    assert len(in_readme) >= 8, in_readme
    assert len(COMMANDS) - len(in_readme) >= 20, "docs/*.md lost their commands"


@pytest.mark.parametrize("command", [command for _, command in COMMANDS],
                         ids=[f"{page.relative_to(ROOT)}: {command[:60]}" for page, command in COMMANDS])
def test_command_parses(command):
    words = shlex.split(command)[1:]
    if words in (["--help"], ["COMMAND", "--help"]):
        pytest.skip("a help request")
    if all(re.fullmatch(r"[a-z][a-z0-9-]*", word) for word in words):  # a command named in prose, e.g. `yoloprune slim`
        registered = registered_commands()
        assert " ".join(words) in registered | {name.split()[0] for name in registered}, f"no command {' '.join(words)!r}"
        return
    args = build_parser().parse_args(words)
    assert callable(args.func)


def registered_commands() -> set[str]:
    """Every command the CLI registers, a group's subcommands as `group sub`."""
    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        actions = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
        return dict(actions[0].choices) if actions else {}

    names = set()
    for name, parser in subcommands(build_parser()).items():
        nested = subcommands(parser)
        names |= {f"{name} {sub}" for sub in nested} if nested else {name}
    return names


def readme_table_commands() -> set[str]:
    """The command names in the first column of the table under the README's "Commands" heading."""
    body = dict(sections(README.read_text(encoding="utf-8")))["## Commands"]
    names = set()
    for cell in re.findall(r"^\| `([^`]+)`", body, flags=re.M):
        words = []
        for word in cell.split():
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            words.append(word)
        names.add(" ".join(words))
    return names


def test_the_readme_table_lists_every_command():
    registered, listed = registered_commands(), readme_table_commands()
    assert not registered - listed, f"commands missing from the README's table: {sorted(registered - listed)}"
    assert not listed - registered, f"the README's table lists commands the CLI lacks: {sorted(listed - registered)}"


def named_paths(page: Path) -> list[str]:
    """Relative link targets (resolved from the page's folder) and repository paths in code spans and
    commands (resolved from the root; a command's output folders excepted), as root-relative strings."""
    text = page.read_text(encoding="utf-8")
    paths = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if not re.match(r"[a-z]+:|#", target):
            resolved = (page.parent / target.split("#")[0]).resolve()
            paths.append(str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else str(resolved))
    spans = re.findall(r"`([^`\n]+)`", FENCE.sub("", text)) + [line for block in FENCE.findall(text) for line in block.splitlines()]
    for span in spans:
        if REPO_PATH.fullmatch(span):
            paths.append(span)
            continue
        words = span.split()
        paths += [word for i, word in enumerate(words) if REPO_PATH.fullmatch(word) and (i == 0 or words[i - 1] != "--out")]
    return paths


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_every_named_path_exists(page):
    missing = [path for path in named_paths(page) if not (ROOT / path).exists()]
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"


def test_the_readme_python_names_exist():
    """Every `from M import a, b` of the README's Python blocks and every `yoloprune.x.y` module it names."""
    text = README.read_text(encoding="utf-8")
    names = []
    for block in re.findall(r"```python\n(.*?)```", text, flags=re.S):
        for node in ast.walk(ast.parse(block)):
            if isinstance(node, ast.ImportFrom):
                names += [(node.module, alias.name) for alias in node.names]
    names += [(module, None) for module in re.findall(r"`(yoloprune(?:\.\w+)+)`", text)]
    assert names
    for module, name in names:
        imported = importlib.import_module(module)
        assert name is None or hasattr(imported, name), f"{module} has no {name}"


def test_the_docs_index_lists_every_page():
    index = (DOCS / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w.-]+\.md)\)", index))
    pages = {page.name for page in DOCS.glob("*.md")} - {"README.md"}
    assert not pages - linked, f"docs/README.md does not list {sorted(pages - linked)}"
    assert "docs/README.md" in README.read_text(encoding="utf-8")


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
