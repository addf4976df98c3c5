"""Every CUDA strategy's kernels compile with NVRTC (no GPU needed), fit the hardware, and the defaults do not spill.

Which (kernel, function, parameters) a strategy variant compiles is found by running the strategy on a
recording executor, so strategies added to ``gpuconv.cuda.STRATEGIES`` are covered without changes here.
The variant spaces hold hundreds of points; a deterministic sample is compiled unless
``GPUCONV_COMPILE_ALL=1``, and the defaults are always compiled for every dtype and architecture.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Mapping

import numpy as np
import pytest
from helpers import sample_product

from gpuconv.cuda import STRATEGIES
from gpuconv.cuda.compile import KernelError, compile_ptx
from gpuconv.cuda.executor import Launch, RecordingExecutor
from gpuconv.cuda.source import render
from gpuconv.problem import DTYPES, PRECISIONS, ConvProblem, make_problem

ARCHS = ("compute_80", "compute_90")
SMEM_LIMIT = 48 * 1024
SAMPLE = None if os.environ.get("GPUCONV_COMPILE_ALL") == "1" else 10  # sampled variants per strategy and dtype

# Problems to record launches on: the first one a strategy supports is used.
PROBES = (
    dict(x=(2, 64, 16, 16), w=(64, 64, 3, 3), padding=1),
    dict(x=(2, 64, 16, 16), w=(64, 64, 1, 1)),
    dict(x=(2, 64, 16, 16), w=(64, 1, 3, 3), padding=1, groups=64),
)





def probe(name: str, dtype: str) -> ConvProblem | None:
    """The first probe problem the strategy supports in ``dtype`` (at any precision), None if there is none."""
    strategy = STRATEGIES[name]
    for spec in PROBES:
        for precision in PRECISIONS:
            spec_ = dict(spec)
            problem = make_problem("conv2d", spec_.pop("x"), spec_.pop("w"), dtype, True, precision=precision, **spec_)
            if strategy.supports(problem):
                return problem
    return None


def probe_dtypes(name: str) -> list[str]:
    """The dtypes a probe problem exists for; every strategy has at least one."""
    found = [d for d in DTYPES if probe(name, d) is not None]
    assert found, f"no probe problem for strategy {name!r}; add one to PROBES"
    return found


def launches_of(name: str, params: Mapping[str, int], problem: ConvProblem) -> list[Launch]:
    ex = RecordingExecutor()
    x = np.ones((problem.n, problem.c, problem.h, problem.w), problem.dtype)
    w = np.ones((problem.k, problem.cg, problem.r, problem.s), problem.dtype)
    y = np.empty(problem.out_shape4, problem.dtype)
    STRATEGIES[name].run(ex, problem, dict(params), x, w, np.ones(problem.k, problem.dtype), y)
    assert ex.launches, f"strategy {name!r} launched nothing"
    return ex.launches


def variant_points() -> list[tuple[str, str, tuple[tuple[str, int], ...]]]:
    """(strategy, dtype, params) to compile: the defaults, plus a deterministic sample of the valid variants."""
    points = []
    for name in sorted(STRATEGIES):
        for dtype in probe_dtypes(name):
            problem = probe(name, dtype)
            variants = [tuple(sorted(v.items())) for v in STRATEGIES[name].variants(problem)]
            defaults = tuple(sorted(STRATEGIES[name].defaults.items()))
            chosen = sample_product(variants, limit=SAMPLE, seed=len(points))
            points += [(name, dtype, p) for p in dict.fromkeys([defaults, *(c[0] for c in chosen)])]
    return points


POINTS = variant_points()


@functools.cache
def ptx_of(kernel: str, params: tuple[tuple[str, int], ...], dtype: str, arch: str) -> str:
    return compile_ptx(kernel, dict(params), dtype, arch)


def shared_bytes(ptx: str) -> dict[str, int]:
    """Static shared memory per ``.entry`` of a PTX module (module-scope variables go to the entries naming them)."""
    sizes = {"b8": 1, "u8": 1, "s8": 1, "b16": 2, "u16": 2, "s16": 2, "f16": 2, "b32": 4, "u32": 4, "s32": 4,
             "f32": 4, "b64": 8, "u64": 8, "s64": 8, "f64": 8}
    decl = re.compile(r"^\s*\.shared\s+(?:\.align\s+\d+\s+)?\.(\w+)\s+(\w+)(?:\[(\d+)\])?\s*;", re.M)
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+(\w+)\s*\(", ptx)]
    bounds = [(name, pos, starts[i + 1][0] if i + 1 < len(starts) else len(ptx)) for i, (pos, name) in
              enumerate(starts)]
    out = {name: 0 for name, _, _ in bounds}
    first = starts[0][0] if starts else len(ptx)
    for m in decl.finditer(ptx):
        nbytes = sizes[m.group(1)] * int(m.group(3) or 1)
        for name, lo, hi in bounds:
            if lo <= m.start() < hi or (m.start() < first and re.search(rf"\b{m.group(2)}\b", ptx[lo:hi])):
                out[name] += nbytes
    return out


def test_sampling_is_deterministic_and_covers_every_strategy() -> None:
    assert POINTS == variant_points()
    assert {name for name, _, _ in POINTS} == set(STRATEGIES)
    for name, strategy in STRATEGIES.items():
        assert strategy.valid(strategy.defaults), f"{name}: defaults {strategy.defaults} are not a valid point"


@pytest.mark.parametrize("name,dtype,params", POINTS, ids=lambda v: v if isinstance(v, str) else
                         "-".join(f"{k}{n}" for k, n in v))
def test_variant_compiles(name: str, dtype: str, params: tuple[tuple[str, int], ...]) -> None:
    problem = probe(name, dtype)
    is_default = params == tuple(sorted(STRATEGIES[name].defaults.items()))
    # Defaults on every architecture; in a sampled run other points alternate, to share the time between them.
    archs = ARCHS if is_default or SAMPLE is None else (ARCHS[zlib.crc32(repr(params).encode()) % len(ARCHS)],)
    for kernel, func, kparams, kdtype in dict.fromkeys(launches_of(name, dict(params), problem)):
        for arch in archs:
            ptx = ptx_of(kernel, kparams, kdtype, arch)
            smem = shared_bytes(ptx)
            assert func in smem, f"{kernel}.cu has no entry {func!r} (entries: {sorted(smem)})"
            assert smem[func] <= SMEM_LIMIT, (f"{kernel}.{func} {dict(kparams)} {kdtype}: {smem[func]} bytes of static "
                                              f"shared memory, the constraints allow it but CUDA does not")


def test_shared_bytes_parser() -> None:
    ptx = ("\t.shared .align 4 .b8 glob[64];\n.visible .entry a(\n)\n{\n\t.shared .align 16 .b8 _ZZ1aE1s[4096];\n"
           "\tmov.u32 %r1, glob;\n}\n.visible .entry b(\n)\n{\n\t.shared .align 8 .f64 one;\n}\n")
    assert shared_bytes(ptx) == {"a": 4096 + 64, "b": 8}


def test_compile_error_carries_the_log() -> None:
    with pytest.raises(KernelError) as info:
        compile_ptx("gemm", {"BM": 64, "BN": 64, "BK": 8, "TM": 3, "TN": 4}, "float32")
    text = str(info.value)
    assert "kernel 'gemm'" in text and "'TM': 3" in text and "float32" in text and "-std=c++17" in text
    assert "kernels/gemm.cu" in text and "thread tile must divide the block tile" in text


def test_render_checks_names_and_values() -> None:
    with pytest.raises(ValueError, match="upper-case C identifiers"):
        render("gemm", {"bm": 64}, "float32")
    with pytest.raises(ValueError, match="upper-case C identifiers"):
        render("gemm", {"BM;\n#define X": 64}, "float32")
    with pytest.raises(ValueError, match=r"must be in 1\.\.4096, got 0"):
        render("gemm", {"BM": 0}, "float32")
    with pytest.raises(TypeError, match="must be an int, got float"):
        render("gemm", {"BM": 64.0}, "float32")
    with pytest.raises(TypeError, match="must be an int, got bool"):
        render("gemm", {"BM": True}, "float32")
    with pytest.raises(ValueError, match="dtype must be one of"):
        render("gemm", {}, "int32")
    with pytest.raises(ValueError, match="unknown kernel 'nope'"):
        render("nope", {}, "float32")
    with pytest.raises(ValueError, match="lower-case identifier"):
        render("../gemm", {}, "float32")
    text = render("gemm", {"BM": 64}, "float16")
    assert text.startswith("#define BM 64\n#define T __half\n#define ACC_T float\n#line 1 \"kernels/gemm.cu\"\n")
    assert '#include "common.cuh"' not in text and "from_acc" in text  # inlined: the text alone is the key


# ---- ptxas on the defaults: registers, spills, shared memory -----------------------------------------------

def _cubin_report(kernel: str, params: Mapping[str, int], dtype: str, tmp: Path) -> str:
    """``ptxas -v`` output for sm_90: on NVRTC's PTX when this ptxas reads its version, else through nvcc."""
    ptx_path = tmp / f"{kernel}.ptx"
    ptx_path.write_text(compile_ptx(kernel, params, dtype, "compute_90"))
    proc = subprocess.run(["ptxas", "-arch=sm_90", "-v", str(ptx_path), "-o", os.devnull],
                          capture_output=True, text=True)
    if proc.returncode != 0 and "Unsupported .version" in proc.stderr and shutil.which("nvcc"):
        src = tmp / f"{kernel}.cu"
        src.write_text(render(kernel, params, dtype))
        proc = subprocess.run(["nvcc", "-cubin", "-arch=sm_90", "-std=c++17", "-Xptxas", "-v", str(src), "-o",
                               os.devnull], capture_output=True, text=True)
    assert proc.returncode == 0, f"ptxas failed for {kernel} {dict(params)} {dtype}:\n{proc.stderr}{proc.stdout}"
    return proc.stderr + proc.stdout


