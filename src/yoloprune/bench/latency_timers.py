"""Timing one layer shape in ONNX Runtime or PyTorch, for the latency table (`bench.latency_table`).

`RuntimeTimer(runtime, threads)(shape, channels)` builds the layer alone at those channel counts
with random weights, runs it batch 1 on a random input until the median is stable (warm-up first,
then `min_runs` to `max_runs` runs filling about `min_seconds`), and returns the median in ms, less
the cost of running an empty model: that per-call cost is paid once per model, not once per layer,
and is what `CallShape` returns (added once by the table).

ONNX Runtime: a conv is written directly as an ONNX graph (Conv with the BN folded into its bias,
then the activation as `torch.onnx.export` writes it: LeakyRelu, Relu, Sigmoid, Sigmoid·x for swish,
Softplus-Tanh-Mul for mish), because the exporter takes ~60 ms per model and a table holds
hundreds of conv shapes; the other layers are exported from yoloprune's own layer modules, so they
hold exactly the ops the model's export holds. Sessions come from `create_ort_session` (no thread
spinning, as `bench` opens them). Inputs and outputs are bound once (I/O binding): inside a model a
layer's output stays in the runtime, so copying it out per run would be a cost the model never pays.

PyTorch: yoloprune's own layer modules (a conv with its BN, which PyTorch runs as a separate op)
under `torch.inference_mode()` with `torch.set_num_threads(threads)`.
"""

from __future__ import annotations

import math
import tempfile
import time
import warnings
from pathlib import Path
from statistics import median
from typing import Callable

import numpy as np
import torch
from torch import nn

from yoloprune.bench.latency_shapes import (
    CallShape,
    ConvShape,
    HeadsShape,
    MaxpoolShape,
    RouteShape,
    Shape,
    ShortcutShape,
    UpsampleShape,
)
from yoloprune.bench.latency_table import RUNTIMES
from yoloprune.darknet.cfg import ConvBlock, MaxpoolBlock, RouteBlock, ShortcutBlock, UpsampleBlock, YoloBlock
from yoloprune.darknet.model import LEAKY_SLOPE, ConvLayer, MaxpoolLayer, RouteLayer, ShortcutLayer, UpsampleLayer, YoloLayer

OPSET = 17  # as `export_onnx` writes


def runtime_version(runtime: str) -> str:
    if runtime == "ort":
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    if runtime == "torch":
        return f"torch {torch.__version__}"
    raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")


def median_ms(run: Callable[[], object], warmup: int = 2, min_runs: int = 5, max_runs: int = 50, min_seconds: float = 0.1) -> float:
    """Median wall time of `run()` in ms: `warmup` untimed calls, then enough timed ones to fill
    about `min_seconds` (at least `min_runs`, at most `max_runs`): a fast layer gets many runs,
    a slow one a few."""
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        run()
    per_run = (time.perf_counter() - start) / max(warmup, 1)
    runs = min(max_runs, max(min_runs, math.ceil(min_seconds / max(per_run, 1e-9))))
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1000)
    return median(times)


# ---------------------------------------------------------------------------------------------- layer modules


class _Heads(nn.Module):
    """The model's tail: every [yolo] layer's reshape and decoding, and the concatenation."""

    def __init__(self, shape: HeadsShape):
        super().__init__()
        self.img_hw = shape.img_hw
        self.yolos = nn.ModuleList(
            YoloLayer(YoloBlock(
                tuple(range(head.anchors)), ((10, 14),) * head.anchors, head.classes,
                extra={"scale_x_y": str(head.scale_x_y), "new_coords": "1" if head.new_coords else "0"},
            ))
            for head in shape.heads
        )

    def forward(self, *maps: torch.Tensor) -> torch.Tensor:
        return torch.cat([yolo.decode(yolo(x), self.img_hw) for yolo, x in zip(self.yolos, maps)], dim=1)


