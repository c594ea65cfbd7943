"""Compare pruning strategies on one sparse-trained model, without finetuning, at equal MACs budgets:
yoloprune `--mode safe` (the seed's rule), `--mode full`, `--mode full` + layer pruning, `--mode full`
+ BN re-calibration, and Torch-Pruning's global BN-scale pruner.

    python scripts/compare_pruners.py --weights runs/demo/sparse/last.pt --data runs/demo/data/synth.data \
        --targets 0.6 0.45 0.3 0.2 --out docs/pruning-comparison

writes OUT.md (table), OUT.json (rows) and OUT.png (mAP@0.5 vs MACs). Every row's MACs are counted the
same way (torch's flop counter on the head outputs), latencies are timed interleaved on this CPU.
Torch-Pruning is optional (`pip install -e ".[torch-pruning]"`); without it its rows are skipped.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import logging
import sys
from pathlib import Path

import torch

from yoloprune.bench.profile import count_forward_macs, time_interleaved, torch_runner
from yoloprune.darknet.model import count_parameters
from yoloprune.darknet.weights import load_model
from yoloprune.errors import YoloPruneError
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator, image_loader
from yoloprune.fileio import atomic_write_text
from yoloprune.prune import plan_channel_prune, plan_layer_prune, prune_model
from yoloprune.prune.calibrate import recalibrate_batchnorm

log = logging.getLogger("compare_pruners")


class _Heads(torch.nn.Module):
    """Darknet with the raw head maps as output: what Torch-Pruning traces, and what MACs are counted on."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_heads(x)


def prune_with_torch_pruning(model, img_size: int, target_macs: float, round_to: int, steps: int = 12):
    """Torch-Pruning at `target_macs` (fraction): global BN-scale importance, head convs ignored, one-shot.

    Torch-Pruning takes a channel ratio, not a MACs budget, so the ratio is bisected: each try prunes a
    fresh copy of the model, and the try closest to the target from below is kept.
    """
    import torch_pruning as tp

    example = torch.rand(1, 3, img_size, img_size)
    base = count_forward_macs(model, img_size)
    low, high, best = 0.0, 1.0, None
    for _ in range(steps):
        ratio = (low + high) / 2
        pruned = copy.deepcopy(model).eval()
        heads = [pruned.layers[i - 1].conv for i in pruned.yolo_indices]
        pruner = tp.pruner.MetaPruner(
            _Heads(pruned), example, importance=tp.importance.BNScaleImportance(), pruning_ratio=ratio,
            ignored_layers=heads, global_pruning=True, round_to=round_to if round_to > 1 else None,
        )
        pruner.step()
        fraction = count_forward_macs(pruned, img_size) / base
        if fraction <= target_macs:
            best, high = (fraction, pruned), ratio
        else:
            low = ratio
        if best is not None and target_macs - best[0] < 0.005:
            break
    if best is None:
        raise YoloPruneError(f"Torch-Pruning cannot reach MACs {target_macs:g}")
    return best[1]


def candidates_at(model, target: float, img_size: int, layers: int, round_to: int, calibrate):
    """(name, pruned model) pairs at one MACs target; a strategy that cannot reach it is skipped."""
    common = dict(target_flops=target, img_size=img_size, round_to=round_to)
    plans = {
        "yoloprune safe": lambda: plan_channel_prune(model, "safe", **common),
        "yoloprune full": lambda: plan_channel_prune(model, "full", **common),
        f"yoloprune full + {layers} blocks": lambda: plan_channel_prune(
            model, "full", removed_blocks=plan_layer_prune(model, layers), **common
        ),
    }
    for name, make_plan in plans.items():
        try:
            plan = make_plan()
        except YoloPruneError as error:
            log.info("%s at MACs %g: skipped (%s)", name, target, error)
            continue
        if plan.macs_after / plan.macs_before > target * 1.01:
            log.info("%s cannot reach MACs %g (at most x%.3f): skipped", name, target, plan.macs_after / plan.macs_before)
            continue
        pruned = prune_model(model, plan)
        yield name, pruned
        if name == "yoloprune full" and calibrate is not None:
            calibrated = copy.deepcopy(pruned)
            calibrate(calibrated)
            yield "yoloprune full + BN re-calibration", calibrated
    try:
        yield "Torch-Pruning BN-scale", prune_with_torch_pruning(model, img_size, target, round_to)
    except ImportError:
        log.warning("torch-pruning is not installed: skipping its rows")
    except YoloPruneError as error:
        log.info("Torch-Pruning at MACs %g: skipped (%s)", target, error)


