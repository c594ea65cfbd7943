"""The demo report's "reproduce stage by stage" commands, run one by one, rebuild the demo's files."""

from __future__ import annotations

import csv
import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from yoloprune.cli import main
from yoloprune.demo import run_demo

DEMO_ONLY = {"report.md", "stage.json"}  # the demo's own bookkeeping, no command writes these
TIMINGS = {"img_per_s", "epoch_s", "apply_seconds", "plan_seconds", "latency_ms_torch", "latency_ms_ort"}


def files(root: Path) -> dict[str, Path]:
    """Files by relative path; TensorBoard event files (named by time and host) as their folder."""
    found = {}
    for path in root.rglob("*"):
        if path.is_file() and path.name not in DEMO_ONLY:
            name = path.relative_to(root).as_posix()
            found[re.sub(r"/tb/.*", "/tb/", name)] = path
    return found


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS and not k.startswith("ratios")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def assert_same_content(name: str, first: Path, second: Path) -> None:
    if name.endswith(".pt"):
        a, b = (torch.load(path, weights_only=True)["state_dict"] for path in (first, second))
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a), name
    elif name.endswith("metrics.csv"):
        a, b = (list(csv.DictReader(path.open())) for path in (first, second))
        assert without_timings(a) == without_timings(b), name
    elif name.endswith(".json"):
        a, b = (json.loads(path.read_text()) for path in (first, second))
        assert without_timings(a) == without_timings(b), name
    elif not name.endswith("/tb/"):
        assert first.read_bytes() == second.read_bytes(), name


@pytest.mark.slow
def test_the_reported_commands_reproduce_the_quick_demo(tmp_path, monkeypatch):
    (tmp_path / "first").mkdir()
    monkeypatch.chdir(tmp_path / "first")
    run_demo("demo", "quick")
    report = Path("demo/report.md").read_text()
    commands = re.search(r"```bash\n(.*?)```", report, flags=re.S).group(1).splitlines()
    assert [line.split()[1] for line in commands] == ["data", "train", "train", "prune", "train", "bench", "plot", "plot"]

    second = tmp_path / "second"
    (second / "demo").mkdir(parents=True)
    shutil.copy("demo/model.cfg", second / "demo" / "model.cfg")  # written by the demo before any stage
    monkeypatch.chdir(second)
    for line in commands:
        assert main(shlex.split(line)[1:]) == 0, line

    made, remade = files(tmp_path / "first" / "demo"), files(second / "demo")
    assert sorted(made) == sorted(remade)
    for name in made:
        assert_same_content(name, made[name], remade[name])
