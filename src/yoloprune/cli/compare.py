"""`yoloprune compare`: yoloprune's pruning modes and Torch-Pruning on one sparse model at equal MACs budgets."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.pipelines.compare.settings import CompareSettings

    add_command(
        subparsers, "compare", CompareSettings, run_compare,
        help="prune one sparse model with yoloprune (safe, full, full + blocks) and Torch-Pruning at equal MACs budgets; "
        "mAP with and without BN re-calibration",
        description="Like-for-like pruner comparison without finetuning. At each MACs budget (--targets) every pruner "
        "is brought within --tolerance of the budget (yoloprune by its budget search, Torch-Pruning by bisecting its "
        "channel ratio), MACs counted the same way for all; a pruner that cannot land there is reported as missed. "
        "Torch-Pruning runs twice: its default BNScaleImportance() and the global-slimming "
        "BNScaleImportance(group_reduction='max', normalizer=None). Every model is scored on --split as pruned and "
        "after BN re-calibration on the same --calibrate training images. Writes OUT.md, OUT.json, OUT.png. "
        "Torch-Pruning is optional (pip install 'torch-pruning>=1.5'); without it its rows are left out.",
    )


def run_compare(args: argparse.Namespace) -> int:
    from yoloprune.pipelines.compare.report import write_outputs
    from yoloprune.pipelines.compare.run import compare_pruners
    from yoloprune.pipelines.compare.settings import CompareSettings

    settings = from_arguments(CompareSettings, args)
    table = write_outputs(compare_pruners(settings), settings.out)
    print(table)
    return 0
