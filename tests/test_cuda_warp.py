"""The warp-level primitives of ``kernels/warp.cuh`` on the CPU emulation, against NumPy and the PTX ISA's layouts.

``kernels/warp_test.cu`` loads operands from global memory into registers by the documented fragment layout,
runs one primitive and stores the registers back; a matrix product here must match ``A @ B + C``. A kernel
that loads with a permuted layout must not, so the emulation cannot be blind to a layout bug. The primitives
also compile with NVRTC for compute_80 and compute_90.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from emu import EmuExecutor

from gpuconv.cuda.compile import compile_ptx
from gpuconv.cuda.source import render

ARCHS = ("compute_80", "compute_90")


def _run(func: str, args: list[Any], layout: int = 1, threads: int = 32, seed: int = 0) -> None:
    """Launch one block of ``threads`` threads; array arguments are copied to the device and back."""
    ex = EmuExecutor(seed=seed)
    dev = [ex.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
    ex.run_source(render("warp_test", {"LAYOUT": layout}, "float32"), func, (1, 1, 1), (threads, 1, 1), dev)
    for a, d in zip(args, dev):
        if isinstance(a, np.ndarray):
            a[...] = d


def _mma_16bit(func: str, a: np.ndarray, b: np.ndarray, c: np.ndarray, layout: int = 1) -> np.ndarray:
    d = np.full((16, 8), np.nan, np.float32)
    if func == "mma_f16_test":
        args = [a.astype(np.float16), b.astype(np.float16), c, d]
    else:  # bf16 as bit patterns, two to a 32-bit word
        args = [_bf16_bits(a).view(np.uint32).copy(), _bf16_bits(b).view(np.uint32).copy(), c, d]
    _run(func, args, layout)
    return args[3]


def _bf16_bits(v: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns, round to nearest even (the values used are exact in bf16 anyway)."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def _bf16_value(v: np.ndarray) -> np.ndarray:
    return (_bf16_bits(v).astype(np.uint32) << 16).view(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_mma_f16_matches_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (16, 16)).astype(np.float16)
    b = rng.uniform(-1, 1, (16, 8)).astype(np.float16)
    c = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    d = _mma_16bit("mma_f16_test", a, b, c)
    expected = a.astype(np.float64) @ b.astype(np.float64) + c
    # products are exact in float32; 16 float32 additions of terms below 1 in magnitude
    np.testing.assert_allclose(d, expected, rtol=0, atol=17 * 2.0**-24 * 17)


def test_mma_bf16_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    a = _bf16_value(rng.uniform(-1, 1, (16, 16)).astype(np.float32))
    b = _bf16_value(rng.uniform(-1, 1, (16, 8)).astype(np.float32))
    c = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    d = _mma_16bit("mma_bf16_test", a, b, c)
    np.testing.assert_allclose(d, a.astype(np.float64) @ b + c, rtol=0, atol=17 * 2.0**-24 * 17)
    # the operands are read as bfloat16, not float16: the same bits read as float16 give another product
    as_f16 = _mma_16bit("mma_f16_test", _bf16_bits(a).view(np.float16), _bf16_bits(b).view(np.float16), c)
    assert not np.allclose(as_f16, d, rtol=0, atol=0.1)


def test_mma_bf16_matches_ml_dtypes_bfloat16() -> None:
    """The operands as NumPy ``ml_dtypes.bfloat16`` arrays (what gpuconv passes): their bits are the register halves,
    and the product is the float64 one of their values within float32 summation."""
    import ml_dtypes

    rng = np.random.default_rng(8)
    a = rng.standard_normal((16, 16)).astype(ml_dtypes.bfloat16)
    b = rng.standard_normal((16, 8)).astype(ml_dtypes.bfloat16)
    c = rng.standard_normal((16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    _run("mma_bf16_test", [a.view(np.uint16).view(np.uint32).copy(), b.view(np.uint16).view(np.uint32).copy(), c, d])
    exact = a.astype(np.float64) @ b.astype(np.float64) + c
    bound = 17 * 2.0**-24 * (np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64)) + np.abs(c))
    assert (np.abs(d - exact) <= bound).all()


def _tf32(v: np.ndarray) -> np.ndarray:
    """cvt.rna.tf32.f32 in NumPy: to 10 mantissa bits, ties away from zero."""
    u = np.ascontiguousarray(v, np.float32).view(np.uint32)
    return ((u + np.uint32(0x1000)) & np.uint32(0xFFFFE000)).view(np.float32)


def test_mma_tf32_matches_numpy_on_rounded_inputs() -> None:
    rng = np.random.default_rng(3)
    a = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    b = rng.uniform(-1, 1, (8, 8)).astype(np.float32)
    c = rng.uniform(-1, 1, (16, 8)).astype(np.float32)
    d = np.full((16, 8), np.nan, np.float32)
    _run("mma_tf32_test", [a, b, c, d])
    exact = _tf32(a).astype(np.float64) @ _tf32(b) + c
    np.testing.assert_allclose(d, exact, rtol=0, atol=9 * 2.0**-24 * 9)
    # and the rounding is visible: the unrounded product differs by more than float32 rounding
    assert np.abs(d - (a.astype(np.float64) @ b + c)).max() > 1e-5


def test_tf32_round_is_cvt_rna() -> None:
    x = np.array([1.0, 1 + 2.0**-11, 1 + 2.0**-12, -(1 + 3 * 2.0**-11), 1 + 2.0**-10 + 2.0**-11, 3.0e38, np.inf,
                  -np.inf, 1e-40, 0.0, -0.0, 0.1, np.pi], np.float32)
    x = np.concatenate([x, np.random.default_rng(4).standard_normal(51).astype(np.float32)])
    out = np.zeros(x.size, np.uint32)
    _run("tf32_round_test", [x, out, x.size])
    np.testing.assert_array_equal(out, _tf32(x).view(np.uint32))
    assert out[1] == np.float32(1 + 2.0**-10).view(np.uint32)  # a tie rounds away from zero
    nan = np.full(32, np.nan, np.float32)
    out = np.zeros(32, np.uint32)
    _run("tf32_round_test", [nan, out, 32])
    assert np.isnan(out.view(np.float32)).all()


@pytest.mark.parametrize("func", ["mma_f16_test", "mma_bf16_test", "mma_tf32_test"])
def test_a_permuted_layout_fails(func: str) -> None:
    """Swapping two A registers while loading gives a wrong product: the emulation follows the layout."""
    rng = np.random.default_rng(5)
    k = 8 if func == "mma_tf32_test" else 16
    a = rng.uniform(-1, 1, (16, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (k, 8)).astype(np.float32)
    c = np.zeros((16, 8), np.float32)
    if func != "mma_tf32_test":
        if func == "mma_f16_test":
            a, b = a.astype(np.float16).astype(np.float32), b.astype(np.float16).astype(np.float32)
        else:
            a, b = _bf16_value(a), _bf16_value(b)
        good, bad = _mma_16bit(func, a, b, c, 1), _mma_16bit(func, a, b, c, 2)
    else:
        good, bad = (np.full((16, 8), np.nan, np.float32) for _ in range(2))
        _run(func, [a, b, c, good], 1)
        _run(func, [a, b, c, bad], 2)
        a, b = _tf32(a), _tf32(b)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    np.testing.assert_allclose(good, expected, rtol=0, atol=1e-5)
    assert np.abs(bad - expected).max() > 0.1


def test_ldmatrix_layout() -> None:
    """Lane l receives, in register j, elements 2(l%4) and 2(l%4)+1 of row l/4 of matrix j; matrix j's rows are
    the addresses of lanes 8j..8j+7 (here: rows 8j..8j+7 of the tile)."""
    tile = np.arange(32 * 8, dtype=np.uint16).reshape(32, 8).view(np.float16)
    outs = [np.zeros(32 * n, np.uint32) for n in (1, 2, 4)]
    _run("ldmatrix_test", [tile, *outs], seed=7)
    bits = tile.view(np.uint16).astype(np.uint32)
    for n, out in zip((1, 2, 4), outs):
        got = out.reshape(32, n)
        for lane in range(32):
            for j in range(n):
                row, col = 8 * j + lane // 4, 2 * (lane % 4)
                assert got[lane, j] == bits[row, col] | (bits[row, col + 1] << 16), (n, lane, j)


def test_cp_async_lands_at_the_wait_with_zero_fill() -> None:
    rng = np.random.default_rng(6)
    src = rng.uniform(1, 2, 32 * 4).astype(np.float32)
    src_bytes = rng.choice([0, 4, 8, 12, 16], 32).astype(np.int32)
    before, after = np.zeros(32 * 4, np.float32), np.zeros(32 * 4, np.float32)
    _run("cp_async_test", [src, src_bytes, before, after], seed=3)
    assert np.isnan(before).all()  # nothing arrives before the wait: poisoned shared memory
    expected = src.reshape(32, 4).copy()
    expected[np.arange(4)[None, :] * 4 >= src_bytes[:, None]] = 0
    np.testing.assert_array_equal(after.reshape(32, 4), expected)


def test_a_warp_collective_not_reached_by_every_lane_is_reported() -> None:
    source = render("warp_test", {}, "float32") + """
