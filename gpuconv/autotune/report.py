"""Render tuning outcomes: a markdown table for people, a JSON document for programs.

Both carry the evidence of each decision: the winner, the runner-up and the incumbent (the heuristic's
choice, or the stored decision being verified) with their medians and spreads over the interleaved rounds,
the verdict, and the load the machine was under; the report says when a decision was taken under load.
"""

from __future__ import annotations

import json
import platform
import time
from typing import Any, Mapping, Sequence

from .workload import STATUSES, Outcome


def fmt_time(seconds: float | None) -> str:
    """``12.3 us`` / ``4.56 ms`` / ``1.23 s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def _x(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(params.items())) or "-"


def _num(v: Any) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _pct(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) else "?"


def evidence_text(m: Mapping[str, Any]) -> str:
    """One phrase for a decision's evidence: the verdict, the ratio's interval and the rounds."""
    ev = m.get("evidence")
    if not isinstance(ev, Mapping):
        return "-"
    ratio, rounds = ev.get("leader_vs_incumbent"), ev.get("rounds")
    interval = f" ({ratio[0]:.2f}-{ratio[2]:.2f})" if isinstance(ratio, list) and None not in ratio else ""
    verdict = ev.get("verdict")
    if verdict == "separated":
        return f"{ratio[1]:.2f}x the incumbent{interval}, {rounds} rounds"
    if verdict == "indistinguishable":
        return f"kept the incumbent: not separated{interval}, {rounds} rounds"
    if verdict == "incumbent":
        return f"incumbent fastest, {rounds} rounds"
    return f"{verdict}, {rounds} rounds"


def load_text(m: Mapping[str, Any]) -> str:
    """``quiet`` / ``loaded 35%`` / ``heavy 80%``: the load level and how much of the machine other work took."""
    load = m.get("load")
    if not isinstance(load, Mapping):
        return "-"
    level = load.get("level", "?")
    return str(level) if level == "quiet" else f"{level} {_pct(load.get('contention'))}"


def _dims(o: Outcome) -> str:
    p = o.shape.problem
    extras = [f"s{p.stride[1]}" if p.stride[0] == p.stride[1] else f"s{p.stride}"] if p.stride != (1, 1) else []
    extras += [f"g{p.groups}"] if p.groups > 1 else []
    extras += [f"d{p.dilation[1]}"] if p.dilation != (1, 1) else []
    x = "x".join(map(str, p.x_shape))
    w = "x".join(map(str, p.w_shape))
    return f"{x} * {w}" + (f" ({','.join(extras)})" if extras else "") + f" {p.dtype}"


def rows(outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One flat, JSON-safe dict per shape."""
    out = []
    for o in outcomes:
        m = o.metrics
        heur = m.get("heuristic") if isinstance(m.get("heuristic"), dict) else {}
        out.append({
            "name": o.shape.name, "problem": o.shape.problem.to_dict(), "count": o.shape.count, "status": o.status,
            "strategy": o.plan.strategy if o.plan else None, "params": dict(o.plan.params) if o.plan else None,
            "time_s": m.get("time_s"), "gflops": m.get("gflops"),
            "heuristic": heur, "speedup_vs_heuristic": m.get("speedup_vs_heuristic"),
            "jax_time_s": m.get("jax_time_s"), "speedup_vs_jax": m.get("speedup_vs_jax"),
            "search": m.get("search"), "space_size": m.get("space_size"), "trials_run": o.trials_run,
            "failed": m.get("failed", {}), "failures": m.get("failures", []),
            "provisional": bool(m.get("provisional")), "load": m.get("load"), "evidence": m.get("evidence"),
            "verified": m.get("verified"),
        })
    return out


def summary(outcomes: Sequence[Outcome], total: int, elapsed_s: float) -> dict[str, Any]:
    """Counts by status, trials run, wall time, and whether every shape was a cache hit."""
    counts = {s: sum(o.status == s for o in outcomes) for s in STATUSES}
    return {**counts, "shapes": total, "not_run": total - len(outcomes),
            "trials_run": sum(o.trials_run for o in outcomes), "elapsed_s": elapsed_s,
            "all_cache_hits": counts["cached"] == total}


