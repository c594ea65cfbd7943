"""`yoloprune compare` end to end on the nano cfg: every pruner's rows, both calibration columns, and
MACs budgets met by the one ±tolerance rule, recounted here on the pruned models themselves."""

import copy
import json

import pytest
import torch

from helpers import sparse_nano
from yoloprune.cli import main
from yoloprune.darknet.weights import save_checkpoint


TARGETS = (0.6,)
TOLERANCE = 0.01


def recounted_macs(model, size: int) -> int:
    """Multiply-adds of every conv in one forward, from the output shapes the forward gives (on a
    meta-device copy: shapes without arithmetic), not from the cfg or from what compare counted."""
    total = 0

    def count(conv, inputs, output):
        nonlocal total
        total += output.numel() * (conv.in_channels // conv.groups) * conv.kernel_size[0] * conv.kernel_size[1]

    shapes_only = copy.deepcopy(model).to("meta").eval()
    for module in shapes_only.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(count)
    with torch.no_grad():
        shapes_only.forward_heads(torch.zeros(1, 3, size, size, device="meta"))
    return total


def layered_sparse_nano():
    """A sparse-looking nano model whose BN layers have very different mean |γ| (every second and
    third layer scaled down), so Torch-Pruning's per-group mean normalisation (its default) ranks
    channels differently from one global |γ| ranking."""
    model = sparse_nano()
    with torch.no_grad():
        for idx, layer in enumerate(model.layers):
            if getattr(layer, "bn", None) is not None:
                layer.bn.weight.mul_(0.25 ** (idx % 3))
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth")
    assert main(["data", "synth", str(folder), "--train", "4", "--val", "2", "--test", "4", "--img-size", "64"]) == 0
    return next(folder.glob("*.data"))


def test_compare_rows_land_on_their_budgets(tmp_path, dataset, monkeypatch, capsys):
    pytest.importorskip("torch_pruning")  # in the dev extra; without it compare leaves its rows out (tested below)
    from yoloprune.pipelines.compare import run

    model = layered_sparse_nano()
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, model)
    # the command's result, pruned models included, kept for the recount below
    results, compare_pruners = [], run.compare_pruners
    monkeypatch.setattr(run, "compare_pruners", lambda settings: results.append(compare_pruners(settings)) or results[-1])
    out = tmp_path / "cmp"
    args = ["compare", "--weights", str(checkpoint), "--data", str(dataset), "--out", str(out), "--img-size", "64",
            "--targets", ",".join(map(str, TARGETS)), "--round", "1", "--layers", "3", "--calibrate", "4", "--batch", "4",
            "--runs", "0", "--threads", "1"]
    assert main(args) == 0

    table = (tmp_path / "cmp.md").read_text()
    assert "BNScaleImportance() (default" in table and "BNScaleImportance(group_reduction='max', normalizer=None)" in table
    assert "mAP@0.5 as pruned | mAP@0.5 BN re-calibrated | mAP@0.5:0.95 as pruned | mAP@0.5:0.95 BN re-calibrated" in table
    assert "Made by `yoloprune compare --weights" in table and "leaves a coupled group whole" in table
    assert (tmp_path / "cmp.png").stat().st_size > 0
    record = json.loads((tmp_path / "cmp.json").read_text())
    rows = {(row["key"], row["target"]): row for row in record["rows"]}
    keys = {"yoloprune-safe", "yoloprune-full", "yoloprune-full-3-blocks", "tp-default", "tp-global"}
    assert {key for key, target in rows if target is not None} == keys
    for row in record["rows"]:
        if row["accepted"]:
            assert set(row["metrics"]) == {"uncalibrated", "calibrated"}
            assert all(row["metrics"][which]["map50_ci"] is not None for which in row["metrics"])

    # Each accepted model's MACs, counted again here, against its budget by the one rule
    (result,) = results
    base = recounted_macs(model, 64)
    for row in result.rows[1:]:
        if row.accepted:
            assert abs(recounted_macs(row.model, 64) / base / row.target - 1) <= TOLERANCE, (row.key, row.target)
        else:
            assert row.model is None and rows[(row.key, row.target)]["metrics"] == {}
    for target in TARGETS:
        assert rows[("tp-default", target)]["accepted"] and rows[("tp-global", target)]["accepted"]
        by_key = {row.key: row.model for row in result.rows if row.target == target}
        widths = {key: [m.out_channels for m in by_key[key].modules() if isinstance(m, torch.nn.Conv2d)] for key in ("tp-default", "tp-global")}
        assert widths["tp-default"] != widths["tp-global"]  # per-group normalisation changes what is pruned
    assert "| 0.6 | Torch-Pruning" in capsys.readouterr().out


