"""No point of any CUDA tuning space spills registers, checked on every point through the stored ptxas report.

Compiling the ~1,800 binaries of the spaces to cubins takes about 15 minutes on two cores, too long for the
suite, so ``python -m benchmarks.ptxas_sweep`` stores ptxas' figures (``gpuconv/cuda/ptxas_report.json``) and
this module checks that the report is current (it holds exactly the binaries the current spaces build, from
the current kernel sources and options), that no launched function of any of them spills, and, by recompiling
a seeded sample, that its figures are real. The occupancy arithmetic the heuristics use is checked against
hand-computed cases, and the implicit GEMM heuristics against layers whose best split is known.
"""

from __future__ import annotations

import functools
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository root holds ``benchmarks``

from benchmarks import ptxas_sweep  # noqa: E402
from gpuconv.cuda import implicit_gemm, wgrad  # noqa: E402
from gpuconv.cuda.compile import EFFECTIVE_OPTIONS  # noqa: E402
from gpuconv.cuda.occupancy import (  # noqa: E402
    LIMITS,
    REPORT_PATH,
    REPORT_SCHEMA,
    Device,
    best_split,
    blocks_per_sm,
    limits,
    resources,
    variant_blocks_per_sm,
    wave_efficiency,
)
from gpuconv.cuda.ptxas import Resources, parse_log  # noqa: E402
from gpuconv.cuda.ptxas import resources as compile_resources  # noqa: E402
from gpuconv.cuda.source import kernel_hash  # noqa: E402
from gpuconv.problem import make_problem  # noqa: E402

SWEEP = "nice -n 19 python -m benchmarks.ptxas_sweep"
SAMPLE = 3  # binaries recompiled per run and architecture (about 0.5 s each)
ARCHS = ("sm_90", "sm_80")  # the real architectures of CI's compute_90 and compute_80


@functools.cache
def stored() -> dict[str, Any]:
    return json.loads(REPORT_PATH.read_text())


def _name(key: tuple[Any, ...]) -> str:
    kernel, params, dtype = key
    return f"{kernel} {dict(params)} {dtype}"


def test_report_is_current() -> None:
    report = stored()
    assert report["schema"] == REPORT_SCHEMA, f"{REPORT_PATH} has schema {report['schema']}: run {SWEEP}"
    assert report["options"] == list(EFFECTIVE_OPTIONS), f"the NVRTC options changed since the sweep: run {SWEEP}"
    assert set(ARCHS) <= set(report["archs"]), f"{REPORT_PATH.name} has {report['archs']}, not {ARCHS}: run {SWEEP}"
    changed = [k for k, h in report["kernels"].items() if kernel_hash(k) != h]
    assert not changed, f"kernels {changed} changed since {REPORT_PATH.name} was written: run {SWEEP}"


def test_report_covers_every_point() -> None:
    binaries, counts = ptxas_sweep.enumerate_points()
    report = stored()
    have = {(p["kernel"], tuple(sorted(p["params"].items())), p["dtype"]): p for p in report["points"]}
    missing = sorted(set(binaries) - set(have))
    extra = sorted(set(have) - set(binaries))
    assert not missing, (f"{len(missing)} binaries of the current spaces are not in {REPORT_PATH.name} (first: "
                         f"{_name(missing[0])}): run {SWEEP}")
    assert not extra, f"{len(extra)} stored binaries left the spaces (first: {_name(extra[0])}): run {SWEEP}"
    assert set(report["kernels"]) == {k for k, _, _ in binaries}
    for key, funcs in binaries.items():
        for arch in report["archs"]:
            assert funcs <= set(have[key][arch]), f"{_name(key)} {arch}: no figures for {funcs - set(have[key][arch])}"
    assert report["spaces"] == counts, f"the spaces' variant counts changed: run {SWEEP}"


def test_no_point_spills() -> None:
    spills = ptxas_sweep.spilling(stored())
    assert not spills, f"{len(spills)} spilling points:\n" + "\n".join(spills[:20])


def test_no_launched_function_exceeds_the_hardware() -> None:
    report = stored()
    for p in report["points"]:
        for arch in report["archs"]:
            for func in p["launched"]:
                r = p[arch][func]
                assert r["registers"] <= 255 and r["smem"] <= 48 * 1024 and r["stack"] == 0, (p, arch, func)