def plot_rows(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    unpruned = next(row for row in rows if row["target"] is None)
    for name in dict.fromkeys(row["name"] for row in rows if row["target"] is not None):
        points = sorted((row["macs_ratio"], row["map50"]) for row in rows if row["name"] == name)
        ax.plot(*zip(*points), marker="o", label=name)
    ax.axhline(unpruned["map50"], color="grey", linestyle="--", label="sparse model, unpruned")
    ax.set_xlabel("MACs / unpruned MACs")
    ax.set_ylabel("validation mAP@0.5 (no finetuning)")
    ax.set_title("Pruning the same sparse model to equal MACs budgets")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="sparse-trained .pt")
    parser.add_argument("--data", required=True, help=".data whose valid split is evaluated (and train split calibrates)")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.3, 0.2], help="MACs budgets (fractions)")
    parser.add_argument("--layers", type=int, default=4, help="residual blocks removed in the full + layers rows")
    parser.add_argument("--round", dest="round_to", type=int, default=8, help="kept channels rounded up to this multiple (both tools)")
    parser.add_argument("--calibrate", type=int, default=256, help="training images for the re-calibration rows (0 = none)")
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model")
    parser.add_argument("--out", default=None, help="write OUT.md, OUT.json and OUT.png")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model = load_model(None, args.weights).eval()
    img_size = args.img_size or model.cfg.net.width
    validator = Validator(EvalSettings(data=args.data, img_size=img_size, batch=16, device="cpu"), progress=False)
    calibrate = None
    if args.calibrate:
        loader = image_loader(validator.spec, "train", img_size, 16, shuffle=True)
        train_batches = list(itertools.islice(loader, -(-args.calibrate // 16)))
        calibrate = lambda m: recalibrate_batchnorm(m, train_batches, args.calibrate)  # noqa: E731

    models = {("sparse (unpruned)", None): model}
    for target in args.targets:
        for name, pruned in candidates_at(model, target, img_size, args.layers, args.round_to, calibrate):
            models[(name, target)] = pruned
    x = torch.rand(1, 3, img_size, img_size)
    times = time_interleaved({key: torch_runner(m, x) for key, m in models.items()}, runs=args.runs, warmup=5)
    median = {key: sorted(values)[len(values) // 2] for key, values in times.items()}
    base_key = ("sparse (unpruned)", None)
    base_params, base_macs = count_parameters(model), count_forward_macs(model, img_size)
    rows = []
    for (name, target), pruned in models.items():
        metrics = validator(pruned)
        rows.append(dict(
            name=name, target=target, params_ratio=count_parameters(pruned) / base_params,
            macs_ratio=count_forward_macs(pruned, img_size) / base_macs, latency_ratio=median[(name, target)] / median[base_key],
            latency_ms=median[(name, target)], map50=metrics.map50, map=metrics.map,
        ))
        log.info("%s", json.dumps(rows[-1]))
    lines = [
        f"Sparse model `{args.weights}` at {img_size} px, pruned without finetuning; kept channels rounded to {args.round_to}; "
        f"latency = PyTorch eager, batch 1, {torch.get_num_threads()} threads, median of {args.runs} interleaved runs.",
        "",
        "| MACs budget | pruner | params | MACs | latency (torch) | mAP@0.5 | mAP@0.5:0.95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        budget = "—" if row["target"] is None else f"{row['target']:g}"
        lines.append(
            f"| {budget} | {row['name']} | {row['params_ratio']:.3f}x | {row['macs_ratio']:.3f}x | {row['latency_ratio']:.3f}x "
            f"({row['latency_ms']:.1f} ms) | {row['map50']:.4f} | {row['map']:.4f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        out = Path(args.out)
        atomic_write_text(out.with_suffix(".md"), table)
        atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=2) + "\n")
        plot_rows(rows, out.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
