"""The latency table: grid interpolation with a scripted timer, shared measurements, the cache, bad
tables, and the `latency-table` command on small cfgs with the real timers."""

import json

import pytest

from helpers import CONFIGS, cfg_text, conv
from yoloprune.bench.latency_calibration import Calibration
from yoloprune.bench.latency_shapes import CallShape, ConvShape, HeadsShape, channel_ladder
from yoloprune.bench.latency_table import LatencyTable, LatencyTableError, build_table, cache_path, cached_table, cpu_model, interpolate
from yoloprune.cli import main
from yoloprune.darknet.cfg import load_cfg, parse_cfg
from yoloprune.darknet.edit import build_pruned_cfg

CALL_MS, HEADS_MS = 0.05, 0.2


def bilinear(cin: int, cout: int, size: int) -> float:
    """The scripted latency of a conv: bilinear in (cin, cout), as its multiply-adds are."""
    return 0.01 + 1e-4 * cin + 2e-4 * cout + 3e-6 * cin * cout * size * size


def scripted_timer(calls: list | None = None):
    def timer(shape, channels):
        if calls is not None:
            calls.append((shape.key, channels))
        if isinstance(shape, ConvShape):
            return bilinear(*channels, shape.size)
        if isinstance(shape, CallShape):
            return CALL_MS
        if isinstance(shape, HeadsShape):
            return HEADS_MS
        return 1e-3 * channels[0]

    return timer


KEY = {"cpu": "scripted", "runtime": "ort", "runtime_version": "scripted", "threads": 1, "img_size": 64}
# conv 0: 3x3 3 -> 64; conv 1: 1x1 64 -> 64; conv 2: 1x1 64 -> 32; head: 1x1 32 -> 6 (linear, no BN), [yolo]
SMALL = cfg_text(conv(64, 3), conv(64, 1), conv(32, 1))


def test_channel_ladder_is_geometric_in_blocks_of_eight_and_ends_at_the_width():
    assert channel_ladder(64, 2) == [8, 16, 32, 64]
    assert channel_ladder(100, 2) == [8, 16, 32, 64, 100]
    assert channel_ladder(1024, 4) == [8, 32, 128, 512, 1024]
    assert channel_ladder(4, 2) == [4]
    assert channel_ladder(12, 3) == [8, 12]


def test_interpolate_is_exact_at_grid_points_and_for_bilinear_functions_between():
    axes = ((8, 16, 64), (8, 32))
    f = lambda a, b: 2.0 + 0.5 * a - 0.25 * b + 0.125 * a * b  # noqa: E731
    values = [[f(a, b) for b in axes[1]] for a in axes[0]]
    for a in axes[0]:
        for b in axes[1]:
            assert interpolate(axes, values, (a, b)) == f(a, b)
    for a, b in [(12, 8), (40, 20), (63, 31), (8, 9.5)]:
        assert interpolate(axes, values, (a, b)) == pytest.approx(f(a, b), rel=1e-12)


def test_table_reproduces_the_timer_at_grid_points_and_between():
    table = build_table(parse_cfg(SMALL), 64, scripted_timer(), KEY, progress=False)
    (key,) = [k for k in table.grids if k.startswith("conv 1x1/1") and "bn leaky" in k]
    grid = table.grids[key]
    assert grid.axes == ((8, 16, 32, 64), (8, 16, 32, 64))  # both axes can be pruned: the full ladder
    for cin in grid.axes[0]:
        for cout in grid.axes[1]:
            assert grid.at((cin, cout)) == bilinear(cin, cout, 1)
    for cin, cout in [(24, 40), (48, 56), (40, 24)]:  # multiples of 8 between the points
        assert grid.at((cin, cout)) == pytest.approx(bilinear(cin, cout, 1), rel=1e-12)
    # a count between multiples of 8 costs what the next multiple costs (the kernels' channel block)
    assert grid.at((20, 57)) == pytest.approx(bilinear(24, 64, 1), rel=1e-12)
    assert grid.at((3, 5)) == grid.at((8, 8))  # under the first point: the first point
    assert grid.at((65, 8)) is None  # past the table's widths


