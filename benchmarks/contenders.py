"""Everything that computes a convolution and gets timed: gpuconv (auto and each strategy) and its peers.

A :class:`Contender` turns ``(problem, x, w)`` host arrays into a zero-argument callable that computes the
output on its device and returns only once the result is ready (or, for CUDA-event timers, once the work
is queued). Inputs are moved to the device and anything compiled is compiled in ``setup``, outside timing.
The peers are what a user would reach for instead: ``jax.lax.conv_general_dilated`` (XLA; cuDNN on a GPU),
``torch.nn.functional.conv1d/conv2d`` (oneDNN on the CPU, cuDNN on a GPU), and on the CPU the NumPy
``as_strided`` + ``tensordot`` convolution people write by hand.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import gpuconv
from gpuconv.backends import get_backend
from gpuconv.measure import conv_kwargs
from gpuconv.problem import ConvProblem

from .machine import cores

Thunk = Callable[[], Any]
Setup = Callable[[ConvProblem, np.ndarray, np.ndarray], Thunk]


def _always(problem: ConvProblem) -> bool:
    return True


@dataclass(frozen=True)
class Contender:
    """One way of computing a convolution, as it is timed.

    Attributes:
        name: stable identifier used on the command line and in the JSON (``gpuconv:auto``, ``torch``).
        label: what plots and tables show.
        family: ``"gpuconv"``, ``"peer"`` (another library) or ``"baseline"`` (hand-written NumPy).
        timer: key of :data:`benchmarks.timing.TIMERS` that times its thunk.
        setup: ``(problem, x, w) -> thunk``; x and w are host arrays of the problem's dtype and user shape.
        to_host: turns the thunk's result into a NumPy array.
        supports: whether it can compute a problem at all (others are reported as unsupported, not failed).
        note: how it is configured, printed with the results.
        pool: the thread pool it computes on (``numpy-blas``, ``torch``, ``xla``, ``cuda``); see
            :func:`benchmarks.timing.interleaved` for why that matters.
    """

    name: str
    label: str
    family: str
    timer: str
    setup: Setup
    to_host: Callable[[Any], np.ndarray] = np.asarray
    supports: Callable[[ConvProblem], bool] = _always
    note: str = ""
    pool: str = "numpy-blas"


@dataclass
class Lineup:
    """The contenders available for a backend, and why the others are missing."""

    contenders: list[Contender]
    missing: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def select(self, patterns: list[str] | None, skip: list[str] | None = None) -> Lineup:
        """The contenders whose name matches one of the shell-style ``patterns`` (all when None) and none of
        ``skip``.

        Raises:
            ValueError: a pattern that matches no contender; the message lists the names.
        """
        names = [c.name for c in self.contenders]
        for option, pats in (("--contenders", patterns or []), ("--skip", skip or [])):
            for pat in pats:
                if not fnmatch.filter(names, pat) and pat not in self.missing:
                    raise ValueError(f"{option}: {pat!r} matches none of {names}")

        def wanted(name: str) -> bool:
            return ((not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns))
                    and not any(fnmatch.fnmatchcase(name, p) for p in skip or []))

        return Lineup([c for c in self.contenders if wanted(c.name)],
                      {k: v for k, v in self.missing.items() if wanted(k)}, self.notes)


# ---- how a problem is passed to each library ---------------------------------------------

def _gpuconv_fn(problem: ConvProblem) -> Callable[..., Any]:
    return gpuconv.conv1d if problem.ndim == 1 else gpuconv.conv2d


def auto_plan(problem: ConvProblem, backend: str) -> tuple[str, str]:
    """What ``strategy='auto'`` runs for ``problem``: ``(strategy, source)`` with source ``tuned`` or ``heuristic``."""
    from gpuconv import plan

    fn = "conv1d" if problem.ndim == 1 else "conv2d"
    chosen = plan.choose(fn, problem, backend, get_backend(backend), "auto")
    return chosen.strategy, chosen.source


# ---- gpuconv ------------------------------------------------------------------------------

def _gpuconv(backend: str, strategy: str, supports: Callable[[ConvProblem], bool]) -> Contender:
    on_gpu = backend == "cuda"

    def setup(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> Thunk:
        if on_gpu:
            import cupy

            x, w = cupy.asarray(x), cupy.asarray(w)
        fn, kw = _gpuconv_fn(problem), conv_kwargs(problem)
        return lambda: fn(x, w, **kw, strategy=strategy)

    label = "gpuconv auto" if strategy == "auto" else f"gpuconv {strategy}"
    return Contender(f"gpuconv:{strategy}", label, "gpuconv", "cupy-events" if on_gpu else "wall", setup,
                     _cupy_to_host if on_gpu else np.asarray, supports,
                     "tuned cache when present, else the heuristic" if strategy == "auto" else "default parameters",
                     "cuda" if on_gpu else "numpy-blas")


def _cupy_to_host(a: Any) -> np.ndarray:
    import cupy

    return cupy.asnumpy(a)


# ---- jax.lax ------------------------------------------------------------------------------

def _jax(backend: str) -> Contender:
    import jax
    from jax import lax

    platform = "gpu" if backend == "cuda" else "cpu"
    device = jax.devices(platform)[0]  # raises RuntimeError when this jax has no such platform

    def setup(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> Thunk:
        t, b, l, r = problem.padding
        one_d = problem.ndim == 1
        kw = dict(window_strides=problem.stride[1:] if one_d else problem.stride,
                  padding=[(l, r)] if one_d else [(t, b), (l, r)],
                  rhs_dilation=problem.dilation[1:] if one_d else problem.dilation,
                  dimension_numbers=("NCH", "OIH", "NCH") if one_d else ("NCHW", "OIHW", "NCHW"),
                  feature_group_count=problem.groups, precision=lax.Precision.HIGHEST)
        f = jax.jit(lambda a, c: lax.conv_general_dilated(a, c, **kw))
        xd, wd = jax.device_put(x, device), jax.device_put(w, device)
        f(xd, wd).block_until_ready()  # compile outside timing
        return lambda: f(xd, wd).block_until_ready()

    engine = "XLA, cuDNN" if backend == "cuda" else "XLA CPU"
    return Contender("jax", f"jax.lax ({engine})", "peer", "wall", setup, np.asarray,
                     note=f"jax.jit(lax.conv_general_dilated), Precision.HIGHEST (no TF32), {jax.__version__}, "
                          "wall time to block_until_ready", pool="xla")


# ---- PyTorch ------------------------------------------------------------------------------

def _torch(backend: str) -> Contender:
    import torch
    import torch.nn.functional as F

    if backend == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("this PyTorch build sees no CUDA device")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        note = (f"torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, cudnn.allow_tf32=False, "
                "cuda.matmul.allow_tf32=False, cudnn.benchmark=True, timed by torch.cuda.Event")
        device, timer, label = "cuda", "torch-events", "PyTorch (cuDNN)"
    else:
        torch.set_num_threads(cores())
        onednn = "oneDNN" if torch.backends.mkldnn.is_available() else "native"
        note = f"torch {torch.__version__}, {onednn}, torch.set_num_threads({cores()})"
        device, timer, label = "cpu", "wall", f"PyTorch ({onednn})"

    def setup(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> Thunk:
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        wt = torch.from_numpy(np.ascontiguousarray(w)).to(device)
        fn, kw = (F.conv1d if problem.ndim == 1 else F.conv2d), conv_kwargs(problem)

        def run() -> Any:
            with torch.inference_mode():
                return fn(xt, wt, None, **kw)
        return run

    return Contender("torch", label, "peer", timer, setup, lambda t: t.detach().cpu().numpy(), note=note,
                     pool="torch")


# ---- the NumPy convolution people write by hand ---------------------------------------------

def numpy_conv(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pad, view every receptive field with ``as_strided``, ``tensordot`` against the weight, per group.

    The straightforward NumPy convolution (as in the FastConv write-ups): correct for every problem, no
    layout tricks beyond the strided view, one loop over groups.
    """
    n, c, g, cg, kg = problem.n, problem.c, problem.groups, problem.cg, problem.kg
    x4 = x.reshape(n, c, problem.h, problem.w)
    w4 = w.reshape(problem.k, cg, problem.r, problem.s)
    t, b, l, r = problem.padding
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (l, r)))
    sn, sc, sh, sw = xp.strides
    (st_h, st_w), (d_h, d_w) = problem.stride, problem.dilation
    win = np.lib.stride_tricks.as_strided(
        xp, (n, c, problem.p, problem.q, problem.r, problem.s),
        (sn, sc, sh * st_h, sw * st_w, sh * d_h, sw * d_w), writeable=False)
    outs = [np.tensordot(win[:, i * cg:(i + 1) * cg], w4[i * kg:(i + 1) * kg], axes=([1, 4, 5], [1, 2, 3]))
            for i in range(g)]                                        # each N, P, Q, K/G
    y = outs[0] if g == 1 else np.concatenate(outs, axis=3)
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2)).reshape(problem.out_shape)


