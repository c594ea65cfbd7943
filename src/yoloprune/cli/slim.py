"""`yoloprune slim`: iterative slimming, rounds of prune → BN re-calibration → distilled finetune → check."""

from __future__ import annotations

import argparse

from yoloprune.cli._common import add_command, add_model_arguments
from yoloprune.settings import from_arguments


def register(subparsers) -> None:
    from yoloprune.pipelines.slim_settings import SlimSettings

    parser = add_command(
        subparsers, "slim", SlimSettings, run_slim,
        help="prune in rounds, finetuning (distilled from the original) after each; write OUT/final.pt/.cfg/.weights and OUT/slim.json",
        description="Iterative slimming: each round prunes a slice of what remains (--target-flops F: round r ends at "
        "F^(r/K) of the original MACs; --max-map-drop D alone: the prune mAP search against the round's input), "
        "re-calibrates BN, finetunes --epochs-per-round epochs distilled from the original model (--weights; with "
        "--sparsity s, every round but the last finetunes under the γ penalty so that the next cut falls on a sparse "
        "model), and checks the finetuned validation mAP@0.5 against the original's minus D (and mAP@0.5:0.95 against "
        "its own minus --max-map5095-drop). The result is the last round "
        "that passed: OUT/final.pt, final.cfg, final.weights; OUT/roundN/prune and OUT/roundN/finetune hold each "
        "round's outputs, OUT/slim.json its numbers. Everything is written into a hidden folder beside OUT that "
        "replaces OUT when the run ends; an existing OUT is replaced only if it holds nothing but a previous "
        "slim's files, and a rerun starts again from round 1.",
    )
    add_model_arguments(parser, weights_help="darknet .weights or yoloprune .pt of the model to slim; also the finetuning teacher")
    parser.add_argument(
        "--out", required=True,
        help="output folder; an existing one is replaced as a whole, and only if it holds just a previous slim's files",
    )


def run_slim(args: argparse.Namespace) -> int:
    from yoloprune.pipelines.slim import run_slimming
    from yoloprune.pipelines.slim_settings import SlimSettings

    settings = from_arguments(SlimSettings, args)
    result = run_slimming(args.weights, settings, args.out, cfg=args.cfg)
    original = result.original
    print(f"original: MACs {original['macs'] / 1e9:.4f} G, params {original['params']:,}, valid mAP@0.5 {original['map50']:.4f}, mAP@0.5:0.95 {original['map']:.4f}")
    for r in result.rounds:
        finetuned = "not finetuned" if r.map50_finetuned is None else f"finetuned {r.map50_finetuned:.4f} / {r.map_finetuned:.4f}"
        print(
            f"round {r.round}: MACs x{r.macs_ratio:.3f}, params x{r.params_ratio:.3f}; valid mAP@0.5 / @0.5:0.95 "
            f"pruned {r.map50_pruned:.4f} / {r.map_pruned:.4f}, {finetuned}; {'passed' if r.passed else 'failed'} ({r.seconds:.0f} s)"
        )
    print(f"final: round {result.chosen.round} ({result.stop_reason})")
    print("wrote: " + ", ".join(str(p) for p in result.paths.values()))
    return 0
