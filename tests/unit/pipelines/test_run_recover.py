"""The recovery `both` delivers, by its rule and through the pipeline's wiring, and the model cfg
fitted to (or refused for) the dataset's classes."""

from __future__ import annotations

import logging
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import onnxruntime
import pytest
import torch

from helpers import NANO, sparse_nano
from yoloprune.darknet.cfg import load_cfg, parse_cfg, write_cfg
from yoloprune.darknet.weights import load_model, save_checkpoint
from yoloprune.errors import CfgError
from yoloprune.pipelines.run import pipeline
from yoloprune.pipelines.run.model_cfg import model_cfg_text, with_classes
from yoloprune.pipelines.run.profiles import PROFILES
from yoloprune.pipelines.run.recover import ValidScore, choose_recovery

SIZE = 64


def test_the_higher_map5095_wins_and_a_tie_within_0_002_goes_to_the_higher_map50():
    assert choose_recovery({"finetune": ValidScore(0.30, 0.70), "scratch": ValidScore(0.31, 0.60)}) == "scratch"
    assert choose_recovery({"finetune": ValidScore(0.312, 0.70), "scratch": ValidScore(0.310, 0.60)}) == "finetune"  # a tie
    assert choose_recovery({"finetune": ValidScore(0.3125, 0.70), "scratch": ValidScore(0.3100, 0.90)}) == "finetune"  # 0.0025 apart
    assert choose_recovery({"finetune": ValidScore(0.300, 0.60), "scratch": ValidScore(0.301, 0.61)}) == "scratch"
    assert choose_recovery({"scratch": ValidScore(0.1, 0.2)}) == "scratch"


class ScriptedValidator:
    """Scores each model by the sum of its first conv's weights, looked up in a script: what a
    validation pass would return for the checkpoint it was loaded from."""

    script: dict[float, tuple[float, float]] = {}

    def __init__(self, settings, progress=True):
        assert settings.split == "valid"  # what chooses reads valid
        self.device = torch.device("cpu")

    def __call__(self, model):
        key = round(float(model.layers[0].conv.weight.detach().sum()), 3)
        map_, map50 = self.script[key]
        return SimpleNamespace(map=map_, map50=map50)


@pytest.mark.parametrize("scores, preferred", [
    ({"finetune": (0.40, 0.70), "scratch": (0.45, 0.65)}, "scratch"),
    ({"finetune": (0.451, 0.71), "scratch": (0.45, 0.65)}, "finetune"),  # tie on mAP@0.5:0.95, mAP@0.5 decides
])
def test_both_delivers_the_checkpoint_the_validation_score_prefers(tmp_path, monkeypatch, scores, preferred):
    checkpoints, models = {}, {}
    for seed, name in enumerate(("finetune", "scratch")):
        models[name] = sparse_nano(seed)
        checkpoints[name] = tmp_path / f"{name}.pt"
        save_checkpoint(checkpoints[name], models[name])
    script = {round(float(models[name].layers[0].conv.weight.detach().sum()), 3): scores[name] for name in scores}
    assert len(script) == 2
    monkeypatch.setattr(ScriptedValidator, "script", script)
    monkeypatch.setattr(pipeline, "Validator", ScriptedValidator)
    run = pipeline.RunPipeline(tmp_path / "out", replace(PROFILES["quick"], img_size=SIZE), "cpu", 0)
    chosen, valid, delivered = run.choose_and_deliver(checkpoints, tmp_path / "unused.data")
    assert chosen == preferred and valid[preferred] == ValidScore(*scores[preferred])
    assert delivered.pt.read_bytes() == checkpoints[preferred].read_bytes()
    expected = models[preferred]
    x = torch.rand(2, 3, SIZE, SIZE)
    with torch.no_grad():
        boxes = expected(x).numpy()
        darknet_boxes = load_model(delivered.cfg, delivered.weights).eval()(x).numpy()
    assert np.abs(darknet_boxes - boxes).max() <= 1e-4 * max(1.0, np.abs(boxes).max())
    session = onnxruntime.InferenceSession(str(delivered.onnx), providers=["CPUExecutionProvider"])
    (onnx_boxes,) = session.run(None, {"images": x.numpy()})  # batch 2: the export's batch is dynamic
    assert np.abs(onnx_boxes - boxes).max() <= 1e-4 * max(1.0, np.abs(boxes).max())
    assert any(f"cp {checkpoints[preferred]} {delivered.pt}" == line for line in run.commands)


def test_a_cfg_for_other_classes_is_fitted_from_scratch_and_refused_with_weights(tmp_path, caplog):
    three = tmp_path / "three.cfg"
    three.write_text(write_cfg(with_classes(load_cfg(NANO), 3)))
    assert load_cfg(NANO).layers[-1].classes == 1  # the oracle: the committed one-class cfg
    with caplog.at_level(logging.INFO):
        fitted = parse_cfg(model_cfg_text(three, 1, trained=False))
    assert write_cfg(fitted) == write_cfg(load_cfg(NANO))
    assert any("set to the dataset's 1 classes" in record.message for record in caplog.records)
    assert model_cfg_text(NANO, 1, trained=True) == open(NANO).read()  # a fitting cfg is used as written
    with pytest.raises(CfgError, match=r"three.cfg:\d+: \[yolo\] classes=3, but the dataset has 1 classes"):
        model_cfg_text(three, 1, trained=True)
