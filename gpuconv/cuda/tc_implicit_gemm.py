"""Tensor-core implicit GEMM (``kernels/tc_implicit_gemm.cu``): mma.sync on a cp.async pipeline.

Per group, ``Y (Kg x N*P*Q) = W (Kg x R*S*Cp) @ cols`` with ``cols`` gathered from a channel-last copy of x
whose channels per group are zero-padded to ``Cp`` (a multiple of one 16-byte vector), so every load is an
aligned 16-byte ``cp.async`` whatever C, the strides, the padding or the dilation. float16 and bfloat16 run on
``mma.m16n8k16`` (``.f16`` / ``.bf16``: products exact in float32, float32 sums); float32 runs on
``mma.m16n8k8`` with the operands rounded to TF32 while packing, so it serves only problems whose ``precision``
is ``"tf32"``. bfloat16 runs on no other CUDA strategy, so every bfloat16 problem on CUDA comes here.

Workspace: the packed input (``groups * N * H * W * Cp`` elements) and weight (``K * R * S * Cp``). The pipeline's
buffers are dynamic shared memory (:func:`smem_bytes`, passed at launch), so a 128 x 128 tile can run three or
four stages: a point needs no more than sm_90 gives a block (227 KiB), and the heuristic keeps to the device's own
limit (99 KiB on sm_86/sm_89, 163 KiB on sm_80).
"""

from __future__ import annotations

from typing import Any

from ..problem import ConvProblem
from ..strategy import Params, Strategy
from .executor import MAX_DYNAMIC_SHARED, Executor
from .occupancy import Device, current_device, limits, variant_blocks_per_sm
from .source import INT32_MAX, ITEM_BYTES, sm_count
from .spills import spill_free

KERNEL, FUNC = "tc_implicit_gemm", "tc_implicit_gemm_conv"
PACK_THREADS = 256  # the kernel file's default

#: Tunables of ``kernels/tc_implicit_gemm.cu``: block tile BM (channels) x BN (pixels) x BK (reduction slice),
#: WM x WN warps, and the depth of the cp.async pipeline.
SPACE: dict[str, list[int]] = {
    "BM": [32, 64, 128],
    "BN": [32, 64, 128],
    "BK": [16, 32],
    "WM": [1, 2, 4],
    "WN": [1, 2, 4],
    "STAGES": [2, 3, 4],
}
DEFAULTS: dict[str, int] = {"BM": 64, "BN": 64, "BK": 32, "WM": 2, "WN": 2, "STAGES": 2}  # valid for both dtypes

#: The dtypes the kernel computes: float16 and bfloat16 on m16n8k16, float32 on m16n8k8 (TF32); the 16-bit ones
#: at any precision, float32 only at ``precision="tf32"`` (:data:`PRECISIONS`).
DTYPES = ("float16", "bfloat16", "float32")
PRECISIONS: dict[str, tuple[str, ...]] = {"float16": ("highest", "tf32"), "bfloat16": ("highest", "tf32"),
                                          "float32": ("tf32",)}


def threads(params: Params) -> int:
    return params["WM"] * params["WN"] * 32


def vector(dtype: str) -> int:
    """Elements per 16-byte chunk: the channel padding unit."""
    return 16 // ITEM_BYTES[dtype]


