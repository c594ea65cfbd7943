"""Size and cost of a model: parameters, fp32 size, MACs per layer, CPU latency.

MACs are darknet's count from the cfg (`darknet.cost`): one multiply-add per conv weight per output
pixel; darknet counts 2 FLOPs per multiply-add, so `bflops = 2 * gmacs`. Only convolutions count.

`bflops_darknet` is the "Total BFLOPS" darknet itself prints (AlexeyAB/darknet, src/parser.c sums
every layer's `l.bflops`): `bflops` plus the few non-conv layers darknet also counts
(`darknet.cost.darknet_extra_flops`). Costs are counted at the cfg's own `[net]` height x width
unless a size is given.
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Union

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from yoloprune.darknet.cfg import DarknetCfg
from yoloprune.darknet.cost import conv_macs_per_layer, darknet_extra_flops
from yoloprune.darknet.model import Darknet, count_parameters
from yoloprune.darknet.network import infer_output_hw

# an input size: a square side, or (height, width)
ImgSize = Union[int, tuple[int, int]]


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
    bflops: float  # 2 x conv MACs
    bflops_darknet: float  # what darknet prints: bflops + maxpool and shortcut terms
    input_hw: tuple[int, int]
    layers: list[LayerProfile]

    @property
    def img_size(self) -> int | None:
        """The side of a square input; None for a non-square one (see `input_hw`)."""
        height, width = self.input_hw
        return height if height == width else None

    def totals(self) -> dict:
        return {
            "params": self.params, "size_mb": self.size_mb, "gmacs": self.gmacs, "bflops": self.bflops,
            "bflops_darknet": self.bflops_darknet, "img_size": self.img_size, "input_hw": list(self.input_hw),
        }

    def to_dict(self) -> dict:
        return {**self.totals(), "layers": [asdict(layer) for layer in self.layers]}


def model_size_mb(model: nn.Module) -> float:
    """fp32 bytes of everything a checkpoint stores (parameters and buffers), in MB (10^6 bytes)."""
    numel = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers() if b.is_floating_point())
    return numel * 4 / 1e6


def as_hw(img_size: ImgSize) -> tuple[int, int]:
    """(height, width) of a square side or of a (height, width) pair."""
    return (img_size, img_size) if isinstance(img_size, int) else (img_size[0], img_size[1])


def input_hw(cfg: DarknetCfg, img_size: ImgSize | None = None) -> tuple[int, int]:
    """(height, width) of an input of `img_size`; None = the cfg's own `[net]` size, the one darknet counts at."""
    return (cfg.net.height, cfg.net.width) if img_size is None else as_hw(img_size)


def meta_twin(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers live on the meta device: a forward through it
    computes shapes only, so counting costs no arithmetic at any input size, and the model's own
    tensors are neither copied nor touched."""
    memo: dict[int, torch.Tensor] = {id(b): torch.empty_like(b, device="meta") for b in model.buffers()}
    for p in model.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    return copy.deepcopy(model, memo)


def count_forward_macs(model: Darknet, img_size: ImgSize = 416) -> int:
    """MACs of one batch-1 forward at `img_size`, by torch's flop counter on the model's own layers,
    so it also holds for a model whose modules no longer match its cfg (pruned by another tool).
    Public on purpose: the check, independent of the cfg, of `darknet.cost`'s counts."""
    twin = meta_twin(model).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        twin.forward_heads(torch.zeros(1, model.cfg.net.channels, *as_hw(img_size), device="meta"))
    return counter.get_total_flops() // 2


def profile_model(model: Darknet, img_size: ImgSize | None = None) -> ModelProfile:
    """Per-layer shapes, params and MACs, and totals for one batch-1 image of `img_size` (None = the
    cfg's own `[net]` height x width).

    MACs are counted from the cfg (`darknet.cost.conv_macs_per_layer`); tests hold them equal to
    torch's flop counter on a forward through the model's layers.
    """
    cfg = model.cfg
    hw = input_hw(cfg, img_size)
    out_hw = infer_output_hw(cfg, hw)
    layer_macs = conv_macs_per_layer(cfg, hw)
    total_macs = sum(layer_macs)
    layers = []
    for idx, (block, layer) in enumerate(zip(cfg.layers, model.layers)):
        layers.append(
            LayerProfile(
                index=idx,
                kind=block.section,
                in_channels=cfg.in_channels(idx),
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
        bflops_darknet=(2 * total_macs + darknet_extra_flops(cfg, hw)) / 1e9,
        input_hw=hw,
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


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run the block with `threads` torch threads (None: as set), restoring the previous count after;
    yields the count in force."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def series_ratios(series: list[dict[str, list[float]]], reference: str) -> dict[str, float]:
    """Each runner's latency as a ratio to `reference`'s, from several interleaved series (as
    `time_interleaved` returns them): per series the ratio of the medians, then the median over
    the series, so that one busy series on a shared machine cannot decide it."""
    return {
        name: statistics.median(statistics.median(times[name]) / statistics.median(times[reference]) for times in series)
        for name in series[0]
    }


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
    img_size: ImgSize = 416,
    batch: int = 1,
    runs: int = 20,
    warmup: int = 5,
    threads: int | None = None,
) -> Latency:
    """Inference latency of `model` (eval mode, batch of random images), median over `runs` after `warmup`."""
    with torch_threads(threads) as used:
        device = next(model.parameters()).device
        x = torch.rand(batch, 3, *as_hw(img_size), device=device)
        times = time_interleaved({"model": torch_runner(model, x)}, runs, warmup)["model"]
        return Latency.from_times(times, used, batch)
