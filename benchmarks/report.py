"""Write a result: the JSON with every number, and a markdown page a person reads."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def file_stem(shapes: str, batch: int, dtype: str, coretype: str | None) -> str:
    """``<shapes>_b<batch>_<dtype>``, plus ``_openblas-<coretype>`` for a run under a forced OpenBLAS core type."""
    name = f"{Path(shapes).stem}_b{batch}_{dtype}"
    return f"{name}_openblas-{coretype.lower()}" if coretype else name


def stem(result: dict[str, Any]) -> str:
    """The file stem of ``result`` (see :func:`file_stem`)."""
    s = result["settings"]
    batch = s["batch"] if s["batch"] is not None else (result["shapes"][0]["problem"]["n"] if result["shapes"] else 1)
    return file_stem(s["shapes"], batch, s["dtype"], result["machine"].get("openblas_coretype_env"))


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


def markdown(result: dict[str, Any], plots: list[str] = ()) -> str:
    """The human-readable page for one result."""
    s = result["settings"]
    labels = {c["name"]: c["label"] for c in result["contenders"]}
    names = [c["name"] for c in result["contenders"]]
    batch = result["shapes"][0]["problem"]["n"] if result["shapes"] else s["batch"]
    lines = [f"# gpuconv vs peers: {Path(s['shapes']).stem}, batch {batch}, {s['dtype']}, {s['backend']} backend", ""]
    lines += [f"Command: `{result['command']}`  ", f"Measured: {result['created']}", ""]
    lines += machine_lines(result) + [""]
    roofs = result["roof"]
    r = roofs[s["dtype"]]
    runs = ", ".join(f"{x['best_gflops']:.1f}" for x in r.get("runs", []))
    lines.append(f"Roof: {r['what']} at {r['size']}³, best of {r['repeat']} calls, measured before and after the "
                 f"layers ({runs} GFLOP/s): **{r['best_gflops']:.1f} GFLOP/s**, used for the roof fractions below.")
    if s["backend"] == "cuda" and "float16" in roofs:
        lines.append(f"fp16 GEMM roof: best {roofs['float16']['best_gflops']:.0f} GFLOP/s.")
    lines += ["", f"Timing: per contender the median of up to {s['repeat']} repetitions, run interleaved "
              f"(round-robin) after {s['warmup']} warm-up calls, at most ~{s['budget_s']} s each per layer "
              "(at least 3 runs; "
              "a contender whose single call exceeds that is run once); "
              "[q1–q3] is the interquartile range. Every contender was checked once against "
              "`gpuconv.reference` (jax.lax at HIGHEST precision) before timing; a wrong result is reported as "
              "**failed** and not timed. Speedup = the other's median time / this one's.", ""]
    lines += ["Contenders:"] + [f"- `{c['name']}` ({c['label']}): {c['note']}" for c in result["contenders"]]
    lines += [f"- `{k}`: not run: {v}" for k, v in result["missing"].items()]

    lines += ["", "## Summary", ""]
    peers = [n for n in names if not n.startswith("gpuconv:")]
    rows = []
    for g, per in result["summary"].items():
        if per:
            rows.append([labels[g]] + [f"{_x(per[p]['geomean_speedup'])} (total {_x(per[p]['total_time_speedup'])}, "
                                       f"wins {per[p]['wins']}/{per[p]['shapes']})" if p in per else ""
                                       for p in peers])
    lines += _table(["speedup of", *(f"over {labels[p]}" for p in peers)], rows)
    lines += ["", "Geometric mean over the layers both ran; *total* weighs each layer by how often it occurs "
              "in the network (the `count` in the shapes file)."]

    shape_rows = result["shapes"]
    head = ["layer", "×", "GFLOP", "auto runs"]
    fixed = lambda row: [row["name"], str(row["count"]), f"{row['flops'] / 1e9:.3g}",  # noqa: E731
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
        r = res["roof"][res["settings"]["dtype"]]
        auto = res["summary"].get("gpuconv:auto", {})
        ratios = ", ".join(f"{p}: {v['geomean_speedup']:.2f}×" for p, v in auto.items())
        rows.append([coretype, str(blas.get("architecture", "?")), f"{r['best_gflops']:.1f}", ratios,
                     f"[{stem(res)}.md]({stem(res)}.md)"])
    lines += _table(["OPENBLAS_CORETYPE", "OpenBLAS chose", "sgemm GFLOP/s (best)",
                     "gpuconv auto geomean speedup over", "details"], rows)
    return "\n".join(lines) + "\n"


def fmt_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal: the roof and gpuconv auto's geometric-mean speedup over each peer."""
    r = result["roof"][result["settings"]["dtype"]]
    blas = result["machine"].get("blas", {})
    out = [f"roof: {r['what']} best {r['best_gflops']:.1f} GFLOP/s (OpenBLAS core type "
           f"{blas.get('architecture', '?')})"]
    for g, per in result["summary"].items():
        if per:
            out.append(f"{g} geomean speedup over " + ", ".join(f"{p} {_x(v['geomean_speedup'])}"
                                                               for p, v in per.items()))
    tuned = sum(row["auto"]["source"] == "tuned" for row in result["shapes"])
    out.append(f"auto: {tuned} of {len(result['shapes'])} layers tuned, the rest heuristic")
    return "\n".join(out)
