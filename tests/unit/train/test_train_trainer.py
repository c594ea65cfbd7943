"""The Trainer end to end on a tiny synthetic dataset: outputs, resume after an interruption, NaN guard, CLI flags."""

from __future__ import annotations

from helpers import ROOT

import math
from pathlib import Path

import pytest
import torch

from yoloprune.cli import build_parser
from yoloprune.cli.train import build_train_settings
from yoloprune.darknet.weights import load_checkpoint, load_model
from yoloprune.train.metrics import METRIC_COLUMNS, read_metrics_csv
from yoloprune.train.settings import TrainSettings
from yoloprune.train.trainer import Trainer, TrainingDiverged, TrainingStopped, train

NANO_CFG = ROOT / "configs" / "yolov3-hand-nano.cfg"


def _settings(data: Path, out: Path, **changes) -> TrainSettings:
    values = dict(
        data=data, cfg=NANO_CFG, out=out, epochs=3, batch_size=4, img_size=64, augment=False,
        progress=False, tensorboard=False, sparsity=1e-3, sparsity_layers="safe",
    )
    values.update(changes)
    return TrainSettings(**values)


def test_run_writes_checkpoints_and_one_metrics_row_per_epoch(tiny_data, tmp_path):
    result = train(_settings(tiny_data, tmp_path / "run", epochs=2, tensorboard=True))
    assert result.epochs_completed == 2 and not result.stopped_early
    rows = read_metrics_csv(result.metrics_csv)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert set(rows[0]) == set(METRIC_COLUMNS)
    assert all(row["map50"] is not None for row in rows)
    assert set(result.final_metrics) == {"map50", "map", "precision", "recall"}
    checkpoint = load_checkpoint(result.last)  # weights_only=True inside
    state = checkpoint["train_state"]
    assert state["epoch"] == 2 and len(state["history"]) == 2 and state["regulariser"] == {"kind": "l1", "s": 1e-3}
    assert {"optimizer", "scheduler", "rng"} <= set(state)
    first_layer = rows[-1]["gamma_first_layer"]
    assert rows[-1]["gamma_first"] == pytest.approx(checkpoint["state_dict"][f"layers.{first_layer}.bn.weight"].tolist(), abs=1e-5)
    assert result.best is not None and result.best.exists()
    assert any((tmp_path / "run" / "tb").iterdir())


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.01), ("adam", 0.001)])
def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_data, tmp_path, optimizer, lr):
    reference = train(_settings(tiny_data, tmp_path / "reference", optimizer=optimizer, lr=lr))
    out = tmp_path / "interrupted"
    # 8 images / batch 4 = 2 steps per epoch: stop in the middle of epoch 2.
    stopped = train(_settings(tiny_data, out, max_steps=3, optimizer=optimizer, lr=lr))
    assert stopped.stopped_early and stopped.epochs_completed == 1
    resumed = train(_settings(tiny_data, out, resume=True, optimizer=optimizer, lr=lr))
    assert resumed.epochs_completed == 3

    reference_rows, resumed_rows = read_metrics_csv(reference.metrics_csv), read_metrics_csv(resumed.metrics_csv)
    assert [row["epoch"] for row in resumed_rows] == [1, 2, 3]
    for reference_row, resumed_row in zip(reference_rows, resumed_rows):
        for column in ("loss", "map50", "map", "gamma_q50", "lr"):
            assert resumed_row[column] == pytest.approx(reference_row[column], rel=1e-4, abs=1e-6), column
    reference_state = load_checkpoint(reference.last)["state_dict"]
    resumed_state = load_checkpoint(resumed.last)["state_dict"]
    for name, tensor in reference_state.items():
        assert torch.allclose(resumed_state[name].float(), tensor.float(), atol=1e-5), name