extern "C" __global__ void divergent_mma(float* d) {
    unsigned a[4] = {0, 0, 0, 0}, b[2] = {0, 0};
    float c[4] = {0, 0, 0, 0};
    if (threadIdx.x < 16) mma_m16n8k16_f16(d + 4 * threadIdx.x, a, b, c);
}
"""
    from gpuconv.cuda.compile import KernelError

    ex = EmuExecutor()
    with pytest.raises(KernelError, match="warp collective at line .* has returned"):
        ex.run_source(source, "divergent_mma", (1, 1, 1), (32, 1, 1), [ex.empty((128,), np.float32)])


@pytest.mark.parametrize("arch", ARCHS)
def test_primitives_compile_with_nvrtc(arch: str) -> None:
    ptx = compile_ptx("warp_test", {}, "float32", arch)
    for instr in ("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", "mma.sync.aligned.m16n8k16.row.col.f32.bf16",
                  "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32", "ldmatrix.sync.aligned.m8n8.x4.shared.b16",
                  "ldmatrix.sync.aligned.m8n8.x1", "cp.async.cg.shared.global", "cp.async.commit_group",
                  "cp.async.wait_group 0", "cvt.rna.tf32.f32"):
        assert instr in ptx, f"{instr} missing from the {arch} PTX"