def padded_channels(problem: ConvProblem) -> int:
    v = vector(problem.dtype)
    return -(-problem.cg // v) * v


def smem_bytes(params: Params, dtype: str) -> int:
    """The launch's dynamic shared memory: STAGES buffers of A ``[BM][BK + 16 B]`` and B ``[BN][BK + 16 B]`` in the
    element type."""
    item = ITEM_BYTES[dtype]
    return params["STAGES"] * (params["BM"] + params["BN"]) * (params["BK"] * item + 16)


def _warp_tiles_ok(params: Params, problem: ConvProblem | None) -> bool:
    # A warp tile is whole 16 x 16 mma tiles (B fragments come in pairs of 8 columns from one ldmatrix.x4).
    return params["BM"] % (16 * params["WM"]) == 0 and params["BN"] % (16 * params["WN"]) == 0


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 64 <= threads(params) <= 256


def _registers_ok(params: Params, problem: ConvProblem | None) -> bool:
    # float32 accumulators per thread: (BM/WM) * (BN/WN) / 32. Past 64 (a 64 x 32 warp tile) ptxas spills with
    # the fragments and the pipeline's addresses; below 32 (a 32 x 32 warp tile) each fragment feeds too few
    # mma for the ldmatrix traffic, so those points are left out of the search.
    return 32 <= params["BM"] * params["BN"] // (params["WM"] * params["WN"] * 32) <= 64


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    # Against the largest opt-in limit (sm_90's); a point past a smaller device's limit fails at launch with a
    # KernelError (the tuner scores it infinite), and the heuristic checks the device's limit.
    dtypes = (problem.dtype,) if problem is not None and problem.dtype in DTYPES else DTYPES
    return all(smem_bytes(params, d) <= MAX_DYNAMIC_SHARED for d in dtypes)


def resident_blocks(params: Params, dtype: str, device: Device) -> int:
    """Blocks per SM of a variant on ``device``, its pipeline's dynamic shared memory included."""
    return variant_blocks_per_sm(device, KERNEL, FUNC, params, dtype, threads(params), 0,
                                 dynamic_smem=smem_bytes(params, dtype))


def _pack_grid(total: int) -> tuple[int, int, int]:
    return (max(1, min(-(-total // PACK_THREADS), 8 * sm_count())), 1, 1)


def run(ex: Executor, problem: ConvProblem, params: Params, x: Any, w: Any, bias: Any, y: Any) -> None:
    """Fill ``y (N, K, P, Q)`` with the convolution of ``x (N, C, H, W)`` and ``w (K, C/g, R, S)`` plus ``bias``."""
    pr, dtype = problem, problem.dtype
    cp = padded_channels(pr)
    xp = ex.empty((pr.groups * pr.n * pr.h * pr.w * cp,), dtype)
    wp = ex.empty((pr.k * pr.r * pr.s * cp,), dtype)
    ex.launch(KERNEL, "tc_pack_x", params, dtype, _pack_grid(xp.size), (PACK_THREADS, 1, 1),
              [x, xp, pr.n, pr.c, pr.h, pr.w, pr.groups, cp])
    ex.launch(KERNEL, "tc_pack_w", params, dtype, _pack_grid(wp.size), (PACK_THREADS, 1, 1),
              [w, wp, pr.k, pr.cg, pr.r, pr.s, cp])
    ncols = pr.n * pr.p * pr.q
    grid = (-(-ncols // params["BN"]), -(-pr.kg // params["BM"]), pr.groups)
    t, _, l, _ = pr.padding
    args = [xp, wp, wp if bias is None else bias, y,
            pr.n, cp, pr.h, pr.w, pr.k, pr.p, pr.q, pr.r, pr.s,
            pr.stride[0], pr.stride[1], t, l, pr.dilation[0], pr.dilation[1], pr.groups, int(bias is not None)]
    ex.launch(KERNEL, FUNC, params, dtype, grid, (threads(params), 1, 1), args, shared=smem_bytes(params, dtype))


def _supports(problem: ConvProblem) -> bool:
    if problem.precision not in PRECISIONS.get(problem.dtype, ()):
        return False
    cp = padded_channels(problem)
    # Column, reduction and packed-input pixel indices are int32; groups run on gridDim.z.
    return (problem.n * problem.p * problem.q + 128 < INT32_MAX and problem.r * problem.s * cp + 64 < INT32_MAX
            and problem.n * problem.h * problem.w + 1 < INT32_MAX and problem.groups <= 65535
            and -(-problem.kg // 32) <= 65535)


STRATEGY = Strategy(
    name="tc_implicit_gemm",
    run=run,
    supports=_supports,
    requires=("float16 or bfloat16, or float32 with precision='tf32'; N*P*Q, R*S*C/groups and N*H*W below 2**31 "
              "and at most 65535 groups"),
    space=SPACE,
    constraints=(_warp_tiles_ok, _threads_ok, _registers_ok, spill_free(KERNEL), _fits_smem),  # see .spills
    defaults=DEFAULTS,
)


# Preferred block tiles, largest first: (BM, BN, WM, WN); each with the deepest pipeline that fits shared memory.
_PREFERRED: tuple[tuple[int, int, int, int], ...] = (
    (128, 128, 2, 4),
    (128, 64, 2, 2),
    (64, 128, 2, 2),
    (64, 64, 2, 2),
    (32, 64, 1, 2),
    (64, 32, 2, 1),
    (32, 32, 1, 1),
)
_PIPELINES = ((32, 4), (32, 3), (32, 2), (16, 4), (16, 3), (16, 2))  # (BK, STAGES), preferred first


def heuristic_params(problem: ConvProblem, device: Device | None = None) -> dict[str, int]:
    """The largest preferred tile that wastes at most half its rows on missing output channels and still fills
    one wave of ``device`` (default: the current one) with resident blocks (blocks per SM from ptxas' figures
    for the tile, :func:`~gpuconv.cuda.occupancy.variant_blocks_per_sm`); the smallest valid one otherwise.

    Each tile takes, of the preferred pipelines whose shared memory the device gives a block, one with the most
    resident blocks, the earliest preferred (deepest) among those: another block's warps hide a barrier that a
    deeper pipeline in one block cannot, so residency comes first. For float16 at 128 x 128 x 32 on sm_90 four
    stages take 128 registers (two blocks) and three take 130 (one), so four it is; an order not yet timed on
    a GPU."""
    dev = device if device is not None else current_device()
    smem_block = limits(dev.cc).smem_block
    ncols = problem.n * problem.p * problem.q
    fallback = dict(DEFAULTS)
    for bm, bn, wm, wn in _PREFERRED:
        if bm > 32 and problem.kg <= bm // 2:
            continue
        best: tuple[int, dict[str, int]] | None = None
        for bk, stages in _PIPELINES:
            params = {"BM": bm, "BN": bn, "BK": bk, "WM": wm, "WN": wn, "STAGES": stages}
            if not STRATEGY.valid(params, problem) or smem_bytes(params, problem.dtype) > smem_block:
                continue
            per_sm = resident_blocks(params, problem.dtype, dev)
            if best is None or per_sm > best[0]:
                best = (per_sm, params)
        if best is None:
            continue
        per_sm, params = best
        fallback = params
        if -(-ncols // bn) * -(-problem.kg // bm) * problem.groups >= dev.sm_count * per_sm:
            return params
    return fallback
