"""Distributed data parallel on CPU (gloo): two torchrun processes train in step and end with one model."""

from __future__ import annotations

from helpers import ROOT

import subprocess
import sys
import textwrap
from pathlib import Path

import torch

from yoloprune.darknet.weights import load_checkpoint
from yoloprune.train.metrics import read_metrics_csv

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"

WORKER = textwrap.dedent(
    """
    import sys, torch
    from yoloprune.train import TrainSettings, train

    data, out, cfg = sys.argv[1:4]

    class SaveEveryRank:
        def on_epoch_end(self, trainer, row):
            state = {k: v.detach().cpu() for k, v in trainer.bare_model.state_dict().items()}
            torch.save({"state": state, "steps": trainer.state.global_step}, f"{out}/rank{trainer.context.rank}.pt")

    settings = TrainSettings(data=data, cfg=cfg, out=out, epochs=2, batch_size=2, img_size=64, augment=False,
                         progress=False, tensorboard=False, sparsity=1e-3, eval_every=2)
    train(settings, callbacks=[SaveEveryRank()])
    torch.distributed.destroy_process_group()
    """
)


def test_two_gloo_ranks_end_with_identical_weights(tmp_path):
    from yoloprune.data.synth import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, img_size=64, progress=False)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"
    out.mkdir()
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(data), str(out), str(NANO_CFG)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # 8 images split over 2 ranks, batch 2: 2 steps per epoch on each rank.
    assert rank0["steps"] == rank1["steps"] == 4
    for name, tensor in rank0["state"].items():
        assert torch.equal(tensor, rank1["state"][name]), name
    # Only rank 0 writes the run's files.
    assert [row["epoch"] for row in read_metrics_csv(out / "metrics.csv")] == [1, 2]
    saved = load_checkpoint(out / "last.pt")["state_dict"]
    for name, tensor in rank0["state"].items():
        assert torch.equal(saved[name], tensor), name
