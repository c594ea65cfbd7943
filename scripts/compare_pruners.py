"""Compare pruning strategies on one sparse-trained model, without finetuning:
yoloprune safe / full / full + layer pruning, and Torch-Pruning's BN-scale pruner at the same MACs.

    python scripts/compare_pruners.py --weights runs/demo/sparse/last.pt --data runs/demo/data/synth.data \
        --target-flops 0.25 --out docs/pruning-comparison.md

Torch-Pruning is optional (`pip install -e ".[torch-pruning]"`); without it that row is skipped.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
from pathlib import Path

import torch

from yoloprune.bench.profile import profile_model, time_interleaved, torch_runner
from yoloprune.darknet.graph import count_cfg_macs
from yoloprune.darknet.weights import load_model
from yoloprune.eval.evaluate import evaluate_model
from yoloprune.prune import plan_channel_prune, plan_layer_prune, prune_model

log = logging.getLogger("compare_pruners")


class _Heads(torch.nn.Module):
    """Darknet with the raw head maps as output, for Torch-Pruning's graph tracing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_heads(x)


def prune_with_torch_pruning(model, img_size: int, target_macs_ratio: float):
    """Torch-Pruning, global BN-scale importance, heads ignored, stepped until MACs reach the target."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).eval()
    wrapper = _Heads(pruned)
    example = torch.rand(1, 3, img_size, img_size)
    heads = [pruned.layers[i - 1].conv for i in pruned.yolo_indices]
    base_macs, _ = tp.utils.count_ops_and_params(wrapper, example)
    steps = 50
    pruner = tp.pruner.MetaPruner(
        wrapper, example, importance=tp.importance.BNScaleImportance(), pruning_ratio=0.99, iterative_steps=steps,
        ignored_layers=heads, global_pruning=True,
    )
    for _ in range(steps):
        pruner.step()
        macs, _ = tp.utils.count_ops_and_params(wrapper, example)
        if macs / base_macs <= target_macs_ratio:
            break
    return pruned


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--target-flops", type=float, default=0.25)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=None)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the Markdown table here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from yoloprune.data.dataset import create_dataloader
    from yoloprune.data.spec import load_data_spec

    model = load_model(None, args.weights).eval()
    img_size = args.img_size or model.cfg.net.width
    spec = load_data_spec(args.data)
    batches = list(create_dataloader(spec.valid, img_size, 16, num_classes=spec.classes))
    target = args.target_flops

    candidates = {"sparse (unpruned)": model}
    safe_plan = plan_channel_prune(model, "safe", ratio=0.85, img_size=img_size)
    candidates["yoloprune safe, ratio 0.85"] = prune_model(model, safe_plan)[0]
    candidates[f"yoloprune full, MACs {target:g}"] = prune_model(model, plan_channel_prune(model, "full", target_flops=target, img_size=img_size))[0]
    blocks = plan_layer_prune(model, args.layers)
    full_layers = plan_channel_prune(model, "full", target_flops=target, img_size=img_size, removed_blocks=blocks)
    candidates[f"yoloprune full + {args.layers} blocks, MACs {target:g}"] = prune_model(model, full_layers)[0]
    try:
        candidates[f"Torch-Pruning BN-scale, MACs {target:g}"] = prune_with_torch_pruning(model, img_size, target)
    except ImportError:
        log.warning("torch-pruning is not installed: skipping its row")

    base_profile = profile_model(model, img_size)
    x = torch.rand(1, 3, img_size, img_size)
    times = time_interleaved({name: torch_runner(m, x) for name, m in candidates.items()}, runs=args.runs, warmup=5)
    base_latency = sorted(times["sparse (unpruned)"])[len(times["sparse (unpruned)"]) // 2]
    rows = []
    for name, pruned in candidates.items():
        params = sum(p.numel() for p in pruned.parameters())
        if hasattr(pruned, "cfg") and name.startswith("yoloprune") or name.startswith("sparse"):
            macs = count_cfg_macs(pruned.cfg, img_size)
        else:
            from torch.utils.flop_counter import FlopCounterMode

            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                pruned.eval().forward_heads(x)
            macs = counter.get_total_flops() // 2
        latency = sorted(times[name])[len(times[name]) // 2]
        metrics = evaluate_model(pruned, batches, progress=False)
        rows.append(dict(name=name, params_ratio=params / base_profile.params, macs_ratio=macs / (base_profile.gmacs * 1e9),
                         latency_ratio=latency / base_latency, map50=metrics.map50, map=metrics.map))
        log.info("%s: %s", name, json.dumps(rows[-1]))
    lines = ["| model | params | MACs | latency (torch, CPU) | mAP@0.5 | mAP@0.5:0.95 |", "|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['name']} | {row['params_ratio']:.3f}x | {row['macs_ratio']:.3f}x | {row['latency_ratio']:.3f}x | {row['map50']:.4f} | {row['map']:.4f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        Path(args.out).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
