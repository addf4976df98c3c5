"""PyTorch integration: ``conv1d``/``conv2d`` with ``torch.nn.functional``'s signature that autograd differentiates
through gpuconv's own gradients, and ``Conv1d``/``Conv2d`` modules that drop in for ``torch.nn``'s.

CPU tensors run on the NumPy backend and CUDA tensors on gpuconv's CUDA kernels, both zero-copy through DLPack;
the results are torch tensors. On CUDA every gpuconv call is issued on PyTorch's current stream (wrapped in
``cupy.cuda.ExternalStream``), so it is ordered with the surrounding PyTorch work without a synchronization.

Importing this module imports torch; ``import gpuconv`` does not import it.

Example:
    >>> import torch, gpuconv.torch
    >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
    >>> w = torch.randn(4, 3, 3, 3, requires_grad=True)
    >>> gpuconv.torch.conv2d(x, w, padding=1).sum().backward()
    >>> x.grad.shape, w.grad.shape
    (torch.Size([2, 3, 8, 8]), torch.Size([4, 3, 3, 3]))
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Union

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import conv as _conv
from . import grad as _grad

IntOrTuple = Union[int, tuple[int, ...]]
PaddingArg = Union[int, str, tuple[int, ...]]

#: (forward, input gradient, weight gradient) per number of spatial dimensions.
_OPS = {1: (_conv.conv1d, _grad.conv1d_input, _grad.conv1d_weight),
        2: (_conv.conv2d, _grad.conv2d_input, _grad.conv2d_weight)}


@contextlib.contextmanager
def _on_torch_stream(t: torch.Tensor) -> Iterator[None]:
    """Run the enclosed gpuconv calls on PyTorch's current stream of ``t``'s device (nothing to do on the CPU)."""
    if t.device.type != "cuda":
        yield
        return
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError("gpuconv.torch: CUDA tensors run on gpuconv's CUDA kernels through CuPy, which is not "
                           "installed; pip install 'gpuconv[cuda13]' (or 'gpuconv[cuda12]')") from e
    stream = torch.cuda.current_stream(t.device)
    # CuPy's current stream becomes PyTorch's: DLPack exchanges on it need no synchronization, and gpuconv's
    # kernels launch on the current CuPy stream, after the PyTorch work that produced their operands.
    with cupy.cuda.Device(t.device.index), cupy.cuda.ExternalStream(stream.cuda_stream):
        yield


def _as_gradient(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # gpuconv returns what its backend computed, possibly a strided view; autograd wants like's dtype and device
    return g.to(dtype=like.dtype, device=like.device).contiguous()


class _Conv(torch.autograd.Function):
    """``y = conv(x, w) + b`` with gpuconv's forward and gradients (``ctx.needs_input_grad`` is respected)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, nd: int, stride: Any,
                padding: Any, dilation: Any, groups: int) -> torch.Tensor:
        with _on_torch_stream(x):
            y = _OPS[nd][0](x, w, b, stride, padding, dilation, groups)
        ctx.save_for_backward(x, w)
        ctx.options = (nd, stride, padding, dilation, groups)
        return y

    @staticmethod
    @once_differentiable  # the gradients are gpuconv calls, not torch operations: no graph to differentiate again
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[Any, ...]:
        x, w = ctx.saved_tensors
        nd, stride, padding, dilation, groups = ctx.options
        _, input_grad, weight_grad = _OPS[nd]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dx = dw = db = None
        with _on_torch_stream(dy):
            if need_x:
                dx = _as_gradient(input_grad(tuple(x.shape), w, dy, stride, padding, dilation, groups), x)
            if need_w:
                dw = _as_gradient(weight_grad(x, tuple(w.shape), dy, stride, padding, dilation, groups), w)
        if need_b:
            channel = dy.ndim - nd - 1  # 0 for an unbatched input, 1 otherwise
            db = dy.sum([d for d in range(dy.ndim) if d != channel]).contiguous()
        return dx, dw, db, None, None, None, None, None


def conv2d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntOrTuple = 1,
           padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """``torch.nn.functional.conv2d`` computed by gpuconv, differentiable with autograd.

    Args:
        input: ``(N, C, H, W)`` or unbatched ``(C, H, W)``, a CPU or CUDA tensor (float16, bfloat16, float32 or
            float64).
        weight: ``(K, C/groups, R, S)``, same device and dtype.
        bias: optional ``(K,)``.
        stride, padding, dilation, groups: as in :func:`gpuconv.conv2d` (``'same'``/``'valid'`` included).

    Returns:
        ``(N, K, P, Q)`` (``(K, P, Q)`` unbatched), a tensor on the input's device. Its backward computes the
        input and weight gradients with :mod:`gpuconv.grad` and the bias gradient as the sum of the output
        gradient over the batch and spatial axes, each only where autograd asks for it. It is differentiable
        once (a double backward raises).

    Raises:
        TypeError, ValueError: as :func:`gpuconv.conv2d`; RuntimeError for a CUDA tensor without CuPy.

    Example:
        >>> import torch, gpuconv.torch
        >>> gpuconv.torch.conv2d(torch.ones(1, 3, 8, 8), torch.ones(4, 3, 3, 3), stride=2).shape
        torch.Size([1, 4, 3, 3])
    """
    return _Conv.apply(input, weight, bias, 2, stride, padding, dilation, groups)


def conv1d(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, stride: IntOrTuple = 1,
           padding: PaddingArg = 0, dilation: IntOrTuple = 1, groups: int = 1) -> torch.Tensor:
    """``torch.nn.functional.conv1d`` computed by gpuconv: :func:`conv2d` with input ``(N, C, L)`` or ``(C, L)``
    and weight ``(K, C/groups, R)``.

    Example:
        >>> import torch, gpuconv.torch
        >>> gpuconv.torch.conv1d(torch.ones(2, 4, 100), torch.ones(8, 4, 5), stride=2).shape
        torch.Size([2, 8, 48])
    """
    return _Conv.apply(input, weight, bias, 1, stride, padding, dilation, groups)


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward is :func:`conv2d`: the same constructor, parameters, initialization and
    ``state_dict`` keys, so a trained ``torch.nn.Conv2d``'s state loads into it and back.

    A ``padding_mode`` other than ``'zeros'`` pads with ``torch.nn.functional.pad`` first, as PyTorch does.

    Example:
        >>> import torch, gpuconv.torch
        >>> ref = torch.nn.Conv2d(3, 8, 3, padding=1)
        >>> layer = gpuconv.torch.Conv2d(3, 8, 3, padding=1)
        >>> layer.load_state_dict(ref.state_dict())
        <All keys matched successfully>
        >>> layer(torch.ones(1, 3, 8, 8)).shape
        torch.Size([1, 8, 8, 8])
    """

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(torch.nn.Conv1d):
    """``torch.nn.Conv1d`` whose forward is :func:`conv1d`; see :class:`Conv2d`."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            padded = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv1d(padded, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


__all__ = ["Conv1d", "Conv2d", "conv1d", "conv2d"]
