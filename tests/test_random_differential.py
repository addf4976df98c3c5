"""Seeded random differential run: every CPU strategy (and ``strategy="auto"``) against the jax.lax reference.

Each seed draws one problem from ``np.random.default_rng(seed)``. Seeds cycle through kinds of problem that
grids of hand-picked cases tend to miss: empty batches, 1-pixel images, kernels as large as the padded
input, dilations whose kernel spans the whole padded input, strides larger than the kernel, groups and
depthwise with channel multipliers, asymmetric stride and dilation, ``'same'``/``'valid'`` padding, conv1d;
on top of that every problem draws its dtype (float32, float64, a few float16), bias or not, and sometimes
an empty batch. Inputs are uniform in [-1, 1) (never all zeros), so the tolerance is the one derived from
the arithmetic (:func:`gpuconv.measure.mismatch`).

Every strategy that supports a problem runs through the public API with its defaults, every other valid
variant (e.g. ``wide=1``) through :func:`gpuconv.cpu.execute`. A test item covers one chunk of seeds and
reports every failure in it, each naming its seed, problem, dtype and strategy; rerun one seed with
``GPUCONV_SEEDS=17 pytest tests/test_random_differential.py``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
from helpers import Case, random_inputs

import gpuconv
from gpuconv import cpu, reference
from gpuconv.cpu import STRATEGIES
from gpuconv.measure import mismatch
from gpuconv.measure import random_inputs as measure_inputs
from gpuconv.problem import ConvProblem
from gpuconv.strategy import Plan

N_SEEDS = 240
CHUNK = 12


# ---- drawing problems ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Drawn:
    """One random problem: the case as a user passes it, its dtype, and what kind of draw produced it."""

    seed: int
    kind: str
    case: Case
    dtype: str

    @property
    def problem(self) -> ConvProblem:
        return self.case.problem(self.dtype)

    def __str__(self) -> str:
        return f"seed {self.seed} ({self.kind}): {self.case} {self.dtype} bias={self.case.bias}"


def _pick(rng: np.random.Generator, options: Any) -> Any:
    return options[int(rng.integers(len(options)))]


def _channels(rng: np.random.Generator, grouped: bool) -> tuple[int, int, int]:
    """``(C, K, groups)``: mostly dense; grouped draws are depthwise (with a channel multiplier) or general."""
    if not grouped and rng.random() < 0.8:
        return int(rng.integers(1, 7)), int(rng.integers(1, 7)), 1
    if rng.random() < 0.5:  # depthwise: groups == C, K = C * multiplier
        c = int(rng.integers(2, 7))
        return c, c * int(rng.integers(1, 4)), c
    g = int(rng.integers(2, 5))
    cg, kg = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    return g * cg, g * kg, g


def _axis(rng: np.random.Generator, kind: str, first: bool) -> tuple[int, int, int, int, int]:
    """``(size, kernel, stride, dilation, padding)`` of one spatial axis, padding symmetric, the kernel fitting.

    ``first`` is the axis the kind is guaranteed on; the other one is drawn from the kind half of the time.
    """
    if not first and rng.random() < 0.5 and kind not in ("winograd", "pointwise"):
        kind = "general"
    if kind == "one_pixel":
        k, d = _pick(rng, [1, 2, 3, 5]), _pick(rng, [1, 1, 2])
        eff = d * (k - 1) + 1
        return 1, k, _pick(rng, [1, 1, 2, 3]), d, eff // 2 + _pick(rng, [0, 0, 1])  # 1 + 2p >= eff
    if kind == "large_kernel":
        k = _pick(rng, [7, 9, 11])
        p = int(rng.integers(0, k // 2 + 1))
        if rng.random() < 0.4:  # the kernel exactly as large as the padded input: one output
            return k - 2 * p, k, _pick(rng, [1, 2]), 1, p  # k is odd and p <= k // 2: size >= 1
        return int(rng.integers(max(1, k - 2 * p), max(1, k - 2 * p) + 5)), k, _pick(rng, [1, 1, 2, 3]), 1, p
    if kind == "dilation":
        # The dilated kernel spans the padded input exactly: (k - 1) * d + 1 == size + 2 * p.
        k, d = _pick(rng, [2, 3, 4]), int(rng.integers(2, 6))
        eff = (k - 1) * d + 1
        p = min(int(rng.integers(0, 3)), (eff - 1) // 2)
        return eff - 2 * p, k, _pick(rng, [1, 2, 5]), d, p
    if kind == "big_stride":
        k = _pick(rng, [1, 2, 3])
        s = k + int(rng.integers(1, 4))
        p = int(rng.integers(0, k // 2 + 1))
        return int(rng.integers(max(1, k - 2 * p), 13)), k, s, 1, p
    if kind == "winograd":  # 3x3, stride 1, dilation 1; tiny and odd outputs exercise the partial tiles
        p = _pick(rng, [0, 1, 1, 2])
        return int(rng.integers(max(1, 3 - 2 * p), 13)), 3, 1, 1, p
    if kind == "pointwise":  # 1x1 unpadded, any stride
        return int(rng.integers(1, 13)), 1, _pick(rng, [1, 1, 2, 3]), 1, 0
    # general
    k, d = int(rng.integers(1, 6)), _pick(rng, [1, 1, 1, 2])
    eff = d * (k - 1) + 1
    p = int(rng.integers(0, (eff - 1) // 2 + 2))
    return int(rng.integers(max(1, eff - 2 * p), 13)), k, _pick(rng, [1, 1, 2, 3]), d, p


KINDS = ["general", "empty", "one_pixel", "large_kernel", "dilation", "big_stride", "groups", "asymmetric",
         "same_valid", "conv1d", "winograd", "pointwise"]


def draw(seed: int) -> Drawn:
    """The problem of ``seed``; its kind cycles through :data:`KINDS`, so every chunk of seeds covers them all."""
    rng = np.random.default_rng(seed)
    kind = KINDS[seed % len(KINDS)]
    dtype = _pick(rng, ["float32"] * 9 + ["float64"] * 8 + ["float16"] * 3)
    bias = bool(rng.random() < 0.6)
    n = 0 if kind == "empty" or rng.random() < 0.08 else int(rng.integers(1, 4))
    c, k, groups = _channels(rng, grouped=kind == "groups")
    if kind == "winograd" and c // groups < 2:  # Winograd needs two input channels per group
        c, k = c * 2, k * (2 if groups == 1 else 1)
    spatial = kind if kind in ("one_pixel", "large_kernel", "dilation", "big_stride", "winograd", "pointwise") \
        else "general"
    if kind == "conv1d":
        spatial = _pick(rng, ["general", "one_pixel", "large_kernel", "dilation", "big_stride"])
    axes = [_axis(rng, spatial, first=True)]
    if kind != "conv1d":
        axes.append(_axis(rng, spatial, first=False))
        if rng.random() < 0.5:
            axes.reverse()  # the guaranteed axis is the width as often as the height
    sizes, kernel, stride, dilation, pads = (tuple(int(v) for v in t) for t in zip(*axes))
    if kind == "asymmetric":  # stride and dilation differ between the axes; sizes grow until the kernel fits
        stride, dilation = (tuple(int(v) for v in rng.permutation(_pick(rng, [(1, 2), (1, 3), (2, 3)])))
                            for _ in range(2))
        kernel = tuple(max(2, kk) for kk in kernel)
        sizes = tuple(max(s, d * (kk - 1) + 1 - 2 * p) for s, kk, d, p in zip(sizes, kernel, dilation, pads))
    padding: Any = pads if len(pads) == 2 and pads[0] != pads[1] else pads[0]
    if kind == "same_valid":
        if rng.random() < 0.6:  # 'same' needs stride 1; even kernels pad one more at the bottom/right
            padding, stride = "same", (1,) * len(sizes)
        else:
            padding = "valid"
            sizes = tuple(max(s, d * (kk - 1) + 1) for s, kk, d in zip(sizes, kernel, dilation))
    elif kind == "winograd" and rng.random() < 0.25:
        padding = "same"
    elif rng.random() < 0.05:
        padding = "valid"
        sizes = tuple(max(s, d * (kk - 1) + 1) for s, kk, d in zip(sizes, kernel, dilation))
    stride, dilation = (v[:1] if len(set(v)) == 1 else v for v in (stride, dilation))  # (2, 2) as the int 2
    case = Case((n, c, *sizes), (k, c // groups, *kernel), stride=stride[0] if len(stride) == 1 else stride,
                padding=padding, dilation=dilation[0] if len(dilation) == 1 else dilation, groups=groups, bias=bias)
    drawn = Drawn(seed, kind, case, dtype)
    drawn.problem  # noqa: B018 - the draw must be a valid problem (raises ValueError naming it otherwise)
    return drawn


# ---- running ---------------------------------------------------------------------------------------------

def _contenders(problem: ConvProblem) -> list[tuple[str, Callable[..., Any]]]:
    """``(label, run(drawn, x, w, b))``: "auto", each supporting strategy by name, and its non-default variants."""
    def public(strategy: str) -> Callable[..., Any]:
        return lambda d, x, w, b: getattr(gpuconv, d.case.fn)(x, w, b, **d.case.kwargs, strategy=strategy)

    def variant(name: str, params: dict) -> Callable[..., Any]:
        return lambda d, x, w, b: cpu.execute(d.problem, Plan(name, params, "forced"), x, w, b)

    out = [("auto", public("auto"))]
    for name in sorted(STRATEGIES):
        s = STRATEGIES[name]
        if not s.supports(problem):
            continue
        out.append((name, public(name)))
        for params in s.variants():
            if params != dict(s.defaults) and s.valid(params, problem):
                out.append((name + "".join(f" {k}={v}" for k, v in sorted(params.items())), variant(name, params)))
    return out


def _check(drawn: Drawn) -> list[str]:
    """Every contender on ``drawn``'s problem; one message per contender that differs from the reference or raises."""
    case, problem = drawn.case, drawn.problem
    x, w, b = random_inputs(case, drawn.dtype, seed=drawn.seed)
    expected = getattr(reference, case.fn)(x, w, b, **case.kwargs)
    failures = []
    for label, run in _contenders(problem):
        try:
            out = run(drawn, x, w, b)
            msg = mismatch(out, expected, problem)
            if msg is None and not out.flags.c_contiguous:
                msg = "the output is not C-contiguous"
        except Exception as e:  # noqa: BLE001 - report it with the seed and carry on with the others
            msg = f"raised {type(e).__name__}: {e}"
        if msg is not None:
            failures.append(f"{drawn} [{label}]: {msg}")
    return failures


