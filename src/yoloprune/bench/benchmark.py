"""Compare models side by side: size, MACs, CPU latency in PyTorch and ONNX Runtime, and mAP.

Latencies are measured interleaved (A B A B ...) with the same thread count for both runtimes,
so the ratios to the first model hold on a noisy machine even when absolute times wander.

With `int8`, a model also gets an INT8 row: its ONNX export quantized as `export --int8` does
(`export.quantize`, calibrated on `calib_images` training images of `data`), timed in ONNX Runtime
in the same interleaved loop as the float32 models and scored through the same evaluator. It has
no PyTorch latency. Where it is slower than its float32 export on this CPU, the table says so.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from yoloprune.bench.profile import Latency, profile_model, time_interleaved, torch_runner, torch_threads
from yoloprune.bench.settings import BenchSettings
from yoloprune.darknet.model import Darknet
from yoloprune.darknet.weights import load_model, is_checkpoint_path
from yoloprune.errors import SettingsError, YoloPruneError
from yoloprune.eval.bootstrap import bootstrap_difference_intervals, format_with_interval
from yoloprune.eval.runtimes import OnnxRuntimeModel
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator
from yoloprune.export.onnx import create_ort_session, export_onnx
from yoloprune.export.quantize import CalibrationImages, quantize_onnx
from yoloprune.fileio import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class ModelSpec:
    name: str
    cfg: str | None
    weights: str | None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """`NAME=CFG:WEIGHTS`, `NAME=CFG` (random weights) or `NAME=WEIGHTS.pt` (the .pt carries its cfg)."""
        name, sep, spec = text.partition("=")
        if not sep or not name or not spec:
            raise SettingsError("models", f"{text!r} is not NAME=CFG:WEIGHTS, NAME=CFG or NAME=CHECKPOINT.pt")
        if ":" in spec:
            cfg, weights = spec.rsplit(":", 1)
            return cls(name, cfg or None, weights or None)
        if is_checkpoint_path(spec):
            return cls(name, None, spec)
        return cls(name, spec, None)


@dataclass
class ModelBench:
    name: str
    params: int
    size_mb: float
    gmacs: float
    bflops: float
    latency_ms_torch: float | None  # None: a model PyTorch does not run (an INT8 ONNX row)
    latency_ms_ort: float
    map50: float | None = None
    map: float | None = None
    map50_ci: tuple[float, float] | None = None  # 95 % bootstrap interval over the images
    map_ci: tuple[float, float] | None = None
    # 95 % paired bootstrap intervals of the difference to the first model (same images resampled)
    map50_delta_ci: tuple[float, float] | None = None
    map_delta_ci: tuple[float, float] | None = None
    ratios: dict[str, float] = field(default_factory=dict)
    int8_of: str | None = None  # an INT8 row: the name of the float32 model it quantizes
    # The per-image matches behind the mAP, for paired intervals between any two models; not saved.
    matches: object = field(default=None, repr=False, compare=False)


@dataclass
class BenchResult:
    img_size: int
    threads: int
    runs: int
    device: str
    models: list[ModelBench]
    split: str | None = None  # the image list mAP was measured on
    images: int | None = None

    def to_dict(self) -> dict:
        return {
            "img_size": self.img_size,
            "threads": self.threads,
            "runs": self.runs,
            "device": self.device,
            "split": self.split,
            "images": self.images,
            "models": {m.name: {f.name: getattr(m, f.name) for f in fields(m) if f.name not in ("name", "matches")} for m in self.models},
        }


RATIO_KEYS = ("params", "size_mb", "gmacs", "latency_ms_torch", "latency_ms_ort")


def _ort_runner(session, x: np.ndarray):
    return lambda: session.run(None, {"images": x})


def benchmark_models(specs: list[ModelSpec] | list[tuple[str, Darknet]], settings: BenchSettings, progress: bool = True) -> BenchResult:
    """Benchmark models given as ModelSpecs (loaded from disk) or (name, model) pairs, as `settings` say."""
    models: list[tuple[str, Darknet]] = [
        (spec.name, load_model(spec.cfg, spec.weights)) if isinstance(spec, ModelSpec) else spec for spec in specs
    ]
    if settings.img_size is None:  # the size the models were built for, not a size they never saw
        settings = replace(settings, img_size=models[0][1].cfg.net.width)
    unknown = sorted(set(settings.int8) - {name for name, _ in models} - {"all"})
    if unknown:
        raise SettingsError("int8", f"no model named {', '.join(unknown)}; the models are {', '.join(name for name, _ in models)}")
    with torch_threads(settings.threads) as threads:
        with tempfile.TemporaryDirectory(prefix="yoloprune-bench-") as tmp:
            results, scored = _time_models(models, settings, threads, Path(tmp))
            split = images = None
            if settings.data is not None:
                split, images = _add_map(results, scored, settings, progress)
        base = results[0]
        for bench in results:
            bench.ratios = {
                key: getattr(bench, key) / getattr(base, key) for key in RATIO_KEYS if getattr(base, key) and getattr(bench, key) is not None
            }
            if bench.map50 is not None and base.map50 is not None:
                bench.ratios["map50_delta"] = bench.map50 - base.map50
        return BenchResult(settings.img_size, threads, settings.runs, "cpu", results, split, images)


def _time_models(
    models: list[tuple[str, Darknet]], settings: BenchSettings, threads: int, tmp: Path
) -> tuple[list[ModelBench], list]:
    """Size, MACs and the latency in PyTorch and in ONNX Runtime of each model (and of the INT8
    exports `settings.int8` asks for, written into `tmp`), timed interleaved. Returns the rows and,
    row for row, the model each is scored with (a `Darknet`, or an INT8 ONNX Runtime model)."""
    img_size = settings.img_size
    x = _timing_input(img_size)
    results, scored = [], []
    torch_runners, ort_runners = {}, {}
    for index, (name, model) in enumerate(models):
        model.eval()
        profile = profile_model(model, img_size)
        results.append(ModelBench(name, profile.params, profile.size_mb, profile.gmacs, profile.bflops, 0.0, 0.0))
        scored.append(model)
        onnx_path = tmp / f"model{index}.onnx"
        torch_runners[name] = torch_runner(model, x)
        ort_runners[name] = _exported_runner(model, onnx_path, x, threads)
        if name in settings.int8 or "all" in settings.int8:
            int8_path = _quantize(onnx_path, settings)
            int8_name = f"{name} int8"
            size_mb = int8_path.stat().st_size / 2**20
            results.append(ModelBench(int8_name, profile.params, size_mb, profile.gmacs, profile.bflops, None, 0.0, int8_of=name))
            scored.append(OnnxRuntimeModel(int8_path))
            ort_runners[int8_name] = _ort_runner(create_ort_session(int8_path, threads), x.numpy())
    log.info("timing %d model(s): %d runs each after %d warm-up, %d thread(s), interleaved", len(results), settings.runs, settings.warmup, threads)
    torch_times = time_interleaved(torch_runners, settings.runs, settings.warmup)
    ort_times = time_interleaved(ort_runners, settings.runs, settings.warmup)
    for bench in results:
        if bench.int8_of is None:
            bench.latency_ms_torch = Latency.from_times(torch_times[bench.name], threads, 1).median_ms
        bench.latency_ms_ort = Latency.from_times(ort_times[bench.name], threads, 1).median_ms
    return results, scored


def _quantize(onnx_path: Path, settings: BenchSettings) -> Path:
    """The INT8 quantization of a float32 export, as `export --int8` writes it."""
    int8_path = onnx_path.with_suffix(".int8.onnx")
    quantize_onnx(onnx_path, int8_path, CalibrationImages(settings.data, settings.img_size, settings.calib_images))
    return int8_path


def time_in_runtime(
    models: dict[str, Darknet], runtime: str, img_size: int, threads: int, runs: int = 20, warmup: int = 5, repeats: int = 1,
) -> list[dict[str, list[float]]]:
    """Wall times (ms) of each model in one runtime, batch 1, timed interleaved as `bench` times them:
    "ort" runs its ONNX export in ONNX Runtime (sessions as `bench` opens them), "torch" the model.
    One dict of times per repeat (`repeats` series of `runs` runs, each after `warmup`)."""
    x = _timing_input(img_size)
    with torch_threads(threads), tempfile.TemporaryDirectory(prefix="yoloprune-latency-") as tmp:
        runners = {}
        for i, (name, model) in enumerate(models.items()):
            if runtime == "torch":
                runners[name] = torch_runner(model, x)
            else:
                runners[name] = _exported_runner(model, Path(tmp) / f"model{i}.onnx", x, threads, check=False)
        return [time_interleaved(runners, runs, warmup) for _ in range(repeats)]


def _timing_input(img_size: int) -> torch.Tensor:
    """The batch-1 input every model is timed on (seeded: the same pixels for every model and run)."""
    return torch.rand(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))


def _exported_runner(model: Darknet, path: Path, x: torch.Tensor, threads: int, check: bool = True):
    """`model` exported to ONNX at `path` (checked against PyTorch unless `check=False`) and run in
    an ONNX Runtime session opened as `bench` opens them (no thread spinning)."""
    model.eval()
    export_onnx(model, path, x.shape[-1], check=check)
    return _ort_runner(create_ort_session(path, threads), x.numpy())


def _add_map(results: list[ModelBench], models, settings: BenchSettings, progress: bool) -> tuple[str, int]:
    """mAP with its intervals for every row, scored with `models` (row for row); returns the split
    and the number of images it read."""
    validator = Validator(
        EvalSettings(data=settings.data, split=settings.split, img_size=settings.img_size, batch=settings.batch, workers=settings.workers, device="cpu"),
        progress=progress,
    )
    reference = None
    for bench, model in zip(results, models):
        metrics = validator(model)
        bench.map50, bench.map, bench.map50_ci, bench.map_ci = metrics.map50, metrics.map, metrics.map50_ci, metrics.map_ci
        bench.matches = metrics.matches
        if reference is None:
            reference = metrics.matches
        elif metrics.matches is not None:
            deltas = bootstrap_difference_intervals(metrics.matches, reference)
            bench.map50_delta_ci, bench.map_delta_ci = deltas["map50_delta_ci"], deltas["map_delta_ci"]
    return validator.split, metrics.images


def format_markdown(result: BenchResult) -> str:
    """The comparison as a Markdown table, ratios to the first model in brackets."""
    has_map = any(m.map50 is not None for m in result.models)
    header = ["model", "params (M)", "size (MB)", "MACs (G)", "BFLOPs", "latency torch (ms)", "latency ORT (ms)"]
    if has_map:
        header += ["mAP@0.5", "mAP@0.5:0.95"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in result.models:
        r = m.ratios

        def cell(value: float, key: str, fmt: str) -> str:
            text = format(value, fmt)
            return f"{text} ({r[key]:.2f}x)" if m is not result.models[0] and key in r else text

        row = [
            m.name,
            cell(m.params / 1e6, "params", ".2f"),
            cell(m.size_mb, "size_mb", ".1f"),
            cell(m.gmacs, "gmacs", ".3f"),
            f"{m.bflops:.3f}",
            "-" if m.latency_ms_torch is None else cell(m.latency_ms_torch, "latency_ms_torch", ".1f"),
            cell(m.latency_ms_ort, "latency_ms_ort", ".1f"),
        ]
        if has_map:
            row += ["-" if m.map50 is None else format_with_interval(m.map50, m.map50_ci), "-" if m.map is None else format_with_interval(m.map, m.map_ci)]
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    by_name = {m.name: m for m in result.models}
    for m in result.models:
        if m.int8_of is not None and m.latency_ms_ort >= by_name[m.int8_of].latency_ms_ort:
            lines.append(
                f"INT8 is not faster than float32 for {m.int8_of} on this CPU: {m.latency_ms_ort:.1f} ms against "
                f"{by_name[m.int8_of].latency_ms_ort:.1f} ms in ONNX Runtime.\n"
            )
    lines.append(
        f"Input {result.img_size}x{result.img_size}, batch 1, {result.device.upper()} with {result.threads} thread(s); latency = "
        f"median of {result.runs} runs after warm-up, models interleaved. MACs = multiply-adds (BFLOPs = 2 x GMACs)."
        + (" An INT8 row is the model's ONNX export quantized as `export --int8` does; it runs in ONNX Runtime only." if any(m.int8_of for m in result.models) else "")
        + (f" mAP on the {result.split} split ({result.images} images); ± is half the width of its 95 % bootstrap interval over the images." if has_map else "")
    )
    return "\n".join(lines) + "\n"


def bench_and_write(settings: BenchSettings, progress: bool = True) -> tuple[BenchResult, str]:
    """The `bench` command: the models of `settings.models` compared, the Markdown table returned
    and, where `settings` names them, the table and the JSON written."""
    specs = [ModelSpec.parse(text) for text in settings.models]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise YoloPruneError(f"model names must be unique, got {names}")
    result = benchmark_models(specs, settings, progress)
    table = format_markdown(result)
    if settings.md_out:
        atomic_write_text(settings.md_out, table)
    if settings.json_out:
        atomic_write_text(settings.json_out, json.dumps(result.to_dict(), indent=2) + "\n")
    return result, table
