"""`yoloprune train`: baseline, sparsity (BN-γ L1 or polarization) training and finetuning, on one process or under torchrun.

Seed users' flags work as aliases: `--model_def` = `--cfg`, `-pre` = `--weights`, `-sr [--s S]` =
`--sparsity S` (S defaults to 0.01 with `-sr`). With `--resume`, the flags saved in `OUT/last.pt`
are the defaults and any flag given on the command line overrides them.
"""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command

SEED_DEFAULT_SPARSITY = 0.01  # the seed's `--s` default, used by a bare `-sr`


def register(subparsers) -> None:
    from yoloprune.train.settings import TrainSettings

    parser = add_command(
        subparsers, "train", TrainSettings, run_train, defaults=False,
        help="train a detector: baseline, sparse (--sparsity, --sparsity-kind), or finetune a pruned model",
        description="Train a darknet YOLOv3-family model on a YOLO dataset. Writes OUT/last.pt, OUT/best.pt, "
        "OUT/metrics.csv and OUT/tb (TensorBoard). Under `torchrun --nproc_per_node=N -m yoloprune train ...` "
        "it trains with DistributedDataParallel (NCCL on GPU, gloo on CPU). With --resume, flags not given "
        "take the saved run's values, so only flags actually given reach the settings.",
    )
    parser.add_argument("-sr", dest="sr", action="store_true", default=argparse.SUPPRESS, help="seed alias: sparsity training with s = --s (default 0.01)")
    parser.add_argument("--s", dest="s", type=float, default=argparse.SUPPRESS, help="seed alias: the s of -sr")
    parser.add_argument("--mosaic", type=float, default=argparse.SUPPRESS, help="probability of a 2x2 mosaic sample (default: the loader's)")


def field_values(given: dict) -> dict:
    """TrainSettings field values from the flags given (a dict without unset flags): the seed's
    `-sr --s S` become `sparsity`, `--mosaic` an augmentation option."""
    from dataclasses import fields

    from yoloprune.train.settings import TrainSettings

    names = {f.name for f in fields(TrainSettings)} | {"sr", "s", "mosaic"}
    values = {key: value for key, value in given.items() if key in names}
    sr, s = values.pop("sr", False), values.pop("s", None)
    if "sparsity" not in values and (sr or s is not None):
        values["sparsity"] = s if s is not None else SEED_DEFAULT_SPARSITY
    mosaic = values.pop("mosaic", None)
    if mosaic is not None:
        values["augment_options"] = {"mosaic": mosaic}
    return values


def build_train_settings(given: dict):
    """TrainSettings from the flags given; with --resume the saved run's settings fill in the rest."""
    from yoloprune.train.checkpoint import resolve_resume

    return resolve_resume(field_values(given))


def run_train(args: argparse.Namespace) -> int:
    import logging

    from yoloprune.train.distributed import read_distributed_env, shutdown_distributed
    from yoloprune.train.trainer import train

    settings = build_train_settings(vars(args))
    context = read_distributed_env()
    if not context.is_main:
        logging.getLogger("yoloprune").setLevel(logging.WARNING)
    try:
        result = train(settings)
    finally:
        shutdown_distributed()
    if context.is_main:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if v is not None)
        ended = " (stopped early)" if result.stopped_early else " (sparsity target reached)" if result.target_reached else ""
        print(f"trained {result.epochs_completed} epoch(s){ended}: {metrics or 'not evaluated'}")
        print(f"last: {result.last}" + (f"  best: {result.best}" if result.best else ""))
    return 0
