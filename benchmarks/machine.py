"""What the numbers were measured on: CPU, BLAS and the core type it chose, GPU, library versions.

OpenBLAS picks its kernels ("core type") once, when NumPy loads it; ``OPENBLAS_CORETYPE`` in the
environment overrides the choice and is only read at that moment. :func:`probe_coretype` therefore
tries a core type in a child process, where a kernel the CPU cannot run kills only the child.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

# The vector-extension flags that decide which BLAS kernels can run; the full list is long and unhelpful.
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_bf16", "avx512_fp16",
          "amx_tile")
_LIBRARIES = ("numpy", "scipy", "jax", "jaxlib", "torch", "cupy-cuda13x", "cupy-cuda12x", "gpuconv",
              "threadpoolctl", "matplotlib")


def cores() -> int:
    """CPUs this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def cpu_info() -> dict[str, Any]:
    """Model, family/model numbers, clock and vector flags, from py-cpuinfo or ``/proc/cpuinfo``."""
    info: dict[str, Any] = {"model": platform.processor() or platform.machine(), "cores": cores(),
                            "logical_cpus": os.cpu_count()}
    flags: set[str] = set()
    try:
        import cpuinfo

        raw = cpuinfo.get_cpu_info()
        info.update(model=raw.get("brand_raw", info["model"]), vendor=raw.get("vendor_id_raw"),
                    family=raw.get("family"), model_number=raw.get("model"), clock=raw.get("hz_advertised_friendly"))
        flags = set(raw.get("flags", ()))
    except ImportError:
        info["note"] = "py-cpuinfo is not installed: pip install 'gpuconv[bench]'"
        try:
            text = open("/proc/cpuinfo").read()
            model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
            found = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
            if model:
                info["model"] = model.group(1).strip()
            if found:
                flags = set(found.group(1).split())
        except OSError:
            pass
    from gpuconv.cpu import _machine

    ident = _machine.cpu_identity()  # what the Winograd profiles are matched by, whichever source answered
    info.update({k: v for k, v in ident.items() if info.get(k) is None})
    info["flags"] = [f for f in _FLAGS if f in flags]
    return info


def blas_info() -> list[dict[str, Any]]:
    """Every BLAS/OpenMP pool loaded in this process (``threadpoolctl``): library, version, core type, threads."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl is not installed: pip install 'gpuconv[bench]'"}]
    keep = ("user_api", "internal_api", "version", "architecture", "num_threads", "threading_layer")
    rows = []
    for pool in threadpool_info():
        row = {k: pool[k] for k in keep if k in pool}
        row["library"] = os.path.basename(pool.get("filepath", ""))
        rows.append(row)
    return rows


def numpy_blas() -> dict[str, Any]:
    """The BLAS NumPy itself loaded (the first ``blas`` pool whose file ships with NumPy), or the first one."""
    pools = [p for p in blas_info() if p.get("user_api") == "blas"]
    for pool in pools:
        if "numpy" in pool.get("library", "") or "scipy_openblas" in pool.get("library", ""):
            return pool
    return pools[0] if pools else {}


def gpu_info() -> dict[str, Any] | None:
    """Name, compute capability, memory, driver and runtime versions of CUDA device 0, or None."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        props = cupy.cuda.runtime.getDeviceProperties(0)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {
            "name": name,
            "compute_capability": f"{props['major']}.{props['minor']}",
            "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
            "sm_count": props["multiProcessorCount"],
            "driver": _cuda_version(cupy.cuda.runtime.driverGetVersion()),
            "cuda_runtime": _cuda_version(cupy.cuda.runtime.runtimeGetVersion()),
        }
    except Exception:  # no CuPy, no driver, or no device
        return None


def has_cuda_device() -> bool:
    """Whether CuPy sees a usable CUDA device (the probe the tuner uses)."""
    from gpuconv.measure import cuda_available

    return cuda_available()


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def versions() -> dict[str, str]:
    """Installed versions of the libraries that take part (absent ones are left out)."""
    out = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def source_state() -> dict[str, Any]:
    """The git commit of the gpuconv checkout that ran, and its files changed since (a dirty tree is named)."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--", "gpuconv", "kernels"], cwd=root,
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"note": f"git unavailable: {e}"}
    if head.returncode != 0:
        return {"note": "not a git checkout"}
    return {"commit": head.stdout.strip(), "changed": [line[3:] for line in status.stdout.splitlines()]}


def machine_info(backend: str) -> dict[str, Any]:
    """Everything about the machine worth printing next to a number measured on ``backend``."""
    info: dict[str, Any] = {
        "slug": slug(backend),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "blas": numpy_blas(),
        "thread_pools": blas_info(),
        "openblas_coretype_env": os.environ.get("OPENBLAS_CORETYPE"),
        "versions": versions(),
        "gpuconv_source": source_state(),
    }
    if backend == "cuda":
        info["gpu"] = gpu_info()
    return info


def slug(backend: str) -> str:
    """A short directory name for this machine: the GPU name on ``cuda``, else the CPU model name, its family and
    model numbers and the core count (``amd-epyc-f25m17-2c``): one model name covers processors as different as
    an AVX2-only and an AVX-512 EPYC, whose figures must not share a directory."""
    if backend == "cuda" and (gpu := gpu_info()):
        text = gpu["name"]
    else:
        cpu = cpu_info()
        part = f"-f{cpu['family']}m{cpu['model_number']}" if cpu.get("family") is not None and \
            cpu.get("model_number") is not None else ""
        text = f"{cpu['model']}{part}-{cores()}c"
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "machine"


def probe_coretype(coretype: str, timeout: float = 120.0) -> tuple[bool, str]:
    """Whether NumPy's OpenBLAS runs with ``OPENBLAS_CORETYPE=coretype`` here, and what it reports.

    A core type whose instructions the CPU lacks (AVX-512 kernels on a CPU or VM that does not expose
    ``avx512f``) dies with SIGILL on the first GEMM, so the probe runs one in a child process.

    Returns:
        ``(True, architecture OpenBLAS reports)`` or ``(False, why not)``.
    """
    code = ("import numpy as np; a = np.ones((256, 256), np.float32); a @ a\n"
            "from threadpoolctl import threadpool_info\n"
            "print(next((p.get('architecture', '?') for p in threadpool_info() if p['user_api'] == 'blas'), '?'))")
    env = {**os.environ, "OPENBLAS_CORETYPE": coretype}
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"OPENBLAS_CORETYPE={coretype}: the probe did not finish in {timeout:.0f} s"
    if done.returncode < 0:
        sig = signal.Signals(-done.returncode).name
        flags = cpu_info()["flags"]
        why = (" (the CPU does not report avx512f, so AVX-512 kernels cannot run)"
               if sig == "SIGILL" and "avx512f" not in flags else "")
        return False, f"OPENBLAS_CORETYPE={coretype}: a GEMM died with {sig}{why}"
    if done.returncode != 0:
        return False, f"OPENBLAS_CORETYPE={coretype}: the probe failed: {done.stderr.strip()[-300:]}"
    return True, done.stdout.strip().splitlines()[-1]
