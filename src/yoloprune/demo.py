"""The main job end to end, on the embedded synthetic hand dataset:

    data synth → train (baseline) → train --sparsity (from the baseline) → prune (full mode, largest
    pruning within an mAP tolerance) → train (finetune the pruned model, distilled from the baseline)
    → bench (params, MB, MACs, latency torch/ORT, mAP) → figures → report.md

Every stage writes into its own folder under `out_dir`, using the same functions as the commands
(`yoloprune data synth`, `train`, `prune`, `bench`, `plot`), so the report can be reproduced stage by
stage from the command line. Re-running reuses what is still valid: each stage folder records its
settings and the content digests of its inputs (`stage.json`, see `yoloprune.stage`); a stage whose
record matches is reused (a training resumes from its last.pt), any other is emptied and re-run, and
so is everything downstream of it, whose inputs then change.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from yoloprune.fileio import atomic_write_text
from yoloprune.stage import Stage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoProfile:
    """Sizes of one demo run. `default` is sized for about 20 minutes on a 2-core laptop CPU."""

    name: str
    train_images: int
    val_images: int
    img_size: int
    width_multiple: float  # YOLOv3 topology at this width (1.0 = the Oxford Hand reference cfg)
    batch: int
    baseline_epochs: int
    sparse_epochs: int
    finetune_epochs: int
    lr: float
    sparsity: float
    sparsity_decay: float | None  # fraction of the sparse epochs after which s drops 100x
    max_map_drop: float  # the auto pruning's mAP@0.5 tolerance (no finetune)
    round_to: int  # kept channel counts rounded up to a multiple of this (vector width of CPU conv kernels)
    auto_steps: int
    distill_weight: float
    bench_runs: int
    eval_every: int = 1
    min_hand_scale: float = 0.05  # synthetic data: smallest hand box side (share of the image)
    max_hands: int = 6
    cfg_path: str | None = None  # a cfg file instead of the generated width_multiple topology
    optimizer: str = "sgd"  # for all three trainings
    gamma_lr_scale: float = 1.0  # sparsity training: learning-rate multiplier of the penalised γ
    finetune_lr_ratio: float = 0.2  # finetune lr = lr · this
    layers: int | str = 0  # residual blocks the pruning removes, or "auto" (chosen by the mAP search)


PROFILES = {
    "quick": DemoProfile(
        name="quick", train_images=64, val_images=24, img_size=128, width_multiple=0.0625, batch=16,
        baseline_epochs=3, sparse_epochs=2, finetune_epochs=1, lr=0.001, sparsity=0.005, sparsity_decay=None,
        max_map_drop=0.01, round_to=1, auto_steps=3, distill_weight=1.0, bench_runs=5,
        optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto",
    ),
    # Width x0.25 at 160 px (configs/yolov3-hand-demo.cfg): as fast to train as x0.125 at 192 px and as
    # accurate, but wide enough that latency follows MACs once pruned (x0.125's early 4- and 8-channel
    # layers cannot shrink and are overhead-bound). AdamW: on a 10-minute CPU budget it reaches about
    # 1.6x the mAP@0.5 of SGD; with it the penalised γ need a 10x learning rate to reach 0 in 16 epochs.
    "default": DemoProfile(
        name="default", train_images=1000, val_images=200, img_size=160, width_multiple=0.25, batch=16,
        baseline_epochs=20, sparse_epochs=16, finetune_epochs=5, lr=0.001, sparsity=0.004, sparsity_decay=None,
        max_map_drop=0.01, round_to=8, auto_steps=7, distill_weight=1.0, bench_runs=30, eval_every=4,
        min_hand_scale=0.1, max_hands=4, optimizer="adam", gamma_lr_scale=10.0, finetune_lr_ratio=0.5, layers="auto",
    ),
    # The seed-scale run, for a machine with a GPU: the 61.5 M-parameter yolov3-hand.cfg at 416 px.
    "full": DemoProfile(
        name="full", train_images=4000, val_images=800, img_size=416, width_multiple=1.0, batch=16,
        baseline_epochs=100, sparse_epochs=100, finetune_epochs=30, lr=0.01, sparsity=0.001, sparsity_decay=0.7,
        max_map_drop=0.01, round_to=16, auto_steps=8, distill_weight=1.0, bench_runs=30, cfg_path=None,
    ),
}


@dataclass
class DemoResult:
    out_dir: Path
    report_md: Path
    bench_json: Path
    figures: dict[str, Path]
    seconds: float


def _stage_train(name: str, out: Path, config_kwargs: dict, inputs: dict[str, Path]):
    """A training stage: resumed when its folder holds a run with the same settings and inputs,
    started afresh otherwise."""
    from yoloprune.train.trainer import TrainConfig, train

    stage = Stage(name, out, config_kwargs, inputs)
    resumable = stage.prepare() and (out / "last.pt").exists()
    stage.record()
    return train(TrainConfig(out=out, resume=resumable, **config_kwargs))


def run_demo(out_dir: str | Path = "runs/demo", profile: str | DemoProfile = "default", device: str = "cpu", workers: int = 0) -> DemoResult:
    from yoloprune.bench.benchmark import benchmark_models, format_markdown
    from yoloprune.bench.plots import plot_run
    from yoloprune.darknet.builder import build_yolov3_cfg_text
    from yoloprune.darknet.weights import load_model
    from yoloprune.data.synth import generate_synthetic_dataset
    from yoloprune.prune.run import PruneSettings, run_pruning

    start = time.perf_counter()
    settings = PROFILES[profile] if isinstance(profile, str) else profile
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stage_seconds: dict[str, float] = {}

    def timed(name: str):
        stage_start = time.perf_counter()
        return lambda: stage_seconds.__setitem__(name, time.perf_counter() - stage_start)

    # 1. data (reused when generated with the same settings; recorded once complete)
    done = timed("data")
    data_dir = out_dir / "data"
    data_path = data_dir / "synth.data"
    data_options = dict(
        n_train=settings.train_images, n_val=settings.val_images, img_size=settings.img_size, seed=0,
        max_hands=settings.max_hands, min_hand_scale=settings.min_hand_scale,
    )
    data_stage = Stage("data", data_dir, data_options)
    if data_stage.prepare():
        log.info("[1/6] reusing the dataset in %s", data_dir)
    else:
        log.info("[1/6] generating the synthetic dataset: %d train + %d valid images at %d px", settings.train_images, settings.val_images, settings.img_size)
        generate_synthetic_dataset(data_dir, **data_options)
        data_stage.record()
    done()

    cfg_path = Path(settings.cfg_path) if settings.cfg_path else out_dir / "model.cfg"
    if not settings.cfg_path:
        atomic_write_text(cfg_path, build_yolov3_cfg_text(settings.width_multiple, classes=1, img_size=settings.img_size))
    common = dict(
        data=data_path, img_size=settings.img_size, batch_size=settings.batch, device=device, workers=workers,
        eval_every=settings.eval_every, optimizer=settings.optimizer,
    )

    # 2. baseline
    done = timed("baseline")
    log.info("[2/6] training the baseline (%d epochs)", settings.baseline_epochs)
    data_inputs = {"data": data_stage.record_path}
    baseline = _stage_train(
        "baseline", out_dir / "baseline", dict(common, cfg=cfg_path, epochs=settings.baseline_epochs, lr=settings.lr), {"cfg": cfg_path, **data_inputs}
    )
    baseline_weights = baseline.best or baseline.last
    done()

    # 3. sparsity training, from the baseline
    done = timed("sparse")
    log.info("[3/6] sparsity training (s=%g, %d epochs)", settings.sparsity, settings.sparse_epochs)
    sparse = _stage_train(
        "sparse", out_dir / "sparse",
        dict(common, weights=baseline_weights, epochs=settings.sparse_epochs, lr=settings.lr, sparsity=settings.sparsity,
             sparsity_decay=settings.sparsity_decay, gamma_lr_scale=settings.gamma_lr_scale, warmup_epochs=0.0),
        {"weights": baseline_weights, **data_inputs},
    )
    done()

    # 4. prune: the largest pruning whose mAP@0.5 (no finetune) stays within the tolerance of the sparse model
    done = timed("prune")
    log.info("[4/6] pruning (full mode, mAP@0.5 tolerance %g)", settings.max_map_drop)
    prune_settings = PruneSettings(
        mode="full", max_map_drop=settings.max_map_drop, round_to=settings.round_to, data=str(data_path), img_size=settings.img_size,
        auto_steps=settings.auto_steps, device=device, workers=workers, layers=settings.layers,
    )
    prune_dir = out_dir / "prune"
    prune_stage = Stage("prune", prune_dir, asdict(prune_settings), {"weights": sparse.last, **data_inputs})
    if prune_stage.prepare():
        log.info("[4/6] reusing the pruned model in %s", prune_dir)
    else:
        run_pruning(load_model(None, sparse.last, device), prune_settings, prune_dir, source=str(sparse.last))
        prune_stage.record()
    pruned_weights = prune_dir / "pruned.pt"
    prune_report = json.loads((prune_dir / "report.json").read_text(encoding="utf-8"))
    done()

    # 5. finetune the pruned model, distilled from the baseline
    done = timed("finetune")
    log.info("[5/6] finetuning the pruned model (%d epochs, distilled from the baseline)", settings.finetune_epochs)
    finetune = _stage_train(
        "finetune", out_dir / "finetune",
        dict(common, weights=pruned_weights, epochs=settings.finetune_epochs, lr=settings.lr * settings.finetune_lr_ratio, warmup_epochs=0.0,
             teacher_weights=baseline_weights, distill_weight=settings.distill_weight),
        {"weights": pruned_weights, "teacher": baseline_weights, **data_inputs},
    )
    done()

    # 6. bench + figures + report
    done = timed("bench")
    log.info("[6/6] benchmarking baseline / pruned / finetuned")
    models = [
        ("baseline", load_model(None, baseline_weights)),
        ("pruned", load_model(None, pruned_weights)),
        ("finetuned", load_model(None, finetune.best or finetune.last)),
    ]
    bench = benchmark_models(models, settings.img_size, data=str(data_path), runs=settings.bench_runs, workers=workers)
    bench_json = out_dir / "bench.json"
    atomic_write_text(bench_json, json.dumps(bench.to_dict(), indent=2) + "\n")
    table = format_markdown(bench)
    figures = {path.stem: path for path in plot_run(out_dir / "sparse", out_dir / "figures")}
    figures.update({path.stem: path for path in plot_run(out_dir / "prune", out_dir / "figures")})
    done()

    seconds = time.perf_counter() - start
    report_md = out_dir / "report.md"
    atomic_write_text(
        report_md,
        _report_text(settings, bench, table, prune_report, sparse, figures, out_dir, stage_seconds, seconds),
    )
    log.info("report: %s (%.1f min)", report_md, seconds / 60)
    return DemoResult(out_dir, report_md, bench_json, figures, seconds)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {platform.system()} {platform.release()}"


def _report_text(settings: DemoProfile, bench, table: str, prune_report: dict, sparse, figures: dict, out_dir: Path, stage_seconds: dict, seconds: float) -> str:
    from yoloprune.train.trainer import read_metrics_csv

    by_name = {m.name: m for m in bench.models}
    base, pruned, tuned = by_name["baseline"], by_name["pruned"], by_name["finetuned"]
    sparse_rows = [row for row in read_metrics_csv(sparse.metrics_csv) if row.get("gamma_frac_small") is not None]
    small = sparse_rows[-1]["gamma_frac_small"] if sparse_rows else float("nan")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# yoloprune demo report",
        "",
        f"Run {when} on {_machine()}; profile `{settings.name}`; wall time {seconds / 60:.1f} min "
        f"({', '.join(f'{k} {v / 60:.1f}' for k, v in stage_seconds.items())} min).",
        "",
        "## Baseline vs pruned vs finetuned",
        "",
        table,
        "Ratios in brackets are to the baseline. *pruned* is the compact model straight out of `yoloprune prune` "
        "(no finetuning: removed channels' constant outputs are folded into the next layers); *finetuned* is it after "
        f"{settings.finetune_epochs} epoch(s) of training distilled from the baseline.",
        "",
        "| | pruned / baseline | finetuned / baseline |",
        "|---|---|---|",
        f"| params | {pruned.params / base.params:.3f}x | {tuned.params / base.params:.3f}x |",
        f"| MACs | {pruned.gmacs / base.gmacs:.3f}x | {tuned.gmacs / base.gmacs:.3f}x |",
        f"| latency (PyTorch) | {pruned.latency_ms_torch / base.latency_ms_torch:.3f}x | {tuned.latency_ms_torch / base.latency_ms_torch:.3f}x |",
        f"| latency (ONNX Runtime) | {pruned.latency_ms_ort / base.latency_ms_ort:.3f}x | {tuned.latency_ms_ort / base.latency_ms_ort:.3f}x |",
        f"| mAP@0.5 change | {pruned.map50 - base.map50:+.4f} | {tuned.map50 - base.map50:+.4f} |",
        "",
        "## What was done",
        "",
        f"- Dataset: synthetic hands, {settings.train_images} train / {settings.val_images} valid images at {settings.img_size} px "
        "(`yoloprune data synth`).",
        f"- Model: YOLOv3 topology at width x{settings.width_multiple:g} (`{out_dir / 'model.cfg'}`), trained from scratch for "
        f"{settings.baseline_epochs} epochs ({settings.optimizer}, lr {settings.lr:g}, warmup + cosine).",
        f"- Sparsity training: {settings.sparse_epochs} epochs from the baseline with s = {settings.sparsity:g} on every BN γ"
        + (f", s / 100 after {settings.sparsity_decay:.0%} of the epochs" if settings.sparsity_decay else "")
        + (f", γ learning rate x{settings.gamma_lr_scale:g}" if settings.gamma_lr_scale != 1 else "")
        + f"; at the end {small:.1%} of |γ| are below 0.01.",
        f"- Pruning: `--mode full` (shortcut-coupled convs pruned together)"
        + (", residual blocks removed first (as many as keep mAP@0.5 within half the tolerance)" if settings.layers == "auto" else "")
        + f", then the most channels whose validation mAP@0.5 stays within {settings.max_map_drop} of the sparse model "
        f"(bisection, {settings.auto_steps} evaluations); threshold |γ| = {prune_report.get('threshold', float('nan')):.4g}, "
        f"{len(prune_report.get('removed_blocks', []))} residual block(s) removed, kept channels rounded up to multiples of {settings.round_to}, "
        f"BN statistics re-calibrated on {prune_report.get('calibrated_images', 0)} training images (every trial of the search too).",
        f"- Finetuning: {settings.finetune_epochs} epochs at lr {settings.lr * settings.finetune_lr_ratio:g}, distilled from the baseline.",
        "",
        "## Figures",
        "",
    ]
    captions = {
        "gamma_quantiles": "Quantiles of |γ| during sparsity training",
        "gamma_traces": "γ of the first BN layer during sparsity training",
        "gamma_hist": "Distribution of |γ| per epoch",
        "channels": "Channels per layer before and after pruning",
    }
    for stem, caption in captions.items():
        if stem in figures:
            lines += [f"### {caption}", "", f"![{caption}]({figures[stem].relative_to(out_dir)})", ""]
    data = f"--data {out_dir / 'data/synth.data'} --img-size {settings.img_size} --batch {settings.batch} --eval-every {settings.eval_every}"
    optim = f"--optimizer {settings.optimizer} --lr {settings.lr:g}"
    lines += [
        "## Reproduce stage by stage",
        "",
        "```bash",
        f"yoloprune data synth {out_dir / 'data'} --train {settings.train_images} --val {settings.val_images} --img-size {settings.img_size} "
        f"--max-hands {settings.max_hands} --min-hand-scale {settings.min_hand_scale:g}",
        f"yoloprune train --cfg {out_dir / 'model.cfg'} {data} --epochs {settings.baseline_epochs} {optim} --out {out_dir / 'baseline'}",
        f"yoloprune train --weights {out_dir / 'baseline/best.pt'} {data} --epochs {settings.sparse_epochs} {optim} --warmup-epochs 0 "
        f"--sparsity {settings.sparsity:g}" + (f" --sparsity-decay {settings.sparsity_decay:g}" if settings.sparsity_decay else "")
        + (f" --gamma-lr-scale {settings.gamma_lr_scale:g}" if settings.gamma_lr_scale != 1 else "") + f" --out {out_dir / 'sparse'}",
        f"yoloprune prune --weights {out_dir / 'sparse/last.pt'} --mode full --max-map-drop {settings.max_map_drop} --layers {settings.layers} "
        f"--round {settings.round_to} --auto-steps {settings.auto_steps} --data {out_dir / 'data/synth.data'} --out {out_dir / 'prune'}",
        f"yoloprune train --weights {out_dir / 'prune/pruned.pt'} --teacher-weights {out_dir / 'baseline/best.pt'} {data} "
        f"--epochs {settings.finetune_epochs} --optimizer {settings.optimizer} --lr {settings.lr * settings.finetune_lr_ratio:g} --warmup-epochs 0 "
        f"--out {out_dir / 'finetune'}",
        f"yoloprune bench --model baseline={out_dir / 'baseline/best.pt'} --model pruned={out_dir / 'prune/pruned.pt'} "
        f"--model finetuned={out_dir / 'finetune/best.pt'} --data {out_dir / 'data/synth.data'} --img-size {settings.img_size}",
        f"yoloprune plot {out_dir / 'sparse'} && yoloprune plot {out_dir / 'prune'}",
        "```",
        "",
    ]
    return "\n".join(lines)


def profile_with(name: str, **changes) -> DemoProfile:
    """A named profile with some fields changed (for scripts and tests)."""
    return replace(PROFILES[name], **changes)


def describe_profiles() -> str:
    return "\n".join(f"{name}: {json.dumps(asdict(profile))}" for name, profile in PROFILES.items())