class _Call(nn.Module):
    """A model that computes nothing: one element of its input (a Slice in ONNX, a view in PyTorch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1, :1, :1]


def layer_module(shape: Shape, channels: tuple[int, ...]) -> tuple[nn.Module, list[tuple[int, ...]]]:
    """The layer as a module with random weights, and the shapes of its inputs (batch 1)."""
    if isinstance(shape, ConvShape):
        cin, cout = channels
        block = ConvBlock(
            cout, shape.size, shape.stride, padding=shape.padding, batch_normalize=shape.batch_normalize, groups=shape.groups, activation=shape.activation,
        )
        return ConvLayer(block, cin).eval(), [(1, cin, *shape.in_hw)]
    if isinstance(shape, ShortcutShape):
        (width,) = channels
        return ShortcutLayer(ShortcutBlock(-2, shape.activation), (width, width)), [(1, width, *shape.hw)] * 2
    if isinstance(shape, RouteShape):
        return _RouteCall(RouteLayer(RouteBlock(tuple(range(-shape.inputs, 0)), shape.groups, shape.group_id))), [
            (1, width * shape.groups, *shape.hw) for width in route_input_widths(channels[0], shape.inputs)
        ]
    if isinstance(shape, UpsampleShape):
        return UpsampleLayer(UpsampleBlock(shape.stride)), [(1, channels[0], *shape.in_hw)]
    if isinstance(shape, MaxpoolShape):
        return MaxpoolLayer(MaxpoolBlock(shape.size, shape.stride, shape.padding)), [(1, channels[0], *shape.in_hw)]
    if isinstance(shape, HeadsShape):
        return _Heads(shape).eval(), [(1, head.anchors * (head.classes + 5), *head.hw) for head in shape.heads]
    if isinstance(shape, CallShape):
        return _Call(), [(1, shape.channels, *shape.img_hw)]
    raise TypeError(f"no layer module for {shape!r}")


class _RouteCall(nn.Module):
    """A route taking its inputs as separate arguments (the exporter's calling convention)."""

    def __init__(self, route: RouteLayer):
        super().__init__()
        self.route = route

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.route(list(inputs))


def route_input_widths(total: int, inputs: int) -> list[int]:
    """`total` output channels shared as equally as possible by `inputs` inputs (each at least 1)."""
    if total < inputs:
        raise ValueError(f"a route of {inputs} inputs has at least {inputs} channels, got {total}")
    return [total // inputs + (1 if i < total % inputs else 0) for i in range(inputs)]


def conv_onnx(shape: ConvShape, cin: int, cout: int, seed: int = 0):
    """A one-conv ONNX model as the exporter writes a BN conv in eval mode: Conv (BN folded into the
    bias) then the activation's nodes."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = (rng.standard_normal((cout, cin // shape.groups, shape.size, shape.size)) * 0.05).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.05).astype(np.float32)
    nodes = [helper.make_node(
        "Conv", ["x", "w", "b"], ["conv"], kernel_shape=[shape.size] * 2, strides=[shape.stride] * 2,
        pads=[shape.padding] * 4, group=shape.groups,
    )]
    act = shape.activation
    if act == "leaky":
        nodes.append(helper.make_node("LeakyRelu", ["conv"], ["y"], alpha=LEAKY_SLOPE))
    elif act in ("relu", "logistic"):
        nodes.append(helper.make_node("Relu" if act == "relu" else "Sigmoid", ["conv"], ["y"]))
    elif act == "swish":
        nodes += [helper.make_node("Sigmoid", ["conv"], ["gate"]), helper.make_node("Mul", ["conv", "gate"], ["y"])]
    elif act == "mish":
        nodes += [
            helper.make_node("Softplus", ["conv"], ["soft"]), helper.make_node("Tanh", ["soft"], ["gate"]),
            helper.make_node("Mul", ["conv", "gate"], ["y"]),
        ]
    else:  # linear
        nodes[0].output[0] = "y"
    out_h, out_w = ((size + 2 * shape.padding - shape.size) // shape.stride + 1 for size in shape.in_hw)
    graph = helper.make_graph(
        nodes, "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, *shape.in_hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, out_h, out_w])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


# ---------------------------------------------------------------------------------------------- timers


class RuntimeTimer:
    """`timer(shape, channels) -> ms`: one layer's median latency in `runtime` ("ort" or "torch")
    with `threads` threads, less the per-call cost (see the module docstring)."""

    def __init__(self, runtime: str, threads: int, min_seconds: float = 0.05):
        runtime_version(runtime)  # checks the name
        self.runtime, self.threads, self.min_seconds = runtime, threads, min_seconds
        self._tmp = tempfile.TemporaryDirectory(prefix="yoloprune-latency-")
        self._generator = torch.Generator().manual_seed(0)
        self._empty_ms: float | None = None  # an empty model's run, as a layer is timed
        self._exported: dict[tuple, Path] = {}  # ONNX Runtime: the exported layers other than convs

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "RuntimeTimer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __call__(self, shape: Shape, channels: tuple[int, ...]) -> float:
        if isinstance(shape, CallShape):
            # a whole model's call: plain inputs and a returned output, as `bench` runs a model
            return self._time(shape, channels, bound=False)
        if self._empty_ms is None:
            # the smallest of a few medians: subtracted from every layer, it must not carry a slow patch
            self._empty_ms = min(self._time(CallShape((1, 1), 1), (), bound=True) for _ in range(3))
        return max(self._time(shape, channels, bound=True) - self._empty_ms, 0.0)

    def _inputs(self, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
        return [torch.rand(*s, generator=self._generator) for s in shapes]

    def _time(self, shape: Shape, channels: tuple[int, ...], bound: bool) -> float:
        if self.runtime == "torch":
            return self._time_torch(shape, channels)
        return self._time_ort(shape, channels, bound)

    def _time_torch(self, shape: Shape, channels: tuple[int, ...]) -> float:
        from yoloprune.bench.profile import torch_threads

        module, input_shapes = layer_module(shape, channels)
        inputs = self._inputs(input_shapes)

        def run():
            with torch.inference_mode():
                return module(*inputs)

        with torch_threads(self.threads):
            return median_ms(run, min_seconds=self.min_seconds)

    def _time_ort(self, shape: Shape, channels: tuple[int, ...], bound: bool) -> float:
        import onnx
        import onnxruntime as ort

        from yoloprune.export.onnx import create_ort_session

        if isinstance(shape, ConvShape):
            path = Path(self._tmp.name) / "conv.onnx"
            onnx.save(conv_onnx(shape, *channels), path)
            input_shapes = [(1, channels[0], *shape.in_hw)]
        else:
            # the exporter is slow (~60 ms) and these models hold no weights: keep them for the next pass
            module, input_shapes = layer_module(shape, channels)
            path = self._exported.get((shape, channels))
            if path is None:
                path = self._exported[shape, channels] = Path(self._tmp.name) / f"layer{len(self._exported)}.onnx"
                _export(module, self._inputs(input_shapes), path)
        session = create_ort_session(path, self.threads)
        arrays = [t.numpy() for t in self._inputs(input_shapes)]
        names = [i.name for i in session.get_inputs()]
        if not bound:
            feed = dict(zip(names, arrays))
            return median_ms(lambda: session.run(None, feed), min_seconds=self.min_seconds)
        binding = session.io_binding()
        for name, array in zip(names, arrays):
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array))
        for output in session.get_outputs():
            binding.bind_ortvalue_output(output.name, ort.OrtValue.ortvalue_from_shape_and_type(output.shape, _numpy_type(output.type)))
        return median_ms(lambda: session.run_with_iobinding(binding), min_seconds=self.min_seconds)


def _numpy_type(onnx_type: str):
    return {"tensor(float)": np.float32, "tensor(int64)": np.int64}[onnx_type]


def _export(module: nn.Module, inputs: list[torch.Tensor], path: Path) -> None:
    """`module` as ONNX, exported as `export.onnx.export_onnx` exports a model (TorchScript exporter, opset 17)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, tuple(inputs), str(path), dynamo=False, opset_version=OPSET,
            input_names=[f"x{i}" for i in range(len(inputs))], output_names=["y"], do_constant_folding=True,
        )


def time_whole_models(cfgs: dict, runtime: str, img_size: int, threads: int, runs: int = 10, repeats: int = 3) -> dict[str, float]:
    """ms of each cfg built as a model (random weights), timed interleaved in `runtime` as `bench`
    times models, in `repeats` series: the first cfg's median over all runs, the others that times
    the median over the series of their ratio to it (a busy series then sways no ratio)."""
    from yoloprune.bench.benchmark import time_in_runtime
    from yoloprune.bench.profile import series_ratios
    from yoloprune.darknet.model import Darknet

    models = {name: Darknet(cfg).eval() for name, cfg in cfgs.items()}
    series = time_in_runtime(models, runtime, img_size, threads, runs, warmup=3, repeats=repeats)
    first = next(iter(models))
    reference = median(t for times in series for t in times[first])
    return {name: reference * ratio for name, ratio in series_ratios(series, first).items()}
