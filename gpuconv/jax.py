"""JAX integration: ``conv1d``/``conv2d`` as XLA callbacks into gpuconv, usable under ``jax.jit``, differentiable
with ``jax.grad`` (a ``jax.custom_vjp`` whose backward calls :mod:`gpuconv.grad`) and batched by ``jax.vmap``.

Which callback runs:

- Where ``jax.experimental.buffer_callback`` exists (jax 0.7 and later; :data:`BUFFER_CALLBACK` is True), the
  convolution is a buffer callback: XLA hands gpuconv its own buffers in place. On the CPU they are viewed as
  NumPy arrays and the NumPy backend runs on them; on a GPU they are viewed as CuPy arrays (through
  ``__cuda_array_interface__``) and gpuconv's CUDA kernels run on XLA's stream (``ctx.stream``), with no copy
  to the host.
- Otherwise the convolution is a ``jax.pure_callback``: XLA copies the operands to host NumPy arrays, the NumPy
  backend runs, and the result is copied back (on a GPU that is a round trip through host memory).

Under ``jax.vmap`` the callback sees each operand with the mapped axes in front (``vmap_method="expand_dims"``:
an unmapped operand gets axes of size 1). When only the data operand is mapped (``x`` for the output, the output
gradient for the input gradient) the mapped axes are folded into the batch ``N``: one convolution. Otherwise (a
mapped weight, and always for the weight gradient, which sums over ``N``) they are folded into the channels as
extra groups: ``B`` convolutions of ``groups`` groups become one of ``B * groups``. Either way a vmapped call
is a single gpuconv call.

The dtype is the operands' (float16, bfloat16, float32, or float64 where ``jax_enable_x64`` is on). Importing this
module imports jax; ``import gpuconv`` does not.

Example:
    >>> import jax, jax.numpy as jnp, gpuconv.jax
    >>> x, w = jnp.ones((2, 3, 8, 8)), jnp.ones((4, 3, 3, 3))
    >>> jax.jit(lambda x, w: gpuconv.jax.conv2d(x, w, padding=1))(x, w).shape
    (2, 4, 8, 8)
    >>> jax.grad(lambda w: gpuconv.jax.conv2d(x, w).sum())(w).shape
    (4, 3, 3, 3)
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Union

import jax
import jax.numpy as jnp
import numpy as np

from . import conv as _conv
from . import grad as _grad
from .problem import _check_dtypes, make_problem

try:
    from jax.experimental.buffer_callback import buffer_callback as _buffer_callback
except ImportError:  # jax older than 0.7
    _buffer_callback = None

#: Whether the convolutions run as ``jax.experimental.buffer_callback`` (in place, on the GPU too) rather than
#: ``jax.pure_callback`` (host round trip). Read when a function is traced.
BUFFER_CALLBACK: bool = _buffer_callback is not None

IntOrPair = Union[int, tuple[int, ...]]
Padding = Union[int, str, tuple[int, ...]]

_DL_CPU = 1


@dataclass(frozen=True)
class _Options:
    """The static part of one convolution: hashable, so jit caches and callbacks are shared between calls."""

    nd: int
    stride: Any
    padding: Any
    dilation: Any
    groups: int


def _static(v: Any) -> Any:
    return tuple(int(e) for e in v) if isinstance(v, (tuple, list)) else v


# ---- the host side: what runs inside the callback ----------------------------------------------

def _run(direction: str, o: _Options, out_core: tuple[int, ...], a: Any, b: Any, xp: Any) -> Any:
    """The convolution of one direction on backend arrays ``a, b`` (``(x, w)``, ``(dy, w)`` or ``(x, dy)``),
    each with the same number of leading vmap axes (size 1 where unmapped); returns the result with them."""
    core = o.nd + 2
    lead_a, lead_b = a.shape[:-core], b.shape[:-core]
    fwd, input_grad, weight_grad = _FUNCTIONS[o.nd]
    if not lead_a:
        if direction == "forward":
            return fwd(a, b, None, o.stride, o.padding, o.dilation, o.groups)
        if direction == "input":
            return input_grad(out_core, b, a, o.stride, o.padding, o.dilation, o.groups)
        return weight_grad(a, out_core, b, o.stride, o.padding, o.dilation, o.groups)
    lead = tuple(max(i, j) for i, j in zip(lead_a, lead_b))
    m = math.prod(lead)
    a = xp.broadcast_to(a, lead + a.shape[len(lead):]).reshape((m,) + a.shape[len(lead):])
    shared_b = math.prod(lead_b) == 1
    if direction != "weight" and shared_b:
        # only the data operand is mapped: the mapped axes join the batch
        b = b.reshape(b.shape[len(lead):])
        a = a.reshape((m * a.shape[1],) + a.shape[2:])
        if direction == "forward":
            r = fwd(a, b, None, o.stride, o.padding, o.dilation, o.groups)
        else:
            size = (m * out_core[0],) + out_core[1:]
            r = input_grad(size, b, a, o.stride, o.padding, o.dilation, o.groups)
        return r.reshape(lead + (r.shape[0] // m,) + r.shape[1:])
    # the mapped axes become groups: (M, N, C, ...) -> (N, M*C, ...); a weight (M, K, C/g, ...) -> (M*K, C/g, ...)
    b = xp.broadcast_to(b, lead + b.shape[len(lead):]).reshape((m,) + b.shape[len(lead):])
    groups = m * o.groups

    def channels(t: Any) -> Any:  # (M, N, C, ...) -> (N, M*C, ...)
        return xp.ascontiguousarray(xp.moveaxis(t, 0, 1)).reshape((t.shape[1], m * t.shape[2]) + t.shape[3:])

    def unchannels(t: Any) -> Any:  # (N, M*C, ...) -> (M, N, C, ...)
        return xp.moveaxis(t.reshape((t.shape[0], m, t.shape[1] // m) + t.shape[2:]), 1, 0)

    def weights(t: Any) -> Any:  # (M, K, C/g, ...) -> (M*K, C/g, ...)
        return t.reshape((m * t.shape[1],) + t.shape[2:])

    if direction == "forward":
        r = unchannels(fwd(channels(a), weights(b), None, o.stride, o.padding, o.dilation, groups))
    elif direction == "input":
        size = (out_core[0], m * out_core[1]) + out_core[2:]
        r = unchannels(input_grad(size, weights(b), channels(a), o.stride, o.padding, o.dilation, groups))
    else:
        size = (m * out_core[0],) + out_core[1:]
        r = weight_grad(channels(a), size, channels(b), o.stride, o.padding, o.dilation, groups)
        r = r.reshape((m,) + out_core)
    return r.reshape(lead + r.shape[1:])


_FUNCTIONS = {1: (_conv.conv1d, _grad.conv1d_input, _grad.conv1d_weight),
              2: (_conv.conv2d, _grad.conv2d_input, _grad.conv2d_weight)}


@functools.lru_cache(maxsize=1024)
def _host_function(direction: str, o: _Options, out_core: tuple[int, ...], buffers: bool) -> Callable[..., Any]:
    """The callback of one direction and options (memoized: an equal callback lets jax reuse its compilations)."""
    if not buffers:
        def pure(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return np.asarray(_run(direction, o, out_core, np.asarray(a), np.asarray(b), np))

        return pure

    def in_place(ctx: Any, out: Any, a: Any, b: Any) -> None:
        device_type, device_id = a.__dlpack_device__()
        if device_type == _DL_CPU:
            np.copyto(np.asarray(out), _run(direction, o, out_core, np.asarray(a), np.asarray(b), np))
            return
        import cupy  # a GPU buffer: XLA's memory, viewed through __cuda_array_interface__ (DLPack for bfloat16)

        with cupy.cuda.Device(device_id), cupy.cuda.ExternalStream(ctx.stream):
            r = _run(direction, o, out_core, _cupy_view(cupy, a), _cupy_view(cupy, b), cupy)
            _cupy_view(cupy, out)[...] = r

    return in_place


def _cupy_view(cupy: Any, buffer: Any) -> Any:
    """An XLA GPU buffer as a CuPy array of the same memory. XLA gives bfloat16 buffers no
    ``__cuda_array_interface__``; CuPy 14 imports them through DLPack."""
    if str(getattr(buffer, "dtype", "")) == "bfloat16":
        return cupy.from_dlpack(buffer)
    return cupy.asarray(buffer)


def _call(direction: str, o: _Options, out_core: tuple[int, ...], a: jax.Array, b: jax.Array) -> jax.Array:
    result = jax.ShapeDtypeStruct(out_core, a.dtype)
    if BUFFER_CALLBACK:
        f = _buffer_callback(_host_function(direction, o, out_core, True), result, vmap_method="expand_dims")
        return f(a, b)
    return jax.pure_callback(_host_function(direction, o, out_core, False), result, a, b,
                             vmap_method="expand_dims")


# ---- the differentiable convolution ------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _convolve(o: _Options, out_core: tuple[int, ...], x: jax.Array, w: jax.Array) -> jax.Array:
    return _call("forward", o, out_core, x, w)


def _convolve_fwd(o: _Options, out_core: tuple[int, ...], x: jax.Array,
                  w: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return _call("forward", o, out_core, x, w), (x, w)


def _convolve_bwd(o: _Options, out_core: tuple[int, ...], res: tuple[jax.Array, jax.Array],
                  dy: jax.Array) -> tuple[jax.Array, jax.Array]:
    # under jit, XLA drops the callback of a gradient nobody reads (the callbacks have no side effects)
    x, w = res
    return _call("input", o, tuple(x.shape), dy, w), _call("weight", o, tuple(w.shape), x, dy)


_convolve.defvjp(_convolve_fwd, _convolve_bwd)


def _conv(fn: str, nd: int, x: Any, w: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
          groups: Any) -> jax.Array:
    x, w = jnp.asarray(x), jnp.asarray(w)
    arrays = {"x": x, "w": w} if bias is None else {"x": x, "w": w, "bias": jnp.asarray(bias)}
    dtype = _check_dtypes(fn, arrays)
    unbatched = x.ndim == nd + 1
    if unbatched:
        x = x[None]
    problem = make_problem(fn, tuple(x.shape), tuple(w.shape), dtype, bias is not None, stride=_static(stride),
                           padding=_static(padding), dilation=_static(dilation), groups=groups)
    if bias is not None and tuple(arrays["bias"].shape) != (problem.k,):
        raise ValueError(f"{fn}: bias must have shape ({problem.k},) to match w.shape[0], got "
                         f"{tuple(arrays['bias'].shape)}")
    o = _Options(nd, _static(stride), _static(padding), _static(dilation), int(groups))
    y = _convolve(o, tuple(problem.out_shape), x, w)
    if bias is not None:
        y = y + arrays["bias"].reshape((-1,) + (1,) * nd)  # XLA fuses it; jax differentiates it
    return y[0] if unbatched else y


def conv2d(x: Any, w: Any, bias: Any = None, *, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1) -> jax.Array:
    """``torch.nn.functional.conv2d``'s convolution on JAX arrays, computed by gpuconv inside XLA.

    Works eagerly and under ``jax.jit``, ``jax.grad``/``jax.vjp`` (reverse mode only: no ``jax.jvp``) and
    ``jax.vmap``; see the module docstring for the callback taken and how a vmapped call is folded.

    Args:
        x: ``(N, C, H, W)`` or unbatched ``(C, H, W)``.
        w: ``(K, C/groups, R, S)``, the dtype of ``x``.
        bias: optional ``(K,)``, added by XLA after the convolution.
        stride, padding, dilation, groups: as in :func:`gpuconv.conv2d`; keyword only, static (not traced).

    Returns:
        ``(N, K, P, Q)`` (``(K, P, Q)`` unbatched) of ``x``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`gpuconv.conv2d`, when the function is traced.

    Example:
        >>> import jax.numpy as jnp, gpuconv.jax
        >>> gpuconv.jax.conv2d(jnp.ones((1, 3, 8, 8)), jnp.ones((4, 3, 3, 3)), stride=2).shape
        (1, 4, 3, 3)
    """
    return _conv("conv2d", 2, x, w, bias, stride, padding, dilation, groups)


def conv1d(x: Any, w: Any, bias: Any = None, *, stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1,
           groups: int = 1) -> jax.Array:
    """:func:`conv2d` with one spatial dimension: x ``(N, C, L)`` or ``(C, L)``, w ``(K, C/groups, R)``.

    Example:
        >>> import jax.numpy as jnp, gpuconv.jax
        >>> gpuconv.jax.conv1d(jnp.ones((2, 4, 100)), jnp.ones((8, 4, 5)), stride=2).shape
        (2, 8, 48)
    """
    return _conv("conv1d", 1, x, w, bias, stride, padding, dilation, groups)


__all__ = ["BUFFER_CALLBACK", "conv1d", "conv2d"]
