"""The GEMM of ``kernels/gemm.cu`` as data and one launch: its tuning space, constraints and a tile chooser.

Shared by the ``im2col`` strategy (B is the column workspace) and the ``pointwise`` one (B is x itself).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ..problem import ConvProblem
from ..strategy import Params
from .executor import Executor
from .occupancy import Device, current_device, variant_blocks_per_sm
from .source import ACC_BYTES, ITEM_BYTES, fits_smem, thread_tile_threads
from .spills import spill_free

KERNEL, FUNC = "gemm", "gemm"

#: Block tile BM x BN x BK and thread tile TM x TN.
SPACE: dict[str, list[int]] = {
    "BM": [32, 64, 128],
    "BN": [32, 64, 128],
    "BK": [8, 16, 32],
    "TM": [2, 4, 8],
    "TN": [2, 4, 8],
}
#: 128 x 128 tiles of 4 x 8 per thread: 512 threads, one block per SM. The 8 x 8 thread tile (256 threads at 128
#: registers, two blocks per SM) spills 32-36 bytes in float32 on sm_80; of the 128 x 128 tiles left in every
#: dtype (4 x 8 and 8 x 4), 4 x 8 needs the fewest float32 registers on the worse architecture (ptxas report:
#: 103 on sm_90 and 99 on sm_80, against 107 and 92; 128 in float64 on both).
DEFAULTS: dict[str, int] = {"BM": 128, "BN": 128, "BK": 8, "TM": 4, "TN": 8}

REGISTERS_PER_SM = 65536
threads = thread_tile_threads


def smem_bytes(params: Params, dtype: str) -> int:
    """Static shared memory: two stages of A ``[BK][BM + 16 bytes]`` and B ``[BK][BN]`` in ``ACC_T``."""
    acc = ACC_BYTES[dtype]
    return 2 * params["BK"] * (params["BM"] + 16 // acc + params["BN"]) * acc


def registers(params: Params, dtype: str) -> int:
    """The kernel's own rough register estimate (``kRegEstimate`` in gemm.cu)."""
    vec = 16 // ITEM_BYTES[dtype]
    nt = threads(params)
    loads = -(-params["BM"] * params["BK"] // vec // nt) + -(-params["BK"] * params["BN"] // vec // nt)
    tm, tn = params["TM"], params["TN"]
    return (tm * tn + tm + tn + loads * vec) * (ACC_BYTES[dtype] // 4) + 24


def _dtypes(problem: ConvProblem | None) -> tuple[str, ...]:
    # Without a problem, a point must work for every dtype.
    return (problem.dtype,) if problem is not None else tuple(ITEM_BYTES)


def _threads_ok(params: Params, problem: ConvProblem | None) -> bool:
    return 64 <= threads(params) <= 1024


def _fits_smem(params: Params, problem: ConvProblem | None) -> bool:
    return fits_smem(smem_bytes, params, problem)


def _fits_registers(params: Params, problem: ConvProblem | None) -> bool:
    # Beyond this the compiler must squeeze the block into the register file and spills.
    return all(registers(params, d) <= 255 and registers(params, d) * threads(params) <= REGISTERS_PER_SM
               for d in _dtypes(problem))


CONSTRAINTS = (_threads_ok, _fits_smem, _fits_registers, spill_free(KERNEL))  # spills: measured, see .spills

# Tile shapes the heuristic picks from, largest first (all satisfy CONSTRAINTS for the dtypes they serve).
_PRESETS: tuple[dict[str, int], ...] = (
    DEFAULTS,
    {"BM": 64, "BN": 128, "BK": 8, "TM": 4, "TN": 8},
    {"BM": 128, "BN": 64, "BK": 8, "TM": 8, "TN": 4},
    {"BM": 64, "BN": 64, "BK": 16, "TM": 4, "TN": 4},
    {"BM": 32, "BN": 128, "BK": 16, "TM": 2, "TN": 8},
    {"BM": 32, "BN": 64, "BK": 16, "TM": 2, "TN": 4},
)
_DOUBLE_PRESETS: tuple[dict[str, int], ...] = (
    {"BM": 64, "BN": 64, "BK": 8, "TM": 4, "TN": 4},
    {"BM": 32, "BN": 64, "BK": 16, "TM": 2, "TN": 4},
)


def pick(m: int, n: int, batch: int, dtype: str, device: Device | None = None,
         binary: Callable[[Mapping[str, int]], Mapping[str, int]] | None = None) -> dict[str, int]:
    """Tiles for an ``m x n`` output (``batch`` times) without tuning: the largest preset that wastes little of
    its tiles and still fills one wave of ``device`` (default: the current one) with resident blocks, else the one
    with the least waste. Blocks per SM come from ptxas' figures for the binary ``binary(preset)`` builds
    (default: the preset itself; :func:`~gpuconv.cuda.occupancy.variant_blocks_per_sm`)."""
    presets = _DOUBLE_PRESETS if dtype == "float64" else _PRESETS
    dev = device if device is not None else current_device()
    targets = {id(p): dev.sm_count * variant_blocks_per_sm(dev, KERNEL, FUNC, dict(binary(p) if binary else p), dtype,
                                                           threads(p), smem_bytes(p, dtype)) for p in presets}

    def target(p: Mapping[str, int]) -> int:
        return targets[id(p)]

    def blocks(p: Mapping[str, int]) -> int:
        return -(-m // p["BM"]) * -(-n // p["BN"]) * batch

    def waste(p: Mapping[str, int]) -> float:
        return 1 - m * n * batch / (blocks(p) * p["BM"] * p["BN"])

    for p in presets:
        if blocks(p) >= target(p) and waste(p) < 0.25:
            return dict(p)
    return dict(min(presets, key=lambda p: (waste(p) > 0.25, -min(blocks(p), target(p)), waste(p))))


def launch(ex: Executor, params: Params, dtype: str, *, a: Any, b: Any, bias: Any, c: Any, m: int, n: int, k: int,
           batch: int, lda: int, a_batch: int, ldb: int, b_batch: int, b_cols: int, b_img: int, ldc: int,
           c_batch: int, c_cols: int, c_img: int, bias_batch: int) -> None:
    """``C(m, j) = A(m, :) . B(:, j) + bias(m)`` for ``batch`` independent products (see gemm.cu for the layout).

    ``bias`` may be None (the kernel then gets the executor's dummy buffer for the unused pointer). ``c`` is in
    ACC_T where ``params`` holds ``GEMM_ACC_OUT``. Every offset inside one batch entry must fit in int32; the
    callers chunk to ensure it.
    """
    grid = (-(-n // params["BN"]), -(-m // params["BM"]), batch)
    args = [a, b, ex.dummy(dtype) if bias is None else bias, c, m, n, k, lda, a_batch, ldb, b_batch, b_cols, b_img,
            ldc, c_batch, c_cols, c_img, bias_batch, int(bias is not None)]
    ex.launch(KERNEL, FUNC, params, dtype, grid, (threads(params), 1, 1), args)
