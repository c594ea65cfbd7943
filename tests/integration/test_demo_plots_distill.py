import copy

import pytest
import torch

from helpers import CONFIGS, randomize_bn, sparse_nano
from yoloprune.darknet.model import Darknet
from yoloprune.errors import YoloPruneError
from yoloprune.train.distill import OutputDistillation
from yoloprune.viz import plot_run


def test_distillation_term_is_zero_box_error_for_an_identical_student_and_trains_only_the_student():
    torch.manual_seed(0)
    teacher = randomize_bn(Darknet(str(CONFIGS / "yolov3-hand-nano.cfg")))
    student = copy.deepcopy(teacher)
    term = OutputDistillation(teacher)
    images = torch.rand(2, 3, 64, 64)
    loss, parts = term(images, student.eval().forward_heads(images), torch.zeros(0, 6))  # same BN statistics
    assert parts["kd_box"].item() == pytest.approx(0.0, abs=1e-6)
    student.train()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    loss, parts = term(images, student(images), torch.zeros(0, 6))
    assert parts["kd_box"].item() > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distillation_refuses_mismatched_heads():
    teacher = Darknet(str(CONFIGS / "yolov3-hand-nano.cfg"))
    term = OutputDistillation(teacher)
    images = torch.rand(1, 3, 64, 64)
    with pytest.raises(ValueError, match="same"):
        term(images, [h[:, :2] for h in teacher.train()(images)], torch.zeros(0, 6))


def test_plot_needs_a_run_directory(tmp_path):
    with pytest.raises(YoloPruneError, match="neither metrics.csv"):
        plot_run(tmp_path)


def test_plot_draws_the_channels_of_a_prune_report_and_refuses_a_broken_one(tmp_path):
    from yoloprune.prune import Ratio, build_prune_report, plan_channel_prune, prune_model

    model = sparse_nano()
    plan = plan_channel_prune(model, "full", Ratio(0.5))
    report = build_prune_report(model, prune_model(model, plan), plan)
    (tmp_path / "report.json").write_text(report.to_json() + "\n")
    assert plot_run(tmp_path, tmp_path / "figures") == [tmp_path / "figures" / "channels.png"]
    assert (tmp_path / "figures" / "channels.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "report.json").write_text('{"mode": "full",\n')
    with pytest.raises(YoloPruneError, match="report.json:2: not valid JSON"):
        plot_run(tmp_path)


def test_gamma_histogram_counts_every_considered_channel():
    from yoloprune.train.sparsity import GAMMA_HIST_EDGES, resolve_sparsity_layers, summarize_gammas

    model = Darknet(str(CONFIGS / "yolov3-hand-nano.cfg"))
    layers = resolve_sparsity_layers(model.cfg, "all")
    with torch.no_grad():
        model.layers[layers[0]].bn.weight[:2] = torch.tensor([0.0, 50.0])  # below the first edge, above the last
    stats = summarize_gammas(model, layers)
    total = sum(model.layers[i].bn.num_features for i in layers)
    assert sum(stats["gamma_hist"]) == total
    assert len(stats["gamma_hist"]) == len(GAMMA_HIST_EDGES) - 1 == len(stats["gamma_hist_edges"]) - 1
    assert stats["gamma_hist"][0] >= 1 and stats["gamma_hist"][-1] >= 1


def test_the_demo_model_is_the_committed_demo_cfg():
    from yoloprune.pipelines.demo_settings import DEMO_DATA
    from yoloprune.pipelines.run.profiles import PROFILES

    assert (CONFIGS / "yolov3-hand-demo.cfg").read_text() == DEMO_DATA["default"].cfg_text(PROFILES["default"].img_size)
