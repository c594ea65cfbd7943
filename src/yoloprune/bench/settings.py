"""What `bench` and `info` measure and how: their defaults and checks, importable without torch."""

from __future__ import annotations

from dataclasses import dataclass

from yoloprune.settings import check_img_size, is_whole, option, require


def _check_timing(runs: int, warmup: int, threads: int | None) -> None:
    require(is_whole(runs) and runs >= 1, "runs", "a whole number >= 1", runs)
    require(is_whole(warmup) and warmup >= 0, "warmup", "a whole number >= 0", warmup)
    require(threads is None or (is_whole(threads) and threads >= 1), "threads", "a whole number >= 1", threads)


@dataclass
class BenchSettings:
    """Models side by side: latency in both runtimes (interleaved), size, MACs, and mAP with `data`."""

    models: list[str] = option(
        help="a model to compare (repeat); NAME=CFG:WEIGHTS, NAME=CFG or NAME=CHECKPOINT.pt",
        flag="--model", metavar="NAME=CFG:WEIGHTS", repeat=True, default_factory=list, required=True,
    )
    data: str | None = option(None, help=".data file: also evaluate mAP, on --split")
    split: str | None = option(
        None, choices=("train", "valid", "test"), help="image list the mAP is measured on",
        default_text="test when the .data has one, else valid",
    )
    img_size: int | None = option(None, help="square input size, a multiple of 32", default_text="the first model's cfg width")
    runs: int = option(20, help="timed runs per model")
    warmup: int = option(5, help="untimed runs per model first")
    threads: int | None = option(None, help="CPU threads for both runtimes", default_text="torch's")
    batch: int = option(8, help="batch size for the mAP evaluation")
    workers: int = option(0, help="data loader worker processes")
    int8: list[str] = option(
        help="also time and score this model's INT8 ONNX export (repeat; 'all': every model); needs --data",
        metavar="NAME", repeat=True, default_factory=list,
    )
    calib_images: int = option(256, help="training images that calibrate the INT8 ranges")
    json_out: str | None = option(None, flag="--json", metavar="OUT", help="write the results as JSON")
    md_out: str | None = option(None, flag="--md", metavar="OUT", help="write the Markdown table")

    def __post_init__(self) -> None:
        if self.img_size is not None:
            check_img_size(self.img_size)
        _check_timing(self.runs, self.warmup, self.threads)
        require(is_whole(self.batch) and self.batch >= 1, "batch", "a whole number >= 1", self.batch)
        require(is_whole(self.workers) and self.workers >= 0, "workers", "a whole number >= 0", self.workers)
        require(is_whole(self.calib_images) and self.calib_images >= 1, "calib_images", "a whole number >= 1", self.calib_images)
        require(not self.int8 or self.data is not None, "int8", "given with --data (INT8 calibrates on its training images)", self.int8)


@dataclass
class InfoSettings:
    """One model's layer table and totals, and optionally its CPU latency."""

    cfg: str | None = option(None, positional=True, help="darknet .cfg (optional when --weights is a .pt, which carries its cfg)")
    weights: str | None = option(None, help="darknet .weights or yoloprune .pt to load (checks that it matches the cfg)")
    img_size: int | None = option(
        None, help="square input size in pixels, a multiple of 32", default_text="the cfg's [net] height x width, as darknet counts",
    )
    json: bool = option(False, help="print one JSON object: params, size_mb, gmacs, bflops, bflops_darknet, img_size, input_hw (+ latency)")
    layers: bool = option(False, help="with --json: include the per-layer rows")
    latency: bool = option(False, help="also measure CPU latency (batch 1, median)")
    threads: int | None = option(None, help="torch threads for --latency", default_text="torch's")
    runs: int = option(20, help="timed runs for --latency")

    def __post_init__(self) -> None:
        check_img_size(self.img_size)
        _check_timing(self.runs, 0, self.threads)
