"""`yoloprune compare`: yoloprune's pruning modes against Torch-Pruning on one sparse-trained model,
without finetuning, at equal MACs budgets (settings.py: what to compare; pruners.py: each pruner
brought to a budget by one acceptance rule; run.py: pruning, re-calibration, scoring, timing;
report.py: the Markdown table, JSON and plot)."""