def polarization_gradient(gammas: dict[int, torch.Tensor], weights: dict[int, float], t: float) -> dict[int, torch.Tensor]:
    """∂/∂γ of Σ_i w_i·(t·|γ_i| − |γ_i − γ̄|) with γ̄ the mean of all γ (test_train_sparsity checks this
    closed form against finite differences)."""
    mean = torch.cat(list(gammas.values())).mean()
    through_mean = sum(weights[idx] * torch.sign(g - mean).sum() for idx, g in gammas.items()) / sum(g.numel() for g in gammas.values())
    return {idx: weights[idx] * (t * torch.sign(g) - torch.sign(g - mean)) + through_mean for idx, g in gammas.items()}


@pytest.mark.parametrize("kind, weighting", [("l1", "none"), ("l1", "macs"), ("polarization", "none")])
def test_sparsity_moves_each_penalised_gamma_by_exactly_lr_times_its_gradient(tiny_data, tmp_path, kind, weighting):
    """One plain-SGD step from the same state with and without the penalty: every penalised γ ends
    lr·s·∂R/∂γ lower (L1: s·w·sign(γ), w = 1 or its layer's MACs weight; polarization: its gradient,
    then clamped to [0, 1]), every other parameter identical, though gradient clipping is active."""
    from yoloprune.darknet.model import Darknet
    from yoloprune.darknet.weights import save_checkpoint
    from yoloprune.train.sparsity import resolve_sparsity_layers

    model = Darknet(str(NANO_CFG))
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(-1, 1)  # both signs, so sign(γ) matters
    start = tmp_path / "start.pt"
    save_checkpoint(start, model)
    lr, s, t = 0.01, 0.05, 1.2

    def one_step(sparsity: float, out: Path) -> dict[str, torch.Tensor]:
        # grad_clip 0.1: far below the gradient norm of a summed detection loss, so clipping is active
        settings = _settings(
            tiny_data, out, weights=start, optimizer="sgd", momentum=0.0, weight_decay=0.0, lr=lr, warmup_epochs=0.0,
            sparsity=sparsity, sparsity_layers="safe", grad_clip=0.1, max_steps=1, eval_every=0, sparsity_weighting=weighting,
            sparsity_kind=kind, polarization_t=t,
        )
        trainer = Trainer(settings)
        assert trainer.run().stopped_early
        regulariser_weights[sparsity] = trainer.state.regulariser.weights
        return {name: p.detach().clone() for name, p in trainer.bare_model.named_parameters()}

    regulariser_weights: dict = {}
    plain, penalised = one_step(0.0, tmp_path / "plain"), one_step(s, tmp_path / "penalised")
    chosen = resolve_sparsity_layers(model.cfg, "safe")
    # the weights are checked against hand-counted MACs in test_train_sparsity; here that the step uses them
    weights = regulariser_weights[s] if weighting == "macs" else dict.fromkeys(chosen, 1.0)
    assert weighting == "none" or max(weights.values()) > 2 * min(weights.values())  # the weighting matters here
    initial = {idx: model.layers[idx].bn.weight.detach() for idx in chosen}
    if kind == "l1":
        gradient = {idx: weights[idx] * torch.sign(gamma) for idx, gamma in initial.items()}
    else:
        gradient = polarization_gradient(initial, weights, t)
    for name, value in penalised.items():
        layer_idx = int(name.split(".")[1])
        if name.endswith("bn.weight") and layer_idx in chosen:
            expected = plain[name] - lr * s * gradient[layer_idx]
            expected = expected.clamp(0.0, 1.0) if kind == "polarization" else expected
            assert torch.allclose(value, expected, rtol=0, atol=1e-6), name
        else:
            assert torch.equal(value, plain[name]), name
    if kind == "polarization":
        assert any(bool((penalised[f"layers.{idx}.bn.weight"] == 0).any()) for idx in chosen)  # the clamp acted


