"""`yoloprune train`: baseline, sparsity (BN-γ L1) training and finetuning, on one process or under torchrun.

Seed users' flags work as aliases: `--model_def` = `--cfg`, `-pre` = `--weights`, `-sr [--s S]` =
`--sparsity S` (S defaults to 0.01 with `-sr`). With `--resume`, the flags saved in `OUT/last.pt`
are the defaults and any flag given on the command line overrides them.
"""

from __future__ import annotations

import argparse

SEED_DEFAULT_SPARSITY = 0.01  # the seed's `--s` default, used by a bare `-sr`

# CLI dest -> TrainConfig field, where they differ.
FIELD_FOR_DEST = {"batch": "batch_size", "no_augment": "augment", "no_tensorboard": "tensorboard"}
FLAG_FOR_FIELD = {field: "--" + dest.replace("_", "-") for dest, field in FIELD_FOR_DEST.items()}


def register(subparsers) -> None:
    from_saved = "with --resume: the saved run's value"
    parser = subparsers.add_parser(
        "train",
        help="train a detector: baseline, sparse (--sparsity), or finetune a pruned model",
        description="Train a darknet YOLOv3-family model on a YOLO dataset. Writes OUT/last.pt, OUT/best.pt, "
        "OUT/metrics.csv and OUT/tb (TensorBoard). Under `torchrun --nproc_per_node=N -m yoloprune train ...` "
        "it trains with DistributedDataParallel (NCCL on GPU, gloo on CPU).",
        argument_default=argparse.SUPPRESS,  # only flags actually given reach the handler
    )
    parser.add_argument("--cfg", "--model_def", dest="cfg", help="darknet .cfg (optional when --weights is a .pt)")
    parser.add_argument("--data", help="dataset .data file")
    parser.add_argument("--weights", "-pre", dest="weights", help="initial weights: .pt (carries its cfg) or darknet .weights")
    parser.add_argument("--out", help="output folder (default runs/train)")
    parser.add_argument("--epochs", type=int, help="epochs (default 30)")
    parser.add_argument("--batch", type=int, help="batch size per process (default 16)")
    parser.add_argument("--img-size", type=int, help="square input size, a multiple of 32 (default: the cfg's width)")
    parser.add_argument("--lr", type=float, help="peak SGD learning rate (default 0.01); warmup then cosine")
    parser.add_argument("--optimizer", choices=("sgd", "adam"), help="sgd (Nesterov momentum, default) or adam (AdamW; try --lr 0.001)")
    parser.add_argument("--weight-decay", type=float, help="weight decay on conv weights (default 5e-4)")
    parser.add_argument("--warmup-epochs", type=float, help="linear LR warmup length in epochs (default 1)")
    parser.add_argument("--sparsity", type=float, help="BN-γ L1 weight s: adds s·sign(γ) to γ.grad each step (default 0)")
    parser.add_argument("-sr", dest="sr", action="store_true", help="seed alias: sparsity training with s = --s (default 0.01)")
    parser.add_argument("--s", dest="s", type=float, help="seed alias: the s of -sr")
    parser.add_argument("--sparsity-layers", choices=("all", "safe"), help="BN layers under the penalty: all BN convs (default) or the seed's safe prunable set")
    parser.add_argument("--sparsity-decay", type=float, metavar="F", help="after fraction F of the epochs, multiply s by --sparsity-decay-factor")
    parser.add_argument("--sparsity-decay-factor", type=float, help="factor applied by --sparsity-decay (default 0.01)")
    parser.add_argument("--gamma-lr-scale", type=float, help="learning-rate multiplier for the penalised BN γ during sparsity training (default 1; ~10 with --optimizer adam)")
    parser.add_argument("--teacher-weights", help="distil from this model (.pt or .weights): finetune a pruned model with the unpruned one as teacher")
    parser.add_argument("--teacher-cfg", help="cfg of the teacher (optional when --teacher-weights is a .pt)")
    parser.add_argument("--distill-weight", type=float, help="weight of the distillation term (default 1.0)")
    parser.add_argument("--device", help="cpu or cuda (default cpu)")
    parser.add_argument("--resume", action="store_true", help=f"continue from OUT/last.pt; unset flags: {from_saved}")
    parser.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    parser.add_argument("--eval-every", type=int, help="evaluate on the valid split every K epochs and at the end (default 1; 0 = never)")
    parser.add_argument("--ema", action="store_true", help="keep an exponential moving average of the weights; it is evaluated and saved")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--skip-bad", action="store_true", help="log and skip unreadable images/labels instead of stopping")
    parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
    parser.add_argument("--mosaic", type=float, help="probability of a 2x2 mosaic sample (default: the loader's)")
    parser.add_argument("--grad-clip", type=float, help="max gradient norm, 0 = off (default 10)")
    parser.add_argument("--no-amp", dest="amp", action="store_false", help="disable mixed precision on CUDA")
    parser.add_argument("--no-tensorboard", action="store_true", help="do not write OUT/tb")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    parser.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (smoke tests)")
    parser.set_defaults(func=run_train)


def build_train_config(given: dict):
    """A TrainConfig from the flags given (a dict without unset flags), merged with a resumed run's saved config."""
    from pathlib import Path

    from yoloprune.darknet.weights import load_checkpoint
    from yoloprune.errors import SettingsError, WeightsError
    from yoloprune.train.trainer import TrainConfig

    given = dict(given)
    given.pop("func", None)
    given.pop("command", None)
    given.pop("verbose", None)
    sr, s = given.pop("sr", False), given.pop("s", None)
    if "sparsity" not in given and (sr or s is not None):
        given["sparsity"] = s if s is not None else SEED_DEFAULT_SPARSITY
    mosaic = given.pop("mosaic", None)
    values: dict = {}
    for dest, value in given.items():
        name = FIELD_FOR_DEST.get(dest, dest)
        values[name] = (not value) if dest.startswith("no_") else value
    if values.get("resume"):
        last = Path(values.get("out", TrainConfig.out)) / "last.pt"
        if not last.exists():
            raise WeightsError("--resume: no last.pt to resume from", last)
        saved = dict(load_checkpoint(last).get("meta", {}).get("train_config", {}))
        saved.pop("max_steps", None)  # a step limit belongs to the invocation that set it
        values = {**saved, **values}
    if mosaic is not None:
        values["augment_options"] = {**values.get("augment_options", {}), "mosaic": mosaic}
    try:
        return TrainConfig.from_dict(values)
    except SettingsError as error:  # say it with the flag the user typed
        raise SettingsError(FLAG_FOR_FIELD.get(error.setting, "--" + error.setting.replace("_", "-")), error.reason) from None


def run_train(args: argparse.Namespace) -> int:
    import logging

    from yoloprune.train.distributed import read_distributed_env, shutdown_distributed
    from yoloprune.train.trainer import train

    config = build_train_config(vars(args))
    context = read_distributed_env()
    if not context.is_main:
        logging.getLogger("yoloprune").setLevel(logging.WARNING)
    try:
        result = train(config)
    finally:
        shutdown_distributed()
    if context.is_main:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in result.final_metrics.items() if v is not None)
        print(f"trained {result.epochs_completed} epoch(s){' (stopped early)' if result.stopped_early else ''}: {metrics or 'not evaluated'}")
        print(f"last: {result.last}" + (f"  best: {result.best}" if result.best else ""))
    return 0
