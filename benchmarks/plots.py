"""PNG figures of a result: GFLOP/s per layer, gpuconv auto's speedup per layer, and time against input size.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas directly, so plotting never
touches pyplot's global state or the caller's backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .report import describe, summary_by_direction, workload_of

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


def _title(result: dict[str, Any], workload: bool = True) -> str:
    s, m = result["settings"], result["machine"]
    where = m["gpu"]["name"] if m.get("gpu") else f"{m['cpu']['model']}, {m['cpu']['cores']} cores"
    blas = m.get("blas", {}).get("architecture")
    load = result.get("load_average", {}).get("start")
    where += f", load {load[0]:.2f}" if load else ""
    if workload:
        what = f"{Path(s['shapes']).stem}, {describe(workload_of(result))} — "
    else:  # the scaling sweep: its own problem, whose dtype its template names
        what = ""
    return what + where + (f", OpenBLAS {blas}" if blas and s["backend"] == "cpu" else "")


def _grouped_bars(rows: list[dict[str, Any]], series: list[tuple[str, str, list[float]]], path: Path, *,
                  title: str, ylabel: str, lines: list[tuple[float, str]], per_row: int = 8) -> None:
    """Bars grouped by layer, one colour per series, log scale, a horizontal reference line; layers are split
    over rows of ``per_row`` so that a 20-layer network stays legible."""
    import numpy as np

    chunks = [list(range(i, min(i + per_row, len(rows)))) for i in range(0, len(rows), per_row)]
    fig = _figure(max(11.0, per_row * (0.4 + 0.13 * len(series)) + 1.5), 0.9 + 3.4 * len(chunks))
    axes = fig.subplots(len(chunks), 1, squeeze=False, sharey=True)[:, 0]
    width = 0.85 / max(len(series), 1)
    for ax, chunk in zip(axes, chunks):
        x = np.arange(len(chunk))
        for i, (label, color, values) in enumerate(series):
            ax.bar(x - 0.425 + (i + 0.5) * width, [values[j] for j in chunk], width, label=label, color=color,
                   edgecolor="black" if label == "gpuconv auto" else "none", linewidth=0.6)
        for (value, _), style in zip(lines, ("--", ":", "-.")):
            ax.axhline(value, color="black", linestyle=style, linewidth=1)
        ax.set_yscale("log")
        ax.set_xticks(x, [rows[j]["name"] for j in chunk], fontsize=8, rotation=12)
        ax.set_xlim(-0.6, per_row - 0.4)
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", which="both", alpha=0.3)
    for value, label in lines:
        if label:
            axes[0].annotate(label, (-0.5, value), xytext=(2, 3), textcoords="offset points", fontsize=8)
    fig.suptitle(title, fontsize=10)
    handles, texts = axes[0].get_legend_handles_labels()
    fig.legend(handles, texts, fontsize=8, ncols=min(len(series), 5), loc="outside lower center")
    fig.savefig(path)


def gflops_bars(result: dict[str, Any], path: Path) -> None:
    """GFLOP/s of every contender on every layer (log scale), with the GEMM roof as a dashed line."""
    rows = result["shapes"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    names = [n for n in labels if any(r["results"].get(n, {}).get("status") == "ok" for r in rows)]
    colors = _colors(names)
    series = [(labels[n], colors[n], [r["results"].get(n, {}).get("gflops", float("nan")) for r in rows])
              for n in names]
    roofs = [result["roof"][dtype] for dtype in workload_of(result)["dtypes"]]
    _grouped_bars(rows, series, path, title=f"GFLOP/s per layer (2·N·K·P·Q·C/g·R·S / median time) — "
                  f"{_title(result)}", ylabel="GFLOP/s",
                  lines=[(r["best_gflops"], f"roof: {r['what']} {r['best_gflops']:.0f} GFLOP/s") for r in roofs])


def speedup_bars(result: dict[str, Any], path: Path) -> bool:
    """Speedup of gpuconv auto over each peer on each layer (log scale, 1 = parity). False when nothing to draw."""
    rows = result["shapes"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    peers = [n for n in labels if not n.startswith("gpuconv:")]
    peers = [p for p in peers if any(_speedup(r, p) is not None for r in rows)]
    if not peers or not rows:
        return False
    colors = _colors(peers)
    series = [(f"over {labels[p]}", colors[p], [_speedup(r, p) or float("nan") for r in rows]) for p in peers]
    summary = summary_by_direction(result)
    geo = "; ".join((f"{d}: " if list(summary) != ["forward"] else "")
                    + ", ".join(f"{labels[p]} {by['gpuconv:auto'][p]['geomean_speedup']:.2f}×"
                                for p in peers if p in by.get("gpuconv:auto", {}))
                    for d, by in summary.items())
    _grouped_bars(rows, series, path, title=f"Speedup of gpuconv auto per layer (>1: gpuconv faster)\n"
                  f"geometric mean: {geo}\n{_title(result)}", ylabel="speedup of gpuconv auto", lines=[(1.0, "")])
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
    ax.set_title(f"Time against input size: {result['scaling']['template']}\n{_title(result, workload=False)}",
                 fontsize=10)
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
