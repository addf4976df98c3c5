"""Write a result: the JSON with every number, and a markdown page a person reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

_GRADIENT = {"input": "input gradient", "weight": "weight gradient"}


def file_stem(shapes: str, batch: int | str, dtype: str, coretype: str | None,
              directions: Sequence[str] = ("forward",)) -> str:
    """``<shapes>_b<batch>_<dtype>``, then ``_<direction>[-<direction>...]`` unless only the forward was run, then
    ``_openblas-<coretype>`` for a run under a forced OpenBLAS core type. ``batch`` and ``dtype`` are ``"mixed"``
    for a file whose layers differ in them (see :func:`workload_stem`)."""
    name = f"{Path(shapes).stem}_b{batch}_{dtype}"
    if list(directions) != ["forward"]:
        name += "_" + "-".join(directions)
    return f"{name}_openblas-{coretype.lower()}" if coretype else name


def workload_stem(shapes: str, work: Mapping[str, Sequence[Any]], coretype: str | None) -> str:
    """The stem of a run over layers with ``work``'s batch sizes, dtypes and directions (``run.workload``)."""
    batches, dtypes = work["batches"], work["dtypes"]
    return file_stem(shapes, batches[0] if len(batches) == 1 else "mixed", dtypes[0] if len(dtypes) == 1 else "mixed",
                     coretype, work["directions"])


def workload_of(result: dict[str, Any]) -> dict[str, list]:
    """The result's workload; for a result written before it was recorded, derived from its layers."""
    if "workload" in result:
        return result["workload"]
    problems = [row["problem"] for row in result["shapes"]]
    s = result["settings"]
    return {"batches": sorted({p["n"] for p in problems}) or [s.get("batch") or 1],
            "dtypes": sorted({p["dtype"] for p in problems}) or [s.get("dtype") or "float32"],
            "directions": [d for d in ("forward", "input", "weight")
                           if any(p.get("direction", "forward") == d for p in problems)] or ["forward"]}


def describe(work: Mapping[str, Sequence[Any]]) -> str:
    """The workload in words for titles: ``batch 8, float32``, or ``mixed batch sizes 1-8, mixed dtypes (float32,
    float64)``, then the directions unless only the forward: ``input gradient``, ``forward, input and weight
    gradients``."""
    batches, dtypes, directions = work["batches"], work["dtypes"], list(work["directions"])
    parts = [f"batch {batches[0]}" if len(batches) == 1 else f"mixed batch sizes {batches[0]}-{batches[-1]}",
             dtypes[0] if len(dtypes) == 1 else f"mixed dtypes ({', '.join(dtypes)})"]
    if directions == ["forward"]:
        return ", ".join(parts)
    if len(directions) == 1:
        return ", ".join(parts + [_GRADIENT[directions[0]]])
    grads = [d for d in directions if d != "forward"]
    words = ", ".join(directions[:-1]) + f" and {directions[-1]}"
    return ", ".join(parts + [words + (" gradients" if grads else "")])


def stem(result: dict[str, Any]) -> str:
    """The file stem of ``result`` (see :func:`file_stem`)."""
    return workload_stem(result["settings"]["shapes"], workload_of(result),
                         result["machine"].get("openblas_coretype_env"))


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (a temp file in the same directory, then ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, default=_json_default)
            f.write("\n")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):  # NumPy scalars
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ---- markdown -------------------------------------------------------------------------------

def _ms(stats: dict[str, float]) -> str:
    m, q1, q3 = (stats[k] * 1e3 for k in ("median", "q1", "q3"))
    digits = 3 if m < 1 else 2 if m < 100 else 1
    if stats["n"] == 1:
        return f"{m:.{digits}f} (1 run)"
    return f"{m:.{digits}f} [{q1:.{digits}f}–{q3:.{digits}f}]"


def _cell(record: dict[str, Any] | None, what: str) -> str:
    if record is None:
        return ""
    status = record["status"]
    if status == "unsupported":
        return "–"
    if status != "ok":
        return f"**{status}**"
    if what == "time":
        return _ms(record["stats"])
    if what == "gflops":
        frac = record.get("roof_fraction")
        return f"{record['gflops']:.1f}" + (f" ({100 * frac:.0f}%)" if frac is not None else "")
    ratio = record.get("speedup_vs_best_peer")
    return "" if ratio is None else _x(ratio)


def _x(ratio: float) -> str:
    """A speedup as ``1.23×`` (two significant digits below 0.1, so that a slow one does not read 0.00×)."""
    return f"{ratio:.2f}×" if ratio >= 0.1 else f"{ratio:.2g}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return out + ["| " + " | ".join(r) + " |" for r in rows]


