"""FFT: correlation as a pointwise product of spectra, for large kernels.

``y = irfft2(rfft2(xp) * conj(rfft2(w_dilated)))`` summed over the channels of each group, computed at the
stride-1 output positions and then subsampled by the stride. Correlation (unlike convolution) needs no
room for wrap-around: with transform size ``F >= Hp`` every valid output ``m <= Hp - R_eff`` reads only
``m + i < Hp``, so the sizes are ``next_fast_len(Hp)`` and ``next_fast_len(Wp)``.

Two things differ from the direct sum and are handled here:

* A NaN or Inf anywhere would reach every output through the transform. PyTorch confines it to the
  outputs whose window holds it, so inputs that are not all finite go to :func:`~gpuconv.cpu.im2col.im2col`.
* The rounding error of a transform is spread over the whole plane: one large input raises the error of
  every output, also of windows far from it, which a direct sum never does. On uniform data float32
  transforms stayed within the tests' ``tolerance`` (at most 14% of it, 4% in float64, on a 300x300 plane
  with a 3x3 kernel, the worst of the shapes measured), but with one input of 1e4 in a 64x64 plane the
  outputs whose windows do not hold it were off by 2.6 times the tolerance (float64: 1%). float32 is
  therefore transformed in float64 and rounded once at the end; float64 stays float64.
"""

from __future__ import annotations

import numpy as np

from ..problem import ConvProblem
from . import _views
from .im2col import im2col


def fast_len(n: int) -> int:
    """The smallest 5-smooth length ``>= n`` (``2**a 3**b 5**c``), where real FFTs are fastest; the value of
    ``scipy.fft.next_fast_len(n, real=True)`` without importing SciPy."""
    best, p5 = 2 * n, 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return max(best, 1)


def fft(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Convolve through real 2-d FFTs.

    Args:
        problem: the validated problem.
        x: ``(N, C, H, W)`` in the compute dtype, any strides.
        w: ``(K, C/G, R, S)`` in the compute dtype.

    Returns:
        ``(N, K, P, Q)`` in the compute dtype.
    """
    if not (np.isfinite(x).all() and np.isfinite(w).all()):
        return im2col(problem, x, w)
    n, g, cg, kg = problem.n, problem.groups, problem.cg, problem.kg
    (sh, sw), (dh, dw) = problem.stride, problem.dilation
    hp, wp = _views.padded_size(problem)
    reff_h, reff_w = dh * (problem.r - 1) + 1, dw * (problem.s - 1) + 1
    import scipy.fft  # here, not at import: only a problem that runs this strategy pays for loading it

    fh, fw = fast_len(hp), fast_len(wp)
    real = np.float64  # see the module docstring: the transform error is not local
    xs = scipy.fft.rfft2(_views.padded(problem, x).astype(real, copy=False), s=(fh, fw), workers=-1)
    wd = np.zeros((problem.k, cg, reff_h, reff_w), real)
    wd[:, :, ::dh, ::dw] = w
    ws = np.conj(scipy.fft.rfft2(wd, s=(fh, fw), workers=-1))
    nf = fh * (fw // 2 + 1)
    if n == 1:
        # One image: per frequency a matrix-vector product, too small for BLAS calls; a fused multiply-sum
        # streams the weight spectrum once in its natural layout.
        ys = np.einsum("gkcf,gcf->gkf", ws.reshape(g, kg, cg, nf), xs.reshape(g, cg, nf))
    else:
        # Per frequency a (K/G x C/G) @ (C/G x N) product: frequencies and groups batch one matmul.
        xf = np.ascontiguousarray(xs.reshape(n, g, cg, nf).transpose(3, 1, 2, 0))   # F, G, C/G, N
        wf = np.ascontiguousarray(ws.reshape(g, kg, cg, nf).transpose(3, 0, 1, 2))  # F, G, K/G, C/G
        ys = np.matmul(wf, xf).transpose(3, 1, 2, 0)                                 # N, G, K/G, F
    ys = ys.reshape(n, problem.k, fh, fw // 2 + 1)
    full = scipy.fft.irfft2(ys, s=(fh, fw), workers=-1)
    y = full[:, :, :hp - reff_h + 1:sh, :wp - reff_w + 1:sw]
    return y.astype(x.dtype)
