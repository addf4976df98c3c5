"""Where the time of a GEMM-based CPU convolution goes: padding, the im2col copy, the GEMM, and the rest.

``python -m benchmarks.breakdown --shapes resnet50 --batch 1`` times, per layer and interleaved with gpuconv
``auto`` and the peers, the pieces of the textbook im2col + GEMM convolution done with plain NumPy:

- ``pad``: zero-padding the input (a copy of it);
- ``gather``: copying every receptive field into the ``(N, G, C/G*R*S, P*Q)`` column matrix;
- ``gemm``: ``np.matmul`` of the ``(G, K/G, C/G*R*S)`` weight with the columns, the output already NCHW;

and measures two roofs in the same run: the sgemm rate of a large square ``np.matmul`` and the rate of a large
``np.copyto`` (bytes read + written per second). A layer where gpuconv loses is then either GEMM-bound (the
GEMM alone, at its shape, is slower than the peer: a skinny or small GEMM far from the roof), copy-bound (the
gather costs a large part), or loses to overhead (gpuconv's time exceeds pad + gather + gemm).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from gpuconv import shapes as shapes_mod
from gpuconv.problem import ConvProblem

from . import contenders as contenders_mod
from . import machine, roof
from .report import _table, file_stem, machine_lines, write_json
from .run import random_inputs
from .timing import TIMERS, Entry, interleaved, summarize, wall_timer


def copy_roof(mib: int = 256, repeat: int = 5) -> dict[str, Any]:
    """GB/s (read + write) of ``np.copyto`` between two ``mib`` MiB float32 arrays, best of ``repeat``."""
    a = np.ones(mib * 2**18, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    best = min(wall_timer(lambda: np.copyto(b, a)) for _ in range(repeat))
    return {"mib": mib, "best_gbs": 2 * a.nbytes / best / 1e9}


def pieces(problem: ConvProblem, x: np.ndarray, w: np.ndarray) -> dict[str, Any]:
    """Zero-argument callables for ``pad``, ``gather`` and ``gemm`` of ``problem`` (each on prepared inputs)."""
    n, g, kg = problem.n, problem.groups, problem.kg
    x4 = x.reshape(n, problem.c, problem.h, problem.w)
    t, b, l, r = problem.padding
    xp = np.pad(x4, ((0, 0), (0, 0), (t, b), (l, r)))
    sn, sc, sh, sw = xp.strides
    (st_h, st_w), (dh, dw) = problem.stride, problem.dilation
    taps = np.lib.stride_tricks.as_strided(
        xp, (n, problem.c, problem.r, problem.s, problem.p, problem.q),
        (sn, sc, sh * dh, sw * dw, sh * st_h, sw * st_w), writeable=False)
    cols = np.empty(taps.shape, x.dtype)
    np.copyto(cols, taps)
    colsm = cols.reshape(n, g, problem.reduction, problem.p * problem.q)
    wm = np.ascontiguousarray(w.reshape(g, kg, problem.reduction))
    out = np.empty((n, g, kg, problem.p * problem.q), x.dtype)
    padded = np.empty_like(xp)

    def pad() -> None:
        if any(problem.padding):
            padded.fill(0)
            padded[:, :, t:t + problem.h, l:l + problem.w] = x4

    return {
        "pad": pad,
        "gather": lambda: np.copyto(cols, taps),
        "gemm": lambda: np.matmul(wm, colsm, out=out),
        "cols_bytes": cols.nbytes,
    }


def breakdown(shape: shapes_mod.Shape, lineup: Sequence[contenders_mod.Contender], repeat: int, warmup: int,
              settle_s: float) -> dict[str, Any]:
    """Time the pieces of ``shape`` and each contender of ``lineup`` interleaved; medians in seconds."""
    p = shape.problem
    x, w = random_inputs(p)
    parts = pieces(p, x, w)
    entries = {f"part:{k}": Entry(parts[k], wall_timer, repeat, "numpy-blas", warmup)
               for k in ("pad", "gather", "gemm")}
    for c in lineup:
        if c.supports(p):
            entries[c.name] = Entry(c.setup(p, x, w), TIMERS[c.timer], repeat, c.pool, warmup)
    samples = interleaved(entries, settle_s=settle_s)
    med = {k: summarize(v).median for k, v in samples.items()}
    strategy, source = contenders_mod.auto_plan(p, "cpu")
    return {"name": shape.name, "problem": p.to_dict(), "flops": p.flops, "auto": {"strategy": strategy,
            "source": source}, "gemm_shape": [p.n * p.groups, p.kg, p.reduction, p.p * p.q],
            "cols_bytes": parts["cols_bytes"], "median_s": med}


def verdict(row: dict[str, Any], sgemm: float, copy_gbs: float) -> dict[str, Any]:
    """Derived figures and a one-line reading of what limits gpuconv on this layer."""
    m = row["median_s"]
    gemm, gather, pad = m["part:gemm"], m["part:gather"], m["part:pad"]
    auto = m.get("gpuconv:auto")
    peers = {k: v for k, v in m.items() if k in ("torch", "jax")}
    best_peer = min(peers, key=peers.get) if peers else None
    gemm_gflops = row["flops"] / gemm / 1e9
    gather_gbs = 2 * row["cols_bytes"] / gather / 1e9
    pr = row["problem"]
    is_1x1 = pr["r"] == pr["s"] == 1 and pr["stride"] == [1, 1] and not any(pr["padding"])  # GEMM on x itself
    parts = gemm if is_1x1 else gemm + gather + pad
    out = {"gemm_gflops": gemm_gflops, "gemm_roof_fraction": gemm_gflops / sgemm,
           "gather_gbs": gather_gbs, "gather_copy_fraction": gather_gbs / copy_gbs,
           "parts_s": parts, "best_peer": best_peer}
    if auto is None or best_peer is None:
        out["reading"] = "no gpuconv auto or no peer time"
        return out
    peer = peers[best_peer]
    out["speedup_vs_best_peer"] = peer / auto
    if auto <= peer:
        out["reading"] = "gpuconv wins"
    elif gemm >= peer:
        out["reading"] = (f"GEMM-bound: the GEMM alone ({gemm * 1e3:.3g} ms at {100 * gemm_gflops / sgemm:.0f}% of "
                          f"the sgemm roof) is already slower than {best_peer}")
    elif parts >= peer and not is_1x1:
        out["reading"] = (f"copy-bound: gather + pad take {(gather + pad) * 1e3:.3g} ms of {parts * 1e3:.3g} ms "
                          f"({100 * (gather + pad) / parts:.0f}%); the GEMM alone would beat {best_peer}")
    else:
        out["reading"] = (f"overhead: gpuconv takes {auto * 1e3:.3g} ms, its pieces {parts * 1e3:.3g} ms, "
                          f"{best_peer} {peer * 1e3:.3g} ms")
    return out


def markdown(result: dict[str, Any]) -> str:
    """The breakdown page."""
    r, c = result["roof"], result["copy_roof"]
    lines = [f"# Where the time goes: {result['settings']['shapes']}, batch {result['settings']['batch']}, "
             f"float32, cpu", "", f"Command: `{result['command']}`", ""] + machine_lines(result)
    lines += ["", f"Roofs measured in this run: sgemm best {r['best_gflops']:.1f} GFLOP/s ({r['size']}³ "
              f"np.matmul); copy best {c['best_gbs']:.1f} GB/s read+write ({c['mib']} MiB np.copyto).",
              "Pieces are the textbook im2col + GEMM in plain NumPy (see `benchmarks/breakdown.py`); medians of "
              f"{result['settings']['repeat']} interleaved repetitions. GEMM shape: batch × M × K × N.", ""]
    head = ["layer", "auto runs", "GEMM shape", "pad ms", "gather ms (GB/s, % copy roof)",
            "GEMM ms (GFLOP/s, % roof)", "gpuconv auto ms", "torch ms", "jax ms", "auto speedup vs best peer",
            "reading"]
    body = []
    for row in result["layers"]:
        m, v = row["median_s"], row["figures"]
        ms = lambda k, m=m: f"{m[k] * 1e3:.3g}" if k in m else "–"  # noqa: E731
        body.append([row["name"], f"{row['auto']['strategy']} ({row['auto']['source']})",
                     "×".join(map(str, row["gemm_shape"])), ms("part:pad"),
                     f"{ms('part:gather')} ({v['gather_gbs']:.1f}, {100 * v['gather_copy_fraction']:.0f}%)",
                     f"{ms('part:gemm')} ({v['gemm_gflops']:.1f}, {100 * v['gemm_roof_fraction']:.0f}%)",
                     ms("gpuconv:auto"), ms("torch"), ms("jax"),
                     f"{v['speedup_vs_best_peer']:.2f}×" if "speedup_vs_best_peer" in v else "–", v["reading"]])
    return "\n".join(lines + _table(head, body)) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks.breakdown``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m benchmarks.breakdown", description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="resnet50")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--layers", help="comma-separated layer names (default: all)")
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--settle", type=float, default=0.15)
    ap.add_argument("--out", type=Path, help="directory (default benchmarks/results/<machine>/)")
    args = ap.parse_args(argv)
    loaded = shapes_mod.load(args.shapes, batch=args.batch, dtype="float32")
    if args.layers:
        wanted = set(args.layers.split(","))
        loaded = [s for s in loaded if s.name in wanted]
    lineup = contenders_mod.lineup("cpu").select(["gpuconv:auto", "torch", "jax"]).contenders
    load_start = os.getloadavg()
    sgemm, copy = roof.cpu_gemm("float32"), copy_roof()
    layers = []
    for shape in loaded:
        print(f"{shape.name} ...", file=sys.stderr, flush=True)
        row = breakdown(shape, lineup, args.repeat, 2, args.settle)
        row["figures"] = verdict(row, sgemm["best_gflops"], copy["best_gbs"])
        layers.append(row)
    result = {"command": "python -m benchmarks.breakdown " + " ".join(argv), "machine": machine.machine_info("cpu"),
              "settings": {"shapes": Path(args.shapes).stem, "batch": args.batch, "repeat": args.repeat,
                           "settle_s": args.settle},
              "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
              "roof": sgemm, "copy_roof": copy, "layers": layers}
    out = args.out or Path(__file__).resolve().parent / "results" / result["machine"]["slug"]
    name = file_stem(args.shapes, args.batch, "float32", result["machine"]["openblas_coretype_env"]) + "_breakdown"
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / f"{name}.json", result)
    (out / f"{name}.md").write_text(markdown(result))
    print(f"wrote {out / name}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
