"""Every CPU strategy and variant against the jax.lax reference (and PyTorch where installed) on the shared grid."""

from __future__ import annotations

import functools
import subprocess
import sys
import warnings

import numpy as np
import pytest
from helpers import CASES, Case, assert_matches, random_inputs

import gpuconv
from gpuconv import cpu, reference
from gpuconv.cpu import STRATEGIES
from gpuconv.strategy import Plan

try:
    import torch
except ImportError:  # pragma: no cover - torch is an optional peer
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch")
DTYPES = ["float32", "float64", "float16"]


def _variants() -> list:
    """Every (strategy, params) point of the CPU table, with a readable id."""
    out = []
    for name in sorted(STRATEGIES):
        for params in STRATEGIES[name].variants():
            pid = name + "".join(f"-{k}{v}" for k, v in sorted(params.items()))
            out.append(pytest.param(name, params, id=pid))
    return out


VARIANTS = _variants()


@functools.cache
def _reference(case: Case, dtype: str) -> np.ndarray:
    x, w, b = random_inputs(case, dtype)
    return getattr(reference, case.fn)(x, w, b, **case.kwargs)


def _run(name: str, params: dict, case: Case, dtype: str, x=None, w=None, b=None) -> np.ndarray:
    problem = case.problem(dtype)
    if x is None:
        x, w, b = random_inputs(case, dtype)
    return cpu.execute(problem, Plan(name, params, "forced"), x, w, b)