def _numpy_baseline() -> Contender:
    def setup(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> Thunk:
        return lambda: numpy_conv(problem, x, w)

    return Contender("numpy", "NumPy as_strided+tensordot", "baseline", "wall", setup,
                     note="np.pad + as_strided windows + np.tensordot per group (hand-written baseline)")


def naive_conv(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The textbook loop: one NumPy dot product per output pixel (groups of 1 only). Slow by design."""
    n, c = problem.n, problem.c
    x4 = x.reshape(n, c, problem.h, problem.w)
    w4 = w.reshape(problem.k, c, problem.r, problem.s)
    t, b, l, r = problem.padding
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (l, r)))
    (st_h, st_w), (d_h, d_w) = problem.stride, problem.dilation
    eh, ew = d_h * (problem.r - 1) + 1, d_w * (problem.s - 1) + 1
    y = np.empty((n, problem.k, problem.p, problem.q), x.dtype)
    for i in range(problem.p):
        for j in range(problem.q):
            patch = xp[:, :, i * st_h:i * st_h + eh:d_h, j * st_w:j * st_w + ew:d_w]
            y[:, :, i, j] = np.tensordot(patch, w4, axes=([1, 2, 3], [1, 2, 3]))
    return y.reshape(problem.out_shape)


def naive_loops() -> Contender:
    """The per-pixel loop as a contender (used by the scaling sweep on small sizes only)."""
    def setup(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> Thunk:
        return lambda: naive_conv(problem, x, w)

    return Contender("naive", "naive loops (NumPy per pixel)", "baseline", "wall", setup,
                     supports=lambda p: p.groups == 1, note="a Python loop over output pixels, tensordot inside")


# ---- the lineup ---------------------------------------------------------------------------

def lineup(backend: str) -> Lineup:
    """gpuconv ``auto`` and every strategy of ``backend``, then each peer that is installed and usable.

    A peer that cannot run here (not installed, no GPU build) is listed in ``missing`` with the reason.
    """
    table = get_backend(backend).STRATEGIES
    found = [_gpuconv(backend, "auto", _always)]
    found += [_gpuconv(backend, name, s.supports) for name, s in table.items()]
    if backend == "cpu":
        found.append(_numpy_baseline())  # next to gpuconv: same thread pool, no pause between them
    missing: dict[str, str] = {}
    for name, make in (("jax", _jax), ("torch", _torch)):
        try:
            found.append(make(backend))
        except ImportError as e:
            missing[name] = f"not installed ({e})"
        except RuntimeError as e:
            missing[name] = str(e)
    notes = [f"{c.name}: {c.note}" for c in found if c.note]
    return Lineup(found, missing, notes)
