"""Everything that computes a convolution and gets timed: gpuconv (auto and each strategy) and its peers.

A :class:`Contender` turns a problem's two operands, host arrays, into a zero-argument callable that computes
the problem's result on its device and returns only once the result is ready (or, for CUDA-event timers, once
the work is queued). The operands are those of the problem's direction (``problem.operand_shapes``): ``(x, w)``
for the forward, ``(dy, w)`` for the input gradient, ``(x, dy)`` for the weight gradient. Inputs are moved to
the device and anything compiled is compiled in ``setup``, outside timing.

The peers are what a user would reach for instead, in each direction: ``jax.lax.conv_general_dilated`` and its
transpose (what ``jax.grad`` runs; XLA, cuDNN on a GPU), ``torch.nn.functional.conv1d/conv2d`` and
``torch.nn.grad.conv{1,2}d_input/weight`` (oneDNN on the CPU, cuDNN on a GPU), and on the CPU the NumPy
``as_strided`` + ``tensordot`` convolution people write by hand (forward only).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import gpuconv
import gpuconv.grad
from gpuconv.backends import get_backend
from gpuconv.measure import conv_kwargs, jax_dtype_scope
from gpuconv.problem import DIRECTIONS, ConvProblem

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
        setup: ``(problem, a, b) -> thunk``; a and b are the direction's operands (``problem.operand_shapes``),
            host arrays of the problem's dtype.
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

def _fn_name(problem: ConvProblem) -> str:
    """The public function that computes ``problem``: ``conv2d``, ``conv2d_input``, ``conv1d_weight``, ..."""
    base = "conv1d" if problem.ndim == 1 else "conv2d"
    return base if problem.direction == "forward" else f"{base}_{problem.direction}"


def _gpuconv_call(problem: ConvProblem, a: Any, b: Any, strategy: str) -> Thunk:
    """gpuconv's public call for ``problem`` on its operands: ``conv2d(x, w)``, ``grad.conv2d_input(x.shape, w,
    dy)`` or ``grad.conv2d_weight(x, w.shape, dy)`` (1-d alike)."""
    kw = conv_kwargs(problem)
    if problem.direction == "input":
        fn = gpuconv.grad.conv1d_input if problem.ndim == 1 else gpuconv.grad.conv2d_input
        return lambda: fn(problem.x_shape, b, a, **kw, strategy=strategy)
    if problem.direction == "weight":
        fn = gpuconv.grad.conv1d_weight if problem.ndim == 1 else gpuconv.grad.conv2d_weight
        return lambda: fn(a, problem.w_shape, b, **kw, strategy=strategy)
    fn = gpuconv.conv1d if problem.ndim == 1 else gpuconv.conv2d
    return lambda: fn(a, b, **kw, strategy=strategy)


def auto_plan(problem: ConvProblem, backend: str) -> tuple[str, str]:
    """What ``strategy='auto'`` runs for ``problem``: ``(strategy, source)`` with source ``tuned`` or ``heuristic``."""
    from gpuconv import plan

    chosen = plan.choose(_fn_name(problem), problem, backend, get_backend(backend), "auto")
    return chosen.strategy, chosen.source


# ---- gpuconv ------------------------------------------------------------------------------

def _gpuconv(backend: str, strategy: str, directions: tuple[str, ...]) -> Contender:
    """gpuconv with ``strategy`` (``auto`` or a strategy name) in every direction whose table has that name: a
    name such as ``direct`` is a different algorithm per direction, so its rows say which direction they time."""
    on_gpu = backend == "cuda"
    tables = get_backend(backend).TABLES

    def supports(problem: ConvProblem) -> bool:
        if strategy == "auto":
            return True
        table = tables[problem.direction]
        return strategy in table and table[strategy].supports(problem)

    def setup(problem: ConvProblem, a: np.ndarray, b: np.ndarray) -> Thunk:
        if on_gpu:
            import cupy

            a, b = cupy.asarray(a), cupy.asarray(b)
        return _gpuconv_call(problem, a, b, strategy)

    label = "gpuconv auto" if strategy == "auto" else f"gpuconv {strategy}"
    where = list(directions) if strategy == "auto" else [d for d in directions if strategy in tables[d]]
    note = "tuned cache when present, else the heuristic" if strategy == "auto" else "default parameters"
    if where != list(directions):
        note += f"; {', '.join(where)} only"
    if any(d != "forward" for d in where):
        note += "; gradients through gpuconv.grad.conv{1,2}d_input/weight"
    return Contender(f"gpuconv:{strategy}", label, "gpuconv", "cupy-events" if on_gpu else "wall", setup,
                     _cupy_to_host if on_gpu else np.asarray, supports, note, "cuda" if on_gpu else "numpy-blas")


def _cupy_to_host(a: Any) -> np.ndarray:
    import cupy

    return cupy.asnumpy(a)


# ---- jax.lax ------------------------------------------------------------------------------

def _jax_supports(problem: ConvProblem) -> bool:
    # XLA's transpose of a convolution aborts the whole process on some dilated problems (see
    # gpuconv.reference._gradient); a benchmark must not, so jax times dilated gradients not at all.
    return problem.direction == "forward" or problem.dilation == (1, 1)


def _jax(backend: str) -> Contender:
    import jax
    from jax import lax

    platform = "gpu" if backend == "cuda" else "cpu"
    device = jax.devices(platform)[0]  # raises RuntimeError when this jax has no such platform

    def setup(problem: ConvProblem, a: np.ndarray, b: np.ndarray) -> Thunk:
        t, bottom, l, r = problem.padding
        one_d = problem.ndim == 1
        kw = dict(window_strides=problem.stride[1:] if one_d else problem.stride,
                  padding=[(l, r)] if one_d else [(t, bottom), (l, r)],
                  rhs_dilation=problem.dilation[1:] if one_d else problem.dilation,
                  dimension_numbers=("NCH", "OIH", "NCH") if one_d else ("NCHW", "OIHW", "NCHW"),
                  feature_group_count=problem.groups, precision=lax.Precision.HIGHEST)

        def forward(x: Any, w: Any) -> Any:
            return lax.conv_general_dilated(x, w, **kw)

        # A gradient is the transpose of the forward in one operand, which is what jax.grad and jax.vjp of a
        # convolution run (the forward's value is not needed, so none is computed).
        like = lambda shape: jax.ShapeDtypeStruct(shape, problem.dtype)  # noqa: E731
        conv = {"forward": forward,
                "input": lambda dy, w: jax.linear_transpose(lambda x: forward(x, w), like(problem.x_shape))(dy)[0],
                "weight": lambda x, dy: jax.linear_transpose(lambda w: forward(x, w), like(problem.w_shape))(dy)[0],
                }[problem.direction]
        f = jax.jit(conv)
        with jax_dtype_scope(jax, problem.dtype):
            ad, bd = jax.device_put(a, device), jax.device_put(b, device)
            f(ad, bd).block_until_ready()  # compile outside timing

        def run() -> Any:
            with jax_dtype_scope(jax, problem.dtype):
                return f(ad, bd).block_until_ready()

        return run

    engine = "XLA, cuDNN" if backend == "cuda" else "XLA CPU"
    return Contender("jax", f"jax.lax ({engine})", "peer", "wall", setup, np.asarray, _jax_supports,
                     note=f"jax.jit(lax.conv_general_dilated); gradients: jax.jit(jax.linear_transpose) of it in x "
                          "or w (what jax.grad runs; not on dilated layers); Precision.HIGHEST (no TF32), "
                          f"{jax.__version__}, wall time to block_until_ready", pool="xla")


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

    def setup(problem: ConvProblem, a: np.ndarray, b: np.ndarray) -> Thunk:
        at = torch.from_numpy(np.ascontiguousarray(a)).to(device)
        bt = torch.from_numpy(np.ascontiguousarray(b)).to(device)
        kw, one_d = conv_kwargs(problem), problem.ndim == 1
        if problem.direction == "input":
            grad_in = torch.nn.grad.conv1d_input if one_d else torch.nn.grad.conv2d_input
            call = lambda: grad_in(problem.x_shape, bt, at, **kw)  # noqa: E731
        elif problem.direction == "weight":
            grad_w = torch.nn.grad.conv1d_weight if one_d else torch.nn.grad.conv2d_weight
            call = lambda: grad_w(at, problem.w_shape, bt, **kw)  # noqa: E731
        else:
            fn = F.conv1d if one_d else F.conv2d
            call = lambda: fn(at, bt, None, **kw)  # noqa: E731

        def run() -> Any:
            with torch.inference_mode():
                return call()
        return run

    return Contender("torch", label, "peer", timer, setup, lambda t: t.detach().cpu().numpy(), _torch_supports,
                     note=note + "; gradients: torch.nn.grad.conv{1,2}d_input/weight (aten.convolution_backward "
                                 "with one output masked in), not for asymmetric 'same' padding", pool="torch")


def _torch_supports(problem: ConvProblem) -> bool:
    # torch.nn.grad takes explicit symmetric padding only; conv_kwargs turns asymmetric padding into 'same'.
    t, b, l, r = problem.padding
    return problem.direction == "forward" or (t, l) == (b, r)


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
                     supports=lambda p: p.direction == "forward",
                     note="np.pad + as_strided windows + np.tensordot per group (hand-written baseline); forward "
                          "only, unsupported for the gradients")


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
                     supports=lambda p: p.groups == 1 and p.direction == "forward",
                     note="a Python loop over output pixels, tensordot inside")


# ---- the lineup ---------------------------------------------------------------------------

def lineup(backend: str, directions: tuple[str, ...] = ("forward",)) -> Lineup:
    """gpuconv ``auto`` and every strategy of ``backend`` in any of ``directions`` (one contender per name, which
    runs that name's strategy in each direction that has it), then each peer that is installed and usable.

    A peer that cannot run here (not installed, no GPU build) is listed in ``missing`` with the reason.
    """
    tables = get_backend(backend).TABLES
    directions = tuple(d for d in DIRECTIONS if d in directions)
    names = dict.fromkeys(name for d in directions for name in tables[d])
    found = [_gpuconv(backend, "auto", directions)]
    found += [_gpuconv(backend, name, directions) for name in names]
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
