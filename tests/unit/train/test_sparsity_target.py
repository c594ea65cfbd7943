"""`train --sparsity-target` end to end (early stop, s raised on a stall and kept by a resume) on a
tiny synthetic dataset; the sparsity flags on the CLI."""

from __future__ import annotations

from helpers import ROOT

import logging
from pathlib import Path

import pytest

from yoloprune.cli import main
from yoloprune.darknet.weights import load_checkpoint
from yoloprune.train.metrics import read_metrics_csv
from yoloprune.train.settings import TrainSettings
from yoloprune.train.trainer import train

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"


def _settings(data: Path, out: Path, **changes) -> TrainSettings:
    values = dict(
        data=data, cfg=NANO_CFG, out=out, epochs=3, batch_size=4, img_size=64, augment=False,
        progress=False, tensorboard=False, sparsity=1e-4, sparsity_layers="safe", eval_every=0,
    )
    values.update(changes)
    return TrainSettings(**values)


def saved_s(path: Path) -> float:
    """The s a checkpoint's regulariser will continue with."""
    return load_checkpoint(path)["train_state"]["regulariser"]["s"]


def test_an_easy_target_ends_the_run_early_as_a_finished_run(tiny_data, tmp_path, caplog):
    """Every |γ| is below 10: the share is 1 after epoch 1, so the run ends there, evaluated and
    saved as a last epoch is (best.pt, although --eval-every 5 would not have evaluated it)."""
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="yoloprune"):
        result = train(_settings(tiny_data, out, sparsity_target=0.5, sparsity_target_threshold=10.0, eval_every=5))
    rows = read_metrics_csv(result.metrics_csv)
    assert len(rows) == 1 < 3 and rows[-1]["sparse_macs_share"] == 1.0 >= 0.5
    assert result.target_reached and not result.stopped_early and result.epochs_completed == 1
    assert rows[-1]["map50"] is not None and result.best is not None and result.best.exists()
    assert load_checkpoint(result.last)["train_state"]["epoch"] == 1
    assert "sparsity target reached at epoch 1" in caplog.text
    again = train(_settings(tiny_data, out, sparsity_target=0.5, sparsity_target_threshold=10.0, eval_every=5, resume=True))
    assert again.epochs_completed == 1 and again.target_reached  # a resume of a finished run trains no further
    assert len(read_metrics_csv(again.metrics_csv)) == 1


def test_a_stalled_share_doubles_s_and_a_resume_keeps_the_raised_s(tiny_data, tmp_path):
    """No |γ| gets below 1e-9 in 5 epochs: the share stays 0, so after epoch 3 (two epochs without a
    gain) s doubles, and again after epoch 5. The run is interrupted in epoch 4 and resumed: epoch 4
    must run at the raised s, which only the checkpoint knows."""
    out = tmp_path / "run"
    target = dict(sparsity_target=0.5, sparsity_target_threshold=1e-9, epochs=5, sparsity_max=1e-3)
    stopped = train(_settings(tiny_data, out, max_steps=7, **target))  # 2 steps per epoch: in epoch 4
    assert stopped.stopped_early and stopped.epochs_completed == 3
    assert saved_s(out / "last.pt") == pytest.approx(2e-4)
    resumed = train(_settings(tiny_data, out, resume=True, **target))
    rows = read_metrics_csv(resumed.metrics_csv)
    assert [row["sparsity"] for row in rows] == pytest.approx([1e-4, 1e-4, 1e-4, 2e-4, 2e-4])
    assert all(row["sparse_macs_share"] == 0.0 for row in rows)
    assert not resumed.target_reached and resumed.epochs_completed == 5  # the cap ends it
    assert saved_s(resumed.last) == pytest.approx(4e-4)


def test_without_sparsity_max_s_doubles_once(tiny_data, tmp_path):
    """The same stalled share with the default ceiling: s doubles after epoch 3 and then stays."""
    result = train(_settings(tiny_data, tmp_path / "run", sparsity_target=0.5, sparsity_target_threshold=1e-9, epochs=6))
    rows = read_metrics_csv(result.metrics_csv)
    assert [row["sparsity"] for row in rows] == pytest.approx([1e-4, 1e-4, 1e-4, 2e-4, 2e-4, 2e-4])
    assert saved_s(result.last) == pytest.approx(2e-4)


def test_train_help_lists_the_new_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in (
        "--sparsity-weighting {none,macs}", "--sparsity-kind {l1,polarization}", "--polarization-t T", "--polarization-bound A",
        "--sparsity-target F", "--sparsity-target-threshold", "--sparsity-max",
    ):
        assert flag in text
    assert "latency" not in text


TRAIN = ["train", "--cfg", str(NANO_CFG), "--img-size", "64", "--epochs", "1", "--batch", "4", "--no-progress", "--out", "{tmp}/new"]

BAD = {
    "target-above-1": (["--sparsity", "0.01", "--sparsity-target", "1.5"], "--sparsity-target: must be a fraction in (0, 1), got 1.5"),
    "target-without-s": (["--sparsity-target", "0.5"], "--sparsity-target: needs the penalty on: give --sparsity > 0"),
    "target-with-decay": (["--sparsity", "0.01", "--sparsity-target", "0.5", "--sparsity-decay", "0.5"], "--sparsity-decay: must be left out with --sparsity-target"),
    "max-below-s": (["--sparsity", "0.01", "--sparsity-target", "0.5", "--sparsity-max", "0.001"], "--sparsity-max: must be >= --sparsity (0.01)"),
    "polarization-t-zero": (["--sparsity", "0.01", "--sparsity-kind", "polarization", "--polarization-t", "0"], "--polarization-t: must be > 0, got 0"),
    "polarization-bound-zero": (["--sparsity", "0.01", "--sparsity-kind", "polarization", "--polarization-bound", "0"], "--polarization-bound: must be > 0, got 0"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_a_bad_sparsity_setting_is_one_error_line(tiny_data, tmp_path, capsys, case):
    extra, expected = BAD[case]
    arguments = [a.format(tmp=tmp_path) for a in [*TRAIN, "--data", str(tiny_data), *extra]]
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("yoloprune: error: "), err
    assert expected in err
    assert not (tmp_path / "new").exists()
