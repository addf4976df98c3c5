"""The implicit GEMM's main loop in sm_90 machine code: mostly FFMA, fragments read as 16-byte shared loads, no
integer division and no local memory.

The default float32 variant is compiled to a cubin (ptxas on NVRTC's PTX, or nvcc where this ptxas cannot read
NVRTC's PTX version) and disassembled with ``cuobjdump -sass``. The main loop is the body of the backward
branch that holds the most FFMAs. Skipped where ptxas or cuobjdump (``nvidia-cuda-cuobjdump`` and
``nvidia-cuda-nvdisasm``, in the test extra) are missing.

Measured (ptxas/nvcc 13.0, cuobjdump 13.5): the kernel this one replaced issued 128 FFMA among 407
instructions per slice (31%): scalar shared loads, scalar global loads and four integer divisions per element.
Now 1024 FFMA among 1351 instructions per two slices (76%).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuconv.cuda import implicit_gemm
from gpuconv.cuda.compile import compile_ptx
from gpuconv.cuda.source import render
from gpuconv.problem import make_problem

#: The main loop's FFMA share must stay above this (what the kernel reaches, less a margin for compiler versions).
MIN_FFMA_SHARE = 0.74


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


@pytest.mark.skipif(_tool("cuobjdump") is None or _tool("nvdisasm") is None or shutil.which("ptxas") is None,
                    reason="needs ptxas and cuobjdump/nvdisasm (CUDA toolkit or the nvidia-cuda-* wheels)")
def test_implicit_gemm_main_loop_is_mostly_ffma(tmp_path: Path) -> None:
    # The float32 heuristic's first (largest) tile, which it takes on every layer large enough to fill the GPU;
    # the defaults are a smaller tile that is a point in every dtype.
    bm, bn, bk, tm, tn = implicit_gemm._PREFERRED[0]
    point = {"BM": bm, "BN": bn, "BK": bk, "TM": tm, "TN": tn, "SPLIT_K": 1}
    large = make_problem("conv2d", (32, 256, 28, 28), (256, 256, 3, 3), "float32", False, padding=1)
    assert implicit_gemm.STRATEGY.valid(point, large), f"{point} left the float32 space"
    params = implicit_gemm.tiles(point)
    binary = cubin(implicit_gemm.KERNEL, params, "float32", tmp_path)
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(_tool("nvdisasm")).parent), os.environ.get("PATH", "")]))
    proc = subprocess.run([_tool("cuobjdump"), "-sass", str(binary)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    body = main_loop(sass_instructions(proc.stdout, implicit_gemm.FUNC))
    ops = collections.Counter(op for _, op, _ in body)
    ffma = sum(n for op, n in ops.items() if op.startswith("FFMA"))
    share = ffma / len(body)
    print(f"\nimplicit_gemm {params} float32 main loop: {ffma} FFMA of {len(body)} instructions ({share:.1%}); "
          f"{dict(ops.most_common(12))}")
    assert ffma % (params["TM"] * params["TN"] * params["BK"]) == 0, "a whole number of slices per iteration"
    assert share >= MIN_FFMA_SHARE, f"the main loop's FFMA share fell to {share:.1%}: {dict(ops)}"
    lds = {op for op in ops if op.startswith("LDS")}
    assert lds == {"LDS.128"}, f"fragments must be read as 16-byte shared loads, got {sorted(lds)}"
    assert not {op for op in ops if op.startswith(("I2F", "MUFU", "LDL", "STL"))}, \
        f"integer division (I2F/MUFU.RCP) or local memory in the main loop: {dict(ops)}"
