"""Network slimming: plan (channel.py, layer.py, auto.py; ranked by an importance from
importance.py, cut by a budget from budget.py) → apply with β folding (apply.py) → report (report.py).

    from yoloprune.prune import MacsTarget, build_prune_report, plan_channel_prune, plan_layer_prune, prune_model
    plan = plan_channel_prune(model, "full", MacsTarget(0.25), removed_blocks=plan_layer_prune(model, 4))
    pruned = prune_model(model, plan)
    report = build_prune_report(model, pruned, plan)

The planners never import the applier: cfg surgery is `darknet.edit.build_pruned_cfg`, and the
mAP search takes the applier as an argument (`search_max_pruning(..., apply=prune_model)`).
Names load on first use, so that reading the settings (`prune.settings`, for the command line)
does not import torch.
"""

from __future__ import annotations

from yoloprune.lazy import lazy_getattr

_EXPORTS = {
    "build_compact_model": "yoloprune.prune.apply",
    "fold_pruned_constants": "yoloprune.prune.apply",
    "mask_model": "yoloprune.prune.apply",
    "prune_model": "yoloprune.prune.apply",
    "search_max_pruning": "yoloprune.prune.auto",
    "LatencyTarget": "yoloprune.prune.budget",
    "MacsTarget": "yoloprune.prune.budget",
    "ParamsTarget": "yoloprune.prune.budget",
    "Ratio": "yoloprune.prune.budget",
    "Threshold": "yoloprune.prune.budget",
    "recalibrate_batchnorm": "yoloprune.prune.calibrate",
    "plan_channel_prune": "yoloprune.prune.channel",
    "bn_scale": "yoloprune.prune.importance",
    "plan_layer_prune": "yoloprune.prune.layer",
    "PrunePlan": "yoloprune.prune.plan",
    "LayerChannels": "yoloprune.prune.report",
    "PruneReport": "yoloprune.prune.report",
    "build_prune_report": "yoloprune.prune.report",
    "write_prune_outputs": "yoloprune.prune.report",
    "PruneSettings": "yoloprune.prune.settings",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazy_getattr(__name__, _EXPORTS)
