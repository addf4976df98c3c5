"""CUDA kernels on the CPU: ``cuda_emu.h`` + g++ + ctypes behind the same Executor protocol as CuPy."""

from .build import BuildError, build, kernel_names
from .executor import EmuExecutor, LaunchRecord

__all__ = ["BuildError", "EmuExecutor", "LaunchRecord", "build", "kernel_names"]
