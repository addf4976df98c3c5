"""The dtypes gpuconv computes, as data: their names, what each is computed in on the CPU, and where bfloat16
comes from.

NumPy has no bfloat16 of its own; ``ml_dtypes`` (a dependency of gpuconv, and of jax) registers one, and
``np.dtype("bfloat16")`` works once it is imported. :func:`numpy_dtype` imports it when a bfloat16 problem is
built, so ``import gpuconv`` does not.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The supported dtypes of x, w, bias and the result; the arrays of one call share one of them.
DTYPES = ("float16", "bfloat16", "float32", "float64")

#: The dtype the CPU strategies (and the reference) compute each dtype in: 16-bit inputs are widened to float32
#: (their products are exact there: 11 + 11 and 8 + 8 significand bits) and the result rounded once.
COMPUTE: dict[str, str] = {"float16": "float32", "bfloat16": "float32", "float32": "float32", "float64": "float64"}

#: Significand bits of each dtype, the implicit one included; the tolerances follow from them.
MANTISSA_BITS: dict[str, int] = {"float16": 11, "bfloat16": 8, "float32": 24, "float64": 53}

#: Where a dtype outside NumPy comes from: the module and the install hint of the error when it is missing.
_PROVIDERS: dict[str, tuple[str, str]] = {"bfloat16": ("ml_dtypes", "pip install ml_dtypes (or 'gpuconv[jax]')")}


def bfloat16() -> Any:
    """The NumPy scalar type ``ml_dtypes.bfloat16``.

    Raises:
        TypeError: ``ml_dtypes`` is not installed (bfloat16 cannot be represented in NumPy without it).
    """
    module, hint = _PROVIDERS["bfloat16"]
    try:
        import ml_dtypes
    except ImportError:
        raise TypeError(f"dtype bfloat16 needs the {module} package, which is not installed; {hint}") from None
    return ml_dtypes.bfloat16


def numpy_dtype(name: str) -> np.dtype:
    """``np.dtype`` of a supported dtype name, bfloat16 included (importing ``ml_dtypes`` for it).

    Raises:
        TypeError: bfloat16 without ``ml_dtypes``.
    """
    if name == "bfloat16":
        return np.dtype(bfloat16())
    return np.dtype(name)


def compute_dtype(name: str) -> np.dtype:
    """The dtype a CPU strategy computes dtype ``name`` in (:data:`COMPUTE`)."""
    return np.dtype(COMPUTE[name])
