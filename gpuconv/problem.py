"""One convolution problem, normalized and validated once.

Every entry point (``conv1d``, ``conv2d``, the reference, the autotuner) turns its arguments into a
:class:`ConvProblem` here, so the rules and the error messages live in one place. A 1-d problem is
stored as a 2-d one with ``H == R == 1``; ``ndim`` remembers which the user called.
"""

from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass
from typing import Any, Union

from ._arrays import ArrayKind, dtype_name, kind_of
from ._dtypes import DTYPES, numpy_dtype

IntOrPair = Union[int, tuple[int, ...]]
Padding = Union[int, str, tuple[int, ...]]

#: What a problem computes: the convolution itself, or one of its two gradients. A gradient problem keeps the
#: forward geometry (x, w and the output are the forward's shapes); only its operands and result differ.
DIRECTIONS = ("forward", "input", "weight")

#: How float32 products may be computed: ``"highest"`` exactly as float32 FMAs, ``"tf32"`` on tensor cores
#: with the operands rounded to TF32 (10 mantissa bits) where the backend has them (CUDA); float32 sums either way.
PRECISIONS = ("highest", "tf32")


@dataclass(frozen=True)
class ConvProblem:
    """The shape-level description of one convolution (no data).

    Attributes:
        ndim: spatial dimensions as called (1 for ``conv1d``, 2 for ``conv2d``).
        n, c, h, w: input batch, channels, height, width (``h == 1`` for 1-d).
        k, r, s: output channels, kernel height and width (``r == 1`` for 1-d).
        stride, dilation: ``(vertical, horizontal)``.
        padding: ``(top, bottom, left, right)``, already resolved from ``'same'``/``'valid'``.
        groups: number of channel groups.
        dtype: one of :data:`DTYPES` (``gpuconv._dtypes``); the dtype of x, w, bias and the output.
        has_bias: whether a bias is added (forward only).
        direction: what is computed, one of :data:`DIRECTIONS`: ``"forward"`` (``y`` from ``x`` and ``w``),
            ``"input"`` (``dx`` from ``dy`` and ``w``) or ``"weight"`` (``dw`` from ``x`` and ``dy``).
        precision: one of :data:`PRECISIONS`; what a strategy may do to float32 operands (part of the cache
            key: a TF32 decision is not an exact one).
    """

    ndim: int
    n: int
    c: int
    h: int
    w: int
    k: int
    r: int
    s: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: str = "float32"
    has_bias: bool = False
    direction: str = "forward"
    precision: str = "highest"

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def p(self) -> int:
        """Output height."""
        return (self.h + self.padding[0] + self.padding[1] - self.dilation[0] * (self.r - 1) - 1) // self.stride[0] + 1

    @property
    def q(self) -> int:
        """Output width."""
        return (self.w + self.padding[2] + self.padding[3] - self.dilation[1] * (self.s - 1) - 1) // self.stride[1] + 1

    @property
    def cg(self) -> int:
        """Input channels per group (``w.shape[1]``)."""
        return self.c // self.groups

    @property
    def kg(self) -> int:
        """Output channels per group."""
        return self.k // self.groups

    @property
    def reduction(self) -> int:
        """Length of each output's dot product: ``C/groups * R * S``."""
        return self.cg * self.r * self.s

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops: ``2 N K P Q C/groups R S``."""
        return 2 * self.n * self.k * self.p * self.q * self.reduction

    @property
    def is_depthwise(self) -> bool:
        """One input channel per group (``groups == C``), any channel multiplier."""
        return self.groups == self.c and self.groups > 1

    @property
    def is_pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded convolution: a plain GEMM per image."""
        return (self.r, self.s, self.stride, self.padding) == (1, 1, (1, 1), (0, 0, 0, 0))

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.n, self.c, self.w) if self.ndim == 1 else (self.n, self.c, self.h, self.w)

    @property
    def w_shape(self) -> tuple[int, ...]:
        return (self.k, self.cg, self.s) if self.ndim == 1 else (self.k, self.cg, self.r, self.s)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """Output shape as the user sees it (3-d for conv1d)."""
        return (self.n, self.k, self.q) if self.ndim == 1 else (self.n, self.k, self.p, self.q)

    @property
    def out_shape4(self) -> tuple[int, int, int, int]:
        """Output shape in the internal 4-d layout."""
        return (self.n, self.k, self.p, self.q)

    @property
    def operand_shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of the two arrays the direction reads: ``(x, w)``, ``(dy, w)`` or ``(x, dy)``."""
        if self.direction == "input":
            return self.out_shape, self.w_shape
        if self.direction == "weight":
            return self.x_shape, self.out_shape
        return self.x_shape, self.w_shape

    @property
    def result_shape(self) -> tuple[int, ...]:
        """The shape of what the direction computes: ``y``, ``dx`` or ``dw``."""
        return {"input": self.x_shape, "weight": self.w_shape}.get(self.direction, self.out_shape)

    @property
    def sum_length(self) -> int:
        """How many products each element of the result sums: ``C/groups R S`` for the output, ``K/groups R S``
        for the input gradient (at most), ``N P Q`` for the weight gradient. Tolerances scale with it."""
        if self.direction == "input":
            return self.kg * self.r * self.s
        if self.direction == "weight":
            return self.n * self.p * self.q
        return self.reduction

    # ---- serialization: the problem part of a cache key ----------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples as lists), as stored beside a tuned decision."""
        d = asdict(self)
        for name in ("stride", "padding", "dilation"):
            d[name] = list(d[name])
        return d