DEFAULT_LAUNCHES = sorted({(k, f, p, d) for name in sorted(STRATEGIES) for d in probe_dtypes(name)
                           for k, f, p, d in launches_of(name, STRATEGIES[name].defaults, probe(name, d))})


@pytest.mark.skipif(shutil.which("ptxas") is None, reason="needs ptxas (CUDA toolkit)")
@pytest.mark.parametrize("kernel,func,params,dtype", DEFAULT_LAUNCHES,
                         ids=[f"{k}-{d}" + "".join(f"-{n}{v}" for n, v in p) for k, _, p, d in DEFAULT_LAUNCHES])
def test_defaults_do_not_spill(kernel: str, func: str, params: tuple[tuple[str, int], ...], dtype: str,
                               tmp_path: Path) -> None:
    report = _cubin_report(kernel, dict(params), dtype, tmp_path)
    lines = report.splitlines()
    start = next(i for i, line in enumerate(lines) if re.search(rf"Compiling entry function '{func}'", line))
    block = "\n".join(lines[start:start + 4])
    regs = int(re.search(r"Used (\d+) registers", block).group(1))
    smem = re.search(r"(\d+) bytes smem", block)
    spills = [int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", block)]
    print(f"\n{kernel}.{func} {dict(params)} {dtype}: {regs} registers, {smem.group(1) if smem else 0} bytes smem, "
          f"spills {spills}")
    assert spills and not any(spills), f"{kernel}.{func} {dtype} spills at its defaults:\n{block}"
    assert regs <= 255