def _torch_conv(case: Case, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    """PyTorch's result; float16 is computed in float32 and rounded once, as gpuconv promises."""
    compute = np.float32 if x.dtype == np.float16 else x.dtype
    tx, tw = torch.from_numpy(x.astype(compute)), torch.from_numpy(w.astype(compute))
    tb = None if b is None else torch.from_numpy(b.astype(compute))
    fn = torch.nn.functional.conv1d if case.fn == "conv1d" else torch.nn.functional.conv2d
    padding = case.padding
    if isinstance(padding, (tuple, list)) and case.fn == "conv2d" and len(padding) == 2:
        padding = tuple(padding)
    with warnings.catch_warnings():  # torch notes that even kernels with padding="same" copy the input
        warnings.simplefilter("ignore", UserWarning)
        y = fn(tx, tw, tb, stride=case.stride, padding=padding, dilation=case.dilation, groups=case.groups)
    return y.numpy().astype(x.dtype)


# ---- the grid --------------------------------------------------------------------------------------------

def _applicable(name: str, params: dict, problem) -> bool:
    return STRATEGIES[name].supports(problem) and STRATEGIES[name].valid(params, problem)


GRID = [pytest.param(case, v.values[0], v.values[1], id=f"{v.id}-{case}")
        for case in CASES for v in VARIANTS if _applicable(*v.values, case.problem())]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case,name,params", GRID)
def test_variant_matches_reference(case: Case, name: str, params: dict, dtype: str) -> None:
    assert_matches(_run(name, params, case, dtype), _reference(case, dtype), case.problem(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_public_api_forced_strategy(name: str, dtype: str) -> None:
    ran = 0
    for case in CASES:
        problem = case.problem(dtype)
        if not STRATEGIES[name].supports(problem):
            continue
        x, w, b = random_inputs(case, dtype)
        out = getattr(gpuconv, case.fn)(x, w, b, **case.kwargs, strategy=name)
        assert out.flags.c_contiguous
        assert_matches(out, _reference(case, dtype), problem)
        ran += 1
    assert ran > 0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES, ids=str)
def test_auto_matches_reference(case: Case, dtype: str) -> None:
    x, w, b = random_inputs(case, dtype)
    out = getattr(gpuconv, case.fn)(x, w, b, **case.kwargs)
    assert_matches(out, _reference(case, dtype), case.problem(dtype))


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,params", VARIANTS)
def test_variant_matches_torch(name: str, params: dict, dtype: str) -> None:
    ran = 0
    for case in CASES:
        problem = case.problem(dtype)
        if not _applicable(name, params, problem):
            continue
        x, w, b = random_inputs(case, dtype, seed=1)
        assert_matches(_run(name, params, case, dtype, x, w, b), _torch_conv(case, x, w, b), problem)
        ran += 1
    assert ran > 0


# ---- the strategy table and the heuristic ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_table_entries_are_consistent(name: str) -> None:
    s = STRATEGIES[name]
    assert s.name == name
    assert s.valid(s.defaults), f"{name}: defaults {dict(s.defaults)} are not a valid point of {dict(s.space)}"
    assert list(s.variants()), f"{name}: no valid variant"
    if s.supports is not STRATEGIES["im2col"].supports:
        assert s.requires, f"{name}: a restricted strategy must say what it requires"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_heuristic_plans_are_valid(case: Case, dtype: str) -> None:
    problem = case.problem(dtype)
    plan = cpu.heuristic(problem)
    strategy = STRATEGIES[plan.strategy]
    assert strategy.supports(problem)
    assert strategy.valid(plan.params, problem), plan


def test_heuristic_picks_the_specialized_paths() -> None:
    assert cpu.heuristic(Case((1, 64, 56, 56), (256, 64, 1, 1)).problem()).strategy == "pointwise"
    assert cpu.heuristic(Case((1, 32, 56, 56), (32, 1, 3, 3), groups=32, padding=1).problem()).strategy == "depthwise"
    assert cpu.heuristic(Case((1, 4, 256, 256), (4, 4, 31, 31), padding=15).problem()).strategy == "fft"
    assert cpu.heuristic(Case((1, 128, 56, 56), (128, 128, 3, 3), padding=1).problem()).strategy == "winograd"
    plan = cpu.heuristic(Case((1, 128, 28, 28), (128, 128, 3, 3), padding=1, stride=2).problem())
    assert plan.strategy in ("im2col", "direct")


# Depthwise's phased layout (wide at a stride above 1): strides that do and do not divide the kernel, dilation with
# stride, channel multipliers, padding larger than the kernel, one-channel blocks (block=0 KiB) and large ones.
_DEPTHWISE_CASES = [
    # n, c, multiplier, h, w, r, s, stride, dilation, padding
    (2, 3, 1, 9, 11, 3, 3, 2, 1, 1),
    (1, 4, 2, 10, 7, 3, 5, (2, 3), 1, (1, 2)),
    (2, 5, 1, 13, 13, 5, 5, 2, 2, 2),
    (1, 6, 3, 8, 8, 3, 3, 3, 1, 0),
    (3, 2, 1, 7, 9, 2, 3, (1, 2), (2, 1), 1),
    (1, 2, 1, 3, 3, 3, 3, 2, 1, 4),
    (1, 2, 1, 5, 4, 1, 1, 3, 1, 0),
]


@needs_torch
@pytest.mark.parametrize("wide", [0, 1])
@pytest.mark.parametrize("block", [0, 64, 1024])
@pytest.mark.parametrize("shape", _DEPTHWISE_CASES, ids=str)
def test_depthwise_layouts_match_torch(shape: tuple, wide: int, block: int) -> None:
    from gpuconv.cpu import depthwise
    from gpuconv.problem import make_problem
    n, c, mult, h, w, r, s, stride, dilation, padding = shape
    rng = np.random.default_rng(7)
    x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((c * mult, 1, r, s))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=c)
    problem = make_problem("conv2d", x.shape, wt.shape, "float64", False, **kwargs)
    want = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(wt), **kwargs).numpy()
    got = depthwise.depthwise(problem, x, wt, wide=wide, block=block)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * r * s)


# ---- inputs that are not plain C-contiguous arrays ------------------------------------------------------

def _noncontiguous(a: np.ndarray, how: str) -> np.ndarray:
    """The same values as ``a`` in a view with unusual strides."""
    if how == "transposed":  # channels-last storage seen as NCHW, or Fortran order where that is contiguous
        order = (0, *range(2, a.ndim), 1)
        view = np.ascontiguousarray(a.transpose(order)).transpose(np.argsort(order))
        if view.flags.c_contiguous:
            view = np.asfortranarray(a)
    elif how == "sliced":  # every other element of a larger buffer
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        view = big[..., ::2]
    else:  # negative strides along every axis
        flip = (slice(None, None, -1),) * a.ndim
        view = np.ascontiguousarray(a[flip])[flip]
    assert not view.flags.c_contiguous and np.array_equal(view, a)
    return view