def test_predict_sums_the_layers_the_heads_and_one_call():
    cfg = parse_cfg(SMALL)
    table = build_table(cfg, 64, scripted_timer(), KEY, progress=False)
    # SMALL has convs and the head only: no shortcut, route, upsample or maxpool to price
    expected = bilinear(3, 64, 3) + bilinear(64, 64, 1) + bilinear(64, 32, 1) + bilinear(32, 6, 1) + HEADS_MS + CALL_MS
    assert table.predict(cfg) == pytest.approx(expected, rel=1e-12)
    pruned = build_pruned_cfg(cfg, {0: 24, 1: 40, 2: 16})
    expected = bilinear(3, 24, 3) + bilinear(24, 40, 1) + bilinear(40, 16, 1) + bilinear(16, 6, 1) + HEADS_MS + CALL_MS
    assert table.predict(pruned) == pytest.approx(expected, rel=1e-12)


def test_layers_of_one_shape_share_their_measurements():
    # four 1x1 convs of the same shape after a 3x3 one: the 1x1s are one class, measured once
    cfg = parse_cfg(cfg_text(conv(16, 3), conv(16, 1), conv(16, 1), conv(16, 1), conv(16, 1)))
    calls = []
    table = build_table(cfg, 64, scripted_timer(calls), KEY, progress=False, passes=1)
    assert len(calls) == len(set(calls))
    # 3x3: cin 3 (the image, fixed) x cout {8, 16}; 1x1 BN: {8, 16} x {8, 16}; head: {8, 16} x 6; heads; call
    assert len(calls) == 2 + 4 + 2 + 1 + 1 == table.grid_points
    assert sum(1 for key in table.grids if key.startswith("conv 1x1/1") and "bn leaky" in key) == 1


def test_a_second_build_with_the_same_key_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path))
    cfg = parse_cfg(SMALL)
    calls = []
    first = cached_table(cfg, 64, "ort", 1, timer=scripted_timer(calls), runtime_version="scripted", progress=False)
    built = len(calls)
    assert built > 0 and first.path.parent == tmp_path / "latency"
    again = cached_table(cfg, 64, "ort", 1, timer=scripted_timer(calls), runtime_version="scripted", progress=False)
    assert len(calls) == built and again.grids == first.grids
    # the key records what the numbers depend on; another thread count is another table
    saved = json.loads(first.path.read_text())["key"]
    assert (saved["cpu"], saved["runtime"], saved["runtime_version"], saved["threads"], saved["img_size"]) == (cpu_model(), "ort", "scripted", 1, 64)
    cached_table(cfg, 64, "ort", 2, timer=scripted_timer(calls), runtime_version="scripted", progress=False)
    assert len(calls) == 2 * built
    # a damaged cache entry is measured again, not an error
    first.path.write_text("{ not json")
    cached_table(cfg, 64, "ort", 1, timer=scripted_timer(calls), runtime_version="scripted", progress=False)
    assert len(calls) == 3 * built and LatencyTable.load(first.path).grids == first.grids


def test_the_cache_key_hash_names_the_file(tmp_path):
    other = dict(KEY, threads=2)
    assert cache_path(KEY, tmp_path) != cache_path(other, tmp_path) and cache_path(KEY, tmp_path) == cache_path(dict(KEY), tmp_path)


def test_calibration_maps_the_table_onto_whole_model_timings():
    cal = Calibration(table_ms=(2.0, 10.0), measured_ms=(3.0, 19.0))
    assert (cal.apply(2.0), cal.apply(10.0), cal.apply(6.0)) == (3.0, 19.0, 11.0)  # the line through both points
    assert cal.apply(1.0) == 1.5  # below the narrow end: in proportion
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError):
        Calibration.from_dict({"table_ms": [2.0, 10.0], "measured_ms": [19.0, 3.0]})
    # more points: the piecewise-linear curve through them, the last segment extended past the end
    cal = Calibration(table_ms=(2.0, 4.0, 10.0), measured_ms=(3.0, 4.0, 16.0))
    assert (cal.apply(3.0), cal.apply(4.0), cal.apply(7.0), cal.apply(12.0)) == (3.5, 4.0, 10.0, 20.0)
    assert Calibration.from_dict(cal.to_dict()) == cal
    with pytest.raises(ValueError):
        Calibration.from_dict({"table_ms": [2.0, 5.0, 4.0], "measured_ms": [1.0, 2.0, 3.0]})


