"""PNG figures of a result: GFLOP/s per layer, gpuconv auto's speedup per layer, and time against input size.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, so plotting never
touches pyplot's global state or the caller's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

_PEER_COLORS = {"jax": "#d95f02", "torch": "#7570b3", "numpy": "#666666", "naive": "#a6761d"}
_GPUCONV_COLORS = ["#1b9e77", "#66a61e", "#1f78b4", "#a6cee3", "#b2df8a", "#33a02c", "#e6ab02"]


def _colors(names: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for n in names:
        if n.startswith("gpuconv:"):
            out[n] = "#e7298a" if n == "gpuconv:auto" else _GPUCONV_COLORS[i % len(_GPUCONV_COLORS)]
            i += n != "gpuconv:auto"
        else:
            out[n] = _PEER_COLORS.get(n, "#999999")
    return out


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(result: dict[str, Any]) -> str:
    s, m = result["settings"], result["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu']['model']}, {m['cpu']['cores']} cores"
    blas = m.get("blas", {}).get("architecture")
    batch = result["shapes"][0]["problem"]["n"] if result["shapes"] else s["batch"]
    return (f"{Path(s['shapes']).stem}, batch {batch}, {s['dtype']} — {where}"
            + (f", OpenBLAS {blas}" if blas and s["backend"] == "cpu" else ""))


def gflops_bars(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: GFLOP/s of every contender on every layer (log scale), with the GEMM roof as a line."""
    import numpy as np

    rows = result["shapes"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    names = [n for n in labels if any(r["results"].get(n, {}).get("status") == "ok" for r in rows)]
    colors = _colors(names)
    fig = _figure(max(10.0, 0.2 * len(rows) * max(len(names), 1) + 2), 6.0)
    ax = fig.add_subplot()
    width = 0.85 / max(len(names), 1)
    x = np.arange(len(rows))
    for i, n in enumerate(names):
        vals = [r["results"].get(n, {}).get("gflops", np.nan) for r in rows]
        ax.bar(x - 0.425 + (i + 0.5) * width, vals, width, label=labels[n], color=colors[n],
               edgecolor="black" if n == "gpuconv:auto" else "none", linewidth=0.6)
    r = result["roof"][result["settings"]["dtype"]]
    ax.axhline(r["best_gflops"], color="black", linestyle="--", linewidth=1)
    ax.annotate(f"roof: {r['what']} {r['best_gflops']:.0f} GFLOP/s", (0, r["best_gflops"]),
                xytext=(2, 3), textcoords="offset points", fontsize=8)
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{row['name']}" for row in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("GFLOP/s (2·N·K·P·Q·C/g·R·S / median time)")
    ax.set_title(f"GFLOP/s per layer — {_title(result)}", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.legend(fontsize=8, ncols=min(len(names), 5), loc="outside lower center")
    fig.savefig(path)


def speedup_bars(result: dict[str, Any], path: Path) -> bool:
    """Speedup of gpuconv auto over each peer on each layer (log scale, 1 = parity). False when nothing to draw."""
    import numpy as np

    rows = result["shapes"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    peers = [n for n in labels if not n.startswith("gpuconv:")]
    peers = [p for p in peers if any(_speedup(r, p) is not None for r in rows)]
    if not peers or not rows:
        return False
    colors = _colors(peers)
    fig = _figure(max(10.0, 0.35 * len(rows) * len(peers) + 2), 5.0)
    ax = fig.add_subplot()
    width = 0.8 / len(peers)
    x = np.arange(len(rows))
    for i, p in enumerate(peers):
        vals = [_speedup(r, p) or np.nan for r in rows]
        ax.bar(x - 0.4 + (i + 0.5) * width, vals, width, label=f"over {labels[p]}", color=colors[p])
    ax.axhline(1.0, color="black", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(x, [row["name"] for row in rows], rotation=45, ha="right", fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylabel("speedup of gpuconv auto (>1: gpuconv faster)")
    summary = result["summary"].get("gpuconv:auto", {})
    geo = ", ".join(f"{labels[p]} {summary[p]['geomean_speedup']:.2f}×" for p in peers if p in summary)
    ax.set_title(f"gpuconv auto speedup per layer (geomean: {geo})\n{_title(result)}", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.legend(fontsize=8, ncols=len(peers), loc="outside lower center")
    fig.savefig(path)
    return True


def _speedup(row: dict[str, Any], peer: str) -> float | None:
    a, b = row["results"].get("gpuconv:auto", {}), row["results"].get(peer, {})
    if a.get("status") == b.get("status") == "ok":
        return b["stats"]["median"] / a["stats"]["median"]
    return None


def scaling_lines(result: dict[str, Any], path: Path) -> bool:
    """Log-log time against H = W for the fixed 3x3 convolution, one line per contender. False when no sweep."""
    points = result["scaling"]["points"]
    if not points:
        return False
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    labels["naive"] = "naive loops (NumPy per pixel)"
    names = list(dict.fromkeys(n for pt in points for n in pt["results"]))
    colors = _colors(names)
    fig = _figure(8.0, 6.0)
    ax = fig.add_subplot()
    for n in names:
        xs = [pt["size"] for pt in points if pt["results"].get(n, {}).get("status") == "ok"]
        ys = [pt["results"][n]["stats"]["median"] for pt in points if pt["results"].get(n, {}).get("status") == "ok"]
        if not xs:
            continue
        style = "--" if not n.startswith("gpuconv:") else "-"
        ax.plot(xs, ys, style, marker="o", markersize=4, label=labels.get(n, n), color=colors[n],
                linewidth=2.2 if n == "gpuconv:auto" else 1.3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("input height = width (pixels)")
    ax.set_ylabel("median time (s)")
    ax.set_title(f"Time against input size: {result['scaling']['template']}\n{_title(result)}", fontsize=10)
    ax.grid(which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path)
    return True


def write_all(result: dict[str, Any], out: Path, stem: str) -> list[str]:
    """Write every figure for ``result`` into ``out``; returns the file names written."""
    written = []
    if result["shapes"]:
        gflops_bars(result, out / f"{stem}_gflops.png")
        written.append(f"{stem}_gflops.png")
        if speedup_bars(result, out / f"{stem}_speedup.png"):
            written.append(f"{stem}_speedup.png")
    if scaling_lines(result, out / f"{stem}_scaling.png"):
        written.append(f"{stem}_scaling.png")
    return written