@pytest.mark.parametrize("arch", ARCHS)
def test_sampled_points_recompile_to_the_stored_figures(arch: str) -> None:
    from cupy_backends.cuda.libs import nvrtc

    report = stored()
    version = ".".join(map(str, nvrtc.getVersion()))
    if version != report["toolkit"]["nvrtc"]:
        pytest.skip(f"NVRTC {version} here, the report is from NVRTC {report['toolkit']['nvrtc']}")
    for p in random.Random(f"11 {arch}").sample(report["points"], SAMPLE):
        got = compile_resources(p["kernel"], p["params"], p["dtype"], arch)
        assert {f: r.as_dict() for f, r in got.items()} == p[arch], (p["kernel"], p["params"], p["dtype"], arch)


def test_a_tile_spilling_on_one_architecture_leaves_the_space() -> None:
    # gemm's 128 x 128 x 8 tile of 8 x 8 spills in float32 on sm_80 only, and in no dtype on sm_90; direct's
    # float64 point below spills on sm_80 only (64 registers, 8 bytes).
    from gpuconv.cuda import direct, im2col
    from gpuconv.cuda.spills import SPILLING, spills

    tile = {"BM": 128, "BN": 128, "BK": 8, "TM": 8, "TN": 8}
    assert (128, 128, 8, 8, 8) in SPILLING["sm_80"]["gemm"]["float32"]
    assert not any((128, 128, 8, 8, 8) in t for t in SPILLING["sm_90"]["gemm"].values())
    assert spills("gemm", tile, "float32") and not spills("gemm", tile, "float16")
    f32, f16 = (make_problem("conv2d", (2, 256, 32, 32), (256, 256, 3, 3), d, False, padding=1)
                for d in ("float32", "float16"))
    assert not im2col.STRATEGY.valid(tile, f32) and im2col.STRATEGY.valid(tile, f16)
    assert not im2col.STRATEGY.valid(tile)  # without a problem a point must hold in every dtype
    point = {"BQ": 8, "BP": 4, "QPT": 1, "KPT": 1, "CB": 1, "HALO": 2, "SX": 1}
    f64 = make_problem("conv2d", (2, 16, 32, 32), (16, 1, 3, 3), "float64", False, padding=1, groups=16)
    assert not direct.STRATEGY.valid(point, f64)
    assert direct.STRATEGY.valid(point, make_problem("conv2d", (2, 16, 32, 32), (16, 1, 3, 3), "float32", False,
                                                     padding=1, groups=16))


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_gemm_presets_are_points_of_the_space(dtype: str) -> None:
    # gemm.pick returns its presets unchecked: each must be a point of the space in the dtypes it serves.
    from gpuconv.cuda import gemm, im2col

    problem = make_problem("conv2d", (2, 256, 32, 32), (256, 256, 3, 3), dtype, False, padding=1)
    presets = gemm._DOUBLE_PRESETS if dtype == "float64" else gemm._PRESETS
    for p in presets:
        assert im2col.STRATEGY.valid(p, problem), (dtype, p)
        assert gemm.pick(64 * p["BM"], 64 * p["BN"], 1, dtype, H100_SXM) in presets


def test_ptxas_log_parser() -> None:
    log = ("ptxas info    : 52 bytes gmem\n"
           "ptxas info    : Compiling entry function 'a' for 'sm_90'\n"
           "ptxas info    : Function properties for a\n"
           "ptxas         .     8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 16384 bytes smem, 400 bytes cmem[0]\n"
           "ptxas info    : Compiling entry function 'b' for 'sm_90'\n"
           "ptxas info    : Function properties for b\n"
           "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
           "ptxas info    : Used 32 registers, used 0 barriers, 380 bytes cmem[0]\n")
    got = parse_log(log)
    assert got == {"a": Resources(registers=255, spill_stores=12, spill_loads=16, smem=16384, stack=8),
                   "b": Resources(registers=32, spill_stores=0, spill_loads=0, smem=0, stack=0)}
    assert got["a"].spills and not got["b"].spills
    with pytest.raises(ValueError, match="no register or spill line for entry 'c'"):
        parse_log("ptxas info    : Compiling entry function 'c' for 'sm_90'\n")


# ---- occupancy: blocks per SM and wave efficiency ------------------------------------------------------------

H100 = LIMITS[9, 0]
A100 = LIMITS[8, 0]


