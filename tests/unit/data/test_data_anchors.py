"""`data anchors`: k-means anchors with the 1 - IoU distance, measured on letterboxed boxes, written
into a cfg without touching anything else."""

from __future__ import annotations

from helpers import ROOT

from pathlib import Path

import numpy as np
import pytest

from yoloprune.cli import main
from yoloprune.darknet.cfg import YoloBlock, load_cfg
from yoloprune.data.anchors import box_sizes, fit_anchors, mean_best_iou

CONFIGS = ROOT / "configs"


def test_fit_recovers_well_separated_box_sizes():
    """Boxes drawn around three sizes (±3 %): the three anchors are those sizes, smallest first."""
    rng = np.random.default_rng(0)
    truth = np.array([[12.0, 30.0], [40.0, 20.0], [90.0, 100.0]])
    sizes = np.concatenate([centre * rng.uniform(0.97, 1.03, (50, 2)) for centre in truth[[2, 0, 1]]])
    anchors = fit_anchors(sizes, 3, seed=1)
    assert np.allclose(anchors, truth, rtol=0.03)


def test_mean_best_iou_against_a_loop():
    rng = np.random.default_rng(1)
    sizes, anchors = rng.uniform(1, 50, (40, 2)), rng.uniform(1, 50, (5, 2))
    expected = []
    for w, h in sizes:
        overlaps = [min(w, aw) * min(h, ah) / (w * h + aw * ah - min(w, aw) * min(h, ah)) for aw, ah in anchors]
        expected.append(max(overlaps))
    assert mean_best_iou(sizes, anchors) == pytest.approx(np.mean(expected))


def test_fitted_anchors_cover_the_boxes_better_than_a_random_choice():
    rng = np.random.default_rng(2)
    sizes = np.exp(rng.normal([3.0, 3.2], [0.5, 0.4], (300, 2)))
    fitted = fit_anchors(sizes, 6, seed=0)
    random_choices = [sizes[rng.choice(len(sizes), 6, replace=False)] for _ in range(20)]
    assert mean_best_iou(sizes, fitted) > max(mean_best_iou(sizes, choice) for choice in random_choices)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("anchors")
    assert main(["data", "synth", str(root / "d"), "--train", "12", "--val", "2", "--img-size", "64", "--max-hands", "3"]) == 0
    return next((root / "d").glob("*.data"))


def test_box_sizes_are_the_label_files_boxes_at_the_input_size(dataset):
    """The square synthetic images letterbox by a plain resize: 128 px boxes are the label
    files' normalised sides x 128."""
    expected = []
    for label in sorted((dataset.parent / "labels" / "train").glob("*.txt")):
        expected += [[float(v) * 128 for v in line.split()[3:5]] for line in label.read_text().splitlines() if line.strip()]
    got = box_sizes(dataset, 128, progress=False)
    assert len(got) == len(expected)
    assert np.allclose(np.sort(got, axis=0), np.sort(np.array(expected), axis=0), atol=1e-3)


def test_cli_writes_the_cfg_with_only_the_anchor_lines_changed(dataset, tmp_path, capsys):
    cfg = CONFIGS / "yolov3-hand-nano.cfg"
    out = tmp_path / "fitted.cfg"
    capsys.readouterr()
    assert main(["data", "anchors", str(dataset), "--cfg", str(cfg), "--out", str(out), "--img-size", "64"]) == 0
    printed = capsys.readouterr().out
    before, after = cfg.read_text().splitlines(), out.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert len(before) == len(after) and changed and all(a.startswith("anchors") and b.startswith("anchors") for a, b in changed)
    heads = [block for block in load_cfg(out).layers if isinstance(block, YoloBlock)]
    anchors = heads[0].anchors
    assert all(block.anchors == anchors for block in heads) and len(anchors) == 9
    assert "anchors = " + ",  ".join(f"{w},{h}" for w, h in anchors) in printed
    areas = [w * h for w, h in anchors]
    assert areas == sorted(areas)
    sizes = box_sizes(dataset, 64, progress=False)
    assert mean_best_iou(sizes, np.array(anchors)) >= mean_best_iou(sizes, np.array(load_cfg(cfg).layers[-1].anchors))


@pytest.mark.parametrize(
    "args, message",
    [(["--out", "x.cfg", "--img-size", "64"], "--out: must be given with --cfg"), ([], "--img-size: must be given when there is no --cfg")],
)
def test_cli_bad_settings_are_one_error(dataset, tmp_path, capsys, args, message):
    capsys.readouterr()
    assert main(["data", "anchors", str(dataset), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "x.cfg").exists()
