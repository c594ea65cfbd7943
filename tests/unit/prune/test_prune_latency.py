"""The latency budget: ranking by importance per ms saved, rounding to the fastest count, the budget on
predicted latency (scripted tables), and `prune --target-latency` end to end (real timers)."""

import json
import os
import statistics

import pytest
import torch

from helpers import CONFIGS, cfg_text, conv, random_darknet, random_model, sparse_nano
from yoloprune.bench.latency_shapes import CallShape, ConvShape, HeadsShape
from yoloprune.bench.latency_table import LatencyTable, build_table
from yoloprune.cli import main
from yoloprune.darknet.cfg import ConvBlock
from yoloprune.darknet.edit import build_pruned_cfg
from yoloprune.darknet.weights import save_checkpoint
from yoloprune.prune.channel import BUDGET_TOLERANCE, plan_channel_prune
from yoloprune.prune.latency import REFINE_TOLERANCE, UnitLatency, refine_to_measured
from yoloprune.prune.plan import PrunePlan

KEY = {"cpu": "scripted", "runtime": "ort", "runtime_version": "scripted", "threads": 1, "img_size": 64}

# conv 0: 3x3 at 64x64 (16 out); conv 1: 3x3 stride 2 at 64x64 (16 out, 32x32); conv 2: 1x1 at 32x32; head
THREE = cfg_text(conv(16, 3), conv(16, 3, stride=2), conv(16, 1))


def per_resolution_timer(shape, channels):
    """A fake CPU on which a conv reading 64x64 costs 1000 x what one reading 32x32 costs per channel pair."""
    if isinstance(shape, ConvShape):
        cin, cout = channels
        return (1e-3 if shape.in_hw == (64, 64) else 1e-6) * cin * cout
    return 0.0


def equal_importance_model(text: str):
    model = random_darknet(text)
    with torch.no_grad():
        for layer in model.layers:
            if getattr(layer, "bn", None) is not None:
                layer.bn.weight.fill_(1.0)
    return model


def test_of_two_channels_equally_important_the_one_saving_more_ms_goes_first():
    # ms saved per position (the timer, by hand): conv 0's output is read at 64x64 twice (its own
    # output, conv 1's input): 1e-3 * (3 + 16); conv 1's: 1e-3 * 16 + 1e-6 * 16; conv 2's: 1e-6 * (16 + 6).
    # Multiply-adds per channel rank them the other way (conv 1: 32*32*16*9 > conv 0: 64*64*3*9).
    model = equal_importance_model(THREE)
    table = build_table(model.cfg, 64, per_resolution_timer, KEY, progress=False)
    ranked = plan_channel_prune(model, "full", ratio=8.5 / 48, latency=table)
    assert {idx: len(kept) for idx, kept in ranked.kept_channels.items()} == {0: 8}
    assert ranked.threshold is None and ranked.settings["ranking"] == "importance per predicted ms saved"
    by_macs = plan_channel_prune(model, "full", ratio=8.5 / 48)
    assert set(by_macs.kept_channels) == {1}


def test_fastest_count_within_the_rounding_step():
    # conv 0 (3x3, 3 -> 32) is timed 3 ms at 8 channels, 2 ms at 16, 5 ms at 32 (grid 8, 16, 32):
    # 17..24 channels read 24, halfway between 16 and 32: 3.5 ms. Everything else costs nothing.
    timings = {8: 3.0, 16: 2.0, 32: 5.0}

    def timer(shape, channels):
        return timings[channels[1]] if isinstance(shape, ConvShape) and shape.size == 3 else 0.0

    cfg = cfg_text(conv(32, 3), conv(16, 1))
    model = random_darknet(cfg)
    table = build_table(model.cfg, 64, timer, KEY, progress=False)
    unit = UnitLatency(table, model.cfg, (0,), 1, 32, [])
    assert [unit.ms(c) for c in (1, 8, 9, 16, 17, 24, 25, 32)] == [3.0, 3.0, 2.0, 2.0, 3.5, 3.5, 5.0, 5.0]
    assert unit.fastest_count(5, 1) == 8  # no slower than the next multiple of 8: that multiple, for free
    assert unit.fastest_count(5, 16) == 16  # 16 channels run faster than 5 on this table
    assert unit.fastest_count(17, 16) == 24
    assert unit.fastest_count(32, 8) == 32


def scripted_conv_cost(cin: int, cout: int, size: int) -> float:
    return 0.02 + 1e-4 * cin * cout * size * size


def nano_timer(shape, channels):
    if isinstance(shape, ConvShape):
        return scripted_conv_cost(*channels, shape.size)
    return {CallShape: 0.1, HeadsShape: 0.3}.get(type(shape), 0.0)


