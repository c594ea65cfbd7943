"""The main job end to end, on one dataset and one darknet cfg (`run`; the demo is this on its
generated data):

    [anchors fitted] → train (baseline; skipped when trained weights are given) → train --sparsity
    (from the baseline) → prune (full mode, largest pruning within an mAP tolerance) → recovery
    (finetune, distilled from the baseline, and/or the pruned cfg trained from scratch with the
    baseline's recipe; `both` delivers the better on valid) → OUT/delivered/ → [controls] → bench
    (params, MACs, latency torch/ORT, mAP with paired intervals) → the pruned model in three
    runtimes → figures → report.md

Two controls answer a skeptic's first questions. *baseline-equal-epochs*: the baseline trained on
without the penalty for as many epochs as the sparse and finetune stages, so that it has seen as much
training as the finetuned model. *scratch*: the pruned architecture trained from random init with
the baseline's recipe for the pipeline's total epochs; if it matched the finetuned model, the weights
pruning keeps would be worth no more than a fresh start. The scratch recovery is that same run.

Each stage is run from the same settings object its command builds from its flags, and that object
prints itself back as the command line (`settings.to_arguments`), so the report's "reproduce stage
by stage" commands are the stages that ran. Every stage writes into its own folder under the output
folder. Re-running reuses what is still valid: each stage folder records its settings and the content
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

from yoloprune.bench.benchmark import bench_and_write
from yoloprune.bench.settings import BenchSettings
from yoloprune.darknet.blocks import YoloBlock
from yoloprune.darknet.cfg import load_cfg
from yoloprune.darknet.weights import load_model
from yoloprune.data.anchors import run_anchor_fit
from yoloprune.data.settings import AnchorSettings, SynthSettings
from yoloprune.data.spec import label_path_for, load_data_spec, read_image_list, read_labels
from yoloprune.eval.runtimes import load_eval_model
from yoloprune.eval.settings import EvalSettings
from yoloprune.eval.validator import Validator
from yoloprune.export.onnx import export_onnx
from yoloprune.fileio import atomic_write_text
from yoloprune.pipelines.run.profiles import Profile
from yoloprune.pipelines.run.recover import DeliveredModel, ValidScore, choose_recovery, deliver, delivered_paths
from yoloprune.prune.report import PruneReport
from yoloprune.prune.run import run_pruning
from yoloprune.prune.settings import PruneSettings
from yoloprune.settings import field_defaults, to_arguments
from yoloprune.stage import Stage
from yoloprune.train.settings import TrainSettings
from yoloprune.train.trainer import train
from yoloprune.viz import plot_run
from yoloprune.viz.channels import plot_channels

log = logging.getLogger(__name__)
STAGES = 9  # for the [k/N] progress lines


@dataclass
class RunResult:
    out_dir: Path
    report_md: Path
    bench_json: Path
    figures: dict[str, Path]
    seconds: float
    delivered: DeliveredModel
    chosen: str  # the recovery delivered: "finetune" or "scratch"


@dataclass(frozen=True)
class ModelFiles:
    """A trained model on disk: a .pt (carries its cfg), or darknet .weights with their cfg."""

    weights: Path
    cfg: Path | None = None

    def spec(self, name: str) -> str:
        """`NAME=...` as `bench --model` takes it."""
        return f"{name}={self.cfg}:{self.weights}" if self.cfg else f"{name}={self.weights}"


def command_line(command: str, settings, *leading: str, exclude: tuple[str, ...] = ()) -> str:
    """`yoloprune COMMAND [LEADING...] FLAGS...` that rebuilds `settings`."""
    return " ".join(["yoloprune", command, *leading, *to_arguments(settings, exclude)])


def _fingerprint(settings, exclude: tuple[str, ...] = ("out", "resume")) -> dict:
    return {key: value for key, value in asdict(settings).items() if key not in exclude}


class RunPipeline:
    """The stages of one run; each records the command line that reproduces it in `commands`."""

    def __init__(
        self, out_dir: Path, profile: Profile, device: str, workers: int, split: str = "test", recover: str = "both", controls: bool = False,
    ):
        self.out, self.profile, self.device, self.workers = out_dir, profile, device, workers
        self.split, self.recover, self.controls = split, recover, controls
        self.start = time.perf_counter()
        self.commands: list[str] = []
        self.stage_seconds: dict[str, float] = {}
        self.data_inputs: dict[str, Path] = {}  # the files whose contents stand for the dataset in every stage record
        self.anchor_fit = None  # data.anchors.AnchorFit, when the anchors were fitted
        self.given_weights = False  # the baseline came with the run (--weights), not trained by it

    @contextmanager
    def timed(self, name: str):
        start = time.perf_counter()
        yield
        self.stage_seconds[name] = time.perf_counter() - start

    def synth_data(self, demo) -> Path:
        """The demo's synthetic dataset (`demo`: its `DemoData`; reused when generated with the same
        settings); its .data path."""
        p = self.profile
        settings = SynthSettings(
            out=str(self.out / "data"), train=demo.train_images, val=demo.val_images, test=demo.test_images, img_size=p.img_size,
            max_hands=demo.max_hands, min_hand_scale=demo.min_hand_scale, max_distractors=demo.max_distractors,
            occlusion=demo.occlusion, hands_inside=demo.hands_inside,
        )
        stage = Stage("data", settings.out, _fingerprint(settings), defaults=field_defaults(settings))
        if stage.prepare():
            log.info("[1/%d] reusing the dataset in %s", STAGES, settings.out)
        else:
            log.info(
                "[1/%d] generating the synthetic dataset: %d train + %d valid + %d test images at %d px",
                STAGES, demo.train_images, demo.val_images, demo.test_images, p.img_size,
            )
            settings.generate()
            stage.record()
        self.data_inputs = {"data": stage.record_path}
        self.commands.append(command_line("data synth", settings))
        return Path(settings.out) / "synth.data"

    def use_data(self, data: Path) -> None:
        """A dataset given to the run: the .data file and its image lists stand for it."""
        spec = load_data_spec(data)
        self.data_inputs = {"data": data, **{f"{split} list": spec.list_for(split) for split in spec.splits}}

    def write_model_cfg(self, text: str) -> Path:
        """OUT/model.cfg, the model every stage trains (rewritten only when its text changes)."""
        cfg = self.out / "model.cfg"
        if not cfg.is_file() or cfg.read_text(encoding="utf-8") != text:
            atomic_write_text(cfg, text)
        return cfg

    def fit_anchors(self, data: Path, cfg: Path) -> None:
        """Replace the anchors of `cfg` by anchors fitted to the training boxes (seconds; always run,
        and deterministic, so an unchanged dataset gives an unchanged cfg and the stages after reuse).
        With fewer training boxes than the cfg has anchors there is nothing to fit: the cfg keeps its own."""
        anchors = len(next(block.anchors for block in load_cfg(cfg).layers if isinstance(block, YoloBlock)))
        spec = load_data_spec(data)
        labels = (read_labels(label_path_for(image), spec.classes) for image in read_image_list(spec.list_for("train")))
        boxes = sum(0 if boxes_of_image is None else len(boxes_of_image) for boxes_of_image in labels)
        if boxes < anchors:
            log.warning("%d training boxes, fewer than the cfg's %d anchors: the cfg's anchors are kept", boxes, anchors)
            return
        settings = AnchorSettings(data=str(data), cfg=str(cfg), out=str(cfg), img_size=self.profile.img_size)
        self.anchor_fit = run_anchor_fit(settings, progress=False)
        self.commands.append(command_line("data anchors", settings))

    def train(self, name: str, settings: TrainSettings, inputs: dict[str, Path]):
        """A training stage: resumed when its folder holds a run with the same settings and inputs,
        started afresh otherwise."""
        stage = Stage(name, settings.out, _fingerprint(settings), {**inputs, **self.data_inputs}, field_defaults(settings))
        resumable = stage.prepare() and (Path(settings.out) / "last.pt").exists()
        stage.record()
        self.commands.append(command_line("train", settings, exclude=("resume",)))
        return train(replace(settings, resume=resumable))

    def prune(self, weights: Path, settings: PruneSettings) -> PruneReport:
        """The pruned model in OUT/prune (reused when pruned with the same settings from the same
        weights); its report."""
        out = self.out / "prune"
        stage = Stage("prune", out, asdict(settings), {"weights": weights, **self.data_inputs}, field_defaults(settings))
        if stage.prepare():
            log.info("[4/%d] reusing the pruned model in %s", STAGES, out)
        else:
            outcome = run_pruning(load_model(None, weights, self.device), settings, out, source=str(weights))
            plot_channels(outcome.report, out / "channels.png")  # as the `prune` command draws it
            stage.record()
        self.commands.append(command_line("prune", settings, f"--weights {weights}", f"--out {out}"))
        return PruneReport.load(out / "report.json")

    def valid_scores(self, checkpoints: dict[str, Path], data: Path) -> dict[str, ValidScore]:
        """mAP@0.5:0.95 and mAP@0.5 of each checkpoint on the valid split: what chooses the recovery."""
        settings = EvalSettings(data=str(data), split="valid", img_size=self.profile.img_size, workers=self.workers, device=self.device, intervals=False)
        validator = Validator(settings, progress=False)
        scores = {}
        for name, checkpoint in checkpoints.items():
            metrics = validator(load_model(None, checkpoint, validator.device).eval())
            scores[name] = ValidScore(map=metrics.map, map50=metrics.map50)
            self.commands.append(command_line("eval", settings, f"--weights {checkpoint}"))
        return scores

    def choose_and_deliver(self, candidates: dict[str, Path], data: Path) -> tuple[str, dict[str, ValidScore], DeliveredModel]:
        """The recovery whose checkpoint scores best on valid (`choose_recovery`), the scores, and
        that checkpoint delivered."""
        scores = self.valid_scores(candidates, data)
        chosen = choose_recovery(scores)
        return chosen, scores, self.deliver(candidates[chosen])

    def deliver(self, checkpoint: Path) -> DeliveredModel:
        """OUT/delivered/: the chosen model as cfg + .weights, .pt and parity-checked ONNX (reused
        when made from the same checkpoint)."""
        paths = delivered_paths(self.out / "delivered")
        img_size = self.profile.img_size
        stage = Stage("delivered", paths.folder, {"img_size": img_size}, {"weights": checkpoint})
        if not (stage.prepare() and all(path.is_file() for path in (paths.cfg, paths.weights, paths.pt, paths.onnx))):
            deliver(checkpoint, paths.folder, img_size)
            stage.record()
        self.commands += [
            f"yoloprune export --weights {checkpoint} --format darknet --out {paths.folder / paths.cfg.stem}",
            f"yoloprune export --weights {checkpoint} --out {paths.onnx} --img-size {img_size} --dynamic-batch",
            f"cp {checkpoint} {paths.pt}",
        ]
        return paths

    def bench(self, settings: BenchSettings):
        self.commands.append(command_line("bench", settings))
        return bench_and_write(settings)

    def runtimes(self, pruned: Path, cfg: Path, weights: Path, settings: EvalSettings) -> dict[str, float]:
        """mAP@0.5 of the pruned model in PyTorch, in ONNX Runtime (its ONNX export) and in OpenCV DNN
        (the darknet cfg + weights `prune` wrote), through the same pre- and post-processing."""
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
        figures: dict[str, Path] = {}
        for run_dir in run_dirs:
            figures.update({path.stem: path for path in plot_run(run_dir, self.out / "figures")})
            self.commands.append(f"yoloprune plot {run_dir} --out {self.out / 'figures'}")
        return figures