def test_a_checkpoint_of_the_earlier_flat_layout_resumes_as_the_state_object_does(tiny_data, tmp_path):
    """Checkpoints written before the state object kept its keys at the top level and s as
    "sparsity_s": rewritten so, a run's last.pt resumes into the same run, bit for bit."""
    from yoloprune.darknet.weights import save_checkpoint

    stopped = _settings(tiny_data, tmp_path / "new", epochs=2, max_steps=3, eval_every=0)
    train(stopped)
    checkpoint = load_checkpoint(tmp_path / "new" / "last.pt")
    flat = dict(checkpoint.pop("train_state"))
    flat["sparsity_s"] = flat.pop("regulariser")["s"]
    model = load_model(None, tmp_path / "new" / "last.pt")
    (tmp_path / "old").mkdir()
    meta = {**checkpoint["meta"], "train_config": {**checkpoint["meta"]["train_config"], "out": str(tmp_path / "old")}}
    save_checkpoint(tmp_path / "old" / "last.pt", model, meta=meta, **flat)
    for name in ("new", "old"):
        train(_settings(tiny_data, tmp_path / name, epochs=2, eval_every=0, resume=True))
    new, old = (load_checkpoint(tmp_path / name / "last.pt") for name in ("new", "old"))
    assert new["train_state"]["epoch"] == old["train_state"]["epoch"] == 2
    assert all(torch.equal(tensor, old["state_dict"][key]) for key, tensor in new["state_dict"].items())


def test_best_is_saved_before_last(tiny_data, tmp_path, monkeypatch):
    """A crash between the two writes must not lose the epoch's best model: once last.pt records the
    epoch, a resume will not run it again."""
    import yoloprune.train.checkpoint as checkpoint_module

    written = []
    save_checkpoint = checkpoint_module.save_checkpoint
    monkeypatch.setattr(checkpoint_module, "save_checkpoint", lambda path, *a, **k: (written.append(Path(path).name), save_checkpoint(path, *a, **k)))
    train(_settings(tiny_data, tmp_path / "run", epochs=1))
    assert written == ["best.pt", "last.pt"]


def test_callback_interruption_keeps_the_last_complete_epoch(tiny_data, tmp_path):
    class StopInEpochTwo:
        def on_step_end(self, trainer):
            if trainer.state.epoch == 1:
                raise TrainingStopped("simulated kill")

    out = tmp_path / "run"
    result = train(_settings(tiny_data, out), callbacks=[StopInEpochTwo()])
    assert result.stopped_early and result.epochs_completed == 1
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 1
    assert [row["epoch"] for row in read_metrics_csv(out / "metrics.csv")] == [1]


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tiny_data, tmp_path):
    calls = {"count": 0}

    def poisoned_term(images, heads, targets):
        calls["count"] += 1
        value = math.nan if calls["count"] > 2 else 0.0  # epoch 1 (2 steps) is fine
        return torch.tensor(value), {"poison": torch.tensor(value)}

    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="not finite.*epoch 2"):
        train(_settings(tiny_data, out, eval_every=0), extra_loss_terms=[poisoned_term])
    assert load_checkpoint(out / "last.pt")["train_state"]["epoch"] == 1


def test_seed_aliases_and_resume_defaults(tiny_data, tmp_path):
    parser = build_parser()
    args = parser.parse_args(
        ["train", "--model_def", str(NANO_CFG), "--data", str(tiny_data), "-pre", "w.pt", "-sr", "--s", "0.001", "--out", str(tmp_path)]
    )
    settings = build_train_settings(vars(args))
    assert (settings.cfg, settings.weights, settings.sparsity) == (str(NANO_CFG), "w.pt", 0.001)
    assert build_train_settings(vars(parser.parse_args(["train", "--cfg", "x.cfg", "-sr"]))).sparsity == 0.01
    plain = build_train_settings(vars(parser.parse_args(["train", "--cfg", "x.cfg", "--no-augment"])))
    assert plain.sparsity == 0.0 and plain.augment is False and plain.epochs == TrainSettings.epochs
    adam = build_train_settings(vars(parser.parse_args(["train", "--cfg", "x.cfg", "--optimizer", "adam", "--gamma-lr-scale", "10"])))
    assert (adam.optimizer, adam.gamma_lr_scale) == ("adam", 10.0)

    train(_settings(tiny_data, tmp_path / "run", epochs=1, eval_every=0))
    resumed = build_train_settings(vars(parser.parse_args(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "2"])))
    assert resumed.epochs == 2 and resumed.img_size == 64 and resumed.sparsity_layers == "safe" and resumed.resume


