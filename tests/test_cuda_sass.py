"""The implicit GEMMs' main loops in sm_90 machine code: the SIMT kernel's mostly FFMA with fragments read as 16-byte
shared loads, the tensor-core kernel's a floor of HMMA; neither with integer division or local memory.

The default float32 variant is compiled to a cubin (ptxas on NVRTC's PTX, or nvcc where this ptxas cannot read
NVRTC's PTX version) and disassembled with ``cuobjdump -sass``. The main loop is the body of the backward
branch that holds the most FFMAs. Skipped where ptxas or cuobjdump (``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm``, in the test extra) are missing.

Measured (ptxas/nvcc 13.0, cuobjdump 13.5): the kernel this one replaced issued 128 FFMA among 407
instructions per slice (31%): scalar shared loads, scalar global loads and four integer divisions per element.
Now 1024 FFMA among 1351 instructions per two slices (76%). The gradient kernels had the loop the forward one
replaced (scalar shared loads of strided fragments, and per slice a division of every element's reduction index):
dgrad's 128 x 128 tile of 8 x 8 issued 512 FFMA among 1370 instructions (37.4%), wgrad's 512 among 1115 (45.9%),
their 64 x 64 defaults of 4 x 4 22.7% and 26.6%; with contiguous fragments read as 16-byte loads and reduction
counters stepped per slice, 62.5% and 70.6%, and 43.1% and 46.7%.

The tensor-core kernel's loop (the float16 heuristic's 128 x 128 x 32 tile of 2 x 4 warps, two stages) issued 32
HMMA among 358 instructions per slice (8.9%) when every slice divided its reduction index into (r, s, c) and
built generic addresses for every ``ldmatrix`` and ``cp.async``; with counters stepped per slice, per-chunk
offsets advanced in place and shared addresses from ``__cvta_generic_to_shared``, 32 among 176 (18.2%); with
two slices per iteration (the loop unrolled twice, so the buffer of each is known), 64 among 307 (20.8%). With
the buffers in dynamic shared memory and the stages tracked by a wrapping counter (a modulo by 3 cost 13 more
instructions), 64 among 319 (20.1%); with out-of-range chunks passing their unused source address as computed
(a copy of 0 bytes reads nothing) instead of selecting an in-bounds one, 64 among 297 (21.5%). The heuristic
now takes four stages of that tile (80 KiB of dynamic shared memory, past static shared memory's 48 KiB; 128
registers, two blocks per SM on sm_90): 64 among 301 (21.3%); three stages issue 64 among 303. An
``mma.m16n8k16`` takes the tensor core of an SM sub-partition 4 cycles on an H100 (2048 multiply-adds each),
so a quarter of issued instructions is what keeps it busy.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuconv.cuda import dgrad, implicit_gemm, tc_implicit_gemm, wgrad
from gpuconv.cuda.compile import compile_ptx
from gpuconv.cuda.occupancy import DEFAULT_DEVICE
from gpuconv.cuda.source import render
from gpuconv.problem import make_problem

#: The main loop's FFMA share must stay above this (what the kernel reaches, less a margin for compiler versions).
MIN_FFMA_SHARE = 0.74
#: The same for the tensor-core kernel's HMMA share (21.3% measured at the heuristic's four stages).
MIN_HMMA_SHARE = 0.20
#: The gradient kernels' FFMA floors at their largest tile and at their defaults (measured: dgrad 62.5% and 43.1%,
#: wgrad 70.6% and 46.7%).
MIN_GRAD_SHARES = {"dgrad": (0.60, 0.40), "wgrad": (0.68, 0.44)}


def _tool(name: str) -> str | None:
    """``name`` on PATH, else from the NVIDIA wheels (``nvidia/cu13/bin``) next to this environment's packages."""
    found = shutil.which(name)
    if found:
        return found
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        for path in sorted(Path(root).glob(f"cu*/bin/{name}")):
            if os.access(path, os.X_OK):
                return str(path)
    return None


