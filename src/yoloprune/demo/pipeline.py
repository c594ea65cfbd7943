"""The main job end to end, on the embedded synthetic hand dataset:

    data synth → train (baseline) → train --sparsity (from the baseline) → prune (full mode, largest
    pruning within an mAP tolerance) → train (finetune the pruned model, distilled from the baseline)
    → bench (params, MB, MACs, latency torch/ORT, mAP) → figures → report.md

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
from yoloprune.fileio import atomic_write_text
from yoloprune.prune.settings import PruneSettings
from yoloprune.settings import to_arguments
from yoloprune.stage import Stage
from yoloprune.train.settings import TrainSettings

log = logging.getLogger(__name__)


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
            max_hands=p.max_hands, min_hand_scale=p.min_hand_scale,
        )
        stage = Stage("data", settings.out, _fingerprint(settings))
        if stage.prepare():
            log.info("[1/6] reusing the dataset in %s", settings.out)
        else:
            log.info(
                "[1/6] generating the synthetic dataset: %d train + %d valid + %d test images at %d px",
                p.train_images, p.val_images, p.test_images, p.img_size,
            )
            settings.generate()
            stage.record()
        self.data_record = stage.record_path
        self.commands.append(command_line("data synth", settings))
        return Path(settings.out) / "synth.data"

    def train(self, name: str, settings: TrainSettings, inputs: dict[str, Path]):
        """A training stage: resumed when its folder holds a run with the same settings and inputs,
        started afresh otherwise."""
        from yoloprune.train.trainer import train

        stage = Stage(name, settings.out, _fingerprint(settings), {**inputs, "data": self.data_record})
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
        stage = Stage("prune", out, asdict(settings), {"weights": weights, "data": self.data_record})
        if stage.prepare():
            log.info("[4/6] reusing the pruned model in %s", out)
        else:
            run_pruning(load_model(None, weights, self.device), settings, out, source=str(weights))
            stage.record()
        self.commands.append(command_line("prune", settings, f"--weights {weights}", f"--out {out}"))
        return PruneReport.load(out / "report.json")

    def bench(self, settings: BenchSettings):
        from yoloprune.bench.benchmark import bench_and_write

        self.commands.append(command_line("bench", settings))
        return bench_and_write(settings)

    def figures(self, *run_dirs: Path) -> dict[str, Path]:
        from yoloprune.viz import plot_run

        figures: dict[str, Path] = {}
        for run_dir in run_dirs:
            figures.update({path.stem: path for path in plot_run(run_dir, self.out / "figures")})
            self.commands.append(f"yoloprune plot {run_dir} --out {self.out / 'figures'}")
        return figures


def run_demo(out_dir: str | Path = "runs/demo", profile: str | DemoProfile = "default", device: str = "cpu", workers: int = 0) -> DemoResult:
    from yoloprune.darknet.builder import build_yolov3_cfg_text
    from yoloprune.demo.report import write_report

    start = time.perf_counter()
    p = PROFILES[profile] if isinstance(profile, str) else profile
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = DemoPipeline(out, p, device, workers)
    with run.timed("data"):
        data = run.data()
    cfg = out / "model.cfg"
    atomic_write_text(cfg, build_yolov3_cfg_text(p.width_multiple, classes=1, img_size=p.img_size))
    common = dict(
        data=str(data), img_size=p.img_size, batch_size=p.batch, device=device, workers=workers, eval_every=p.eval_every,
        optimizer=p.optimizer, lr=p.lr,
    )
    with run.timed("baseline"):
        log.info("[2/6] training the baseline (%d epochs)", p.baseline_epochs)
        baseline = run.train("baseline", TrainSettings(cfg=str(cfg), out=str(out / "baseline"), epochs=p.baseline_epochs, **common), {"cfg": cfg})
    teacher = baseline.best or baseline.last
    with run.timed("sparse"):
        log.info("[3/6] sparsity training (s=%g, %d epochs)", p.sparsity, p.sparse_epochs)
        sparse = run.train("sparse", TrainSettings(
            weights=str(teacher), out=str(out / "sparse"), epochs=p.sparse_epochs, warmup_epochs=0.0, sparsity=p.sparsity,
            sparsity_decay=p.sparsity_decay, gamma_lr_scale=p.gamma_lr_scale, **common,
        ), {"weights": teacher})
    with run.timed("prune"):
        log.info("[4/6] pruning (full mode, mAP@0.5 tolerance %g)", p.max_map_drop)
        prune_report = run.prune(sparse.last, PruneSettings(
            mode="full", max_map_drop=p.max_map_drop, round_to=p.round_to, data=str(data), img_size=p.img_size,
            auto_steps=p.auto_steps, device=device, workers=workers, layers=p.layers,
        ))
    pruned = out / "prune" / "pruned.pt"
    with run.timed("finetune"):
        log.info("[5/6] finetuning the pruned model (%d epochs, distilled from the baseline)", p.finetune_epochs)
        finetune = run.train("finetune", TrainSettings(
            weights=str(pruned), out=str(out / "finetune"), epochs=p.finetune_epochs, warmup_epochs=0.0, teacher_weights=str(teacher),
            distill_weight=p.distill_weight, **dict(common, lr=p.lr * p.finetune_lr_ratio),
        ), {"weights": pruned, "teacher": teacher})
    with run.timed("bench"):
        log.info("[6/6] benchmarking baseline / pruned / finetuned")
        models = {"baseline": teacher, "pruned": pruned, "finetuned": finetune.best or finetune.last}
        bench_json = out / "bench.json"
        bench, table = run.bench(BenchSettings(
            models=[f"{name}={path}" for name, path in models.items()], data=str(data), img_size=p.img_size, runs=p.bench_runs,
            workers=workers, json_out=str(bench_json),
        ))
        figures = run.figures(out / "sparse", out / "prune")
    seconds = time.perf_counter() - start
    report_md = write_report(run, bench, table, prune_report, sparse.metrics_csv, figures, seconds)
    log.info("report: %s (%.1f min)", report_md, seconds / 60)
    return DemoResult(out, report_md, bench_json, figures, seconds)
