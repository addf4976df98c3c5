"""``python -m benchmarks.peers_precision``: the GPU peers at both of their float32 precisions, per layer.

``python -m benchmarks`` times the peers at true float32 (cuDNN with TF32 off, jax.lax at ``Precision.HIGHEST``)
because every contender must match the float32 reference first. What users get by default differs: PyTorch's
cuDNN convolutions run in TF32 unless ``torch.backends.cudnn.allow_tf32 = False``, and jax.lax's DEFAULT
precision may use TF32 too. This times each forward layer of a shape set both ways (PyTorch by
``torch.cuda.Event``, jax by wall time to ``block_until_ready``), median of ``--repeat`` calls, so the
benchmark pages can be read against the peers' fast settings. Without a CUDA device it says so and exits 0
(1 under ``GPUCONV_REQUIRE_GPU=1``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable


def _median_ms(call: Callable[[], Any], sync: Callable[[], None], repeat: int) -> float:
    for _ in range(3):
        call()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def _layer(p: Any, x: Any, w: Any, torch: Any, jax: Any, repeat: int) -> dict[str, float]:
    from gpuconv.measure import conv_kwargs

    row: dict[str, float] = {}
    if torch is not None and torch.cuda.is_available():
        tx, tw, kw = torch.from_numpy(x).cuda(), torch.from_numpy(w).cuda(), conv_kwargs(p)
        torch.backends.cudnn.benchmark = True
        for tf32 in (False, True):
            torch.backends.cudnn.allow_tf32 = tf32
            with torch.inference_mode():
                row[f"torch_tf32_{'on' if tf32 else 'off'}_ms"] = _median_ms(
                    lambda: torch.nn.functional.conv2d(tx, tw, None, **kw), torch.cuda.synchronize, repeat)
        torch.backends.cudnn.allow_tf32 = False
    if jax is not None and any(d.platform == "gpu" for d in jax.devices()):
        from jax import lax

        pad = [(p.padding[0], p.padding[1]), (p.padding[2], p.padding[3])]
        jx, jw = jax.device_put(x), jax.device_put(w)
        for name, prec in (("highest", lax.Precision.HIGHEST), ("default", lax.Precision.DEFAULT)):
            f = jax.jit(lambda a, b, prec=prec: lax.conv_general_dilated(
                a, b, p.stride, pad, rhs_dilation=p.dilation, feature_group_count=p.groups, precision=prec))
            out: list[Any] = [None]  # the last result, waited on after each call
            row[f"jax_{name}_ms"] = _median_ms(lambda f=f, out=out: out.__setitem__(0, f(jx, jw)),
                                               lambda out=out: out[0] is not None and out[0].block_until_ready(),
                                               repeat)
    return row


def measure(spec: str, batch: int | None, repeat: int) -> list[dict[str, Any]]:
    import numpy as np

    from gpuconv.shapes import load

    rows: list[dict[str, Any]] = []
    torch: Any = None
    jax: Any = None
    try:
        import torch
    except ImportError:
        pass
    try:
        import jax
    except ImportError:
        pass
    rng = np.random.default_rng(0)
    for shape in load(spec, batch=batch, dtype="float32"):
        p = shape.problem
        if p.direction != "forward" or p.ndim != 2:
            continue
        x = rng.uniform(-1, 1, p.x_shape).astype(np.float32)
        w = rng.uniform(-1, 1, p.w_shape).astype(np.float32)
        row: dict[str, Any] = {"layer": shape.name, "x": list(p.x_shape), "w": list(p.w_shape)}
        row.update(_layer(p, x, w, torch, jax, repeat))
        rows.append(row)
    return rows


def report(rows: list[dict[str, Any]], title: str) -> str:
    cols = ["torch_tf32_off_ms", "torch_tf32_on_ms", "jax_highest_ms", "jax_default_ms"]
    lines = [f"# {title}", "", "| layer | x | w | " + " | ".join(c[:-3] + " ms" for c in cols) + " |",
             "|---|---|---|" + "---|" * len(cols)]
    for r in rows:
        cells = [f"{r[c]:.3f}" if c in r else "n/a" for c in cols]
        lines.append(f"| {r['layer']} | {tuple(r['x'])} | {tuple(r['w'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.peers_precision", description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="benchmarks/shapes/resnet50_subset.json")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", type=Path, default=None, help="write peers_precision_b<batch>.md and .json here")
    args = ap.parse_args(argv)
    from gpuconv.measure import cuda_available

    if not cuda_available():
        print("peers_precision: SKIPPED, no CUDA device (CuPy sees none)")
        return 1 if os.environ.get("GPUCONV_REQUIRE_GPU") == "1" else 0
    rows = measure(args.shapes, args.batch, args.repeat)
    text = report(rows, f"GPU peers at both float32 precisions: {args.shapes}, batch {args.batch or 'as in file'}")
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        stem = f"peers_precision_b{args.batch or 'file'}"
        (args.out / f"{stem}.md").write_text(text)
        (args.out / f"{stem}.json").write_text(json.dumps(rows, indent=2))
    return 0 if rows and all(len(r) > 3 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
