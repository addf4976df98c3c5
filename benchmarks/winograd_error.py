"""How far Winograd F(2x2) and F(4x4) are from the exact result, against im2col, as a fraction of the tolerance.

``python -m benchmarks.winograd_error`` computes every 3x3 stride-1 problem of a grid (input channels per
group x image size x batch) in float32 (and ``--dtype float64``) with im2col, F(2x2) and F(4x4), on inputs
uniform in [-1, 1), and compares each with the float64 result of the same rounded inputs. It prints, per
channel count, the largest error in units of the compute dtype's epsilon and as a fraction of
:func:`gpuconv.measure.tolerance` (the number the tests and the tuner's check compare with 1), and writes
the table as JSON with ``--out``. ``gpuconv.cpu.winograd.F4_MIN_CHANNELS`` comes from this table.

``--kernel 5`` measures F(2x2, 5x5) instead (padding 2), the only 5x5 tile offered;
``gpuconv.cpu.winograd.F25_MIN_CHANNELS`` comes from that table.

``--direction weight`` measures the weight gradient instead (:mod:`gpuconv.cpu.grad_weight_winograd`, the
transposed F(m x m)) against the GEMM path, ``dy`` uniform in [-1, 1) too; its sums run over the batch and the
output grid, so the images vary as well as the channels.
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Sequence

import numpy as np

from gpuconv import reference
from gpuconv.cpu import grad_weight, grad_weight_winograd, winograd
from gpuconv.cpu.im2col import im2col
from gpuconv.measure import tolerance
from gpuconv.problem import make_problem

CHANNELS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256, 512)
IMAGES = ((1, 14), (1, 30), (4, 56))  # (batch, height = width)


def measure(cg: int, n: int, hw: int, dtype: str, k: int = 16, groups: int = 1, seed: int = 0,
            r: int = 3) -> dict[str, Any]:
    """Errors of im2col and every Winograd tile offered for an ``r x r`` kernel on one problem, padding ``r // 2``."""
    pad = r // 2
    problem = make_problem("conv2d", (n, cg * groups, hw, hw), (k, cg, r, r), dtype, False, padding=pad,
                           groups=groups)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, cg * groups, hw, hw)).astype(dtype)
    w = rng.uniform(-1, 1, (k, cg, r, r)).astype(dtype)
    exact = reference.run_problem(make_problem("conv2d", x.shape, w.shape, "float64", False, padding=pad,
                                               groups=groups), x.astype(np.float64), w.astype(np.float64))
    rtol, atol = tolerance(problem)
    eps = float(np.finfo(dtype).eps)
    row: dict[str, Any] = {"cg": cg, "n": n, "hw": hw, "k": k, "groups": groups, "outputs": int(exact.size)}
    runs = {"im2col": lambda: im2col(problem, x, w)}
    for tile in winograd.TILES[r]:
        runs[f"f{tile}x{tile}"] = lambda tile=tile: winograd.winograd(problem, x, w, tile=tile)
    for name, run in runs.items():
        err = np.abs(run().astype(np.float64) - exact)
        of_tolerance = float((err / (atol + rtol * np.abs(exact))).max())
        row[name] = {"max_eps": float(err.max() / eps), "of_tolerance": of_tolerance}
    return row


def measure_weight(cg: int, n: int, hw: int, dtype: str, k: int = 16, seed: int = 0) -> dict[str, Any]:
    """Errors of the weight gradient's GEMM path, F(2x2) and F(4x4) on one problem, padding 1."""
    problem = make_problem("conv2d_weight", (n, cg, hw, hw), (k, cg, 3, 3), dtype, False, padding=1,
                           direction="weight")
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, cg, hw, hw)).astype(dtype)
    dy = rng.uniform(-1, 1, problem.out_shape4).astype(dtype)
    exact = reference.run_problem(make_problem("conv2d_weight", x.shape, (k, cg, 3, 3), "float64", False, padding=1,
                                               direction="weight"), x.astype(np.float64), dy.astype(np.float64))
    rtol, atol = tolerance(problem)
    eps = float(np.finfo(dtype).eps)
    row: dict[str, Any] = {"cg": cg, "n": n, "hw": hw, "k": k, "groups": 1, "outputs": int(exact.size)}
    runs = {"im2col": lambda: grad_weight.im2col(problem, x, dy),
            "f2x2": lambda: grad_weight_winograd.winograd(problem, x, dy, 2, 64),
            "f4x4": lambda: grad_weight_winograd.winograd(problem, x, dy, 4, 64)}
    for name, run in runs.items():
        err = np.abs(run().astype(np.float64).reshape(exact.shape) - exact)
        of_tolerance = float((err / (atol + rtol * np.abs(exact))).max())
        row[name] = {"max_eps": float(err.max() / eps), "of_tolerance": of_tolerance}
    return row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.winograd_error", description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--channels", type=int, nargs="*", default=list(CHANNELS))
    parser.add_argument("--direction", default="forward", choices=["forward", "weight"])
    parser.add_argument("--kernel", type=int, default=3, choices=sorted(winograd.TILES),
                        help="the square kernel of the forward problems (the weight gradient's is 3x3)")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args(argv)
    forward = args.direction == "forward"
    r = args.kernel if forward else 3
    names = ["im2col"] + [f"f{t}x{t}" for t in (winograd.TILES[r] if forward else (2, 4))]
    rows = []
    print(f"{args.direction} {r}x{r}, {args.dtype}: largest error, in eps and as a fraction of the tolerance "
          f"(worst over images {IMAGES})")
    print(f"{'C/G':>5} " + " ".join(f"{n.replace('f', 'F(', 1) + ')' if n != 'im2col' else n:>18}" for n in names))
    for cg in args.channels:
        got = [measure(cg, n, hw, args.dtype, r=r) if forward else measure_weight(cg, n, hw, args.dtype)
               for n, hw in IMAGES if cg * n * hw * hw <= 2**22]
        rows += got
        cells = []
        for name in names:
            e = max(r[name]["max_eps"] for r in got)
            f = max(r[name]["of_tolerance"] for r in got)
            cells.append(f"{e:8.0f} eps {f:5.3f}")
        print(f"{cg:>5} " + " ".join(f"{c:>18}" for c in cells), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"direction": args.direction, "kernel": r, "dtype": args.dtype, "images": IMAGES, "rows": rows},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
