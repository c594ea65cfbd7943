"""Figures: how BN γ evolves under sparsity training (`viz.gamma`), what pruning kept per layer
(`viz.channels`), and all of a run folder's figures at once (`plot_run`)."""

from yoloprune.viz.run import plot_run

__all__ = ["plot_run"]
