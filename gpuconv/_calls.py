"""What the public functions share: the memo of prepared runners per call signature, and the wrapper that
hands a backend runner the caller's arrays and returns the caller's kind of array.

A call signature is built from exact types only (see :func:`plain`), so an argument validation must reject
(``stride=True``, ``groups=1.0``) never hashes like an accepted one and is never served from the memo.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from . import plan as _plan
from ._arrays import ArrayKind, from_backend, to_backend

Runner = Callable[..., Any]

PREPARED: dict[tuple[Any, ...], tuple[int, Runner]] = {}
PREPARED_MAX = 4096

#: Array types whose calls are memoized: NumPy's, and CuPy's once a CuPy array has been seen (this module does
#: not import CuPy). Other DLPack arrays take the full path, which memoizes the problem and the plan.
NATIVE: set[type] = {np.ndarray}
DEVICE_TYPES: set[type] = set()  # native types with a device (CuPy): the device of every array is in the key


def plain(v: object) -> bool:
    # Exact types only: True == 1 and 1.0 == 1 hash alike, and must be refused by validation, never served.
    t = type(v)
    return t is int or t is str or (t is tuple and all(type(e) is int for e in v))  # type: ignore[union-attr]


def arrays_key(arrays: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The shapes, dtypes (and devices) of native arrays of one type (None entries allowed), or None."""
    tx = type(arrays[0])
    if tx not in NATIVE:
        return None
    key: list[Any] = [tx]
    for a in arrays:
        if a is None:
            key.append(None)
        elif type(a) is not tx:
            return None
        else:
            key.append((a.shape, a.dtype, a.device.id) if tx in DEVICE_TYPES else (a.shape, a.dtype))
    return tuple(key)


def find(key: tuple[Any, ...] | None) -> Runner | None:
    """The prepared runner of ``key`` if it is still current."""
    if key is None:
        return None
    found = PREPARED.get(key)
    if found is not None and found[0] == _plan.generation:
        return found[1]
    return None


def keep(key: tuple[Any, ...] | None, run: Runner) -> None:
    if key is not None:
        if len(PREPARED) >= PREPARED_MAX:
            PREPARED.clear()
        PREPARED[key] = (_plan.generation, run)


def note_native(kind: ArrayKind, a: Any) -> None:
    """Memoize later calls on ``a``'s type once a CuPy array has been seen."""
    if kind.library == "cupy" and type(a) not in NATIVE:
        DEVICE_TYPES.add(type(a))
        NATIVE.add(type(a))


def wrap(kind: ArrayKind, execute: Callable[[Any, Any, Any], Any], shapes: tuple[tuple[int, ...] | None, ...],
         result_shape: tuple[int, ...] | None, finish: Callable[[Any, Any], Any] | None = None) -> Runner:
    """``run(a, b, c)`` over the caller's arrays: each viewed as the backend's (zero-copy), reshaped to
    ``shapes[i]`` where given (an unbatched operand gets its batch axis), ``execute``d, reshaped to
    ``result_shape`` where given, passed through ``finish(result, c)`` (a bias), handed back as the caller's kind.
    NumPy and CuPy arrays without reshapes get ``execute`` itself."""
    if kind.library in ("numpy", "cupy") and not any(shapes) and result_shape is None and finish is None:
        return execute
    back = from_backend(kind)
    sa, sb = shapes[0], shapes[1]

    def run(a: Any, b: Any, c: Any = None) -> Any:
        na, nb = to_backend(a, kind), to_backend(b, kind)
        nc = None if c is None else to_backend(c, kind)
        if sa is not None:
            na = na.reshape(sa)
        if sb is not None:
            nb = nb.reshape(sb)
        r = execute(na, nb, nc if finish is None else None)
        if result_shape is not None:
            r = r.reshape(result_shape)
        if finish is not None:
            r = finish(r, nc)
        return back(r)

    return run
