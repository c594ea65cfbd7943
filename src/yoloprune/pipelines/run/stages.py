"""The order of a run's stages (`run_stages`), and `run` on a dataset and cfg the user gives
(`run_on_data`); the stages themselves are `pipeline.RunPipeline`'s."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from yoloprune.bench.settings import BenchSettings
from yoloprune.darknet.weights import load_model
from yoloprune.data.spec import load_data_spec, read_image_list
from yoloprune.eval.settings import EvalSettings
from yoloprune.pipelines.run.model_cfg import model_cfg_text
from yoloprune.pipelines.run.pipeline import STAGES, ModelFiles, RunPipeline, RunResult
from yoloprune.pipelines.run.recover import ROW_NAMES
from yoloprune.pipelines.run.report import RunRecord, write_report
from yoloprune.pipelines.run.settings import RunSettings
from yoloprune.prune.settings import PruneSettings
from yoloprune.train.settings import TrainSettings

log = logging.getLogger(__name__)


def run_on_data(settings: RunSettings) -> RunResult:
    """`yoloprune run`: every stage on `settings.data` with `settings.cfg` (its classes fitted to the
    dataset, or refused with `weights`), `settings.weights` as the baseline when given."""
    profile = settings.recipe()
    data = Path(settings.data)
    spec = load_data_spec(data)
    text = model_cfg_text(settings.cfg, spec.classes, trained=settings.weights is not None)  # refused before anything is written
    if settings.weights is not None:
        load_model(settings.cfg, settings.weights)  # weights that do not fit the cfg: one error, before anything is written
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    run = RunPipeline(out, profile, settings.device, settings.workers, settings.split, settings.recover, settings.controls)
    run.use_data(data)
    cfg = run.write_model_cfg(text)
    baseline = None if settings.weights is None else ModelFiles(Path(settings.weights), cfg)
    counts = " / ".join(f"{len(read_image_list(spec.list_for(split)))} {split}" for split in spec.splits)
    dataset_text = f"`{data}`, {spec.classes} class{'es' if spec.classes > 1 else ''}, {counts} images at {profile.img_size} px"
    return run_stages(run, data, cfg, dataset_text, baseline)


def run_stages(run: RunPipeline, data: Path, cfg: Path, dataset_text: str, baseline: ModelFiles | None = None) -> RunResult:
    """Every stage after the data (reusing those still valid), then report.md. Without `baseline`
    the anchors of `cfg` are fitted to the data and the baseline is trained from scratch."""
    p = run.profile
    common = dict(
        data=str(data), img_size=p.img_size, batch_size=p.batch, device=run.device, workers=run.workers, eval_every=p.eval_every,
        optimizer=p.optimizer, lr=p.lr,
    )
    from_scratch = dict(common, ema=True, ema_decay=p.ema_decay) if p.ema_decay is not None else common  # the baseline's recipe
    if baseline is None:
        if p.fit_anchors:
            run.fit_anchors(data, cfg)
        with run.timed("baseline"):
            log.info("[2/%d] training the baseline (%d epochs)", STAGES, p.baseline_epochs)
            trained = run.train("baseline", TrainSettings(cfg=str(cfg), out=str(run.out / "baseline"), epochs=p.baseline_epochs, **from_scratch), {"cfg": cfg})
        baseline = ModelFiles(trained.best or trained.last)
    else:
        run.given_weights = True
        log.info("[2/%d] the baseline is %s (not trained)", STAGES, baseline.weights)
    # The sparse stage's recipe: the equal-epochs control repeats it without the penalty.
    after_baseline = dict(common, warmup_epochs=0.0, cfg=None if baseline.cfg is None else str(baseline.cfg))
    with run.timed("sparse"):
        log.info("[3/%d] sparsity training (s=%g, %d epochs)", STAGES, p.sparsity, p.sparse_epochs)
        sparse = run.train("sparse", TrainSettings(
            weights=str(baseline.weights), out=str(run.out / "sparse"), epochs=p.sparse_epochs, sparsity=p.sparsity,
            sparsity_decay=p.sparsity_decay, gamma_lr_scale=p.gamma_lr_scale, **after_baseline,
        ), {"weights": baseline.weights})
    with run.timed("prune"):
        log.info("[4/%d] pruning (full mode, mAP@0.5 tolerance %g%s)", STAGES, p.max_map_drop,
                 "" if p.max_map5095_drop is None else f", mAP@0.5:0.95 tolerance {p.max_map5095_drop:g}")
        prune_report = run.prune(sparse.last, PruneSettings(
            mode="full", max_map_drop=p.max_map_drop, max_map5095_drop=p.max_map5095_drop, map_drop_confidence=p.map_drop_confidence,
            round_to=p.round_to, data=str(data),
            img_size=p.img_size, auto_steps=p.auto_steps, device=run.device, workers=run.workers, layers=p.layers,
        ))
    models = {"baseline": baseline, "sparse": ModelFiles(sparse.last), "pruned": ModelFiles(run.out / "prune" / "pruned.pt")}
    models.update(_recover_and_controls(run, baseline, common, from_scratch, after_baseline))
    record = RunRecord(dataset_text=dataset_text, prune_report=prune_report, sparse_metrics_csv=sparse.metrics_csv)
    return _deliver_and_report(run, data, models, record)


def _recover_and_controls(run: RunPipeline, baseline: ModelFiles, common: dict, from_scratch: dict, after_baseline: dict) -> dict[str, ModelFiles]:
    """The recoveries the run asks for and the controls: finetuned, baseline-equal-epochs, scratch
    (each present when trained)."""
    p = run.profile
    pruned, pruned_cfg = run.out / "prune" / "pruned.pt", run.out / "prune" / "pruned.cfg"
    models: dict[str, ModelFiles] = {}
    if run.recover in ("finetune", "both"):
        with run.timed("finetune"):
            log.info("[5/%d] finetuning the pruned model (%d epochs, distilled from the baseline)", STAGES, p.finetune_epochs)
            finetune = run.train("finetune", TrainSettings(
                weights=str(pruned), out=str(run.out / "finetune"), epochs=p.finetune_epochs, warmup_epochs=0.0,
                teacher_cfg=None if baseline.cfg is None else str(baseline.cfg), teacher_weights=str(baseline.weights),
                distill_weight=p.distill_weight, **dict(common, lr=p.lr * p.finetune_lr_ratio),
            ), {"weights": pruned, "teacher": baseline.weights})
        models["finetuned"] = ModelFiles(finetune.best or finetune.last)
    if run.controls:
        with run.timed("controls"):
            extra_epochs = p.sparse_epochs + p.finetune_epochs
            log.info("[6/%d] control: the baseline trained on for %d epochs without the penalty", STAGES, extra_epochs)
            equal = run.train("baseline-equal-epochs", TrainSettings(
                weights=str(baseline.weights), out=str(run.out / "baseline-equal-epochs"), epochs=extra_epochs, **after_baseline,
            ), {"weights": baseline.weights})
        models["baseline-equal-epochs"] = ModelFiles(equal.best or equal.last)
    if run.controls or run.recover in ("scratch", "both"):
        with run.timed("scratch"):
            log.info("[6/%d] the pruned architecture from scratch for %d epochs with the baseline's recipe", STAGES, p.total_epochs)
            scratch = run.train("scratch", TrainSettings(cfg=str(pruned_cfg), out=str(run.out / "scratch"), epochs=p.total_epochs, **from_scratch), {"cfg": pruned_cfg})
        models["scratch"] = ModelFiles(scratch.best or scratch.last)
    return models


BENCH_ORDER = ("baseline", "baseline-equal-epochs", "sparse", "pruned", "finetuned", "scratch")


def _deliver_and_report(run: RunPipeline, data: Path, models: dict[str, ModelFiles], record) -> RunResult:
    p, out = run.profile, run.out
    with run.timed("deliver"):
        candidates = {name: models[row].weights for name, row in ROW_NAMES.items() if run.recover in (name, "both")}
        log.info("[7/%d] choosing the recovery on the valid split and writing %s", STAGES, out / "delivered")
        record.chosen, record.valid_scores, delivered = run.choose_and_deliver(candidates, data)
    with run.timed("bench"):
        log.info("[8/%d] benchmarking every model on the %s split", STAGES, run.split)
        bench_json = out / "bench.json"
        record.bench, record.table = run.bench(BenchSettings(
            models=[models[name].spec(name) for name in BENCH_ORDER if name in models], data=str(data), split=run.split, img_size=p.img_size,
            runs=p.bench_runs, workers=run.workers, json_out=str(bench_json), int8=[ROW_NAMES[record.chosen]],
        ))
    with run.timed("runtimes"):
        log.info("[9/%d] the pruned model's mAP in PyTorch, ONNX Runtime and OpenCV DNN", STAGES)
        record.runtimes = run.runtimes(out / "prune" / "pruned.pt", out / "prune" / "pruned.cfg", out / "prune" / "pruned.weights", EvalSettings(
            data=str(data), split=run.split, img_size=p.img_size, workers=run.workers, device=run.device, intervals=False,
        ))
    record.figures = run.figures(out / "sparse", out / "prune")  # seconds; not a timed stage
    record.seconds = time.perf_counter() - run.start
    record.delivered = delivered
    report_md = write_report(run, record, str(data))
    log.info("report: %s (%.1f min)", report_md, record.seconds / 60)
    return RunResult(out, report_md, bench_json, record.figures, record.seconds, delivered, record.chosen)
