"""Size and cost of a model: parameters, fp32 size, MACs per layer, CPU latency.

MACs are counted by `torch.utils.flop_counter` on a real forward pass, which reports 2 FLOPs per
multiply-add for convolutions; darknet's "BFLOPs" are the same 2×MAC convention, so
`bflops = 2 * gmacs`. Only convolutions (and matmuls, of which YOLOv3 has none) are counted:
BN, activations, shortcuts and upsampling are negligible and darknet does not count them either.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from yoloprune.darknet.graph import conv_macs_per_layer, infer_output_hw
from yoloprune.darknet.model import Darknet, count_parameters


@dataclass
class LayerProfile:
    index: int
    kind: str
    in_channels: int
    out_channels: int
    out_hw: tuple[int, int]
    params: int
    macs: int


@dataclass
class ModelProfile:
    params: int
    size_mb: float  # fp32 parameters + BN running statistics
    gmacs: float
    bflops: float
    img_size: int
    layers: list[LayerProfile]

    def totals(self) -> dict:
        return {"params": self.params, "size_mb": self.size_mb, "gmacs": self.gmacs, "bflops": self.bflops, "img_size": self.img_size}

    def to_dict(self) -> dict:
        return {**self.totals(), "layers": [asdict(layer) for layer in self.layers]}


def model_size_mb(model: nn.Module) -> float:
    """fp32 bytes of everything a checkpoint stores (parameters and buffers), in MB (10^6 bytes)."""
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return numel * 4 / 1e6


def count_forward_macs(model: Darknet, img_size: int = 416) -> int:
    """MACs of one batch-1 forward at `img_size` (square), by torch's flop counter on the real layers,
    so it also holds for a model whose modules no longer match its cfg (pruned by another tool)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model.forward_heads(torch.zeros(1, model.cfg.net.channels, img_size, img_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def profile_model(model: Darknet, img_size: int = 416) -> ModelProfile:
    """Per-layer shapes, params and MACs, and totals from one batch-1 forward at `img_size` (square).

    The total MACs come from torch's flop counter on the real forward; the per-layer split is the
    conv formula on the cfg (`darknet.graph.conv_macs_per_layer`); tests check that the two agree.
    """
    total_macs = count_forward_macs(model, img_size)
    cfg = model.cfg
    out_hw = infer_output_hw(cfg, (img_size, img_size))
    layer_macs = conv_macs_per_layer(cfg, img_size)
    layers = []
    for idx, (block, layer) in enumerate(zip(cfg.layers, model.layers)):
        input_channels = [cfg.channels_of(j) for j in cfg.inputs_of(idx)]
        layers.append(
            LayerProfile(
                index=idx,
                kind=block.section,
                # a route reads all its inputs; a shortcut's two summands have the same width
                in_channels=sum(input_channels) if block.section == "route" else input_channels[0],
                out_channels=model.out_channels[idx],
                out_hw=out_hw[idx],
                params=count_parameters(layer),
                macs=layer_macs[idx],
            )
        )
    return ModelProfile(
        params=count_parameters(model),
        size_mb=model_size_mb(model),
        gmacs=total_macs / 1e9,
        bflops=2 * total_macs / 1e9,
        img_size=img_size,
        layers=layers,
    )


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch: int

    @classmethod
    def from_times(cls, times_ms: list[float], threads: int, batch: int) -> "Latency":
        deciles = statistics.quantiles(times_ms, n=10) if len(times_ms) > 1 else times_ms * 9
        return cls(statistics.median(times_ms), deciles[0], deciles[-1], len(times_ms), threads, batch)


def time_interleaved(runners: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 5) -> dict[str, list[float]]:
    """Wall times (ms) of each runner, called in turn A B C A B C ... so that a slow patch of a noisy
    machine hits every model alike and the ratios between them stay meaningful."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for step in range(warmup + runs):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if step >= warmup:
                times[name].append((time.perf_counter() - start) * 1000)
    return times


def torch_runner(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    """A no-grad eval-mode forward that waits for the device to finish."""
    model.eval()

    def run():
        with torch.inference_mode():
            out = model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        return out

    return run


def measure_latency(
    model: nn.Module,
    img_size: int = 416,
    batch: int = 1,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
) -> Latency:
    """Inference latency of `model` (eval mode, batch of random images), median over `runs` after `warmup`."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        device = next(model.parameters()).device
        x = torch.rand(batch, 3, img_size, img_size, device=device)
        times = time_interleaved({"model": torch_runner(model, x)}, runs, warmup)["model"]
        return Latency.from_times(times, torch.get_num_threads(), batch)
    finally:
        torch.set_num_threads(previous_threads)
