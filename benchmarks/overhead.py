"""``python -m benchmarks.overhead``: the per-call cost of a tiny convolution, gpuconv next to PyTorch.

On problems this small the arithmetic is nothing and a call costs what its Python and dispatch cost, which is
what a layer called again and again pays on top of its work. Each engine runs in its own process with one
thread (no other library's pool spinning beside it); a figure is the best of ``--repeat`` means of ``--number``
calls, after warm-up calls. The report names the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from .machine import cpu_info, slug

#: (name, function, x shape, w shape): the problems of the hot-path goal.
PROBLEMS = [
    ("conv2d x(1,1,4,4) w(1,1,3,3)", "conv2d", (1, 1, 4, 4), (1, 1, 3, 3)),
    ("conv1d x(1,2,16) w(2,2,3)", "conv1d", (1, 2, 16), (2, 2, 3)),
    ("conv2d x(1,16,8,8) w(16,16,3,3) pad 1", "conv2d", (1, 16, 8, 8), (16, 16, 3, 3)),
]

_CHILD = r"""
import json, os, sys, timeit
engine, number, repeat, problems = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
import numpy as np
rng = np.random.default_rng(0)
out = {}
if engine == "torch":
    import torch
    torch.set_num_threads(1)
    F = torch.nn.functional
for name, fn, xs, ws in problems:
    x, w = rng.uniform(-1, 1, xs).astype(np.float32), rng.uniform(-1, 1, ws).astype(np.float32)
    pad = 1 if "pad 1" in name else 0
    if engine == "torch":
        tx, tw, f = torch.from_numpy(x), torch.from_numpy(w), getattr(F, fn)
        call = lambda: f(tx, tw, None, 1, pad)
    else:
        import gpuconv
        f = getattr(gpuconv, fn)
        call = lambda: f(x, w, None, 1, pad)
    for _ in range(200):
        call()
    out[name] = min(timeit.repeat(call, number=number, repeat=repeat)) / number
print(json.dumps(out))
"""


def measure(engine: str, number: int, repeat: int) -> dict[str, float]:
    """Seconds per call of each problem for ``"gpuconv"`` or ``"torch"``, in a fresh single-threaded process."""
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    problems = json.dumps([[n, f, list(x), list(w)] for n, f, x, w in PROBLEMS])
    done = subprocess.run([sys.executable, "-c", _CHILD, engine, str(number), str(repeat), problems],
                          capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmarks.overhead: the {engine} process failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(results: dict[str, dict[str, float]], machine: str) -> str:
    """A markdown table: µs per call of each engine, and gpuconv's over PyTorch's."""
    engines = list(results)
    lines = [f"Per-call time of tiny float32 convolutions on NumPy arrays / CPU tensors, one thread, {machine}.",
             "Command: `python -m benchmarks.overhead`.", "",
             "| problem | " + " | ".join(f"{e} µs/call" for e in engines) + " | gpuconv / torch |",
             "|---|" + "---|" * (len(engines) + 1)]
    for name, *_ in PROBLEMS:
        cells = [f"{results[e][name] * 1e6:.2f}" for e in engines]
        ratio = results["gpuconv"][name] / results["torch"][name] if "torch" in results else float("nan")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ratio:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=2000, help="calls per timed mean (default 2000)")
    ap.add_argument("--repeat", type=int, default=7, help="timed means; the best is kept (default 7)")
    ap.add_argument("--out", default=None, help="directory for overhead.md/json (default benchmarks/results/<cpu>)")
    ap.add_argument("--no-torch", action="store_true", help="time gpuconv alone")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, float]] = {"gpuconv": measure("gpuconv", args.number, args.repeat)}
    if not args.no_torch:
        results["torch"] = measure("torch", args.number, args.repeat)
    info: dict[str, Any] = cpu_info()
    machine = f"{info.get('model', '?')}, {info.get('cores', '?')} cores"
    text = table(results, machine)
    print(text)
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / slug("cpu")
    out.mkdir(parents=True, exist_ok=True)
    (out / "overhead.md").write_text(text, encoding="utf-8")
    (out / "overhead.json").write_text(json.dumps({"machine": info, "seconds_per_call": results}, indent=1) + "\n",
                                       encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