# ---- argument normalization -------------------------------------------------------------

def _is_int(v: object) -> bool:
    # the exact-type test first: this runs ~10 times per call and the ABC check costs microseconds
    return type(v) is int or (isinstance(v, numbers.Integral) and not isinstance(v, bool))


def _fmt(v: object) -> str:
    return repr(tuple(v)) if isinstance(v, (list, tuple)) else repr(v)


def _int_tuple(fn: str, name: str, value: IntOrPair, ndim: int, *, minimum: int) -> tuple[int, ...]:
    """``int`` or a tuple/list of ``ndim`` ints, each ``>= minimum`` -> tuple of ``ndim`` ints."""
    if _is_int(value):
        values: tuple[Any, ...] = (value,) * ndim
    elif isinstance(value, (tuple, list)):
        values = tuple(value)
        if len(values) != ndim:
            raise ValueError(f"{fn}: {name} must be an int or a tuple of {ndim} ints, got {_fmt(value)}")
    else:
        raise TypeError(f"{fn}: {name} must be an int or a tuple of {ndim} ints, got {type(value).__name__}")
    if not all(_is_int(v) for v in values):
        raise TypeError(f"{fn}: {name} must contain ints, got {_fmt(value)}")
    if any(v < minimum for v in values):
        what = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{fn}: {name} must be {what}, got {_fmt(value)}")
    return tuple(int(v) for v in values)