def _seeds() -> list[int]:
    env = os.environ.get("GPUCONV_SEEDS")
    return [int(s) for s in env.split(",")] if env else list(range(N_SEEDS))


def _chunks() -> list[Any]:
    seeds = _seeds()
    return [pytest.param(seeds[i:i + CHUNK], id=f"seeds{seeds[i]}-{seeds[min(i + CHUNK, len(seeds)) - 1]}")
            for i in range(0, len(seeds), CHUNK)]


@pytest.mark.parametrize("seeds", _chunks())
def test_random_problems_match_reference(seeds: list[int]) -> None:
    failures = [f for seed in seeds for f in _check(draw(seed))]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)


# ---- the draw covers what it promises --------------------------------------------------------------------

def _features(d: Drawn) -> set[str]:
    p, case = d.problem, d.case
    hp, wp = p.h + p.padding[0] + p.padding[1], p.w + p.padding[2] + p.padding[3]
    eff_h, eff_w = p.dilation[0] * (p.r - 1) + 1, p.dilation[1] * (p.s - 1) + 1
    f = {case.fn, p.dtype, "bias" if p.has_bias else "no bias"}
    f |= {"empty batch"} if p.n == 0 else set()
    f |= {"1-pixel image"} if (p.ndim == 2 and p.h == 1) or p.w == 1 else set()
    f |= {"kernel >= 7"} if max(p.r, p.s) >= 7 else set()
    f |= {"kernel == padded input"} if (p.ndim == 2 and p.r == hp > 1) or p.s == wp > 1 else set()
    f |= {"dilated kernel spans padded input"} if ((p.dilation[0] > 1 and eff_h == hp)
                                                  or (p.dilation[1] > 1 and eff_w == wp)) else set()
    f |= {"stride > kernel"} if (p.ndim == 2 and p.stride[0] > p.r) or p.stride[1] > p.s else set()
    f |= {"groups"} if 1 < p.groups < p.c else set()
    f |= {"depthwise"} if p.groups == p.c > 1 and p.kg == 1 else set()
    f |= {"channel multiplier"} if p.groups == p.c > 1 and p.kg > 1 else set()
    f |= {"asymmetric stride"} if p.ndim == 2 and p.stride[0] != p.stride[1] else set()
    f |= {"asymmetric dilation"} if p.ndim == 2 and p.dilation[0] != p.dilation[1] else set()
    f |= {f"padding {case.padding}"} if isinstance(case.padding, str) else set()
    return f