def machine_lines(result: dict[str, Any]) -> list[str]:
    """The machine and library facts, one bullet each."""
    m = result["machine"]
    cpu, blas = m["cpu"], m.get("blas", {})
    lines = [f"- CPU: {cpu['model']}" + (f" (family {cpu['family']} model {cpu['model_number']})"
                                         if cpu.get("family") is not None else "")
             + f", {cpu['cores']} cores usable, clock {cpu.get('clock', '?')}, vector flags: "
             + (", ".join(cpu["flags"]) or "none reported")]
    if blas:
        lines.append(f"- NumPy BLAS: {blas.get('internal_api', '?')} {blas.get('version', '')} "
                     f"({blas.get('library', '')}), core type **{blas.get('architecture', '?')}**, "
                     f"{blas.get('num_threads', '?')} threads; OPENBLAS_CORETYPE="
                     f"{m.get('openblas_coretype_env') or '(unset)'}")
    if m.get("gpu"):
        g = m["gpu"]
        lines.append(f"- GPU: {g['name']} (sm_{g['compute_capability'].replace('.', '')}, {g['memory_gib']} GiB), "
                     f"driver CUDA {g['driver']}, runtime CUDA {g['cuda_runtime']}")
    lines.append("- Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    lines.append(f"- Platform: {m['platform']}")
    src = m.get("gpuconv_source", {})
    if "commit" in src:
        changed = f", with uncommitted changes to {', '.join(src['changed'])}" if src["changed"] else ""
        lines.append(f"- gpuconv source: commit {src['commit'][:12]}{changed}")
    load = result.get("load_average")
    if load:
        fmt = lambda v: "/".join(f"{x:.2f}" for x in v)  # noqa: E731
        lines.append(f"- Load average (1/5/15 min) at start {fmt(load['start'])}, at end {fmt(load['end'])}, on "
                     f"{cpu['cores']} cores: near or above the core count means other work shared the machine "
                     "and the timings are noisy")
    return lines


def _directions_of(result: dict[str, Any]) -> list[str]:
    return list(workload_of(result)["directions"])


def summary_by_direction(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``direction -> gpuconv contender -> peer -> figures``; a schema-1 summary is the forward's."""
    summary = result["summary"]
    if result.get("schema", 1) < 2:
        return {"forward": summary}
    return summary


def markdown(result: dict[str, Any], plots: list[str] = ()) -> str:
    """The human-readable page for one result."""
    s = result["settings"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    names = [c["name"] for c in result["contenders"]]
    work = workload_of(result)
    directions = list(work["directions"])
    lines = [f"# gpuconv vs peers: {Path(s['shapes']).stem}, {describe(work)}, {s['backend']} backend", ""]
    lines += [f"Command: `{result['command']}`  ", f"Measured: {result['created']}", ""]
    lines += machine_lines(result) + [""]
    roofs = result["roof"]
    for dtype in work["dtypes"]:
        r = roofs[dtype]
        runs = ", ".join(f"{x['best_gflops']:.1f}" for x in r.get("runs", []))
        lines.append(f"Roof of the {dtype} layers: {r['what']} at {r['size']}³, best of {r['repeat']} calls, "
                     f"measured before and after the layers ({runs} GFLOP/s): **{r['best_gflops']:.1f} GFLOP/s**, "
                     "used for their roof fractions below.  ")
    if s["backend"] == "cuda" and "float16" in roofs and "float16" not in work["dtypes"]:
        lines.append(f"fp16 GEMM roof: best {roofs['float16']['best_gflops']:.0f} GFLOP/s.")
    if directions != ["forward"]:
        lines += ["", "Directions: `forward` computes y from x and w, `input` the input gradient dx from dy and w, "
                  "`weight` the weight gradient dw from x and dy, each on the layer's forward geometry (a gradient "
                  "row is named `layer:input` / `layer:weight`). GFLOP counts the same 2·N·K·P·Q·C/g·R·S "
                  "multiply-adds in every direction. `–` marks a contender that does not compute that problem."]
    reference = "jax.lax at HIGHEST precision" + ("; the gradients from their definition, in float64"
                                                  if directions != ["forward"] else "")
    lines += ["", f"Timing: per contender the median of up to {s['repeat']} repetitions, run interleaved "
              f"(round-robin) after {s['warmup']} warm-up calls, at most ~{s['budget_s']} s each per layer "
              "(at least 3 runs; "
              "a contender whose single call exceeds that is run once); "
              "[q1–q3] is the interquartile range. Every contender was checked once against "
              f"`gpuconv.reference` ({reference}) before timing; a wrong result is reported as "
              "**failed** and not timed. Speedup = the other's median time / this one's.", ""]
    lines += ["Contenders:"] + [f"- `{c['name']}` ({c['label']}): {c['note']}" for c in result["contenders"]]
    lines += [f"- `{k}`: not run: {v}" for k, v in result["missing"].items()]

    lines += ["", "## Summary", ""]
    peers = [n for n in names if not n.startswith("gpuconv:")]
    several = len(directions) > 1
    rows = []
    for direction, by_gpuconv in summary_by_direction(result).items():
        for g, per in by_gpuconv.items():
            if per:
                rows.append(([direction] if several else []) + [labels[g]]
                            + [f"{_x(per[p]['geomean_speedup'])} (total {_x(per[p]['total_time_speedup'])}, "
                               f"wins {per[p]['wins']}/{per[p]['shapes']})" if p in per else "" for p in peers])
    lines += _table((["direction"] if several else []) + ["speedup of", *(f"over {labels[p]}" for p in peers)], rows)
    lines += ["", "Geometric mean over the layers both ran" + (", per direction" if several else "")
              + "; *total* weighs each layer by how often it occurs in the network (the `count` in the shapes file)."]

    shape_rows = result["shapes"]
    extra_cols = [(title, key) for title, key, many in (("direction", "direction", directions != ["forward"]),
                                                        ("N", "n", len(work["batches"]) > 1),
                                                        ("dtype", "dtype", len(work["dtypes"]) > 1)) if many]

    def column(row: dict[str, Any], key: str) -> str:
        return str(row.get("direction", "forward") if key == "direction" else row["problem"][key])

    head = ["layer", *(t for t, _ in extra_cols), "×", "GFLOP", "auto runs"]
    fixed = lambda row: [row["name"], *(column(row, k) for _, k in extra_cols),  # noqa: E731
                         str(row["count"]), f"{row['flops'] / 1e9:.3g}",
                         f"{row['auto']['strategy']} ({row['auto']['source']})"]
    for title, what in (("Time per layer, ms: median [q1–q3]", "time"),
                        ("GFLOP/s (fraction of the roof)", "gflops"),
                        ("Speedup over the best peer (>1: faster than every peer)", "speedup")):
        lines += ["", f"## {title}", ""]
        extra = ["best peer"] if what == "speedup" else []
        body = [fixed(row) + ([labels.get(row["best_peer"], "–")] if extra else [])
                + [_cell(row["results"].get(n), what) for n in names] for row in shape_rows]
        lines += _table(head + extra + [labels[n] for n in names], body)

    problems = [(row["name"], n, rec) for row in shape_rows for n, rec in row["results"].items()
                if rec["status"] in ("failed", "error")]
    problems += [(f"scaling {pt['size']}", n, rec) for pt in result["scaling"]["points"]
                 for n, rec in pt["results"].items() if rec["status"] in ("failed", "error")]
    if problems:
        lines += ["", "## Failed or raised (not timed)", ""]
        lines += [f"- {where} / `{n}`: {rec['status']}: {rec['error']}" for where, n, rec in problems]

    points = result["scaling"]["points"]
    if points:
        snames = list(dict.fromkeys(n for pt in points for n in pt["results"]))
        slabels = {**labels, "naive": "naive loops"}
        lines += ["", f"## Scaling: {result['scaling']['template']}; time in ms", ""]
        lines += _table(["H=W", "GFLOP", *(slabels.get(n, n) for n in snames)],
                        [[str(pt["size"]), f"{pt['flops'] / 1e9:.3g}"]
                         + [_cell(pt["results"].get(n), "time") for n in snames] for pt in points])
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def coretype_markdown(results: dict[str, dict[str, Any] | str]) -> str:
    """A side-by-side of the same benchmark under several OpenBLAS core types (a string: why it did not run)."""
    lines = ["# The same benchmark under each OpenBLAS core type", "",
             "OpenBLAS picks its kernels when NumPy loads it; `OPENBLAS_CORETYPE` overrides that choice and is "
             "read only then, so each core type ran in its own process.", ""]
    rows = []
    for coretype, res in results.items():
        if isinstance(res, str):
            rows.append([coretype, "–", "–", "–", res])
            continue
        blas = res["machine"].get("blas", {})
        r = res["roof"]["float32"]
        summary = summary_by_direction(res)
        ratios = "; ".join((f"{d}: " if list(summary) != ["forward"] else "")
                           + ", ".join(f"{p}: {v['geomean_speedup']:.2f}×"
                                       for p, v in by.get("gpuconv:auto", {}).items())
                           for d, by in summary.items())
        rows.append([coretype, str(blas.get("architecture", "?")), f"{r['best_gflops']:.1f}", ratios,
                     f"[{stem(res)}.md]({stem(res)}.md)"])
    lines += _table(["OPENBLAS_CORETYPE", "OpenBLAS chose", "sgemm GFLOP/s (best)",
                     "gpuconv auto geomean speedup over", "details"], rows)
    return "\n".join(lines) + "\n"


def fmt_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the roofs and, per direction, each gpuconv contender's geometric-mean speedup
    over each peer."""
    blas = result["machine"].get("blas", {})
    out = []
    for dtype in workload_of(result)["dtypes"]:
        r = result["roof"][dtype]
        out.append(f"roof ({dtype}): {r['what']} best {r['best_gflops']:.1f} GFLOP/s (OpenBLAS core type "
                   f"{blas.get('architecture', '?')})")
    summary = summary_by_direction(result)
    for direction, by_gpuconv in summary.items():
        for g, per in by_gpuconv.items():
            if per:
                out.append((f"{direction}: " if list(summary) != ["forward"] else "") + f"{g} geomean speedup over "
                           + ", ".join(f"{p} {_x(v['geomean_speedup'])}" for p, v in per.items()))
    tuned = sum(row["auto"]["source"] == "tuned" for row in result["shapes"])
    out.append(f"auto: {tuned} of {len(result['shapes'])} layers tuned, the rest heuristic")
    return "\n".join(out)
