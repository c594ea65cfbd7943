"""Bad invocations end in one line on stderr and exit code 2, and leave every file as it was."""

from __future__ import annotations

from helpers import ROOT

import errno
import hashlib
from pathlib import Path

import pytest

from yoloprune.cli import main
from yoloprune.darknet.builder import build_yolov3_cfg_text
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.train.settings import TrainSettings
from yoloprune.train.trainer import train

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny dataset, a finished one-epoch run to resume, a teacher with other anchors, a truncated
    checkpoint and a plain file where a folder is expected."""
    from yoloprune.data.synth import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("workspace")
    data = generate_synthetic_dataset(root / "data", n_train=4, n_val=2, img_size=64, progress=False)
    train(TrainSettings(
        data=data, cfg=NANO_CFG, out=root / "run", epochs=1, batch_size=4, img_size=64, augment=False, progress=False,
        tensorboard=False, sparsity=0.001, eval_every=0,
    ))
    # Same topology, anchors made for 32-px inputs: the heads' raw box terms mean other boxes.
    save_checkpoint(root / "teacher.pt", Darknet.from_text(build_yolov3_cfg_text(0.0625, classes=1, img_size=32)))
    (root / "truncated").mkdir()
    last = (root / "run" / "last.pt").read_bytes()
    (root / "truncated" / "last.pt").write_bytes(last[: len(last) // 2])
    (root / "a_file").write_text("not a folder\n")
    return root


def snapshot(root: Path) -> dict[str, tuple[int, str]]:
    return {
        str(path.relative_to(root)): (path.stat().st_mtime_ns, hashlib.sha256(path.read_bytes()).hexdigest())
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


TRAIN = ["train", "--cfg", str(NANO_CFG), "--data", "{root}/data/synth.data", "--img-size", "64", "--epochs", "1", "--batch", "4",
         "--no-progress", "--out", "{root}/new"]

# (arguments, text the error line must hold); {root} is the workspace folder.
BAD_INVOCATIONS = {
    "batch-0": ([*TRAIN, "--batch", "0"], "--batch: must be a whole number >= 1, got 0"),
    "epochs-negative": ([*TRAIN, "--epochs", "-1"], "--epochs: must be a whole number >= 1, got -1"),
    "lr-0": ([*TRAIN, "--lr", "0"], "--lr: must be > 0, got 0.0"),
    "img-size-100": ([*TRAIN, "--img-size", "100"], "--img-size: must be a positive multiple of 32, got 100"),
    "teacher-other-heads": ([*TRAIN, "--teacher-weights", "{root}/teacher.pt"], "teacher heads"),
    "resume-other-sparsity": (["train", "--resume", "--out", "{root}/run", "--epochs", "2", "--sparsity", "0.01"], "sparsity 0.001 -> 0.01"),
    "resume-other-gamma-lr": (["train", "--resume", "--out", "{root}/run", "--gamma-lr-scale", "10"], "gamma_lr_scale 1.0 -> 10.0"),
    "resume-truncated": (["train", "--resume", "--out", "{root}/truncated"], "truncated/last.pt: not a readable PyTorch checkpoint"),
    "train-out-not-a-folder": ([*TRAIN[:-1], "{root}/a_file/run"], "a_file/run: Not a directory"),
    "prune-out-not-a-folder": (["prune", "--weights", "{root}/run/last.pt", "--ratio", "0.5", "--out", "{root}/a_file/p"], "a_file"),
    "export-out-not-a-folder": (["export", "--weights", "{root}/run/last.pt", "--img-size", "64", "--out", "{root}/a_file/m.onnx"], "a_file"),
}


@pytest.mark.parametrize("case", BAD_INVOCATIONS, ids=list(BAD_INVOCATIONS))
def test_bad_invocation_is_one_line_and_writes_nothing(workspace, capsys, case):
    arguments, expected = BAD_INVOCATIONS[case]
    before = snapshot(workspace)
    code = main([argument.format(root=workspace) for argument in arguments])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("yoloprune: error: "), err
    assert expected in err
    assert snapshot(workspace) == before


def test_full_disk_is_one_line_and_leaves_no_file(workspace, capsys, monkeypatch):
    def disk_full(path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("yoloprune.fileio.fsync_file", disk_full)
    before = snapshot(workspace)
    arguments = [argument.format(root=workspace) for argument in TRAIN] + ["--eval-every", "0", "--no-tensorboard"]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "No space left on device" in err and str(workspace / "new") in err
    assert snapshot(workspace) == before  # the checkpoint's temp file is gone too
