"""Compile rendered kernels: a memoized ``cupy.RawModule`` per (kernel, params, dtype, device), or PTX without a GPU.

CuPy keeps compiled binaries on disk keyed by the source text and options; the rendered source is
self-contained (see :mod:`.source`), so that key changes exactly when the binary would.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

from .source import check_dtype, check_params, render

#: NVRTC options for every kernel. No fast-math: results must match the reference within the dtype's rounding.
OPTIONS: tuple[str, ...] = ("-std=c++17",)

#: What ``cupy.RawModule`` adds to every NVRTC compile (``cupy/cuda/compiler.py``, ``_compile_with_cache_cuda``):
#: ``-ftz=true`` flushes float32 subnormals (|v| < 2**-126) to zero in the kernels' arithmetic, inputs and
#: results alike; float64 is unaffected, float16 values are converted exactly and then accumulated in float32.
#: :func:`compile_ptx` passes it too, so the PTX the tests inspect is the code that runs.
CUPY_FORCED_OPTIONS: tuple[str, ...] = ("-ftz=true",)

#: The options a kernel is compiled with at run time, as error messages report them.
EFFECTIVE_OPTIONS: tuple[str, ...] = (*OPTIONS, *CUPY_FORCED_OPTIONS)


class KernelError(RuntimeError):
    """A kernel failed to compile or launch; the message carries the kernel, its parameters, dtype, options and log."""


def _describe(kernel: str, params: Mapping[str, int], dtype: str, options: tuple[str, ...]) -> str:
    return f"kernel {kernel!r} with params {dict(sorted(params.items()))}, dtype {dtype}, options {list(options)}"


@functools.cache
def _module(kernel: str, params: tuple[tuple[str, int], ...], dtype: str, device: int) -> Any:
    """Build and load the module; failures raise and are not memoized, so a later call tries again."""
    import cupy

    code = render(kernel, dict(params), dtype)
    try:
        module = cupy.RawModule(code=code, options=OPTIONS, backend="nvrtc")
        module.compile()
    except Exception as e:
        log = e.get_message() if hasattr(e, "get_message") else str(e)
        raise KernelError(f"failed to compile {_describe(kernel, dict(params), dtype, EFFECTIVE_OPTIONS)}:\n"
                          f"{log}") from e
    return module


def get_function(kernel: str, func: str, params: Mapping[str, int], dtype: str) -> Any:
    """The ``cupy.RawKernel`` for ``extern "C" __global__ void func`` in ``kernels/<kernel>.cu`` on the current device.

    Args:
        kernel: file stem in ``kernels/``.
        func: the kernel function's name.
        params: tunable macros (validated by :func:`gpuconv.cuda.source.check_params`).
        dtype: ``"float16"``, ``"float32"`` or ``"float64"``.

    Raises:
        KernelError: the source does not compile or has no function ``func``.
        ValueError / TypeError: a bad kernel name, parameter or dtype.
    """
    import cupy

    checked = check_params(kernel, params)
    check_dtype(kernel, dtype)
    module = _module(kernel, tuple(sorted(checked.items())), dtype, cupy.cuda.Device().id)
    try:
        return module.get_function(func)
    except Exception as e:
        raise KernelError(f"no function {func!r} in {_describe(kernel, checked, dtype, EFFECTIVE_OPTIONS)}: {e}") from e


def compile_ptx(kernel: str, params: Mapping[str, int], dtype: str, arch: str = "compute_90") -> str:
    """PTX for ``kernels/<kernel>.cu`` through NVRTC; needs no GPU or driver (used by the tests).

    Args:
        arch: a virtual architecture such as ``"compute_80"``.

    Raises:
        KernelError: with the NVRTC log.
    """
    return run_nvrtc(kernel, params, dtype, (*EFFECTIVE_OPTIONS, f"-arch={arch}"), "ptx")


def run_nvrtc(kernel: str, params: Mapping[str, int], dtype: str, options: tuple[str, ...], output: str) -> str:
    """Compile ``kernels/<kernel>.cu`` with NVRTC (no GPU or driver needed) and return its ``output``: ``"ptx"`` or
    ``"log"`` (what ``--ptxas-options=-v`` reports goes there).

    Raises:
        KernelError: with the NVRTC log.
    """
    from cupy_backends.cuda.libs import nvrtc

    checked = check_params(kernel, params)
    code = render(kernel, checked, check_dtype(kernel, dtype))
    prog = nvrtc.createProgram(code, f"kernels/{kernel}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, list(options))
        except Exception as e:
            raise KernelError(f"failed to compile {_describe(kernel, checked, dtype, options)}:\n"
                              f"{nvrtc.getProgramLog(prog)}") from e
        out = nvrtc.getPTX(prog) if output == "ptx" else nvrtc.getProgramLog(prog)
    finally:
        nvrtc.destroyProgram(prog)
    return out.decode() if isinstance(out, bytes) else out