def test_resume_fills_unset_values_from_the_saved_run_and_merges_dict_settings(tmp_path):
    from yoloprune.darknet.model import Darknet
    from yoloprune.darknet.weights import save_checkpoint
    from yoloprune.train.checkpoint import resolve_resume

    saved = TrainSettings(cfg="x.cfg", out=tmp_path, img_size=64, max_steps=5, augment_options={"mosaic": 0.5, "scale": 0.3})
    save_checkpoint(tmp_path / "last.pt", Darknet(str(NANO_CFG)), meta={"train_config": saved.to_dict()})
    resumed = resolve_resume({"resume": True, "out": str(tmp_path), "epochs": 4, "augment_options": {"mosaic": 0.1}})
    assert (resumed.cfg, resumed.img_size, resumed.epochs) == ("x.cfg", 64, 4)
    assert resumed.max_steps is None  # a step limit belongs to the invocation that set it
    assert resumed.augment_options == {"mosaic": 0.1, "scale": 0.3}
    assert resolve_resume({"cfg": "y.cfg"}).cfg == "y.cfg"  # no resume: nothing is read


def test_penalised_gammas_get_their_own_scaled_learning_rate():
    from yoloprune.darknet.cfg import load_cfg
    from yoloprune.darknet.model import Darknet
    from yoloprune.train.optim import build_param_groups

    model = Darknet(load_cfg(NANO_CFG))
    penalised = [model.layers[0].bn.weight, model.layers[1].bn.weight]
    groups = build_param_groups(model, 5e-4, 0.001, penalised, 10.0)
    assert [group["lr"] for group in groups] == [0.001, 0.001, pytest.approx(0.01)]
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in penalised}
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
    assert all(p.ndim > 1 for p in groups[0]["params"]) and groups[2]["weight_decay"] == 0.0
    assert len(build_param_groups(model, 5e-4, 0.001, penalised, 1.0)) == 2  # no boost: no extra group


def test_unknown_optimizer_is_refused(tiny_data, tmp_path):
    from yoloprune.errors import SettingsError

    with pytest.raises(SettingsError, match="optimizer: must be 'sgd' or 'adam', got 'lamb'"):
        train(_settings(tiny_data, tmp_path / "run", optimizer="lamb"))


@pytest.mark.slow
def test_overfits_four_images_to_high_map(tmp_path):
    from yoloprune.data.synth import generate_synthetic_dataset

    data = generate_synthetic_dataset(tmp_path / "four", n_train=4, n_val=1, img_size=96, progress=False)
    (tmp_path / "four" / "valid.txt").write_text((tmp_path / "four" / "train.txt").read_text())  # score the training images
    # 200 steps: enough for BN running statistics (momentum 0.03) to settle for eval mode.
    settings = _settings(data, tmp_path / "run", img_size=96, epochs=200, lr=0.02, warmup_epochs=3, sparsity=0.0, eval_every=200)
    result = train(settings)
    assert result.final_metrics["map50"] > 0.8


@pytest.mark.parametrize("decay", [0.99, 0.999])
def test_ema_of_noisy_weights_stays_near_their_mean_after_a_few_horizons(decay):
    # Oracle: the statistics of an exponential average of i.i.d. noise. Once warmed up, an average over
    # about 1 / (1 - decay) updates of unit-variance noise has a standard deviation of
    # sqrt((1 - decay) / (1 + decay)) (0.07 at 0.99): far below the noise itself. A ramp fixed for
    # long runs (2000 updates) would still be following the latest update here.
    from yoloprune.train.ema import ModelEMA

    generator = torch.Generator().manual_seed(0)
    model = torch.nn.Linear(64, 64)
    ema = ModelEMA(model, decay=decay)
    for _ in range(int(5 / (1 - decay))):
        with torch.no_grad():
            model.weight.copy_(torch.randn(model.weight.shape, generator=generator))
        ema.update(model)
    spread = float(ema.module.weight.std())
    assert spread < 3 * math.sqrt((1 - decay) / (1 + decay))