def markdown(outcomes: Sequence[Outcome], info: Mapping[str, Any], total: int, elapsed_s: float) -> str:
    """The report: what ran where, then one table row per shape, then the failed candidates."""
    s = summary(outcomes, total, elapsed_s)
    lines = [
        "# gpuconv autotune report", "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"- backend: {info.get('backend')} on {info.get('machine', {}).get('device', '?')} "
        f"({platform.platform()})",
        f"- shapes: {info.get('shapes')} ({total}); trials per shape: {info.get('trials')}; seed: {info.get('seed')}",
        f"- result: {s['tuned']} tuned, {s['provisional']} provisional, {s['cached']} cache hits, {s['verified']} "
        f"verified, {s['replaced']} replaced, {s['unverified']} not re-timed, {s['failed']} failed, "
        f"{s['interrupted']} interrupted, {s['not_run']} not run; {s['trials_run']} trials in {elapsed_s:.1f} s",
        "- search: `exhaustive` = every valid point of the space was tried; `tpe` = Optuna TPE sampled the space",
        "- times: median over the decision's interleaved rounds of each call's fastest run; speedups are the "
        "heuristic's (or jax.lax's) time over the chosen plan's",
        "- evidence: the fastest finalist's time over the incumbent's (the heuristic's choice, or the stored "
        "decision when verifying), its 95% interval, and the rounds; a finalist replaces the incumbent only when "
        "the interval lies below 1 by more than the margin",
        "- load: what share of the machine other work (and steal) took while timing; `provisional` decisions were "
        "taken under heavy load",
        "",
        "| shape | problem | status | strategy | params | time | GFLOP/s | vs heuristic | vs jax.lax | search | "
        "evidence | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o, r in zip(outcomes, rows(outcomes)):
        heur = r["heuristic"] or {}
        vs_h = _x(r["speedup_vs_heuristic"])
        if heur.get("strategy"):
            vs_h += f" ({heur['strategy']}{' ' + _params(heur.get('params') or {}) if heur.get('params') else ''})"
        search = f"{r['search']} ({r['space_size']})" if r["search"] else "-"
        gflops = "-" if r["gflops"] is None else f"{r['gflops']:.1f}"
        lines.append(f"| {r['name']} | {_dims(o)} | {r['status']} | {r['strategy'] or '-'} | "
                     f"{_params(r['params'] or {})} | {fmt_time(r['time_s'])} | {gflops} | {vs_h} | "
                     f"{_x(r['speedup_vs_jax'])} | {search} | {evidence_text(o.metrics)} | {load_text(o.metrics)} |")
    loaded = [r for r in rows(outcomes) if isinstance(r["load"], Mapping) and r["load"].get("level") != "quiet"
              and r["status"] != "cached"]
    if loaded:
        lines += ["", "**Taken under load**: " + "; ".join(
            f"{r['name']} ({load_text(r)}{', provisional' if r['provisional'] else ''})" for r in loaded) +
            ". Provisional decisions are used but re-timed by the next run; `--verify` on a quiet machine "
            "replaces those that no longer win."]
    lines += _evidence_section(outcomes)
    failures = [(r["name"], f) for r in rows(outcomes) for f in r["failures"]]
    if failures:
        lines += ["", "## Failed candidates", "", "| shape | strategy | params | status | reason |",
                  "|---|---|---|---|---|"]
        for name, f in failures:
            reason = str(f.get("reason", "")).replace("|", "\\|")
            lines.append(f"| {name} | {f.get('strategy')} | {_params(f.get('params') or {})} | {f.get('status')} | "
                         f"{reason} |")
    return "\n".join(lines) + "\n"


def _who(c: Any) -> str:
    if not isinstance(c, Mapping):
        return "-"
    spread = c.get("spread")
    sp = f" ±{spread / 2:.0%}" if isinstance(spread, (int, float)) else ""
    return f"{c.get('strategy')} {_params(c.get('params') or {})} {fmt_time(c.get('median_s'))}{sp}"


def _evidence_section(outcomes: Sequence[Outcome]) -> list[str]:
    body = []
    for o in outcomes:
        ev = o.metrics.get("evidence")
        if o.status == "cached" or not isinstance(ev, Mapping):
            continue
        load = ev.get("load") or {}
        body.append(f"| {o.shape.name} | {ev.get('verdict')} | {_who(ev.get('winner'))} | {_who(ev.get('runner_up'))} "
                    f"| {_who(ev.get('incumbent'))} | {ev.get('rounds')} | {load_text({'load': load})} "
                    f"(loadavg {_num(load.get('loadavg'))}, "
                    f"{load.get('cores')} cores) | {str(ev.get('reason', '')).replace('|', '/')} |")
    if not body:
        return []
    return ["", "## Evidence", "",
            "Medians over the interleaved rounds, ± half the interquartile range of the round medians.", "",
            "| shape | verdict | winner | runner-up | incumbent | rounds | load while racing | why |",
            "|---|---|---|---|---|---|---|---|", *body]


def table(outcomes: Sequence[Outcome]) -> str:
    """A compact plain-text table for the terminal."""
    head = ("shape", "status", "strategy", "params", "time", "GFLOP/s", "vs heur", "vs jax", "evidence", "load")
    body = []
    for o, r in zip(outcomes, rows(outcomes)):
        body.append((r["name"], r["status"], r["strategy"] or "-", _params(r["params"] or {}), fmt_time(r["time_s"]),
                     "-" if r["gflops"] is None else f"{r['gflops']:.1f}", _x(r["speedup_vs_heuristic"]),
                     _x(r["speedup_vs_jax"]), evidence_text(o.metrics) if o.status != "cached" else "-",
                     load_text(o.metrics)))
    widths = [max(len(str(c)) for c in col) for col in zip(head, *body)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join([fmt.format(*head), fmt.format(*("-" * w for w in widths)), *(fmt.format(*b) for b in body)])


def document(outcomes: Sequence[Outcome], info: Mapping[str, Any], total: int, elapsed_s: float) -> str:
    """The ``--json`` output."""
    return json.dumps({"info": dict(info), "summary": summary(outcomes, total, elapsed_s), "shapes": rows(outcomes)},
                      indent=1, sort_keys=True)
