"""gpuconv.jax: jit, grad and vmap through gpuconv's callbacks, against jax.lax.conv_general_dilated (HIGHEST
precision) differentiated by jax itself; both callback kinds where the installed jax has buffer_callback."""

from __future__ import annotations

import functools
import zlib

import numpy as np
import pytest

jax = pytest.importorskip("jax")

import jax.numpy as jnp  # noqa: E402
from helpers import Case  # noqa: E402

import gpuconv.jax as gj  # noqa: E402
from gpuconv.measure import tolerance  # noqa: E402
from gpuconv.problem import make_problem  # noqa: E402

VMAP_CASE = Case((2, 6, 11, 10), (6, 3, 3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
CASES = [
    VMAP_CASE,
    Case((1, 4, 8, 8), (8, 1, 3, 3), padding="same", groups=4, bias=False),  # depthwise, multiplier 2
    Case((3, 4, 30), (6, 2, 5), stride=2, padding=3, dilation=2, groups=2),
    Case((2, 3, 16), (4, 3, 4), padding="same"),
]

#: The callback kinds this jax offers: buffer_callback where it exists, pure_callback always.
PATHS = [True, False] if gj._buffer_callback is not None else [False]


@pytest.fixture(params=PATHS, ids=lambda p: "buffer_callback" if p else "pure_callback")
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    monkeypatch.setattr(gj, "BUFFER_CALLBACK", request.param)
    return request.param


def _ours(case: Case):
    f = gj.conv1d if case.fn == "conv1d" else gj.conv2d
    return lambda x, w, b: f(x, w, b, **case.kwargs)


def _lax(case: Case):
    problem = make_problem(case.fn, case.x, case.w, "float32", case.bias, **case.kwargs)
    nd = len(case.x) - 2
    pad = ((problem.padding[2], problem.padding[3]),) if nd == 1 else (problem.padding[:2], problem.padding[2:])
    dims = ("NCH", "OIH", "NCH") if nd == 1 else ("NCHW", "OIHW", "NCHW")

    def f(x, w, b):
        y = jax.lax.conv_general_dilated(x, w, problem.stride[2 - nd:], pad, rhs_dilation=problem.dilation[2 - nd:],
                                         dimension_numbers=dims, feature_group_count=case.groups,
                                         precision=jax.lax.Precision.HIGHEST)
        return y if b is None else y + b.reshape((-1,) + (1,) * nd)

    return f


def _inputs(case: Case, dtype: str, lead: tuple[int, ...] = (), lead_w: tuple[int, ...] = ()):
    rng = np.random.default_rng(zlib.crc32(str(case).encode()))
    # NumPy arrays: jitted functions take them as they are, and indexing them compiles nothing
    draw = lambda shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    return draw(lead + case.x), draw(lead_w + case.w), (draw(lead_w + (case.w[0],)) if case.bias else None)


def _with_grads(conv):
    """``(x, w, b) -> (y, (dx, dw[, db]))`` of ``sum(sin(conv(x, w, b)))`` (sin keeps ``|dL/dy| <= 1`` and gives
    every output element its own gradient)."""
    def f(x, w, b):
        argnums = (0, 1) if b is None else (0, 1, 2)
        return conv(x, w, b), jax.grad(lambda *a: jnp.sum(jnp.sin(conv(*a))), argnums=argnums)(x, w, b)

    return f


@functools.cache
def _reference(case: Case, dtype: str):
    # XLA spends most of a second compiling each differentiated lax convolution: one program per case and
    # dtype, reused by every test (and every vmapped element, which has the case's shapes)
    return jax.jit(_with_grads(_lax(case)))


def _check(got, want, case: Case, direction: str, dtype: str, scale: float = 1.0) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == np.dtype(dtype), direction
    problem = make_problem(case.fn, case.x, case.w, dtype, False, **case.kwargs, direction=direction)
    rtol, atol = tolerance(problem, scale)
    np.testing.assert_allclose(np.asarray(got, np.float64), np.asarray(want, np.float64), rtol=rtol, atol=atol,
                               err_msg=direction)


def _check_all(got, want, case: Case, dtype: str) -> None:
    (y, grads), (y_ref, grads_ref) = got, want
    _check(y, y_ref, case, "forward", dtype)
    for g, r, direction in zip(grads, grads_ref, ("input", "weight", "weight")):  # db sums N*P*Q terms like dw
        _check(g, r, case, direction, dtype)


def test_the_documented_path_is_the_installed_one() -> None:
    try:
        import jax.experimental.buffer_callback  # noqa: F401
        has = True
    except ImportError:
        has = False
    assert gj.BUFFER_CALLBACK is has


@pytest.mark.parametrize("case", CASES, ids=str)
def test_jit_grad_matches_lax_float32(case: Case) -> None:
    x, w, b = _inputs(case, "float32")
    _check_all(jax.jit(_with_grads(_ours(case)))(x, w, b), _reference(case, "float32")(x, w, b), case, "float32")


def _per_element(case: Case, xs, ws, bs):
    """The reference on each mapped element, stacked: ``(y, grads)`` with a leading axis of ``len(xs)``."""
    outs = [_reference(case, "float32")(x, w, b) for x, w, b in zip(xs, ws, bs)]
    return jax.tree_util.tree_map(lambda *a: np.stack(a), *outs)


@pytest.mark.parametrize("in_axes", [(0, None, None), (None, 0, 0), (0, 0, 0)], ids=["x", "w", "both"])
def test_jit_vmap_forward_and_per_element_gradients(in_axes: tuple) -> None:
    case, m = VMAP_CASE, 3
    xs, _, _ = _inputs(case, "float32", lead=(m,))
    _, ws, bs = _inputs(case, "float32", lead_w=(m,))
    x = xs if in_axes[0] == 0 else xs[0]
    w, b = (ws, bs) if in_axes[1] == 0 else (ws[0], bs[0])
    got = jax.jit(jax.vmap(_with_grads(_ours(case)), in_axes))(x, w, b)
    pick = lambda a, axis: a if axis == 0 else [a] * m  # noqa: E731
    want = _per_element(case, *(pick(a, axis) for a, axis in zip((x, w, b), in_axes)))
    _check_all(got, want, case, "float32")


def test_nested_vmap_under_grad() -> None:
    case = VMAP_CASE
    xs, _, _ = _inputs(case, "float32", lead=(2,))
    _, ws, bs = _inputs(case, "float32", lead_w=(3,))
    nested = jax.vmap(jax.vmap(_ours(case), (0, None, None)), (None, 0, 0))  # y[j, i] = conv(x[i], w[j]) + b[j]
    loss = lambda x, w, b: jnp.sum(jnp.sin(nested(x, w, b)))  # noqa: E731
    y = jax.jit(nested)(xs, ws, bs)
    dx, dw, db = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(xs, ws, bs)
    # the reference per (i, j) pair; the total's gradients are sums of the pairs'
    pairs = [[_reference(case, "float32")(x, w, b) for x in xs] for w, b in zip(ws, bs)]
    pairs = jax.tree_util.tree_map(np.asarray, pairs)
    _check(y, np.stack([np.stack([p[0] for p in row]) for row in pairs]), case, "forward", "float32")
    _check(dx, sum(np.stack([p[1][0] for p in row]) for row in pairs), case, "input", "float32", scale=3)
    _check(dw, np.stack([sum(p[1][1] for p in row) for row in pairs]), case, "weight", "float32", scale=2)
    _check(db, np.stack([sum(p[1][2] for p in row) for row in pairs]), case, "weight", "float32", scale=2)


def test_both_callback_kinds_under_jit_grad_and_vmap(path: bool) -> None:
    case = VMAP_CASE
    xs, _, _ = _inputs(case, "float32", lead=(2,))
    _, ws, bs = _inputs(case, "float32", lead_w=(2,))
    _check_all(jax.jit(_with_grads(_ours(case)))(xs[0], ws[0], bs[0]), _reference(case, "float32")(xs[0], ws[0], bs[0]),
               case, "float32")
    _check_all(jax.jit(jax.vmap(_with_grads(_ours(case))))(xs, ws, bs), _per_element(case, xs, ws, bs), case,
               "float32")


def test_eager_unbatched_call_and_grad_without_jit() -> None:
    case = VMAP_CASE
    x, w, b = _inputs(case, "float32")
    y_ref, (dx_ref, _, _) = _reference(case, "float32")(x, w, b)
    conv = lambda x0: gj.conv2d(x0, w, b, **case.kwargs)  # noqa: E731
    y0 = conv(x[0])  # (C, H, W) -> (K, P, Q), as PyTorch
    assert y0.shape == y_ref.shape[1:]
    np.testing.assert_allclose(y0, y_ref[0], rtol=1e-5, atol=1e-5)
    # the loss is a sum over the batch, so image 0's gradient alone is the reference's first image
    np.testing.assert_allclose(jax.grad(lambda x0: jnp.sum(jnp.sin(conv(x0))))(x[0]), dx_ref[0], rtol=1e-5,
                               atol=1e-5)


def test_float64_only_with_x64_enabled() -> None:
    case = CASES[2]
    with jax.enable_x64(True):
        x, w, b = _inputs(case, "float64")
        _check_all(jax.jit(_with_grads(_ours(case)))(x, w, b), _reference(case, "float64")(x, w, b), case,
                   "float64")
    with jax.enable_x64(False):
        x, w, _ = _inputs(case, "float64")  # jnp makes float32 of them
        assert _ours(case)(x, w, None).dtype == jnp.float32


def test_errors_at_trace_time() -> None:
    # explicit dtypes: another test in the same worker may have enabled x64
    f32 = jnp.float32
    x = jnp.ones((1, 4, 8, 8), f32)
    with pytest.raises(TypeError, match="conv2d: x, w and bias must share one dtype"):
        jax.jit(lambda x: gj.conv2d(x, jnp.ones((2, 4, 3, 3), jnp.float16)))(x)
    with pytest.raises(ValueError, match="conv2d: x has 4 channels but w expects 6"):
        gj.conv2d(x, jnp.ones((2, 3, 3, 3), f32), groups=2)
    with pytest.raises(ValueError, match="conv1d: bias must have shape \\(2,\\)"):
        gj.conv1d(jnp.ones((1, 4, 8), f32), jnp.ones((2, 4, 3), f32), jnp.ones(3, f32))
    with pytest.raises(ValueError, match="conv2d: padding='same' requires stride 1"):
        gj.conv2d(x, jnp.ones((2, 4, 3, 3), f32), stride=2, padding="same")


def test_reference_leaves_the_callers_x64_setting_alone() -> None:
    from gpuconv import reference

    before = jax.config.jax_enable_x64
    rng = np.random.default_rng(3)
    x, w = rng.uniform(-1, 1, (1, 2, 5, 5)), rng.uniform(-1, 1, (3, 2, 3, 3))
    y = reference.conv2d(x, w)
    assert y.dtype == np.float64 and jax.config.jax_enable_x64 == before
    expected = sum(x[0, c, 1:4, 1:4].ravel() @ w[0, c].ravel() for c in range(2))
    assert abs(y[0, 0, 1, 1] - expected) < 1e-12