@pytest.mark.parametrize("how", ["transposed", "sliced", "negative"])
@pytest.mark.parametrize("name,params", VARIANTS)
def test_noncontiguous_inputs(name: str, params: dict, how: str) -> None:
    ran = 0
    for case in CASES:
        problem = case.problem("float32")
        if not _applicable(name, params, problem):
            continue
        x, w, b = random_inputs(case, "float32")
        out = _run(name, params, case, "float32", _noncontiguous(x, how), _noncontiguous(w, how), b)
        assert out.flags.c_contiguous
        assert_matches(out, _reference(case, "float32"), problem)
        ran += 1
    assert ran > 0


def test_noncontiguous_through_public_api() -> None:
    case = Case((2, 6, 9, 9), (6, 1, 3, 3), groups=6, padding=1)
    x, w, b = random_inputs(case, "float64")
    out = gpuconv.conv2d(_noncontiguous(x, "transposed"), _noncontiguous(w, "negative"), b[::-1][::-1],
                         padding=1, groups=6)
    assert_matches(out, _reference(case, "float64"), case.problem("float64"))


# chunk=8 units of `unit` bytes; the case has 4 * 3 * 3 = 36 column rows, of 9 x 9 columns per image (compact)
# or 9 x 11 (wide).
@pytest.mark.parametrize("unit", [2 * 36 * 81 * 4 // 8,   # images in chunks of 2, 2, 1 (compact), one at a time (wide)
                                  36 * 4 * 9 * 4 // 8,    # blocks of 4, 4, 1 rows of one image (wide: 3, 3, 3)
                                  1])                     # one row at a time
