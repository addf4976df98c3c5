"""Build rendered CUDA source into a CPU shared library with g++ and ``cuda_emu.h``, cached by content hash.

For every ``extern "C" __global__`` function ``f`` the library exports ``emu_launch_f(grid, block, shared, args,
seed, err, errlen)`` (``shared``: bytes of dynamic shared memory) and ``emu_signature_f()`` (the parameter kinds,
checked against the arguments of each launch). The cache lives in ``$GPUCONV_EMU_CACHE`` or a per-user directory
under the system temp dir; files are written under a temporary name and renamed, so parallel test workers never
see half a library.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADER = HERE / "cuda_emu.h"
RUNTIME = HERE / "runtime.cpp"
CXX = os.environ.get("CXX", "g++")
# -fno-strict-aliasing: kernels read float arrays through float4 pointers, as CUDA code does.
FLAGS = ("-std=c++17", "-O1", "-fPIC", "-fno-strict-aliasing", "-Wno-unknown-pragmas", "-Wno-attributes")

_GLOBAL = re.compile(r'extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\((?:[^()]|\([^()]*\))*\)\s*)?'
                     r'void\s+([A-Za-z_]\w*)\s*\(')
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


class BuildError(RuntimeError):
    """g++ rejected the emulated source; the message carries the command and the compiler output."""


def cache_dir() -> Path:
    path = Path(os.environ.get("GPUCONV_EMU_CACHE") or Path(tempfile.gettempdir()) / f"gpuconv-emu-{os.getuid()}")
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def _compiler_id() -> str:
    out = subprocess.run([CXX, "--version"], capture_output=True, text=True, check=True)
    return out.stdout.splitlines()[0]


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:24]


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"{what} failed ({' '.join(cmd)}):\n{proc.stderr}{proc.stdout}")


def _publish(tmp: Path, final: Path) -> Path:
    os.replace(tmp, final)
    return final


@functools.cache
def runtime_object() -> Path:
    """The scheduler, compiled once per header/runtime version."""
    key = _digest(HEADER.read_bytes(), RUNTIME.read_bytes(), " ".join(FLAGS), _compiler_id())
    final = cache_dir() / f"runtime-{key}.o"
    if final.exists():
        return final
    tmp = final.with_name(f"{final.name}.{os.getpid()}.tmp")
    _run([CXX, *FLAGS, "-c", str(RUNTIME), "-I", str(HERE), "-o", str(tmp)], "compiling the emulation runtime")
    return _publish(tmp, final)


def kernel_names(source: str) -> list[str]:
    """Names of the ``extern "C" __global__`` functions in ``source`` (comments ignored)."""
    return _GLOBAL.findall(_COMMENT.sub(" ", source))


def translation_unit(source: str) -> str:
    """``source`` behind the emulation header, followed by the exported launch and signature functions."""
    names = kernel_names(source)
    if not names:
        raise BuildError('no extern "C" __global__ function in the source')
    wrappers = [
        f'extern "C" int emu_launch_{n}(const unsigned* g, const unsigned* b, unsigned sh, void** a, '
        f"unsigned long long s, char* e, int el) {{ return ::emu::launch(&{n}, g, b, sh, a, s, e, el); }}\n"
        f'extern "C" const char* emu_signature_{n}() {{ return ::emu::signature(&{n}); }}'
        for n in names
    ]
    return '#include "cuda_emu.h"\n' + source + '\n#line 1 "emu-wrappers"\n' + \
        "\n".join(wrappers) + "\n"


@functools.lru_cache(maxsize=256)
def build(source: str) -> ctypes.CDLL:
    """Compile ``source`` (rendered CUDA) for the CPU and load it; cached on disk by content and in memory.

    Raises:
        BuildError: with g++'s messages (which point at ``kernels/*.cu`` lines thanks to ``#line``).
    """
    tu = translation_unit(source)
    runtime = runtime_object()
    key = _digest(tu, HEADER.read_bytes(), runtime.name,
                  " ".join(FLAGS), _compiler_id())
    final = cache_dir() / f"kernel-{key}.so"
    if not final.exists():
        with tempfile.TemporaryDirectory(prefix="gpuconv-emu-") as tmpdir:
            cpp = Path(tmpdir) / "kernel.cpp"
            cpp.write_text(tu)
            tmp = Path(tmpdir) / "kernel.so"
            _run([CXX, *FLAGS, "-shared", "-I", str(HERE), str(cpp), str(runtime), "-o", str(tmp)],
                 "compiling emulated kernel")
            staged = final.with_name(f"{final.name}.{os.getpid()}.tmp")
            shutil.copyfile(tmp, staged)
            _publish(staged, final)
    return ctypes.CDLL(str(final))
