"""Network slimming: plan (channel.py, layer.py, auto.py) → apply with β folding (apply.py) → report.

    from yoloprune.prune import plan_channel_prune, plan_layer_prune, prune_model
    plan = plan_channel_prune(model, "full", target_flops=0.25, removed_blocks=plan_layer_prune(model, 4))
    pruned, report = prune_model(model, plan)
"""

from yoloprune.prune.apply import build_compact_model, build_pruned_cfg, fold_pruned_constants, mask_model, prune_model
from yoloprune.prune.auto import search_max_pruning
from yoloprune.prune.calibrate import recalibrate_batchnorm
from yoloprune.prune.channel import plan_channel_prune
from yoloprune.prune.layer import plan_layer_prune
from yoloprune.prune.plan import PrunePlan
from yoloprune.prune.report import build_prune_report, write_prune_outputs

__all__ = [
    "PrunePlan",
    "build_compact_model",
    "build_pruned_cfg",
    "build_prune_report",
    "fold_pruned_constants",
    "mask_model",
    "plan_channel_prune",
    "plan_layer_prune",
    "prune_model",
    "recalibrate_batchnorm",
    "search_max_pruning",
    "write_prune_outputs",
]
