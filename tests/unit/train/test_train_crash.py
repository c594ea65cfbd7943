"""`yoloprune train` killed with SIGKILL (no cleanup runs) resumes into the run an uninterrupted process makes."""

from __future__ import annotations

from helpers import ROOT

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from yoloprune.cli import main
from yoloprune.darknet.weights import load_checkpoint
from yoloprune.train.metrics import read_metrics_csv

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"

# Runs the real command line in a child process that SIGKILLs itself at a chosen point:
#   step N     -> at the start of optimizer step N (counted over the whole run)
#   save NAME  -> after the temp file of the k-th write of NAME is complete, before its rename
KILLING_CLI = """
import os, signal, sys
from yoloprune import fileio
from yoloprune.cli import main
from yoloprune.train.trainer import Trainer

where, value = sys.argv[1], sys.argv[2]
if where == "step":
    compute_loss = Trainer.compute_loss
    def killing_compute_loss(self, images, targets):
        if self.state.global_step == int(value):
            os.kill(os.getpid(), signal.SIGKILL)
        return compute_loss(self, images, targets)
    Trainer.compute_loss = killing_compute_loss
else:
    name, count = value.split(":")
    seen = []
    fsync_file = fileio.fsync_file
    def killing_fsync_file(path):
        fsync_file(path)
        if os.path.basename(path).startswith("." + name + "."):
            seen.append(path)
            if len(seen) == int(count):
                os.kill(os.getpid(), signal.SIGKILL)
    fileio.fsync_file = killing_fsync_file
sys.exit(main(sys.argv[3:]))
"""


@pytest.fixture(scope="module")
def data(tiny_data) -> Path:
    return tiny_data  # 8 images, batch 4: two steps per epoch


def train_arguments(data: Path, out: Path) -> list[str]:
    return ["train", "--cfg", str(NANO_CFG), "--data", str(data), "--img-size", "64", "--epochs", "3", "--batch", "4",
            "--sparsity", "0.001", "--no-augment", "--no-progress", "--no-tensorboard", "--out", str(out)]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "run"
    assert main(train_arguments(data, out)) == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [("step", "3"), ("save", "last.pt:2")], ids=["mid-epoch", "mid-checkpoint-write"])
def test_sigkill_then_resume_equals_an_uninterrupted_run(data, uninterrupted, tmp_path, kill_at):
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, "-c", KILLING_CLI, *kill_at, *train_arguments(data, out)], capture_output=True, text=True)
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 1  # the kill came in epoch 2, before its checkpoint landed

    assert main(["train", "--resume", "--out", str(out)]) == 0
    assert [row["epoch"] for row in read_metrics_csv(out / "metrics.csv")] == [1, 2, 3]
    for name in ("last.pt", "best.pt"):
        expected, resumed = load_checkpoint(uninterrupted / name), load_checkpoint(out / name)
        assert resumed["train_state"]["epoch"] == expected["train_state"]["epoch"]
        for key, tensor in expected["state_dict"].items():
            assert torch.allclose(resumed["state_dict"][key].float(), tensor.float(), atol=1e-5), (name, key)
    expected_rows, resumed_rows = read_metrics_csv(uninterrupted / "metrics.csv"), read_metrics_csv(out / "metrics.csv")
    for expected_row, resumed_row in zip(expected_rows, resumed_rows):
        for column in ("loss", "map50", "gamma_q50", "lr"):
            assert resumed_row[column] == pytest.approx(expected_row[column], rel=1e-4, abs=1e-6), column