def test_without_torch_pruning_its_rows_are_left_out_with_one_warning(tmp_path, dataset, monkeypatch, caplog):
    monkeypatch.setattr("yoloprune.pipelines.compare.run.torch_pruning_version", lambda: None)
    checkpoint = tmp_path / "sparse.pt"
    save_checkpoint(checkpoint, sparse_nano())
    args = ["compare", "--weights", str(checkpoint), "--data", str(dataset), "--out", str(tmp_path / "cmp"), "--img-size", "64",
            "--targets", "0.6", "--layers", "0", "--round", "1", "--calibrate", "2", "--batch", "2", "--runs", "1", "--threads", "1"]
    with caplog.at_level("WARNING"):
        assert main(args) == 0
    assert [r.message for r in caplog.records if r.levelname == "WARNING" and "torch-pruning" in r.message] != []
    assert len([r for r in caplog.records if "torch-pruning is not installed" in r.message]) == 1
    rows = json.loads((tmp_path / "cmp.json").read_text())["rows"]
    assert {row["key"] for row in rows} == {"unpruned", "yoloprune-safe", "yoloprune-full"}
    assert all(row["latency_ms"] > 0 for row in rows if row["accepted"])
    assert "Torch-Pruning not installed" in (tmp_path / "cmp.md").read_text()


def test_macs_counted_from_the_modules_are_torchs_flop_count():
    """compare's count (darknet's counter on the conv modules' widths) against torch's flop counter on a
    forward (meta device: shapes only), for a model yoloprune pruned and one Torch-Pruning pruned."""
    pytest.importorskip("torch_pruning")
    from yoloprune.bench.profile import count_forward_macs
    from yoloprune.pipelines.compare.pruners import _prune_with_ratio, count_macs
    from yoloprune.prune import Ratio, plan_channel_prune, plan_layer_prune, prune_model

    model = layered_sparse_nano()
    by_yoloprune = prune_model(model, plan_channel_prune(model, "full", Ratio(0.5), removed_blocks=plan_layer_prune(model, 2)))
    by_torch_pruning = _prune_with_ratio(model, {}, 0.4, round_to=2)
    for pruned in (model, by_yoloprune, by_torch_pruning):
        assert count_macs(pruned, 96) == count_forward_macs(copy.deepcopy(pruned).to("meta"), 96)
    assert count_macs(by_torch_pruning, 96) < count_macs(model, 96)


def test_bad_targets_are_a_one_line_error(tmp_path, capsys):
    assert main(["compare", "--weights", "w.pt", "--data", "d.data", "--out", str(tmp_path / "o"), "--targets", "0.5,1.5"]) == 2
    assert "--targets" in capsys.readouterr().err


def test_compare_settings_print_flags_that_rebuild_them():
    import shlex

    from yoloprune.cli import build_parser
    from yoloprune.pipelines.compare.settings import CompareSettings
    from yoloprune.settings import from_arguments, to_arguments

    settings = CompareSettings(weights="w.pt", data="d.data", out="docs/cmp", targets=(0.5, 0.27), round_to=8, threads=1, split="valid")
    words = shlex.split(" ".join(["compare", *to_arguments(settings)]))
    assert from_arguments(CompareSettings, build_parser().parse_args(words)) == settings


def test_the_ratio_search_finds_a_budget_past_a_non_monotone_stretch():
    """Torch-Pruning's MACs can rise again as its ratio grows (groups left whole). On this curve plain
    bisection over (0, 1) closes in on the jump at 0.5 and misses 0.35; the grid and the bisection
    between grid points find the crossing near 0.96, and the search around the closest ratio finds
    a dip narrower than the grid's step."""
    from yoloprune.pipelines.compare.pruners import search_ratio, within

    def fraction_at(ratio: float) -> float:
        if ratio < 0.5:
            return 1 - ratio
        if ratio < 0.8:
            return 0.3  # a jump over the budget's window
        return 0.7 - (ratio - 0.8) * 2.2  # groups left whole, then falling again

    ratio, tried = search_ratio(fraction_at, 0.35, 0.01, steps=12)
    assert ratio is not None and ratio > 0.9 and within(fraction_at(ratio), 0.35, 0.01)
    assert search_ratio(lambda ratio: 1 - ratio / 2, 0.3, 0.01, steps=12)[0] is None  # never below 0.5: missed

    def narrow_dip(ratio: float) -> float:
        # 0.003 wide, no grid point in it; around it the fraction falls towards it, as measured
        return 0.352 if 0.881 <= ratio < 0.884 else 0.36 + abs(ratio - 0.8825)

    ratio, _ = search_ratio(narrow_dip, 0.35, 0.01, steps=12)
    assert ratio is not None and 0.881 <= ratio < 0.884