def test_draw_covers_the_edge_cases() -> None:
    drawn = [draw(s) for s in range(N_SEEDS)]
    seen: dict[str, int] = {}
    for d in drawn:
        for f in _features(d):
            seen[f] = seen.get(f, 0) + 1
    wanted = ["conv1d", "conv2d", "float32", "float64", "float16", "bias", "no bias", "empty batch", "1-pixel image",
              "kernel >= 7", "kernel == padded input", "dilated kernel spans padded input", "stride > kernel",
              "groups", "depthwise", "channel multiplier", "asymmetric stride", "asymmetric dilation",
              "padding same", "padding valid"]
    thin = {f: seen.get(f, 0) for f in wanted if seen.get(f, 0) < 5}
    assert not thin, f"too few problems with {thin}"
    runs = {name: sum(STRATEGIES[name].supports(d.problem) and d.problem.n > 0 for d in drawn) for name in STRATEGIES}
    assert min(runs.values()) >= 10, f"strategies with too few non-empty problems: {runs}"
    assert len({(d.case, d.dtype) for d in drawn}) == len(drawn), "seeds drew the same problem twice"


def test_draw_is_deterministic() -> None:
    assert [draw(s) for s in range(20)] == [draw(s) for s in range(20)]


# ---- the gradients on the same draws ----------------------------------------------------------------------