def cubin(kernel: str, params: dict[str, int], dtype: str, tmp: Path) -> Path:
    """An sm_90 cubin of the rendered kernel."""
    out = tmp / f"{kernel}.cubin"
    ptx = tmp / f"{kernel}.ptx"
    ptx.write_text(compile_ptx(kernel, params, dtype, "compute_90"))
    proc = subprocess.run(["ptxas", "-arch=sm_90", str(ptx), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode != 0 and "Unsupported .version" in proc.stderr and shutil.which("nvcc"):
        src = tmp / f"{kernel}.cu"
        src.write_text(render(kernel, params, dtype))
        proc = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", str(src), "-o", str(out)],
                              capture_output=True, text=True)
    assert proc.returncode == 0, f"building the cubin of {kernel} {params} {dtype} failed:\n{proc.stderr}"
    return out


def sass_instructions(sass: str, func: str) -> list[tuple[int, str, str]]:
    """``(address, opcode, operands)`` of every instruction of ``func`` in ``cuobjdump -sass`` output."""
    start = re.search(rf"Function : {re.escape(func)}\s*$", sass, re.M)
    assert start, f"no function {func!r} in the disassembly"
    end = re.search(r"^\s*Function : ", sass[start.end():], re.M)
    body = sass[start.end():start.end() + end.start()] if end else sass[start.end():]
    pattern = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
    return [(int(m.group(1), 16), m.group(2), m.group(3).strip()) for m in pattern.finditer(body)]


def main_loop(instructions: list[tuple[int, str, str]], fma: str = "FFMA") -> list[tuple[int, str, str]]:
    """The body of the backward branch (target <= its own address) that holds the most ``fma`` instructions."""
    loops = []
    for addr, op, args in instructions:
        target = re.match(r"(?:`\(\.L_x_\d+\)|0x([0-9a-f]+))", args) if op.startswith("BRA") else None
        if target and target.group(1) and int(target.group(1), 16) <= addr:
            lo = int(target.group(1), 16)
            loops.append([i for i in instructions if lo <= i[0] <= addr])
    assert loops, "no backward branch: no loop found"
    return max(loops, key=lambda body: sum(op.startswith(fma) for _, op, _ in body))


def test_loop_finder() -> None:
    sass = ("\tFunction : f\n"
            "        /*0000*/                   MOV R1, c[0x0][0x28] ;\n"
            "        /*0010*/                   FFMA R2, R3, R4, R2 ;\n"
            "        /*0020*/                   LDS.128 R4, [R5] ;\n"
            "        /*0030*/               @P0 BRA 0x10 ;\n"
            "        /*0040*/                   FFMA R2, R3, R4, R2 ;\n"
            "        /*0050*/                   EXIT ;\n")
    body = main_loop(sass_instructions(sass, "f"))
    assert [op for _, op, _ in body] == ["FFMA", "LDS.128", "BRA"]


def _disassemble(binary: Path) -> str:
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(_tool("nvdisasm")).parent), os.environ.get("PATH", "")]))
    proc = subprocess.run([_tool("cuobjdump"), "-sass", str(binary)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _ffma_loop(kernel: str, func: str, params: dict[str, int], tmp: Path, min_share: float) -> None:
    """The float32 main loop of ``kernel`` at ``params``: whole slices of FFMA, at least ``min_share`` of it,
    fragments read as 16-byte shared loads, no integer division and no local memory."""
    body = main_loop(sass_instructions(_disassemble(cubin(kernel, params, "float32", tmp)), func))
    ops = collections.Counter(op for _, op, _ in body)
    ffma = sum(n for op, n in ops.items() if op.startswith("FFMA"))
    share = ffma / len(body)
    print(f"\n{kernel} {params} float32 main loop: {ffma} FFMA of {len(body)} instructions ({share:.1%}); "
          f"{dict(ops.most_common(12))}")
    assert ffma % (params["TM"] * params["TN"] * params["BK"]) == 0, "a whole number of slices per iteration"
    assert share >= min_share, f"the main loop's FFMA share fell to {share:.1%}: {dict(ops)}"
    lds = {op for op in ops if op.startswith("LDS")}
    assert lds == {"LDS.128"}, f"fragments must be read as 16-byte shared loads, got {sorted(lds)}"
    assert not {op for op in ops if op.startswith(("I2F", "MUFU", "LDL", "STL"))}, \
        f"integer division (I2F/MUFU.RCP) or local memory in the main loop: {dict(ops)}"


NEEDS_TOOLS = pytest.mark.skipif(
    _tool("cuobjdump") is None or _tool("nvdisasm") is None or shutil.which("ptxas") is None,
    reason="needs ptxas and cuobjdump/nvdisasm (CUDA toolkit or the nvidia-cuda-* wheels)")


@NEEDS_TOOLS
def test_implicit_gemm_main_loop_is_mostly_ffma(tmp_path: Path) -> None:
    # The float32 heuristic's first (largest) tile, which it takes on every layer large enough to fill the GPU;
    # the defaults are a smaller tile that is a point in every dtype.
    bm, bn, bk, tm, tn = implicit_gemm._PREFERRED[0]
    point = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn, "SPLIT_K": 1}
    large = make_problem("conv2d", (32, 256, 28, 28), (256, 256, 3, 3), "float32", False, padding=1)
    assert implicit_gemm.STRATEGY.valid(point, large), f"{point} left the float32 space"
    _ffma_loop(implicit_gemm.KERNEL, implicit_gemm.FUNC, implicit_gemm.tiles(point), tmp_path, MIN_FFMA_SHARE)


@NEEDS_TOOLS
@pytest.mark.parametrize("module", [dgrad, wgrad], ids=["dgrad", "wgrad"])
def test_gradient_main_loops(module: object, tmp_path: Path) -> None:
    # Their largest tile (the 8 x 8 thread tiles of 128 x 128) and their defaults (4 x 4 of 64 x 64), both in the
    # float32 space; floors a few points under what they reach (see MIN_GRAD_SHARES).
    problem = make_problem("conv2d", (32, 256, 28, 28), (256, 256, 3, 3), "float32", False, padding=1,
                           direction="input" if module is dgrad else "weight")
    for point, floor in zip(({"BM": 128, "BN": 128, "BK": 8, "TM": 8, "TN": 8}, dict(module.DEFAULTS)),
                            MIN_GRAD_SHARES[module.KERNEL]):
        point = {**point, **({"SPLIT_K": 1} if "SPLIT_K" in module.SPACE else {})}
        assert module.STRATEGY.valid(point, problem), f"{point} left the float32 space"
        _ffma_loop(module.KERNEL, module.FUNC, {k: point[k] for k in ("BM", "BN", "BK", "TM", "TN")}, tmp_path,
                   floor)


@NEEDS_TOOLS
def test_tc_implicit_gemm_main_loop_issues_hmma(tmp_path: Path) -> None:
    # The float16 heuristic's tile on a layer that fills an H100 (what the tuner's fallback and most layers run).
    large = make_problem("conv2d", (32, 256, 28, 28), (256, 256, 3, 3), "float16", False, padding=1)
    params = tc_implicit_gemm.heuristic_params(large, DEFAULT_DEVICE)
    assert (params["BM"], params["BN"]) == (128, 128), f"the heuristic's first tile changed: {params}"
    binary = cubin(tc_implicit_gemm.KERNEL, params, "float16", tmp_path)
    body = main_loop(sass_instructions(_disassemble(binary), tc_implicit_gemm.FUNC), "HMMA")
    ops = collections.Counter(op for _, op, _ in body)
    hmma = sum(n for op, n in ops.items() if op.startswith("HMMA"))
    share = hmma / len(body)
    print(f"\ntc_implicit_gemm {params} float16 main loop: {hmma} HMMA of {len(body)} instructions ({share:.1%}); "
          f"{dict(ops.most_common(12))}")
    warp_tile = params["BM"] // params["WM"] * params["BN"] // params["WN"]
    assert hmma % (warp_tile // (16 * 8) * params["BK"] // 16) == 0, \
        "one HMMA per 16 x 8 x 16 of the warp tile, a whole number of slices per iteration"
    assert share >= MIN_HMMA_SHARE, f"the main loop's HMMA share fell to {share:.1%}: {dict(ops)}"
    assert any(op.startswith("LDSM") for op in ops), "fragments must come from ldmatrix"
    assert not {op for op in ops if op.startswith(("I2F", "MUFU", "LDL", "STL"))}, \
        f"integer division (I2F/MUFU.RCP) or local memory in the main loop: {dict(ops)}"