def scripted_latency(cfg) -> float:
    """The scripted timer summed over a cfg, read off the cfg itself (not through the table)."""
    convs = sum(scripted_conv_cost(cfg.in_channels(i), b.filters, b.size) for i, b in enumerate(cfg.layers) if isinstance(b, ConvBlock))
    return convs + 0.1 + 0.3


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_the_budget_lands_on_the_target_predicted_latency(target):
    # the demo width: on the nano one, units of 4 to 64 channels moving in blocks of 8 can step over 1 %
    model = random_model(str(CONFIGS / "yolov3-hand-demo.cfg")).eval()
    table = build_table(model.cfg, 128, nano_timer, dict(KEY, img_size=128), progress=False)
    plan = plan_channel_prune(model, "full", target_latency=target, latency=table, img_size=128)
    pruned_cfg = build_pruned_cfg(model.cfg, {idx: len(kept) for idx, kept in plan.kept_channels.items()})
    reached = scripted_latency(pruned_cfg) / scripted_latency(model.cfg)
    assert abs(reached / target - 1) <= BUDGET_TOLERANCE
    assert plan.settings["predicted_latency_ratio"] == pytest.approx(reached, rel=1e-9)
    assert plan.settings["predicted_ms_before"] == pytest.approx(scripted_latency(model.cfg), rel=1e-9)


@pytest.mark.parametrize("slower", [0.75, 1.3])
def test_refine_plans_again_until_the_measured_ratio_lands(slower):
    """A runtime on which the compact model runs at `slower` x the ratio the table predicts: the
    first plan misses, the second is made for the target corrected by the miss and lands."""
    from yoloprune.prune.apply import prune_model

    model = random_model(str(CONFIGS / "yolov3-hand-demo.cfg")).eval()
    table = build_table(model.cfg, 128, nano_timer, dict(KEY, img_size=128), progress=False)

    def replan(budget):
        return plan_channel_prune(model, "full", target_latency=budget, latency=table, img_size=128)

    def measure(original, compact, table):
        assert original is model
        return {"measured_ratio": slower * scripted_latency(compact.cfg) / scripted_latency(model.cfg)}

    plan, attempts = refine_to_measured(model, replan(0.5), replan, prune_model, table, 0.5, steps=3, measure=measure)
    assert [a["budget"] for a in attempts][:1] == [0.5] and len(attempts) == 2
    assert abs(attempts[0]["measured_ratio"] / 0.5 - 1) > REFINE_TOLERANCE
    assert abs(attempts[-1]["measured_ratio"] / 0.5 - 1) <= REFINE_TOLERANCE
    assert attempts[1]["budget"] == pytest.approx(0.5 / slower, rel=BUDGET_TOLERANCE)
    assert plan.settings["target_latency"] == attempts[1]["budget"]


def test_a_latency_budget_needs_a_table():
    with pytest.raises(ValueError, match="latency table"):
        plan_channel_prune(sparse_nano(), "full", target_latency=0.5)


def conv_channels(model) -> int:
    return sum(b.filters for b in model.cfg.layers if isinstance(b, ConvBlock))


def test_max_map_drop_with_a_latency_target_prunes_at_most_to_the_target():
    from yoloprune.prune.apply import prune_model
    from yoloprune.prune.auto import search_max_pruning

    model = sparse_nano()
    table = build_table(model.cfg, 128, nano_timer, dict(KEY, img_size=128), progress=False)
    # a stand-in for mAP@0.5: the share of conv channels kept
    score = lambda m: conv_channels(m) / conv_channels(model)  # noqa: E731
    budget = plan_channel_prune(model, "full", target_latency=0.7, latency=table, img_size=128)
    common = dict(apply=prune_model, latency=table, target_latency=0.7, img_size=128)
    loose = search_max_pruning(model, score, 1.0, "full", **common)
    assert loose.plan.kept_channels == budget.kept_channels  # everything passes: the latency target is the limit
    tight = search_max_pruning(model, score, 0.05, "full", **common)
    kept = build_pruned_cfg(model.cfg, {idx: len(k) for idx, k in tight.plan.kept_channels.items()})
    assert score(prune_model(model, tight.plan)) >= 0.95
    assert scripted_latency(kept) / scripted_latency(model.cfg) > budget.settings["predicted_latency_ratio"]


def test_target_latency_combines_with_max_map_drop_only():
    from yoloprune.errors import SettingsError
    from yoloprune.prune.settings import PruneSettings

    assert PruneSettings(target_latency=0.5, max_map_drop=0.01, data="d.data").target_latency == 0.5
    with pytest.raises(SettingsError, match="give one of"):
        PruneSettings(target_latency=0.5, ratio=0.3)
    with pytest.raises(SettingsError, match="target_latency"):
        PruneSettings(ratio=0.3, latency_table="t.json")


@pytest.fixture
def nano_checkpoint(tmp_path):
    path = tmp_path / "sparse.pt"
    save_checkpoint(path, sparse_nano())
    return path


