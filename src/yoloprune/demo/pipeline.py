"""The main job end to end, on the embedded synthetic hand dataset:

    data synth → train (baseline) → train --sparsity (from the baseline) → prune (full mode, largest
    pruning within an mAP tolerance) → train (finetune the pruned model, distilled from the baseline)
    → controls → bench (params, MB, MACs, latency torch/ORT, test mAP) → the pruned model's mAP in
    three runtimes → figures → report.md

Two controls answer a skeptic's first questions. *baseline-equal-epochs*: the baseline trained on
without the penalty for as many epochs as the sparse and finetune stages, so that it has seen as much
training as the finetuned model. *scratch*: the pruned architecture (`prune/pruned.cfg`) trained from
random init with the baseline's recipe for the pipeline's total epochs; if it matched the finetuned
model, the weights pruning keeps would be worth no more than a fresh start.

Each stage is run from the same settings object its command builds from its flags, and that object
prints itself back as the command line (`settings.to_arguments`), so the report's "reproduce stage
by stage" commands are the stages that ran. Every stage writes into its own folder under `out_dir`.
Re-running reuses what is still valid: each stage folder records its settings and the content
digests of its inputs (`stage.json`, see `yoloprune.stage`); a stage whose record matches is reused
(a training resumes from its last.pt), any other is emptied and re-run, and so is everything
downstream of it, whose inputs then change.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from yoloprune.bench.settings import BenchSettings
from yoloprune.data.settings import SynthSettings
from yoloprune.demo.profiles import PROFILES, DemoProfile
from yoloprune.eval.settings import EvalSettings
from yoloprune.fileio import atomic_write_text
from yoloprune.prune.settings import PruneSettings
from yoloprune.settings import field_defaults, to_arguments
from yoloprune.stage import Stage
from yoloprune.train.settings import TrainSettings

log = logging.getLogger(__name__)
STAGES = 8  # for the [k/N] progress lines


@dataclass
class DemoResult:
    out_dir: Path
    report_md: Path
    bench_json: Path
    figures: dict[str, Path]
    seconds: float


def command_line(command: str, settings, *leading: str, exclude: tuple[str, ...] = ()) -> str:
    """`yoloprune COMMAND [LEADING...] FLAGS...` that rebuilds `settings`."""
    return " ".join(["yoloprune", command, *leading, *to_arguments(settings, exclude)])


def _fingerprint(settings, exclude: tuple[str, ...] = ("out", "resume")) -> dict:
    return {key: value for key, value in asdict(settings).items() if key not in exclude}


class DemoPipeline:
    """The stages of one demo run; each records the command line that reproduces it in `commands`."""

    def __init__(self, out_dir: Path, profile: DemoProfile, device: str, workers: int):
        self.out, self.profile, self.device, self.workers = out_dir, profile, device, workers
        self.commands: list[str] = []
        self.stage_seconds: dict[str, float] = {}
        self.data_record: Path | None = None
        self.anchor_fit = None  # data.anchors.AnchorFit, when the profile fits the anchors

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.stage_seconds[name] = time.perf_counter() - start

    def data(self) -> Path:
        """The synthetic dataset (reused when generated with the same settings); its .data path."""
        p = self.profile
        settings = SynthSettings(
            out=str(self.out / "data"), train=p.train_images, val=p.val_images, test=p.test_images, img_size=p.img_size,
            max_hands=p.max_hands, min_hand_scale=p.min_hand_scale, max_distractors=p.max_distractors,
            occlusion=p.occlusion, hands_inside=p.hands_inside,
        )
        stage = Stage("data", settings.out, _fingerprint(settings), defaults=field_defaults(settings))
        if stage.prepare():
            log.info("[1/%d] reusing the dataset in %s", STAGES, settings.out)
        else:
            log.info(
                "[1/%d] generating the synthetic dataset: %d train + %d valid + %d test images at %d px",
                STAGES, p.train_images, p.val_images, p.test_images, p.img_size,
            )
            settings.generate()
            stage.record()
        self.data_record = stage.record_path
        self.commands.append(command_line("data synth", settings))
        return Path(settings.out) / "synth.data"

    def fit_anchors(self, data: Path, cfg: Path) -> None:
        """Replace the anchors of `cfg` by anchors fitted to the training boxes (seconds; always run,
        and deterministic, so an unchanged dataset gives an unchanged cfg and the stages after reuse)."""
        from yoloprune.data.anchors import run_anchor_fit
        from yoloprune.data.settings import AnchorSettings

        settings = AnchorSettings(data=str(data), cfg=str(cfg), out=str(cfg), img_size=self.profile.img_size)
        self.anchor_fit = run_anchor_fit(settings, progress=False)
        self.commands.append(command_line("data anchors", settings))

    def train(self, name: str, settings: TrainSettings, inputs: dict[str, Path]):
        """A training stage: resumed when its folder holds a run with the same settings and inputs,
        started afresh otherwise."""
        from yoloprune.train.trainer import train

        stage = Stage(name, settings.out, _fingerprint(settings), {**inputs, "data": self.data_record}, field_defaults(settings))
        resumable = stage.prepare() and (Path(settings.out) / "last.pt").exists()
        stage.record()
        self.commands.append(command_line("train", settings, exclude=("resume",)))
        return train(replace(settings, resume=resumable))

    def prune(self, weights: Path, settings: PruneSettings):
        """The pruned model in OUT/prune (reused when pruned with the same settings from the same
        weights); its report."""
        from yoloprune.darknet.weights import load_model
        from yoloprune.prune.report import PruneReport
        from yoloprune.prune.run import run_pruning

        out = self.out / "prune"
        stage = Stage("prune", out, asdict(settings), {"weights": weights, "data": self.data_record}, field_defaults(settings))
        if stage.prepare():
            log.info("[4/%d] reusing the pruned model in %s", STAGES, out)
        else:
            run_pruning(load_model(None, weights, self.device), settings, out, source=str(weights))
            stage.record()
        self.commands.append(command_line("prune", settings, f"--weights {weights}", f"--out {out}"))
        return PruneReport.load(out / "report.json")

    def bench(self, settings: BenchSettings):
        from yoloprune.bench.benchmark import bench_and_write

        self.commands.append(command_line("bench", settings))
        return bench_and_write(settings)

    def runtimes(self, pruned: Path, cfg: Path, weights: Path, settings: EvalSettings) -> dict[str, float]:
        """mAP@0.5 of the pruned model in PyTorch, in ONNX Runtime (its ONNX export) and in OpenCV DNN
        (the darknet cfg + weights `prune` wrote), through the same pre- and post-processing."""
        from yoloprune.darknet.weights import load_model
        from yoloprune.eval.runtimes import load_eval_model
        from yoloprune.eval.validator import Validator
        from yoloprune.export.onnx import export_onnx

        validator = Validator(settings)
        torch_model = load_model(None, pruned, validator.device).eval()
        onnx_path = self.out / "export" / "pruned.onnx"
        onnx_path.parent.mkdir(exist_ok=True)
        export_onnx(torch_model, onnx_path, settings.img_size, dynamic_batch=True)
        self.commands.append(f"yoloprune export --weights {pruned} --out {onnx_path} --img-size {settings.img_size} --dynamic-batch")
        scores = {}
        for backend, model_cfg, model_weights in (("torch", None, pruned), ("onnxruntime", None, onnx_path), ("opencv", cfg, weights)):
            model = torch_model if backend == "torch" else load_eval_model(model_cfg, model_weights, backend, validator.device)
            scores[backend] = validator.map50(model)
            evaluated = replace(settings, backend=backend)
            model_flags = (f"--cfg {model_cfg} " if model_cfg else "") + f"--weights {model_weights}"
            self.commands.append(command_line("eval", evaluated, model_flags))
        return scores

    def figures(self, *run_dirs: Path) -> dict[str, Path]:
        from yoloprune.viz import plot_run

        figures: dict[str, Path] = {}
        for run_dir in run_dirs:
            figures.update({path.stem: path for path in plot_run(run_dir, self.out / "figures")})
            self.commands.append(f"yoloprune plot {run_dir} --out {self.out / 'figures'}")
        return figures


def run_demo(
    out_dir: str | Path = "runs/demo", profile: str | DemoProfile = "default", device: str = "cpu", workers: int = 0, split: str = "test",
    model: str = "yolov3",
) -> DemoResult:
    """Run every stage (reusing those still valid) and write report.md; `split` is what the reported
    mAP reads (what chooses always reads valid)."""
    from yoloprune.demo.report import write_report

    start = time.perf_counter()
    p = PROFILES[profile] if isinstance(profile, str) else profile
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = DemoPipeline(out, p, device, workers)
    with run.timed("data"):
        data = run.data()
    cfg = out / "model.cfg"
    atomic_write_text(cfg, p.cfg_text(model))
    if p.fit_anchors:
        run.fit_anchors(data, cfg)
    common = dict(
        data=str(data), img_size=p.img_size, batch_size=p.batch, device=device, workers=workers, eval_every=p.eval_every,
        optimizer=p.optimizer, lr=p.lr,
    )
    from_scratch = dict(common, ema=True, ema_decay=p.ema_decay) if p.ema_decay is not None else common  # the baseline's recipe
    with run.timed("baseline"):
        log.info("[2/%d] training the baseline (%d epochs)", STAGES, p.baseline_epochs)
        baseline = run.train("baseline", TrainSettings(cfg=str(cfg), out=str(out / "baseline"), epochs=p.baseline_epochs, **from_scratch), {"cfg": cfg})
    teacher = baseline.best or baseline.last
    # The sparse stage's recipe: the equal-epochs control repeats it without the penalty.
    after_baseline = dict(common, warmup_epochs=0.0)
    with run.timed("sparse"):
        log.info("[3/%d] sparsity training (s=%g, %d epochs)", STAGES, p.sparsity, p.sparse_epochs)
        sparse = run.train("sparse", TrainSettings(
            weights=str(teacher), out=str(out / "sparse"), epochs=p.sparse_epochs, sparsity=p.sparsity,
            sparsity_decay=p.sparsity_decay, gamma_lr_scale=p.gamma_lr_scale, **after_baseline,
        ), {"weights": teacher})
    with run.timed("prune"):
        log.info("[4/%d] pruning (full mode, mAP@0.5 tolerance %g%s)", STAGES, p.max_map_drop,
                 "" if p.max_map5095_drop is None else f", mAP@0.5:0.95 tolerance {p.max_map5095_drop:g}")
        prune_report = run.prune(sparse.last, PruneSettings(
            mode="full", max_map_drop=p.max_map_drop, max_map5095_drop=p.max_map5095_drop, round_to=p.round_to, data=str(data),
            img_size=p.img_size, auto_steps=p.auto_steps, device=device, workers=workers, layers=p.layers,
        ))
    pruned, pruned_cfg = out / "prune" / "pruned.pt", out / "prune" / "pruned.cfg"
    with run.timed("finetune"):
        log.info("[5/%d] finetuning the pruned model (%d epochs, distilled from the baseline)", STAGES, p.finetune_epochs)
        finetune = run.train("finetune", TrainSettings(
            weights=str(pruned), out=str(out / "finetune"), epochs=p.finetune_epochs, warmup_epochs=0.0, teacher_weights=str(teacher),
            distill_weight=p.distill_weight, **dict(common, lr=p.lr * p.finetune_lr_ratio),
        ), {"weights": pruned, "teacher": teacher})
    with run.timed("controls"):
        extra_epochs, total_epochs = p.sparse_epochs + p.finetune_epochs, p.baseline_epochs + p.sparse_epochs + p.finetune_epochs
        log.info("[6/%d] controls: the baseline trained on for %d epochs without the penalty; the pruned architecture from scratch for %d epochs",
                 STAGES, extra_epochs, total_epochs)
        equal = run.train("baseline-equal-epochs", TrainSettings(
            weights=str(teacher), out=str(out / "baseline-equal-epochs"), epochs=extra_epochs, **after_baseline,
        ), {"weights": teacher})
        scratch = run.train("scratch", TrainSettings(
            cfg=str(pruned_cfg), out=str(out / "scratch"), epochs=total_epochs, **from_scratch,
        ), {"cfg": pruned_cfg})
    with run.timed("bench"):
        log.info("[7/%d] benchmarking every model on the %s split", STAGES, split)
        models = {
            "baseline": teacher, "baseline-equal-epochs": equal.best or equal.last, "sparse": sparse.last, "pruned": pruned,
            "finetuned": finetune.best or finetune.last, "scratch": scratch.best or scratch.last,
        }
        bench_json = out / "bench.json"
        bench, table = run.bench(BenchSettings(
            models=[f"{name}={path}" for name, path in models.items()], data=str(data), split=split, img_size=p.img_size,
            runs=p.bench_runs, workers=workers, json_out=str(bench_json), int8=["finetuned"],
        ))
    with run.timed("runtimes"):
        log.info("[8/%d] the pruned model's mAP in PyTorch, ONNX Runtime and OpenCV DNN", STAGES)
        runtimes = run.runtimes(pruned, pruned_cfg, out / "prune" / "pruned.weights", EvalSettings(
            data=str(data), split=split, img_size=p.img_size, workers=workers, device=device, intervals=False,
        ))
    figures = run.figures(out / "sparse", out / "prune")  # seconds; not a timed stage
    seconds = time.perf_counter() - start
    report_md = write_report(run, bench, table, prune_report, sparse.metrics_csv, figures, runtimes, seconds)
    log.info("report: %s (%.1f min)", report_md, seconds / 60)
    return DemoResult(out, report_md, bench_json, figures, seconds)
