"""Kernel source text: ``kernels/<name>.cu`` with its tunables prepended as ``#define``s.

The rendered text is self-contained: local ``#include "x.cuh"`` lines are replaced by the file they name,
so the text alone determines the binary (CuPy's on-disk cache is keyed by it) and no include path is needed
by NVRTC or by the CPU emulation in the tests.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable, Mapping

from .._data import data_dir
from ..problem import DTYPES, ConvProblem

KERNEL_DIR = data_dir("_kernels", "kernels")

#: C element type and accumulator type per dtype; float16 and bfloat16 accumulate in float32.
CTYPES: dict[str, tuple[str, str]] = {
    "float16": ("__half", "float"),
    "bfloat16": ("__nv_bfloat16", "float"),
    "float32": ("float", "float"),
    "float64": ("double", "double"),
}

#: Bytes of the accumulator type: the kernels stage their shared-memory tiles in ACC_T.
ACC_BYTES: dict[str, int] = {"float16": 4, "bfloat16": 4, "float32": 4, "float64": 8}

#: Bytes of one element of each dtype.
ITEM_BYTES: dict[str, int] = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}

#: The dtypes the SIMT kernels (every CUDA strategy but ``tc_implicit_gemm``) are built for; bfloat16 runs on the
#: tensor cores only.
SIMT_DTYPES: tuple[str, ...] = ("float16", "float32", "float64")

#: Static shared memory a block may declare.
SMEM_LIMIT = 48 * 1024

#: The largest value of a kernel's ``int`` index or argument.
INT32_MAX = 2**31 - 1

#: Streaming multiprocessors assumed when no device can be asked (an H100/H200 SXM has 132).
DEFAULT_SM_COUNT = 132


def sm_count() -> int:
    """Multiprocessors of the current CUDA device, or :data:`DEFAULT_SM_COUNT` where none can be asked."""
    try:
        import cupy

        return int(cupy.cuda.Device().attributes["MultiProcessorCount"])
    except Exception:  # no driver or no device (compile-only and emulated runs)
        return DEFAULT_SM_COUNT


def thread_tile_threads(params: Mapping[str, int]) -> int:
    """Threads per block of a BM x BN block tile computed in TM x TN thread tiles (the GEMM-like kernels)."""
    return (params["BM"] // params["TM"]) * (params["BN"] // params["TN"])


def fits_smem(smem_bytes: Callable[[Mapping[str, int], str], int], params: Mapping[str, int],
              problem: ConvProblem | None) -> bool:
    """Whether a kernel's static shared memory fits for ``problem``'s dtype, or, without a problem, for every
    dtype (the widest accumulator decides), so that every point of a space compiles."""
    dtypes = (problem.dtype,) if problem is not None else tuple(ACC_BYTES)
    return all(smem_bytes(params, d) <= SMEM_LIMIT for d in dtypes)

_NAME = re.compile(r"[A-Z][A-Z0-9_]*\Z")
_KERNEL = re.compile(r"[a-z][a-z0-9_]*\Z")
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]*"([^"]+)"[ \t]*$', re.M)
_PRAGMA_ONCE = re.compile(r"^[ \t]*#[ \t]*pragma[ \t]+once[ \t]*$", re.M)  # inlined once already
_RESERVED = {"T", "ACC_T"}
MAX_VALUE = 4096


def kernel_path(kernel: str) -> Path:
    """The file of a kernel name such as ``"gemm"``; raises ``ValueError`` for a bad or unknown name."""
    if not isinstance(kernel, str) or not _KERNEL.match(kernel):
        raise ValueError(f"kernel name must be a lower-case identifier, got {kernel!r}")
    path = KERNEL_DIR / f"{kernel}.cu"
    if not path.is_file():
        known = sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
        raise ValueError(f"unknown kernel {kernel!r}: no {path}; kernels are {known}")
    return path


def check_params(kernel: str, params: Mapping[str, int]) -> dict[str, int]:
    """Validate tunable names (upper-case C identifiers) and values (ints in 1..4096) before they reach a compiler."""
    out: dict[str, int] = {}
    for name, value in params.items():
        if not isinstance(name, str) or not _NAME.match(name) or name in _RESERVED:
            raise ValueError(f"{kernel}: parameter names must be upper-case C identifiers other than "
                             f"{sorted(_RESERVED)}, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int) and not hasattr(value, "__index__"):
            raise TypeError(f"{kernel}: parameter {name} must be an int, got {type(value).__name__} {value!r}")
        v = int(value.__index__())
        if not 1 <= v <= MAX_VALUE:
            raise ValueError(f"{kernel}: parameter {name} must be in 1..{MAX_VALUE}, got {v}")
        out[name] = v
    return out


def check_dtype(kernel: str, dtype: str) -> str:
    if dtype not in CTYPES:
        raise ValueError(f"{kernel}: dtype must be one of {list(DTYPES)}, got {dtype!r}")
    return dtype


def _inline(path: Path, seen: set[Path]) -> str:
    """The file's text with local includes replaced by their contents (each file once, like ``#pragma once``)."""
    seen.add(path)
    text = path.read_text()
    rel = f"kernels/{path.name}"

    def include(m: re.Match[str]) -> str:
        target = (path.parent / m.group(1)).resolve()
        if not target.is_file():
            return m.group(0)  # left to the compiler, which reports it with the right line
        line = text.count("\n", 0, m.start()) + 2
        body = "" if target in seen else _PRAGMA_ONCE.sub("", _inline(target, seen))
        return f'#line 1 "kernels/{target.name}"\n{body}\n#line {line} "{rel}"'

    return _INCLUDE.sub(include, text)


def render(kernel: str, params: Mapping[str, int], dtype: str) -> str:
    """The source of ``kernels/<kernel>.cu`` specialized for ``params`` and ``dtype``.

    Args:
        kernel: file stem in ``kernels/``, e.g. ``"gemm"``.
        params: tunable name -> value, emitted as ``#define NAME value`` ahead of the file's defaults.
        dtype: ``"float16"``, ``"bfloat16"``, ``"float32"`` or ``"float64"``; defines ``T`` and ``ACC_T``.

    Returns:
        Self-contained CUDA C++ text; compiler messages point at ``kernels/<kernel>.cu`` lines.

    Raises:
        ValueError / TypeError: a bad kernel name, parameter name or value, or dtype.

    Example:
        >>> print(render("gemm", {"BM": 64}, "float32").splitlines()[0])
        #define BM 64
    """
    path = kernel_path(kernel)
    checked = check_params(kernel, params)
    elem, acc = CTYPES[check_dtype(kernel, dtype)]
    defines = [f"#define {k} {v}" for k, v in sorted(checked.items())]
    defines += [f"#define T {elem}", f"#define ACC_T {acc}", f'#line 1 "kernels/{kernel}.cu"']
    return "\n".join(defines) + "\n" + _inline(path, set())


def source_hash() -> str:
    """sha256 over every ``kernels/*.cu`` and ``*.cuh`` (names and contents): part of every tuning-cache key."""
    h = hashlib.sha256()
    for path in sorted([*KERNEL_DIR.glob("*.cu"), *KERNEL_DIR.glob("*.cuh")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def kernel_hash(kernel: str) -> str:
    """sha256 of ``kernels/<kernel>.cu`` with its includes inlined (what :func:`render` appends to the defines):
    it changes exactly when a variant of this kernel may compile differently."""
    return hashlib.sha256(_inline(kernel_path(kernel), set()).encode()).hexdigest()