@pytest.mark.parametrize("lim,threads,registers,smem,want", [
    # 256 threads at 128 registers: 4096 registers a warp, 4 warps per 16384-register sub-partition, 16 warps.
    (H100, 256, 128, 16384, 2),
    # 187 registers round up to 6144 a warp: 2 warps per sub-partition, 8 warps, one 8-warp block.
    (H100, 256, 187, 16384, 1),
    # 64 threads at 32 registers: 1024 a warp, 64 warps by registers, 32 blocks by the block limit.
    (H100, 64, 32, 0, 32),
    # 128 threads at 64 registers: 2048 a warp, 8 warps per sub-partition = 32 warps = 8 blocks; threads allow 16.
    (H100, 128, 64, 0, 8),
    # Shared memory decides: 40 KB + 1 KB reserved = 41 KB a block, 228 // 41 = 5 on sm_90, 164 // 41 = 4 on sm_80.
    (H100, 128, 32, 40 * 1024, 5),
    (A100, 128, 32, 40 * 1024, 4),
    # 1024 threads at 32 registers: 2048 threads a SM allow two blocks.
    (H100, 1024, 32, 0, 2),
    # 1024 threads at 128 registers need 131072 registers: they do not fit.
    (H100, 1024, 128, 0, 0),
    (H100, 1025, 32, 0, 0),
    (LIMITS[8, 6], 256, 32, 0, 6),  # 1536 threads a SM on sm_86
])
def test_blocks_per_sm(lim: Any, threads: int, registers: int, smem: int, want: int) -> None:
    assert blocks_per_sm(lim, threads, registers, smem) == want


def test_blocks_per_sm_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="threads must be positive"):
        blocks_per_sm(H100, 0, 32, 0)
    with pytest.raises(ValueError, match="compute capability must be at least 8.0, got 7.5"):
        limits((7, 5))
    assert limits((9, 0)) is H100 and limits((8, 9)) is LIMITS[8, 9] and limits((12, 0)) is H100


@pytest.mark.parametrize("blocks,sms,per_sm,want", [
    (264, 132, 2, 1.0),          # exactly one wave
    (265, 132, 2, 265 / 528),    # one block into a second wave
    (4, 132, 1, 4 / 132),        # a res5 layer at batch 1 on 128 x 128 tiles
    (52 * 2, 132, 1, 104 / 132),
    (1000, 108, 3, 1000 / 1296),  # an A100: 4 waves of 324 slots
])
def test_wave_efficiency(blocks: int, sms: int, per_sm: int, want: float) -> None:
    assert wave_efficiency(blocks, sms, per_sm) == pytest.approx(want)


def test_best_split() -> None:
    # 52 tiles, 132 slots: split 1 fills 39%, 2 fills 79% (104 of 132), 3 spills into a second wave (156 of 264),
    # 4, 6 and 8 reach 79% too: the smallest of the best is 2.
    assert best_split(52, [1, 2, 3, 4, 6, 8], 132, 1) == (2, pytest.approx(104 / 132))
    # Under one wave the efficiency grows with the split: the deepest wins.
    assert best_split(4, [1, 2, 4, 8], 132, 1) == (8, pytest.approx(32 / 132))
    # A full wave already: no split.
    assert best_split(264, [1, 2, 4], 132, 2)[0] == 1
    assert best_split(0, [2, 1], 132, 1) == (1, 0.0)  # an empty batch
    with pytest.raises(ValueError, match="splits must not be empty"):
        best_split(4, [], 132, 1)


def test_stored_figures_give_the_defaults_occupancy() -> None:
    tiles = implicit_gemm.tiles(implicit_gemm.DEFAULTS)
    r = resources(implicit_gemm.KERNEL, implicit_gemm.FUNC, tiles, "float32")
    assert r is not None and r["registers"] > 0 and r["smem"] == implicit_gemm.smem_bytes(tiles, "float32")
    per_sm = variant_blocks_per_sm(Device(132, (9, 0)), implicit_gemm.KERNEL, implicit_gemm.FUNC, tiles, "float32",
                                   implicit_gemm.threads(tiles), implicit_gemm.smem_bytes(tiles, "float32"))
    assert per_sm == blocks_per_sm(H100, 256, r["registers"], r["smem"])
    assert resources("implicit_gemm", "implicit_gemm_conv", {"BM": 4096}, "float32") is None


# ---- the heuristics choose tiles and split-K by wave efficiency ---------------------------------------------

H100_SXM = Device(sm_count=132, cc=(9, 0))  # an H100 SXM, passed explicitly: no GPU here


