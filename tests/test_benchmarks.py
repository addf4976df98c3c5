"""The benchmark tool runs end to end on a tiny shapes file, in every direction, keeps each layer's dtype and batch
size, and flags a wrong contender (no timing assertions)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root holds ``benchmarks``

from benchmarks import cli, contenders, plots, report, run  # noqa: E402
from benchmarks.contenders import Contender  # noqa: E402
from gpuconv.problem import DIRECTIONS, make_problem  # noqa: E402

TINY = [
    {"name": "conv3x3", "x": [1, 4, 9, 9], "w": [6, 4, 3, 3], "padding": 1, "count": 2},
    {"name": "depthwise_s2", "x": [1, 4, 8, 8], "w": [4, 1, 3, 3], "stride": 2, "padding": 1, "groups": 4},
    {"name": "conv1d_same", "x": [1, 3, 20], "w": [5, 3, 4], "padding": "same"},
]


@pytest.fixture
def tiny_shapes(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


def test_cli_writes_table_json_and_plots(tiny_shapes: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = cli.main(["--shapes", str(tiny_shapes), "--backend", "cpu", "--quick", "--out", str(out),
                     "--scaling-sizes", "8,12", "--no-progress"])
    assert code == 0
    stem = "tiny_b1_float32"
    for suffix in (".md", ".json", "_gflops.png", "_speedup.png", "_scaling.png"):
        assert (out / f"{stem}{suffix}").stat().st_size > 0, suffix

    result = json.loads((out / f"{stem}.json").read_text())
    assert result["schema"] == run.SCHEMA
    assert result["command"].startswith("python -m benchmarks --shapes")
    assert {"cpu", "blas", "versions", "slug"} <= set(result["machine"])
    assert result["roof"]["float32"]["best_gflops"] > 0
    names = [c["name"] for c in result["contenders"]]
    assert names[0] == "gpuconv:auto" and "gpuconv:im2col" in names and "numpy" in names
    assert [row["name"] for row in result["shapes"]] == [e["name"] for e in TINY]
    for row in result["shapes"]:
        assert row["auto"]["source"] in ("tuned", "heuristic")
        auto = row["results"]["gpuconv:auto"]
        assert auto["status"] == "ok", auto
        assert set(auto["stats"]) == {"median", "q1", "q3", "min", "max", "n"}
        assert auto["gflops"] > 0 and auto["roof_fraction"] > 0
    assert list(result["summary"]) == ["forward"] and "numpy" in result["summary"]["forward"]["gpuconv:auto"]
    assert result["workload"] == {"batches": [1], "dtypes": ["float32"], "directions": ["forward"]}
    assert [p["size"] for p in result["scaling"]["points"]] == [8, 12]
    assert "naive" in result["scaling"]["points"][0]["results"]
    page = (out / f"{stem}.md").read_text()
    assert "## Summary" in page and "conv1d_same" in page and "OPENBLAS_CORETYPE" in page


def _broken() -> Contender:
    """Returns zeros: the correctness check must catch it before timing."""
    return Contender("broken", "broken", "peer", "wall",
                     lambda p, a, b: (lambda: np.zeros(p.result_shape, p.dtype)))


def test_a_wrong_contender_is_failed_not_timed(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = run.Config(shapes=str(tiny_shapes), backend="cpu", quick=True, scaling=False, progress=False,
                     contenders=["gpuconv:auto", "numpy"])
    result = run.benchmark(cfg, extra=[_broken()])
    for row in result["shapes"]:
        record = row["results"]["broken"]
        assert record["status"] == "failed" and "stats" not in record
        assert "values off" in record["error"]
        assert row["results"]["numpy"]["status"] == "ok"
        assert row["best_peer"] == "numpy"
    assert "broken" not in result["summary"]["forward"]["gpuconv:auto"]
    paths = cli.write(result, tmp_path, plots=False)
    assert "**failed**" in paths[1].read_text()


def test_baselines_and_call_arguments_match_the_reference(tiny_shapes: Path) -> None:
    from gpuconv import shapes
    from gpuconv.reference import run_problem

    for shape in shapes.load(tiny_shapes):
        problem = shape.problem
        x, w = run.random_inputs(problem)
        expected = run_problem(problem, x, w)
        assert run.check(contenders.numpy_conv(problem, x, w), expected, problem)[0], shape.name
        if problem.groups == 1:
            assert run.check(contenders.naive_conv(problem, x, w), expected, problem)[0], shape.name
        kw = contenders.conv_kwargs(problem)
        fn = "conv1d" if problem.ndim == 1 else "conv2d"
        assert make_problem(fn, problem.x_shape, problem.w_shape, problem.dtype, False, **kw) == problem


def test_contender_selection_by_pattern_and_skip() -> None:
    lineup = contenders.lineup("cpu")
    picked = [c.name for c in lineup.select(["gpuconv:*", "numpy"], ["gpuconv:fft"]).contenders]
    assert "gpuconv:auto" in picked and "numpy" in picked and "gpuconv:fft" not in picked and "jax" not in picked
    with pytest.raises(ValueError, match="--contenders: 'nosuch' matches none of"):
        lineup.select(["nosuch"])
    with pytest.raises(ValueError, match="--skip: 'nosuch' matches none of"):
        lineup.select(None, ["nosuch"])


def test_without_drops_a_flag_and_its_value() -> None:
    argv = ["--shapes", "x", "--compare-coretypes", "default,SKYLAKEX", "--quick", "--out=o"]
    assert cli._without(argv, "--compare-coretypes") == ["--shapes", "x", "--quick", "--out=o"]
    assert cli._without(argv, "--out") == argv[:-1]
    assert cli._without(["--compare-coretypes", "--quick"], "--compare-coretypes") == ["--quick"]


def test_interleaved_runs_rounds_grouped_by_pool_and_rewarms_after_a_switch() -> None:
    from benchmarks.timing import Entry, interleaved, plan_repeats

    events: list[str] = []

    def timer(thunk):  # marks the next call as timed
        events.append("T")
        thunk()
        return 1.0

    entries = {name: Entry(lambda name=name: events.append(name), timer, repeat, pool, warmup=1)
               for name, repeat, pool in (("a", 4, "blas"), ("b", 2, "blas"), ("c", 4, "torch"))}
    samples = interleaved(entries, settle_s=1e-4)
    assert {k: len(v) for k, v in samples.items()} == {"a": 4, "b": 2, "c": 4}
    timed = [events[i + 1] for i, e in enumerate(events) if e == "T"]
    rounds = [timed[0:3], timed[3:6], timed[6:8], timed[8:10]]
    assert [sorted(r) for r in rounds] == [["a", "b", "c"]] * 2 + [["a", "c"]] * 2
    for r in rounds[:2]:  # a and b share a pool: never split by c
        assert abs(r.index("a") - r.index("b")) == 1
    # every timed call follows a call on its own pool: after a switch, an untimed call wakes the pool up
    pool = {"a": "blas", "b": "blas", "c": "torch"}
    calls = [(e, i > 0 and events[i - 1] == "T") for i, e in enumerate(events) if e != "T"]
    for k, (name, was_timed) in enumerate(calls):
        if was_timed:
            assert k > 0 and pool[calls[k - 1][0]] == pool[name], calls[:k + 1]
    assert plan_repeats(10.0, 15, 2, 5.0) == (1, 0)
    assert plan_repeats(1.0, 15, 2, 5.0) == (5, 2)
    assert plan_repeats(0.001, 15, 2, 5.0) == (15, 2)


MIXED = [
    {"name": "f32_b1", "x": [1, 3, 8, 8], "w": [4, 3, 3, 3], "padding": 1},
    {"name": "f64_b2", "x": [2, 3, 7, 7], "w": [5, 3, 3, 3], "stride": 2, "dtype": "float64"},
]


def test_each_layer_keeps_its_dtype_and_a_mixed_file_is_named_so(tmp_path: Path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps(MIXED))
    assert cli.config_from(cli.parser().parse_args([]), "").dtype is None
    assert cli.config_from(cli.parser().parse_args(["--dtype", "float32"]), "").dtype == "float32"

    cfg = run.Config(shapes=str(path), backend="cpu", quick=True, scaling=False, progress=False,
                     contenders=["gpuconv:auto", "numpy"])
    result = run.benchmark(cfg)
    assert [row["problem"]["dtype"] for row in result["shapes"]] == ["float32", "float64"]
    assert [row["problem"]["n"] for row in result["shapes"]] == [1, 2]
    for row in result["shapes"]:  # each layer is held against the GEMM roof of its own dtype
        rec = row["results"]["gpuconv:auto"]
        roof = result["roof"][row["problem"]["dtype"]]["best_gflops"]
        assert rec["status"] == "ok" and rec["roof_fraction"] == pytest.approx(rec["gflops"] / roof)
    assert result["workload"] == {"batches": [1, 2], "dtypes": ["float32", "float64"], "directions": ["forward"]}
    assert report.stem(result) == "mixed_bmixed_mixed"
    paths = cli.write(result, tmp_path / "out", plots=False)
    assert paths[0].name == "mixed_bmixed_mixed.json"
    title = paths[1].read_text().splitlines()[0]
    assert "mixed batch sizes 1-2" in title and "mixed dtypes (float32, float64)" in title, title
    assert "batch 1, " not in title and ", float32, " not in title
    assert "mixed batch sizes 1-2, mixed dtypes (float32, float64)" in plots._title(result)

    forced = run.benchmark(dataclasses.replace(cfg, dtype="float64", contenders=["gpuconv:auto"]))
    assert {row["problem"]["dtype"] for row in forced["shapes"]} == {"float64"}
    assert report.stem(forced) == "mixed_bmixed_float64"


def test_stems_and_titles_of_uniform_and_mixed_workloads() -> None:
    uniform = {"batches": [8], "dtypes": ["float32"], "directions": ["forward"]}
    assert report.workload_stem("resnet50", uniform, None) == "resnet50_b8_float32"  # unchanged file names
    assert report.describe(uniform) == "batch 8, float32"
    grads = {**uniform, "directions": ["input"]}
    assert report.workload_stem("resnet50", grads, "SKYLAKEX") == "resnet50_b8_float32_input_openblas-skylakex"
    assert report.describe(grads) == "batch 8, float32, input gradient"
    every = {**uniform, "directions": list(DIRECTIONS)}
    assert report.workload_stem("resnet50", every, None) == "resnet50_b8_float32_forward-input-weight"
    assert report.describe(every) == "batch 8, float32, forward, input and weight gradients"


def test_direction_options() -> None:
    parse = lambda *a: cli.config_from(cli.parser().parse_args(list(a)), "")  # noqa: E731
    assert parse().directions is None
    assert parse("--direction", "weight").directions == ["weight"]
    assert parse("--directions", "all").directions == ["forward", "input", "weight"]
    assert parse("--directions", "weight,input").directions == ["input", "weight"]
    with pytest.raises(ValueError, match="--directions: must be 'all' or a list of forward, input, weight"):
        parse("--directions", "backward")
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--direction", "input", "--directions", "all"])


def test_every_direction_against_the_peers_own_backward(tiny_shapes: Path, tmp_path: Path) -> None:
    cfg = run.Config(shapes=str(tiny_shapes), backend="cpu", quick=True, scaling=False, progress=False,
                     directions=list(DIRECTIONS), skip=["gpuconv:fft", "gpuconv:winograd", "gpuconv:depthwise"])
    result = run.benchmark(cfg, extra=[_broken()])
    names = [row["name"] for row in result["shapes"]]
    assert names[:3] == ["conv3x3", "conv3x3:input", "conv3x3:weight"] and len(names) == 3 * len(TINY)
    assert list(result["summary"]) == list(DIRECTIONS)
    for row in result["shapes"]:
        d, res = row["direction"], row["results"]
        assert d == row["problem"]["direction"] and row["name"].endswith("" if d == "forward" else f":{d}")
        assert res["broken"]["status"] == "failed", (row["name"], res["broken"])
        assert res["gpuconv:auto"]["status"] == "ok" and res["jax"]["status"] == "ok", row["name"]
        for name, rec in res.items():  # every contender that runs a problem computes it right
            assert rec["status"] in ("ok", "unsupported") or name == "broken", (row["name"], name, rec)
        if d != "forward":
            assert res["numpy"]["status"] == "unsupported"
            symmetric = row["name"].split(":")[0] != "conv1d_same"  # torch.nn.grad takes symmetric padding only
            assert res["torch"]["status"] == ("ok" if symmetric else "unsupported"), row["name"]
            table = {"input": ("col2im", "direct"), "weight": ("im2col", "direct")}[d]
            assert row["auto"]["strategy"] in table
            assert res["gpuconv:col2im"]["status"] == ("ok" if d == "input" else "unsupported")
    for d in ("input", "weight"):
        assert {"jax", "torch"} <= set(result["summary"][d]["gpuconv:auto"])
        assert "numpy" not in result["summary"][d]["gpuconv:auto"]
    assert report.stem(result) == "tiny_b1_float32_forward-input-weight"
    page = cli.write(result, tmp_path, plots=False)[1].read_text()
    assert "| direction | speedup of |" in page and "| conv3x3:weight | weight |" in page
    assert "input: gpuconv:auto geomean speedup over" in report.fmt_summary(result)


def test_winograd_grid_fits_the_5x5_threshold_the_timings_imply() -> None:
    """F(2x2, 5x5) faster exactly from 48 channels and 100 tiles: the fit finds those thresholds and the chunk that
    is fastest overall, and its choices are the best on every row."""
    from benchmarks import winograd_grid
    rows = []
    for c in (16, 32, 48, 64):
        for tiles in (49, 100, 400):
            wins = c >= 48 and tiles >= 100
            rows.append({"c": c, "tiles2": tiles, "median_s": {
                "gemm": 1.0, "f25_c4": 0.9 if wins else 1.3, "f25_c16": 0.7 if wins else 1.2,
                "f25_c64": 0.8 if wins else 1.1}})
    rule = winograd_grid.fit5(rows)
    assert (rule["min_channels"], rule["min_tiles"], rule["chunk"]) == (48, 100, 16)
    assert rule["geomean_chosen_over_best"] == pytest.approx(1.0)


def test_result_directory_names_the_processor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processors of one model name (an AVX2 and an AVX-512 EPYC) get two result directories."""
    import sys

    from benchmarks import machine
    from gpuconv.cpu import _machine

    monkeypatch.setattr(machine, "cores", lambda: 2)
    names = set()
    for model in (1, 17):
        monkeypatch.setattr(machine, "cpu_info",
                            lambda model=model: {"model": "AMD EPYC", "family": 25, "model_number": model})
        names.add(machine.slug("cpu"))
    assert names == {"amd-epyc-f25m1-2c", "amd-epyc-f25m17-2c"}
    monkeypatch.setattr(machine, "cpu_info", lambda: {"model": "AMD EPYC", "family": None, "model_number": None})
    assert machine.slug("cpu") == "amd-epyc-2c"
    # Without py-cpuinfo the description still carries the numbers, from /proc/cpuinfo.
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "cpuinfo", None)
    monkeypatch.setattr(_machine, "cpu_identity",
                        lambda: {"vendor": "AuthenticAMD", "family": 25, "model_number": 17})
    info = machine.cpu_info()
    assert (info["vendor"], info["family"], info["model_number"]) == ("AuthenticAMD", 25, 17)
