"""Orchestration on top of the core packages: `run` (the whole chain on a dataset and a cfg) and the
demo (`run` on generated data), `slim` (prune and finetune in rounds) and `compare` (pruners side
by side). Only this layer and `cli` import several stages; no core package imports it."""