def _res5(batch: int, dtype: str = "float32", direction: str = "forward") -> Any:
    return make_problem("conv2d", (batch, 512, 7, 7), (512, 512, 3, 3), dtype, False, padding=1,
                        direction=direction)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_implicit_gemm_splits_a_res5_layer(dtype: str) -> None:
    # 49 output pixels, 512 channels, a 4608-long reduction: few tiles, so the reduction is split.
    problem = _res5(1, dtype)
    params = implicit_gemm.heuristic_params(problem, H100_SXM)
    assert implicit_gemm.STRATEGY.valid(params, problem)
    assert params["SPLIT_K"] > 1, params
    tiles = -(-512 // params["BM"]) * -(-49 // params["BN"])
    assert tiles * params["SPLIT_K"] <= 132 * 32  # at most one wave


def test_implicit_gemm_does_not_split_a_large_layer() -> None:
    problem = make_problem("conv2d", (32, 64, 56, 56), (64, 64, 3, 3), "float32", False, padding=1)
    params = implicit_gemm.heuristic_params(problem, H100_SXM)
    assert params["SPLIT_K"] == 1 and implicit_gemm.STRATEGY.valid(params, problem)


def test_implicit_gemm_split_follows_the_sm_count() -> None:
    # At batch 32 a res5 layer has 4 x 13 = 52 tiles of 128 x 128: two splits fill 104 of 132 SMs; on 26 SMs
    # the 52 tiles are two full waves already.
    problem = _res5(32)
    big = implicit_gemm.heuristic_params(problem, H100_SXM)
    small = implicit_gemm.heuristic_params(problem, Device(sm_count=26, cc=(9, 0)))
    assert big["SPLIT_K"] > small["SPLIT_K"] == 1, (big, small)


def test_weight_gradient_split_follows_the_sm_count() -> None:
    # dw is 64 x 576 (a handful of tiles) reduced over 32 * 56 * 56 pixels: split deeply on 132 SMs, hardly on one.
    problem = make_problem("conv2d", (32, 64, 56, 56), (64, 64, 3, 3), "float32", False, padding=1,
                           direction="weight")
    big = wgrad.heuristic_params(problem, H100_SXM)
    small = wgrad.heuristic_params(problem, Device(sm_count=1, cc=(9, 0)))
    assert wgrad.STRATEGY.valid(big, problem) and wgrad.STRATEGY.valid(small, problem)
    assert big["SPLIT_K"] == max(wgrad.SPACE["SPLIT_K"]) > small["SPLIT_K"], (big, small)


def test_gemm_tiles_follow_the_sm_count() -> None:
    # A 512 x 3136 output: 100 tiles of 128 x 128, which fill 8 SMs (two blocks each) but not 132.
    from gpuconv.cuda import gemm

    assert gemm.pick(512, 3136, 1, "float32", Device(sm_count=8, cc=(9, 0))) == gemm.DEFAULTS
    big = gemm.pick(512, 3136, 1, "float32", H100_SXM)
    assert big != gemm.DEFAULTS and big["BM"] * big["BN"] < 128 * 128


def test_a_variant_missing_from_the_report_gets_a_conservative_occupancy() -> None:
    # Without figures: as if it used every register a thread of its block may have (256 threads: 255 -> 1 block).
    assert variant_blocks_per_sm(H100_SXM, "gemm", "gemm", {"BM": 4096}, "float32", 256, 0) == 1
    assert variant_blocks_per_sm(H100_SXM, "gemm", "gemm", {"BM": 4096}, "float32", 64, 0) == 4


def test_sweep_report_helpers() -> None:
    fig = {"registers": 80, "spill_stores": 0, "spill_loads": 0, "smem": 0, "stack": 0}
    report = {"schema": REPORT_SCHEMA, "archs": ["sm_90"], "kernels": {"gemm": kernel_hash("gemm")},
              "options": list(EFFECTIVE_OPTIONS), "toolkit": ptxas_sweep.toolkit(), "spaces": {},
              "points": [{"kernel": "gemm", "params": {"BM": 32}, "dtype": "float32", "launched": ["gemm"],
                          "sm_90": {"gemm": dict(fig, spill_loads=8), "other": fig}},
                         {"kernel": "gemm", "params": {"BM": 64}, "dtype": "float32", "launched": ["gemm"],
                          "sm_90": {"gemm": fig, "other": dict(fig, spill_stores=4)}}]}
    assert json.loads(ptxas_sweep.dumps(report)) == report
    # Only launched functions count: the second point's spilling function is never launched from it.
    assert ptxas_sweep.spilling(report) == ["gemm.gemm {'BM': 32} float32 sm_90: 80 registers, 0 B spill stores, "
                                            "8 B spill loads"]
    assert set(ptxas_sweep.reusable(report)) == {("gemm", (("BM", 32),), "float32"), ("gemm", (("BM", 64),), "float32")}
    assert ptxas_sweep.reusable({**report, "kernels": {"gemm": "0" * 64}}) == {}  # the kernel changed
    assert ptxas_sweep.reusable({**report, "options": ["-O0"]}) == {}

