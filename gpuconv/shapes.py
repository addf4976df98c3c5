"""Named workloads: JSON lists of convolution problems, shared by the autotuner and the benchmarks.

A shapes file is a JSON list of entries ``{"x": [N, C, H, W], "w": [K, C/groups, R, S], "stride", "padding",
"dilation", "groups", "dtype"}`` (3-d ``x``/``w`` for conv1d) with optional ``"name"``, ``"count"`` (how
often the layer occurs in its network) and ``"direction"`` (``"forward"``, the default, ``"input"`` or
``"weight"``: which of the layer's three convolutions a training step runs). The shipped sets live in
``autotune/shapes/`` and can be named without a path (``resnet50``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ._data import data_dir
from .problem import DIRECTIONS, ConvProblem, make_problem

SHAPES_DIR = Path(os.environ.get("GPUCONV_SHAPES_DIR") or data_dir("_shapes", "autotune/shapes"))
_FIELDS = {"name", "x", "w", "stride", "padding", "dilation", "groups", "dtype", "count", "direction"}


@dataclass(frozen=True)
class Shape:
    """One entry of a shapes file: a display name, the problem and how often it occurs in its network."""

    name: str
    problem: ConvProblem
    count: int = 1


def available() -> list[str]:
    """Names of the shipped shape sets."""
    return sorted(p.stem for p in SHAPES_DIR.glob("*.json"))


def resolve(spec: str | os.PathLike[str]) -> Path:
    """A path to an existing file, or the name of a shipped set."""
    path = Path(spec)
    if path.is_file():
        return path
    shipped = SHAPES_DIR / f"{spec}.json"
    if shipped.is_file():
        return shipped
    raise ValueError(f"shapes: {str(spec)!r} is neither a file nor a shipped set ({', '.join(available())})")


def load(spec: str | os.PathLike[str], *, batch: int | None = None, dtype: str | None = None,
         directions: Sequence[str] | None = None) -> list[Shape]:
    """Load and validate a shapes file; ``batch``/``dtype`` override every entry's N and dtype.

    ``directions`` replaces every entry's direction by each of the given ones in turn (``DIRECTIONS`` for the
    three convolutions of a training step), an entry ``name`` becoming ``name:input`` etc. for the gradients.

    Raises:
        ValueError: unreadable JSON, or an entry whose field is wrong (the message names the entry and field).
    """
    path = resolve(spec)
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"shapes: cannot read {path}: {e}") from e
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"shapes: {path} must hold a non-empty JSON list of entries")
    loaded = [_entry(path, i, e, batch, dtype) for i, e in enumerate(entries)]
    if directions is None:
        return loaded
    bad = [d for d in directions if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"shapes: directions must be among {', '.join(DIRECTIONS)}, got {bad}")
    return [Shape(s.name if d == "forward" else f"{s.name}:{d}", dataclasses.replace(s.problem, direction=d), s.count)
            for s in loaded for d in directions]


def _entry(path: Path, i: int, e: Any, batch: int | None, dtype: str | None) -> Shape:
    where = f"shapes: {path.name} entry {i}"
    if not isinstance(e, dict):
        raise ValueError(f"{where}: must be an object, got {type(e).__name__}")
    unknown = set(e) - _FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; allowed: {sorted(_FIELDS)}")
    for field in ("x", "w"):
        v = e.get(field)
        if not (isinstance(v, list) and len(v) in (3, 4) and all(isinstance(d, int) and not isinstance(d, bool)
                                                                  for d in v)):
            raise ValueError(f"{where}: field {field!r} must be a list of 3 or 4 ints, got {v!r}")
    x, w = list(e["x"]), list(e["w"])
    if batch is not None:
        x[0] = batch
    fn = "conv1d" if len(x) == 3 else "conv2d"
    padding = e.get("padding", 0)
    if isinstance(padding, list):
        padding = tuple(padding)
    opts = {k: tuple(e[k]) if isinstance(e.get(k), list) else e.get(k, 1) for k in ("stride", "dilation", "groups")}
    dt = dtype or e.get("dtype", "float32")
    try:
        problem = make_problem(fn, tuple(x), tuple(w), dt, False, padding=padding, **opts,
                               direction=e.get("direction", "forward"))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from None
    count = e.get("count", 1)
    if not (isinstance(count, int) and count >= 1):
        raise ValueError(f"{where}: field 'count' must be a positive int, got {count!r}")
    return Shape(str(e.get("name", f"{fn}_{i}")), problem, count)
