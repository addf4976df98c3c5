"""``python -m benchmarks.cuda_overhead``: the Python cost of a repeated CUDA call, gpuconv next to a bare launch.

A batch-1 layer is small enough that the GPU finishes each kernel about as fast as the host can issue it, so
what a call costs on the host is what limits it. For each layer this times, on the host, issuing ``--number``
calls (then one synchronize, outside the timing; the GPU queue never fills at these counts):

- ``gpuconv``: ``gpuconv.conv2d(x, w, b)`` on CuPy arrays, the output allocated per call as any call does;
- ``bare``: the same compiled kernels (``cupy.RawKernel``, the functions gpuconv's plan recorded) launched
  with prebuilt argument tuples into a preallocated output: CuPy's own launch cost and nothing else.

The difference per call is gpuconv's Python above CuPy's launch cost (the goal: at most 10 µs). Without a CUDA
device it says so and exits 0 (1 under ``GPUCONV_REQUIRE_GPU=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

#: (name, x shape, w shape, padding): batch-1 layers of ResNet-50 (a 1x1 GEMM, a 3x3 im2col + GEMM or implicit
#: GEMM) and a tiny one whose kernels take a few microseconds.
LAYERS = [
    ("res3 1x1 x(1,256,28,28) w(128,256,1,1)", (1, 256, 28, 28), (128, 256, 1, 1), 0),
    ("res4 3x3 x(1,256,14,14) w(256,256,3,3) pad 1", (1, 256, 14, 14), (256, 256, 3, 3), 1),
    ("tiny x(1,16,8,8) w(16,16,3,3) pad 1", (1, 16, 8, 8), (16, 16, 3, 3), 1),
]


def _host_time(call: Callable[[], Any], number: int, repeat: int, sync: Callable[[], None]) -> float:
    """Best of ``repeat`` host-side means of ``number`` calls, in seconds per call."""
    best = float("inf")
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - t0) / number)
        sync()
    return best


def _layer(name: str, xs: tuple[int, ...], ws: tuple[int, ...], pad: int, number: int, repeat: int,
           rng: Any) -> dict[str, Any]:
    import cupy
    import numpy as np

    import gpuconv
    from gpuconv import _calls
    from gpuconv.cuda.compile import get_function

    sync = cupy.cuda.get_current_stream().synchronize
    x = cupy.asarray(rng.uniform(-1, 1, xs).astype(np.float32))
    w = cupy.asarray(rng.uniform(-1, 1, ws).astype(np.float32))
    b = cupy.asarray(rng.uniform(-1, 1, ws[0]).astype(np.float32))
    _calls.PREPARED.clear()  # this layer's runner is then the only one
    y = gpuconv.conv2d(x, w, b, 1, pad)
    sync()
    runner = next(iter(_calls.PREPARED.values()))[1]
    rec = getattr(runner, "recordings", {}).get((x.device.id, True))
    if rec is None:
        return {"layer": name, "error": f"the plan's launches are not replayed ({type(runner).__name__})"}
    bufs = [x, w, b, y, *(cupy.empty(s, d) for s, d in rec.workspaces)]
    bare = []
    for launch in rec.launches:
        args = list(launch.template)
        for i, j, off, _, _, whole in launch.slots:
            args[i] = bufs[j] if whole else np.uint64(bufs[j].data.ptr + off)
        bare.append((get_function(launch.kernel, launch.func, dict(launch.params), launch.dtype), launch.grid,
                     launch.block, tuple(args)))

    def bare_call() -> None:
        for fn, grid, block, args in bare:
            fn(grid, block, args)

    def gpuconv_call() -> None:
        gpuconv.conv2d(x, w, b, 1, pad)

    for _ in range(50):
        gpuconv_call()
        bare_call()
    t_gpuconv = _host_time(gpuconv_call, number, repeat, sync)
    t_bare = _host_time(bare_call, number, repeat, sync)
    return {"layer": name, "strategy": runner.strategy.name, "launches": len(rec.launches),
            "gpuconv_us": t_gpuconv * 1e6, "bare_us": t_bare * 1e6, "python_us": (t_gpuconv - t_bare) * 1e6}


def measure(number: int, repeat: int) -> list[dict[str, Any]]:
    import numpy as np

    rng = np.random.default_rng(0)
    return [_layer(name, xs, ws, pad, number, repeat, rng) for name, xs, ws, pad in LAYERS]


def report(rows: list[dict[str, Any]], device: str) -> str:
    lines = [f"# CUDA per-call overhead on {device}", "",
             "Host time per call (best of the repeats); `python` = gpuconv - bare.", "",
             "| layer | strategy | launches | gpuconv µs | bare RawKernel µs | python µs |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['error']} | | | | |")
        else:
            lines.append(f"| {r['layer']} | {r['strategy']} | {r['launches']} | {r['gpuconv_us']:.2f} | "
                         f"{r['bare_us']:.2f} | {r['python_us']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cuda_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=500, help="calls per timing (500)")
    ap.add_argument("--repeat", type=int, default=7, help="timings per contender; the best is kept (7)")
    ap.add_argument("--out", type=Path, default=None, help="write cuda_overhead.md and .json here")
    args = ap.parse_args(argv)
    from gpuconv.measure import cuda_available

    if not cuda_available():
        print("cuda_overhead: SKIPPED, no CUDA device (CuPy sees none)")
        return 1 if os.environ.get("GPUCONV_REQUIRE_GPU") == "1" else 0
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    rows = measure(args.number, args.repeat)
    text = report(rows, device)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "cuda_overhead.md").write_text(text)
        (args.out / "cuda_overhead.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