def _resolve_padding(fn: str, padding: Padding, ndim: int, stride: tuple[int, ...],
                     dilation: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[int, ...]:
    """Padding as ``(before, after)`` per spatial dim, flattened; ``'same'`` split like PyTorch."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * (2 * ndim)
        if padding == "same":
            if any(st != 1 for st in stride):
                raise ValueError(f"{fn}: padding='same' requires stride 1, got stride={_fmt(stride)}")
            out: list[int] = []
            for d, k in zip(dilation, kernel):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]  # the odd extra goes after, as in PyTorch
            return tuple(out)
        raise ValueError(f"{fn}: padding must be an int, a tuple of {ndim} ints, 'valid' or 'same', got {padding!r}")
    pads = _int_tuple(fn, "padding", padding, ndim, minimum=0)
    return tuple(v for p in pads for v in (p, p))


# Problems already built from plain arguments (exact ints, strings, tuples of exact ints). Validation costs
# tens of microseconds per call, a tenth of a small convolution on the CPU; a network calls the same few
# layers again and again. Only successes are kept, and a bool or float never forms a key, so an argument
# that must be rejected (groups=True, stride=1.0) is never served from here.
_MEMO: dict[tuple[Any, ...], ConvProblem] = {}
_MEMO_MAX = 4096


def _plain(v: object) -> bool:
    t = type(v)
    return t is int or t is str or (t is tuple and all(type(e) is int for e in v))  # type: ignore[union-attr]


def make_problem(fn: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], dtype: str, has_bias: bool, *,
                 stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1,
                 direction: str = "forward", precision: str = "highest") -> ConvProblem:
    """Validate shapes and options and build the problem. Raises ``ValueError``/``TypeError`` naming ``fn``.

    Args:
        fn: the public function, named in every message; a name with ``1d`` in it is one-dimensional.
        x_shape, w_shape: shapes of the (forward) input ``(N, C, *spatial)`` and weight ``(K, C/groups, *kernel)``.
        dtype: the common dtype name of the arrays; must be in :data:`DTYPES`.
        has_bias: whether a bias of shape ``(K,)`` is given (its shape is checked by the caller).
        direction: one of :data:`DIRECTIONS`.
        precision: one of :data:`PRECISIONS`.
    """
    key = None
    if (_plain(stride) and _plain(padding) and _plain(dilation) and _plain(groups) and _plain(dtype)
            and type(precision) is str):
        key = (fn, tuple(x_shape), tuple(w_shape), dtype, bool(has_bias), stride, padding, dilation, groups,
               direction, precision)
        found = _MEMO.get(key)
        if found is not None:
            return found
    problem = _make_problem(fn, x_shape, w_shape, dtype, has_bias, stride=stride, padding=padding,
                            dilation=dilation, groups=groups, direction=direction, precision=precision)
    if key is not None:
        if len(_MEMO) >= _MEMO_MAX:
            _MEMO.clear()
        _MEMO[key] = problem
    return problem


#: How each direction names its two shapes in messages (the forward's are attributes, hence ``x.shape``).
_OPERANDS = {"forward": ("x", "x.shape", "w", "w.shape"),
             "input": ("input_size", "input_size", "weight", "weight.shape"),
             "weight": ("input", "input.shape", "weight_size", "weight_size")}


def _make_problem(fn: str, x_shape: tuple[int, ...], w_shape: tuple[int, ...], dtype: str, has_bias: bool, *,
                  stride: IntOrPair, padding: Padding, dilation: IntOrPair, groups: int,
                  direction: str = "forward", precision: str = "highest") -> ConvProblem:
    if direction not in DIRECTIONS:
        raise ValueError(f"{fn}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"{fn}: precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if direction != "forward" and has_bias:
        raise ValueError(f"{fn}: a gradient problem has no bias")
    xn, xs, wn, ws = _OPERANDS[direction]
    ndim = 1 if "1d" in fn else 2
    x_shape, w_shape = tuple(int(v) for v in x_shape), tuple(int(v) for v in w_shape)
    layout = "(N, C, L)" if ndim == 1 else "(N, C, H, W)"
    wlayout = "(K, C/groups, R)" if ndim == 1 else "(K, C/groups, R, S)"
    if len(x_shape) != ndim + 2:
        unbatched = "(C, L)" if ndim == 1 else "(C, H, W)"
        raise ValueError(f"{fn}: {xn} must be {ndim + 2}-d {layout} or {ndim + 1}-d {unbatched}, got shape {x_shape}")
    if len(w_shape) != ndim + 2:
        raise ValueError(f"{fn}: {wn} must be {ndim + 2}-d {wlayout}, got shape {w_shape}")
    if dtype not in DTYPES:
        raise TypeError(f"{fn}: dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    if dtype == "bfloat16":
        try:
            numpy_dtype(dtype)  # registers np.dtype("bfloat16") for the backends, or says what to install
        except TypeError as e:
            raise TypeError(f"{fn}: {e}") from None
    if not _is_int(groups):
        raise TypeError(f"{fn}: groups must be an int, got {type(groups).__name__}")
    if groups < 1:
        raise ValueError(f"{fn}: groups must be positive, got {groups}")
    groups = int(groups)  # np.int64 is accepted but must not leak into the problem (it is not JSON)
    n, c, *spatial = x_shape
    k, cg, *kernel = w_shape
    if c < 1 or any(v < 1 for v in spatial):
        raise ValueError(f"{fn}: {xn} must have at least one channel and a non-empty spatial extent, "
                         f"got shape {x_shape}")
    if k < 1 or cg < 1 or any(v < 1 for v in kernel):
        raise ValueError(f"{fn}: {wn} must have non-zero sizes, got shape {w_shape}")
    if c % groups:
        raise ValueError(f"{fn}: {xn} has {c} channels, which is not divisible by groups={groups}; {xs}={x_shape}")
    if k % groups:
        raise ValueError(f"{fn}: {wn} has {k} output channels ({ws}[0]), which is not divisible by "
                         f"groups={groups}; {ws}={w_shape}")
    if c != cg * groups:
        raise ValueError(f"{fn}: {xn} has {c} channels but {wn} expects {cg * groups} "
                         f"({ws}[1]={cg} x groups={groups}); {xs}={x_shape}, {ws}={w_shape}")
    stride_t = _int_tuple(fn, "stride", stride, ndim, minimum=1)
    dilation_t = _int_tuple(fn, "dilation", dilation, ndim, minimum=1)
    pads = _resolve_padding(fn, padding, ndim, stride_t, dilation_t, tuple(kernel))
    names = ("length",) if ndim == 1 else ("height", "width")
    for i, name in enumerate(names):
        eff = dilation_t[i] * (kernel[i] - 1) + 1
        avail = spatial[i] + pads[2 * i] + pads[2 * i + 1]
        if eff > avail:
            ksym = ("R", "S")[i] if ndim == 2 else "R"
            raise ValueError(
                f"{fn}: the kernel {name} {eff} ({ksym}={kernel[i]}, dilation={dilation_t[i]}) is larger than the "
                f"padded input {name} {avail} ({spatial[i]} + padding {pads[2 * i]}+{pads[2 * i + 1]}); "
                f"{xs}={x_shape}, {ws}={w_shape}")
    if ndim == 1:
        return ConvProblem(1, n, c, 1, spatial[0], k, 1, kernel[0], (1, stride_t[0]), (0, 0, pads[0], pads[1]),
                           (1, dilation_t[0]), groups, dtype, bool(has_bias), direction, precision)
    return ConvProblem(2, n, c, spatial[0], spatial[1], k, kernel[0], kernel[1], stride_t, tuple(pads),  # type: ignore[arg-type]
                       dilation_t, groups, dtype, bool(has_bias), direction, precision)


# ---- from arrays: what every array-taking entry point calls --------------------------------

def _check_same_place(fn: str, kinds: dict[str, ArrayKind]) -> None:
    first_name, first = next(iter(kinds.items()))
    for name, kind in kinds.items():
        if (kind.backend, kind.device, kind.library) != (first.backend, first.device, first.library):
            raise TypeError(f"{fn}: {first_name} and {name} must be arrays of one library on one device, "
                            f"got {first_name}: {first.describe()} and {name}: {kind.describe()}")


def _check_dtypes(fn: str, arrays: dict[str, Any], together: str = "x, w and bias") -> str:
    names = {name: dtype_name(fn, name, a) for name, a in arrays.items()}
    for name, dt in names.items():
        if dt not in DTYPES:
            raise TypeError(f"{fn}: {name} has dtype {dt}; supported dtypes are {', '.join(DTYPES)}")
    if len(set(names.values())) > 1:
        listing = ", ".join(f"{n}: {d}" for n, d in names.items())
        raise TypeError(f"{fn}: {together} must share one dtype (no silent casts), got {listing}")
    return next(iter(names.values()))


def problem_from_arrays(fn: str, x: Any, w: Any, bias: Any, *, stride: IntOrPair = 1, padding: Padding = 0,
                        dilation: IntOrPair = 1, groups: int = 1,
                        precision: str = "highest") -> tuple[ConvProblem, ArrayKind, bool]:
    """Validate arrays and options together and build the problem; used by the public functions and the reference.

    Args:
        fn: ``"conv1d"`` or ``"conv2d"``, named in every message.
        x, w, bias: the caller's arrays (``bias`` may be None). ``x`` may be unbatched, ``(C, *spatial)``,
            as PyTorch accepts it; the problem then has ``N == 1``.

    Returns:
        ``(problem, kind, unbatched)``: the problem, where the arrays live, and whether ``x`` had no batch axis
        (the caller drops it from the result).

    Raises:
        TypeError: a non-array, an unsupported or mixed dtype, arrays from different libraries or devices.
        ValueError: shapes or options that do not fit, naming the argument and the shapes.
    """
    arrays = {"x": x, "w": w} if bias is None else {"x": x, "w": w, "bias": bias}
    kinds = {name: kind_of(fn, name, a) for name, a in arrays.items()}
    _check_same_place(fn, kinds)
    dtype = _check_dtypes(fn, arrays)
    x_shape = tuple(x.shape)
    ndim = 1 if fn.endswith("1d") else 2
    unbatched = len(x_shape) == ndim + 1
    if unbatched:
        x_shape = (1, *x_shape)
    problem = make_problem(fn, x_shape, tuple(w.shape), dtype, bias is not None,
                           stride=stride, padding=padding, dilation=dilation, groups=groups, precision=precision)
    if bias is not None and tuple(bias.shape) != (problem.k,):
        raise ValueError(f"{fn}: bias must have shape ({problem.k},) to match w.shape[0], got {tuple(bias.shape)}")
    return problem, kinds["x"], unbatched


def _size(fn: str, name: str, size: Any) -> tuple[int, ...]:
    """``input_size``/``weight_size``: a sequence of non-negative ints (a tuple, a list, a ``torch.Size``)."""
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__"):
        raise TypeError(f"{fn}: {name} must be a sequence of ints, got {type(size).__name__}")
    values = tuple(size)
    if not all(_is_int(v) for v in values):
        raise TypeError(f"{fn}: {name} must contain ints, got {_fmt(values)}")
    return tuple(int(v) for v in values)


def gradient_problem(fn: str, direction: str, size: Any, a: Any, grad_output: Any, *, stride: IntOrPair = 1,
                     padding: Padding = 0, dilation: IntOrPair = 1, groups: int = 1,
                     precision: str = "highest") -> tuple[ConvProblem, ArrayKind, bool]:
    """Validate the arguments of a gradient and build its problem, the forward geometry with ``direction`` set.

    Args:
        fn: the public function (``"conv2d_input"``, ``"conv1d_weight"``, ...), named in every message.
        direction: ``"input"`` (``size`` is ``input_size``, ``a`` the weight) or ``"weight"`` (``size`` is
            ``weight_size``, ``a`` the forward input).
        grad_output: the gradient of the forward output; its shape must be the forward output's. An unbatched
            ``grad_output`` (no N axis) goes with an unbatched ``input_size`` or ``input``.

    Returns:
        ``(problem, kind, unbatched)`` as :func:`problem_from_arrays`.
    """
    ndim = 1 if "1d" in fn else 2
    if direction == "input":
        names = {"weight": a, "grad_output": grad_output}
        size_name, together = "input_size", "weight and grad_output"
    else:
        names = {"input": a, "grad_output": grad_output}
        size_name, together = "weight_size", "input and grad_output"
    kinds = {name: kind_of(fn, name, v) for name, v in names.items()}
    _check_same_place(fn, kinds)
    dtype = _check_dtypes(fn, names, together)
    size_t = _size(fn, size_name, size)
    dy_shape = tuple(grad_output.shape)
    unbatched = len(dy_shape) == ndim + 1
    if direction == "input":
        x_shape, w_shape = size_t, tuple(a.shape)
        if unbatched and len(x_shape) == ndim + 1:
            x_shape = (1, *x_shape)
    else:
        x_shape, w_shape = tuple(a.shape), size_t
        if unbatched and len(x_shape) == ndim + 1:
            x_shape = (1, *x_shape)
    if unbatched:
        dy_shape = (1, *dy_shape)
    problem = make_problem(fn, x_shape, w_shape, dtype, False, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, direction=direction, precision=precision)
    if dy_shape != problem.out_shape:
        given = tuple(grad_output.shape)
        expected = problem.out_shape[1:] if unbatched else problem.out_shape
        raise ValueError(f"{fn}: grad_output has shape {given}, but the convolution of x {problem.x_shape} with w "
                         f"{problem.w_shape} (stride={problem.stride[2 - ndim:]}, padding={padding!r}, "
                         f"dilation={problem.dilation[2 - ndim:]}, groups={problem.groups}) has output shape "
                         f"{expected}")
    return problem, kinds["grad_output"], unbatched