def test_im2col_chunks(unit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv.cpu import _views, im2col

    # The strategy function itself: a problem this small takes prepare's unchunked fast path.
    case = Case((5, 4, 9, 9), (6, 2, 3, 3), groups=2, padding=1, bias=False)
    problem = case.problem("float32")
    x, w, _ = random_inputs(case, "float32")
    monkeypatch.setattr(_views, "CHUNK_UNIT", unit)
    for wide in (0, 1):
        assert_matches(im2col.im2col(problem, x, w, wide=wide, chunk=8), _reference(case, "float32"), problem)


# ---- NaN and Inf: exactly where PyTorch puts them --------------------------------------------------------

NONFINITE_CASES = [
    Case((1, 3, 12, 12), (4, 3, 3, 3), padding=1),
    Case((1, 2, 16, 16), (2, 2, 9, 9), padding=4),
    Case((2, 4, 10, 10), (4, 2, 3, 3), stride=2, groups=2, padding=1),
    Case((1, 4, 9, 9), (8, 1, 3, 3), groups=4, padding=1),
    Case((1, 6, 8, 8), (5, 6, 1, 1)),
    Case((1, 3, 30), (4, 3, 5), padding=2, dilation=2),
    Case((1, 16, 10, 9), (4, 16, 3, 3), padding=1),  # enough channels for Winograd F(4x4)
]


def _poison(a: np.ndarray, seed: int) -> np.ndarray:
    """A copy of ``a`` with a NaN, a +Inf and a -Inf at random places."""
    a = a.copy()
    rng = np.random.default_rng(seed)
    for v in (np.nan, np.inf, -np.inf):
        a.flat[rng.integers(a.size)] = v
    return a


@needs_torch
@pytest.mark.parametrize("where", ["x", "w"])
@pytest.mark.parametrize("name,params", VARIANTS)
def test_nonfinite_propagate_like_torch(name: str, params: dict, where: str) -> None:
    ran = 0
    for i, case in enumerate(NONFINITE_CASES):
        if where == "w" and case.padding != 0:
            # An Inf weight times a padded zero is NaN in dense PyTorch convs but skipped by its depthwise
            # kernel, so border outputs have no single PyTorch answer; unpadded problems do.
            case = Case(case.x, case.w, case.stride, 0, case.dilation, case.groups, case.bias)
        problem = case.problem("float32")
        if not _applicable(name, params, problem):
            continue
        x, w, b = random_inputs(case, "float32", seed=i)
        if where == "x":
            x = _poison(x, i)
        else:
            w = _poison(w, i)
        out = _run(name, params, case, "float32", x, w, b)
        expected = _torch_conv(case, x, w, b)
        assert np.array_equal(np.isnan(out), np.isnan(expected)), f"{case}: NaN positions differ"
        assert np.array_equal(np.isposinf(out), np.isposinf(expected)), f"{case}: +Inf positions differ"
        assert np.array_equal(np.isneginf(out), np.isneginf(expected)), f"{case}: -Inf positions differ"
        if where == "x":
            assert np.isfinite(out).any(), f"{case}: the poison reached every output"
        assert_matches(out, expected, problem)
        ran += 1
    assert ran > 0


# ---- edge cases of the public surface --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_empty_batch(name: str) -> None:
    for case in (Case((0, 4, 9, 9), (8, 2, 3, 3), groups=2, padding=1), Case((0, 4, 9, 9), (4, 1, 3, 3), groups=4),
                 Case((0, 4, 9, 9), (6, 4, 1, 1)), Case((0, 3, 20), (5, 3, 4), stride=2)):
        problem = case.problem("float32")
        if not STRATEGIES[name].supports(problem):
            continue
        x, w, b = random_inputs(case, "float32")
        out = getattr(gpuconv, case.fn)(x, w, b, **case.kwargs, strategy=name)
        assert out.shape == problem.out_shape and out.dtype == np.float32
        if torch is not None:
            assert out.shape == _torch_conv(case, x, w, b).shape


def test_unsupported_forced_strategy_names_the_requirement() -> None:
    x, w = random_inputs(Case((1, 4, 8, 8), (4, 4, 3, 3)), "float32")[:2]
    with pytest.raises(ValueError, match=r"conv2d: strategy 'pointwise' cannot compute this problem: it requires "
                                         r"a 1x1 kernel and no padding; "
                                         r"x.shape=\(1, 4, 8, 8\), w.shape=\(4, 4, 3, 3\)"):
        gpuconv.conv2d(x, w, strategy="pointwise")
    with pytest.raises(ValueError, match=r"strategy 'depthwise' cannot compute this problem: it requires groups == C"):
        gpuconv.conv2d(x, w, strategy="depthwise")


def test_unknown_strategy_lists_the_valid_ones() -> None:
    x, w = random_inputs(Case((1, 4, 8, 8), (4, 4, 3, 3)), "float32")[:2]
    names = ", ".join(repr(n) for n in ["auto", *sorted(STRATEGIES)])
    with pytest.raises(ValueError, match=r"conv2d: strategy must be one of \[" + names + r"\] on the cpu backend, "
                                         r"got 'karatsuba'"):
        gpuconv.conv2d(x, w, strategy="karatsuba")


def test_import_pulls_in_neither_jax_nor_cupy() -> None:
    code = ("import sys, numpy as np, gpuconv\n"
            "gpuconv.conv2d(np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32))\n"
            "bad = sorted(m for m in ('jax', 'cupy', 'torch', 'optuna') if m in sys.modules)\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@needs_torch
@pytest.mark.parametrize("dtype", DTYPES)
def test_dlpack_torch_tensors_in_and_out(dtype: str) -> None:
    case = Case((2, 4, 9, 9), (6, 2, 3, 3), stride=2, padding=1, groups=2)
    x, w, b = random_inputs(case, dtype)
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b)
    out = gpuconv.conv2d(tx, tw, tb, **case.kwargs)
    assert isinstance(out, torch.Tensor)
    assert out.dtype == tx.dtype and out.device == tx.device
    assert_matches(out.numpy(), _reference(case, dtype), case.problem(dtype))
    assert_matches(out.numpy(), _torch_conv(case, x, w, b), case.problem(dtype))
    out1d = gpuconv.conv1d(tx[:, :, 0], tw[:, :, 0], tb, stride=2, padding=1, groups=2)
    assert isinstance(out1d, torch.Tensor) and out1d.shape == (2, 6, 5)


# ---- the demo --------------------------------------------------------------------------------------------

def test_demo_checks_and_times_every_strategy(capsys: pytest.CaptureFixture[str]) -> None:
    from gpuconv import demo

    problem = Case((1, 8, 10, 10), (8, 4, 3, 3), padding=1, groups=2, bias=False).problem()
    x, w = demo._inputs(problem)
    errors = demo.check(problem, x, w)
    labels = {c.label for c in demo.contenders(problem, x, w, peers=False)}
    assert set(errors) == labels
    assert {"im2col chunk=8 wide=0", "im2col chunk=32 wide=1", "direct wide=0", "fft"} <= labels
    assert max(errors.values()) < 1e-5
    times = demo.time_round_robin(demo.contenders(problem, x, w), repeat=2, warmup=1, settle_s=0)
    assert set(times) >= labels and all(t > 0 for t in times.values())


def test_demo_rejects_a_wrong_strategy(monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv import demo
    from gpuconv.cpu import _views, im2col

    problem = Case((1, 4, 9, 9), (4, 4, 3, 3), padding=1, bias=False).problem()
    x, w = demo._inputs(problem)
    monkeypatch.setitem(STRATEGIES, "im2col", STRATEGIES["im2col"].__class__(
        "im2col", lambda p, x, w, **kw: im2col.im2col(p, x, w, **kw) * 1.001,
        space={"wide": (0, 1), "chunk": _views.COLUMN_CHUNKS},
        defaults={"wide": 0, "chunk": _views.DEFAULT_COLUMN_CHUNK}))
    with pytest.raises(AssertionError, match=r"demo: .*im2col chunk=\d+ wide=\d.* differs from the reference"):
        demo.check(problem, x, w)


def test_demo_shape_set(tmp_path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    from gpuconv import demo

    path = tmp_path / "tiny.json"
    path.write_text('[{"name": "a", "x": [1, 4, 8, 8], "w": [4, 4, 3, 3], "padding": 1},'
                    ' {"name": "b", "x": [1, 4, 16], "w": [2, 4, 1]}]')
    monkeypatch.setattr(demo, "SETTLE_S", 0.0)
    demo.main(["--shapes", str(path), "--repeat", "1"])
    out = capsys.readouterr().out
    assert "a " in out and "b " in out and "speed-up of gpuconv over each peer" in out


# ---- scratch buffers -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,params", VARIANTS)
def test_results_do_not_alias_scratch_buffers(name: str, params: dict) -> None:
    """A later call (other data, same shapes) must not change an earlier result."""
    for case in CASES:
        problem = case.problem("float32")
        if not _applicable(name, params, problem):
            continue
        first = _run(name, params, case, "float32")
        kept = first.copy()
        x, w, b = random_inputs(case, "float32", seed=7)
        _run(name, params, case, "float32", x, w, b)
        assert np.array_equal(first, kept), f"{case}: the result changed after another call"


def test_threads_use_their_own_scratch() -> None:
    from concurrent.futures import ThreadPoolExecutor

    case = Case((2, 16, 20, 20), (16, 16, 3, 3), padding=1)
    problem = case.problem("float32")
    inputs = [random_inputs(case, "float32", seed=s) for s in range(8)]
    plan = Plan("im2col", {"wide": 1, "chunk": 8})
    expected = [cpu.execute(problem, plan, *xwb) for xwb in inputs]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            got = list(pool.map(lambda xwb: cpu.execute(problem, plan, *xwb), inputs))
            for g, e in zip(got, expected):
                np.testing.assert_array_equal(g, e)


def test_fft_error_stays_local_with_an_outlier() -> None:
    """One huge input must not spoil the outputs whose windows do not hold it (float32 transforms would)."""
    case = Case((1, 4, 64, 64), (4, 4, 9, 9), padding=4)
    problem = case.problem("float32")
    x, w, b = random_inputs(case, "float32")
    x[0, 0, 2, 2] = 1e4
    expected = reference.run_problem(case.problem("float64"), x.astype(np.float64), w.astype(np.float64),
                                     b.astype(np.float64)).astype(np.float32)
    out = _run("fft", {}, case, "float32", x, w, b)
    far = (slice(None), slice(None), slice(16, None), slice(16, None))
    assert_matches(out[far], expected[far], problem)