N_GRAD_SEEDS = 120


def _check_gradients(drawn: Drawn) -> list[str]:
    """Both gradients of ``drawn``'s problem, "auto" and every supporting strategy, against jax.vjp."""
    case = drawn.case
    failures = []
    rng = np.random.default_rng(drawn.seed)
    for direction in ("input", "weight"):
        problem = dataclasses.replace(drawn.problem, has_bias=False, direction=direction)
        a, b, _ = measure_inputs(problem, rng)
        expected = reference.run_problem(problem, a, b)
        fn = getattr(gpuconv.grad, f"{case.fn}_{direction}")
        for name in ["auto", *sorted(cpu.TABLES[direction])]:
            if name != "auto" and not cpu.TABLES[direction][name].supports(problem):
                continue
            try:
                if direction == "input":
                    out = fn(case.x, b, a, **case.kwargs, strategy=name)
                else:
                    out = fn(a, case.w, b, **case.kwargs, strategy=name)
                msg = mismatch(out, expected, problem)
            except Exception as e:  # noqa: BLE001
                msg = f"raised {type(e).__name__}: {e}"
            if msg is not None:
                failures.append(f"{drawn} [{direction} {name}]: {msg}")
    return failures


@pytest.mark.parametrize("seeds", [pytest.param(list(range(i, i + 2 * CHUNK)), id=f"seeds{i}-{i + 2 * CHUNK - 1}")
                                   for i in range(0, N_GRAD_SEEDS, 2 * CHUNK)])
def test_random_gradients_match_reference(seeds: list[int]) -> None:
    failures = [f for seed in seeds for f in _check_gradients(draw(seed))]
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures)