def test_prune_with_a_latency_budget_end_to_end(tmp_path, monkeypatch, capsys, nano_checkpoint):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path / "cache"))
    table_path = tmp_path / "table.json"
    weights = ["--weights", str(nano_checkpoint), "--img-size", "64"]
    assert main(["latency-table", *weights, "--grid-ratio", "4", "--threads", "1", "--out", str(table_path), "--no-progress"]) == 0
    out = tmp_path / "out"
    assert main(["prune", *weights, "--out", str(out), "--target-latency", "0.6", "--latency-table", str(table_path)]) == 0
    printed = capsys.readouterr().out
    assert "latency (ort, 1 threads): predicted x" in printed and "measured x" in printed
    plan = PrunePlan.load(out / "plan.json")
    assert plan.settings["target_latency"] == 0.6 and plan.settings["latency_runtime"] == "ort"
    assert plan.settings["predicted_ms_after"] < plan.settings["predicted_ms_before"]
    latency = json.loads((out / "report.json").read_text())["latency"]
    for name in ("predicted_ms_before", "predicted_ms_after", "measured_ms_before", "measured_ms_after"):
        assert latency[name] > 0
    assert latency["predicted_ratio"] == pytest.approx(plan.settings["predicted_latency_ratio"])
    # --refine (default 2): the first plan was made for the target itself and measured
    assert latency["attempts"][0]["budget"] == 0.6 and 1 <= len(latency["attempts"]) <= 2
    assert "latency plans (--refine)" in printed and plan.settings["table_budget"] > 0
    # without --latency-table the table comes from the cache (built here, at this size and thread count)
    torch.set_num_threads(1)
    assert main(["prune", *weights, "--out", str(tmp_path / "out2"), "--target-latency", "0.6", "--plan-only"]) == 0
    assert list((tmp_path / "cache" / "latency").glob("*.json"))


def test_prune_refuses_a_table_for_another_cfg_or_size(tmp_path, capsys, nano_checkpoint):
    other = random_darknet(THREE)
    table = build_table(other.cfg, 64, per_resolution_timer, KEY, progress=False)
    table.save(tmp_path / "three.json")
    common = ["prune", "--weights", str(nano_checkpoint), "--out", str(tmp_path / "out"), "--target-latency", "0.5"]
    common += ["--latency-table", str(tmp_path / "three.json")]
    assert main(common + ["--img-size", "64"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(tmp_path / "three.json") in error and "built for" in error
    assert main(common) == 2  # the nano cfg's own size, 128, is not the table's 64
    assert "measured at 64 px" in capsys.readouterr().err
    assert main(common + ["--img-size", "64", "--runtime", "torch"]) == 2
    assert "--runtime" in capsys.readouterr().err
    assert main(["prune", "--weights", str(nano_checkpoint), "--out", str(tmp_path / "out"), "--ratio", "0.5", "--runtime", "ort"]) == 2
    assert "--target-latency" in capsys.readouterr().err
    assert main(["prune", "--weights", str(nano_checkpoint), "--out", str(tmp_path / "out"), "--ratio", "0.5", "--target-latency", "0.5"]) == 2
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("YOLOPRUNE_TIMING_TESTS") != "1",
    reason="a timing assertion: run with YOLOPRUNE_TIMING_TESTS=1 on a machine with nothing else running",
)
def test_predicted_latency_ratio_matches_the_measured_one_on_nano():
    """The one timing assertion, opt-in (`YOLOPRUNE_TIMING_TESTS=1`): the suite's other worker
    shares the caches and memory bus, and in `make test` it moved the measured ratio by 13 %. On the
    nano cfg at 128 px in ONNX Runtime, the latency ratio a table (calibrated, as `prune` builds it)
    predicts for the model pruned to half its predicted latency is within 10 % of the ratio measured.
    Three repeats, each building a table and then timing both models interleaved; the medians of
    the repeats are compared, so a busy patch of a shared machine sways neither side alone."""
    from yoloprune.bench.benchmark import time_in_runtime
    from yoloprune.bench.latency_calibration import calibrate
    from yoloprune.bench.latency_table import table_key
    from yoloprune.bench.latency_timers import RuntimeTimer, runtime_version, time_whole_models
    from yoloprune.prune.apply import prune_model

    model = sparse_nano()
    threads = torch.get_num_threads()
    key = table_key(model.cfg, 128, "ort", threads, runtime_version("ort"))
    pruned, predicted, measured = None, [], []
    for _ in range(3):
        with RuntimeTimer("ort", threads) as timer:
            table = build_table(model.cfg, 128, timer, key, progress=False)
        table.calibration = calibrate(table.layer_sum, model.cfg, lambda cfgs: time_whole_models(cfgs, "ort", 128, threads))
        if pruned is None:
            pruned = prune_model(model, plan_channel_prune(model, "full", target_latency=0.5, latency=table, img_size=128))
        predicted.append(table.predict(pruned.cfg) / table.predict(model.cfg))
        (times,) = time_in_runtime({"original": model, "pruned": pruned}, "ort", 128, threads, runs=30, warmup=5)
        measured.append(statistics.median(times["pruned"]) / statistics.median(times["original"]))
    ratio = statistics.median(measured) / statistics.median(predicted)
    assert abs(ratio - 1) <= 0.10, f"predicted {predicted}, measured {measured}"


def test_table_json_round_trips(tmp_path):
    table = build_table(random_darknet(THREE).cfg, 64, per_resolution_timer, KEY, progress=False)
    table.save(tmp_path / "t.json")
    again = LatencyTable.load(tmp_path / "t.json")
    assert again.grids == table.grids and again.key == table.key
