"""The demo: `run` on a generated hand dataset with a model built for it (`pipelines.demo_settings`),
controls included: one pipeline (`pipelines.run.pipeline`), not two."""

from __future__ import annotations

from pathlib import Path

from yoloprune.pipelines.demo_settings import demo_data, describe_demo_data
from yoloprune.pipelines.run.pipeline import RunPipeline, RunResult
from yoloprune.pipelines.run.stages import run_stages
from yoloprune.pipelines.run.profiles import PROFILES, Profile


def run_demo(
    out_dir: str | Path = "runs/demo", profile: str | Profile = "default", device: str = "cpu", workers: int = 0, split: str = "test",
    model: str = "yolov3", recover: str = "both",
) -> RunResult:
    """`run` on the generated dataset, controls included: data synth, then the model cfg, then every
    stage of `run_stages`."""
    p = PROFILES[profile] if isinstance(profile, str) else profile
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = RunPipeline(out, p, device, workers, split=split, recover=recover, controls=True)
    with run.timed("data"):
        data = run.synth_data(demo_data(p))
    cfg = run.write_model_cfg(demo_data(p).cfg_text(p.img_size, model))
    return run_stages(run, data, cfg, dataset_text=describe_demo_data(p))