def test_a_cached_table_is_calibrated_on_the_cfg_and_its_narrowed_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path))
    cfg = parse_cfg(SMALL)
    timed = {}
    whole_ms = {"narrowest": 1.0, "quarter": 1.5, "half": 2.5, "full": 4.0}

    def model_timer(cfgs):
        timed.update(cfgs)
        return {name: whole_ms[name] for name in cfgs}

    table = cached_table(cfg, 64, "ort", 1, timer=scripted_timer(), runtime_version="scripted", progress=False, model_timer=model_timer)
    widths = {name: [b.filters for b in timed[name].layers if hasattr(b, "filters")] for name in timed}
    # every prunable set at one block of 8, a quarter and a half of its width (rounded up to blocks);
    # the head conv (no BN) keeps its 6
    assert widths["narrowest"] == [8, 8, 8, 6]
    assert widths["full"] == [64, 64, 32, 6] and widths["quarter"] == [16, 16, 8, 6] and widths["half"] == [32, 32, 16, 6]
    for name, ms in whole_ms.items():
        assert table.predict(timed[name]) == pytest.approx(ms)
    half, full = table.layer_sum(timed["half"]), table.layer_sum(cfg)
    between = build_pruned_cfg(cfg, {0: 32, 1: 32, 2: 16})
    raw = table.layer_sum(between)
    if half < raw < full:
        assert table.predict(between) == pytest.approx(2.5 + (4.0 - 2.5) * (raw - half) / (full - half))
    assert LatencyTable.load(table.path).calibration == table.calibration


@pytest.mark.parametrize(
    "text, reason",
    [
        ("{ not json", "not valid JSON"),
        ('{"format": 99}', "not a yoloprune latency table"),
        ('{"format": 1, "key": {"cpu": "x"}, "grids": {}}', "its key lacks"),
        ('{"format": 1, "key": KEY, "grids": {"g": {"axes": [[8, 16]], "ms": [1.0]}}}', "2 entries along axis 0"),
        ('{"format": 1, "key": KEY, "grids": {"g": {"axes": [[16, 8]], "ms": [1.0, 2.0]}}}', "ascending order"),
        ('{"format": 1, "key": KEY, "grids": {"g": {"axes": [[8]], "ms": [-1.0]}}}', "finite number >= 0"),
    ],
)
def test_a_malformed_table_is_one_error_naming_the_file(tmp_path, text, reason):
    path = tmp_path / "table.json"
    path.write_text(text.replace("KEY", json.dumps(KEY)))
    with pytest.raises(LatencyTableError) as error:
        LatencyTable.load(path)
    assert str(error.value).startswith(f"{path}: ") and reason in str(error.value)


def test_a_table_for_another_cfg_is_refused_naming_the_table_and_the_layer(tmp_path):
    table = build_table(parse_cfg(SMALL), 64, scripted_timer(), KEY, progress=False)
    table.save(tmp_path / "small.json")
    nano = load_cfg(CONFIGS / "yolov3-hand-nano.cfg")
    with pytest.raises(LatencyTableError) as error:
        LatencyTable.load(tmp_path / "small.json").predict(nano)
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'small.json'}: ") and "layer 1 " in message and "built for" in message
    wider = parse_cfg(cfg_text(conv(64, 3), conv(128, 1), conv(32, 1)))  # layer 1 wider than the table's grid
    with pytest.raises(LatencyTableError, match="covers up to"):
        table.predict(wider)


@pytest.mark.parametrize("runtime", ["ort", "torch"])
def test_latency_table_command_on_a_small_cfg(tmp_path, monkeypatch, capsys, runtime):
    monkeypatch.setenv("YOLOPRUNE_CACHE", str(tmp_path / "cache"))
    cfg_path = tmp_path / "small.cfg"
    cfg_path.write_text(cfg_text(conv(16, 3), conv(32, 3, stride=2), conv(16, 1), size=64))
    out = tmp_path / "table.json"
    args = ["latency-table", "--cfg", str(cfg_path), "--img-size", "64", "--runtime", runtime, "--threads", "1", "--grid-ratio", "4"]
    args += ["--out", str(out), "--no-progress"]
    assert main(args) == 0
    table = LatencyTable.load(out)
    assert (table.runtime, table.threads, table.img_size) == (runtime, 1, 64)
    assert table.predict(load_cfg(cfg_path)) > 0
    assert "predicted latency" in capsys.readouterr().out
    # the second run reuses the cached table: the same measurements
    assert main(args) == 0 and LatencyTable.load(out).grids == table.grids


def test_latency_table_command_refuses_bad_input(tmp_path, capsys):
    assert main(["latency-table", "--cfg", str(CONFIGS / "yolov3-hand-nano.cfg"), "--grid-ratio", "1", "--out", str(tmp_path / "t.json")]) == 2
    assert "--grid-ratio" in capsys.readouterr().err
    assert main(["latency-table", "--weights", str(tmp_path / "w.weights"), "--out", str(tmp_path / "t.json")]) == 2
    assert "holds no cfg" in capsys.readouterr().err
    assert not (tmp_path / "t.json").exists()

