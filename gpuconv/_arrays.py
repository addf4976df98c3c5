"""Which library an argument comes from, and how to hand a result back as the same kind of array.

NumPy arrays run on the CPU backend and CuPy arrays on the CUDA backend. Any other array that speaks
DLPack (a PyTorch tensor, a JAX array) is viewed zero-copy as a NumPy array (host memory) or a CuPy
array (CUDA memory) and the result is converted back to the caller's library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._dtypes import bfloat16

_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13


@dataclass(frozen=True)
class ArrayKind:
    """Where an array lives: ``backend`` is ``"cpu"`` or ``"cuda"``; ``library`` names its Python library."""

    backend: str
    library: str
    device: int = 0

    def describe(self) -> str:
        where = "CPU" if self.backend == "cpu" else f"CUDA device {self.device}"
        return f"{self.library} array on {where}"


def _library(a: Any) -> str:
    return type(a).__module__.split(".")[0]


def kind_of(fn: str, name: str, a: Any) -> ArrayKind:
    """Classify one argument; raise ``TypeError`` for anything that is not an array."""
    if isinstance(a, np.ndarray):
        return ArrayKind("cpu", "numpy")
    lib = _library(a)
    if lib == "cupy":
        return ArrayKind("cuda", "cupy", int(a.device.id))
    if hasattr(a, "__dlpack_device__") and hasattr(a, "__dlpack__"):
        dev_type, dev_id = a.__dlpack_device__()
        if dev_type == _DL_CPU:
            return ArrayKind("cpu", lib)
        if dev_type in (_DL_CUDA, _DL_CUDA_MANAGED):
            return ArrayKind("cuda", lib, int(dev_id))
        raise TypeError(f"{fn}: {name} is a {lib} array on DLPack device type {dev_type}, "
                        "which gpuconv does not support")
    raise TypeError(f"{fn}: {name} must be a NumPy or CuPy array (or a DLPack array), got {type(a).__name__}")


def to_backend(a: Any, kind: ArrayKind) -> Any:
    """View ``a`` as the backend's native array (NumPy or CuPy), zero-copy.

    NumPy's DLPack import knows no bfloat16, so a bfloat16 tensor on the CPU is viewed differently: a PyTorch
    tensor as its int16 bits reinterpreted as ``ml_dtypes.bfloat16``, a JAX array through ``__array__`` (both
    share the caller's memory). On CUDA, CuPy 14 imports bfloat16 through DLPack; an older CuPy raises a
    ``TypeError`` naming the dtype.
    """
    if kind.library in ("numpy", "cupy"):
        return a
    if kind.library == "torch" and a.requires_grad:
        a = a.detach()  # DLPack refuses tensors that require grad; the values are what a convolution reads
    if kind.backend == "cpu":
        if _is_bfloat16(a):
            return _host_bfloat16(a, kind)
        return np.from_dlpack(a)
    import cupy

    try:
        return cupy.from_dlpack(a)
    except (BufferError, TypeError, ValueError, RuntimeError) as e:
        if not _is_bfloat16(a):
            raise
        raise TypeError(f"a bfloat16 {kind.library} array on CUDA cannot be imported into CuPy {cupy.__version__} "
                        f"({e}); CuPy 14 or later holds bfloat16") from None


def _is_bfloat16(a: Any) -> bool:
    return str(getattr(a, "dtype", "")).rsplit(".", 1)[-1] == "bfloat16"


def _host_bfloat16(a: Any, kind: ArrayKind) -> np.ndarray:
    """A host bfloat16 array of the library ``kind`` as a NumPy ``ml_dtypes.bfloat16`` view of the same memory."""
    bf16 = bfloat16()
    if kind.library == "torch":
        import torch

        return a.view(torch.int16).numpy().view(bf16)  # same itemsize: any strides view as they are
    return np.asarray(a).view(bf16)


def from_backend(kind: ArrayKind) -> Callable[[Any], Any]:
    """A function turning a backend result back into the caller's kind of array.

    A NumPy bfloat16 result goes back to PyTorch as a view of its int16 bits (zero-copy) and to JAX as a copy
    (neither imports NumPy's bfloat16 through DLPack).
    """
    if kind.library in ("numpy", "cupy"):
        return lambda y: y
    if kind.library == "torch":
        import torch

        def to_torch(y: Any) -> Any:
            if isinstance(y, np.ndarray) and y.dtype.name == "bfloat16":
                return torch.from_numpy(y.view(np.int16)).view(torch.bfloat16)
            return torch.from_dlpack(y)

        return to_torch
    if kind.library in ("jax", "jaxlib"):
        import jax.numpy as jnp

        def to_jax(y: Any) -> Any:
            if isinstance(y, np.ndarray) and y.dtype.name == "bfloat16":
                return jnp.asarray(y)
            return jnp.from_dlpack(y)

        return to_jax
    return lambda y: y


_FLOAT_NAMES = {np.dtype(n): n for n in ("float16", "float32", "float64")}  # bfloat16 by name, below


def dtype_name(fn: str, name: str, a: Any) -> str:
    """The NumPy name of an array's dtype (``"float32"``), for any supported library."""
    dt = getattr(a, "dtype", None)
    name = _FLOAT_NAMES.get(dt) if isinstance(dt, np.dtype) else None
    if name is not None:  # the common case, without NumPy's Python-level dtype.name
        return name
    try:
        return np.dtype(dt).name
    except TypeError:
        # torch dtypes are not NumPy dtypes: torch.float32 -> "float32" (the caller rejects unsupported names)
        if dt is None:
            raise TypeError(f"{fn}: {name} has no dtype") from None
        return str(dt).rsplit(".", 1)[-1]
