"""The tuner on this machine for real: concurrent tuners share the timing lock, and tuning under load still
leaves ``auto`` as fast as the best forced strategy once the machine is quiet."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import gpuconv
from gpuconv import cache, cpu
from gpuconv.autotune import SampledCpuTimer, make_target, tune_shapes, verify_shapes
from gpuconv.problem import make_problem
from gpuconv.shapes import Shape


def test_four_concurrent_tuners_time_one_at_a_time_and_lose_no_entry(tmp_path: Path) -> None:
    cache_dir, locks = tmp_path / "cache", tmp_path / "locks"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "GPUCONV_LOCK_DIR": str(locks)}
    procs = []
    for i in range(4):
        shapes = tmp_path / f"shapes{i}.json"
        shapes.write_text(json.dumps([{"name": f"p{i}a", "x": [1, 2 + i, 6, 6], "w": [3, 2 + i, 3, 3]},
                                      {"name": f"p{i}b", "x": [1, 2 + i, 7, 7], "w": [3, 2 + i, 1, 1]}]))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "gpuconv.autotune", "--shapes", str(shapes), "--backend", "cpu", "--trials", "3",
             "--no-jax", "--quiet", "--cache-dir", str(cache_dir), "--json", str(tmp_path / f"out{i}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err
        errs.append(err)
    (path,) = cache_dir.glob("cpu-*.json")
    assert len(json.loads(path.read_text())["entries"]) == 8  # every process's decisions survived the merges
    docs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(4)]
    held = sorted((a, b, i) for i, d in enumerate(docs) for a, b in d["info"]["timing_lock"]["held"])
    assert len({i for _, _, i in held}) == 4
    overlaps = [(x, y) for x, y in zip(held, held[1:]) if y[0] < x[1] - 1e-3 and x[2] != y[2]]
    assert not overlaps, overlaps[:3]  # no two tuners ever timed at the same moment
    waits = sum(d["info"]["timing_lock"]["waits"] for d in docs)
    assert waits > 0 and any("waiting for the timing lock" in e for e in errs)
    assert all(d["info"]["timing_lock"]["path"] == str(locks / "gpuconv-timing-cpu.lock") for d in docs)

    again = subprocess.run([sys.executable, "-m", "gpuconv.autotune", "--verify", "--backend", "cpu", "--quiet",
                            "--cache-dir", str(cache_dir), "--json"], env=env, capture_output=True, text=True,
                           timeout=240)
    assert again.returncode == 0, again.stderr
    rows = json.loads(again.stdout)["shapes"]
    assert len(rows) == 8 and {r["status"] for r in rows} <= {"verified", "replaced", "unverified"}
    assert all(r["evidence"]["rounds"] >= 3 for r in rows)


LAYERS = [make_problem("conv2d", (1, 64, 28, 28), (64, 64, 3, 3), "float32", False, padding=1),
          make_problem("conv2d", (1, 128, 14, 14), (256, 128, 1, 1), "float32", False)]


def _interleaved(runs: dict[str, Any], rounds: int = 7, per: int = 5) -> dict[str, float]:
    """Median over rounds of each runner's median of ``per`` runs; every round runs every runner."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(rounds):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            one = []
            for _ in range(per):
                t0 = time.perf_counter()
                runs[name]()
                one.append(time.perf_counter() - t0)
            times[name].append(statistics.median(one))
    return {k: statistics.median(v) for k, v in times.items()}


@pytest.mark.slow
def test_tuned_under_load_auto_is_as_fast_as_the_best_strategy_when_quiet(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("GPUCONV_LOCK_DIR", str(tmp_path / "locks"))
    target = make_target("cpu", timer=SampledCpuTimer(repeat=7, budget_s=0.1))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        time.sleep(0.5)
        loaded = list(tune_shapes([Shape(f"l{i}", p) for i, p in enumerate(LAYERS)], target, cache.default(),
                                  trials=6, compare_jax=False))
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert all(o.status in ("tuned", "provisional") for o in loaded)
    assert all(o.metrics["load"]["level"] != "quiet" for o in loaded)  # the load was seen...
    assert any(o.status == "provisional" for o in loaded)  # ...and two busy cores are heavy: not final
    time.sleep(1.0)
    verified = list(verify_shapes([Shape(f"l{i}", p) for i, p in enumerate(LAYERS)], target, cache.default()))
    assert all(o.status in ("verified", "replaced", "unverified") for o in verified)

    rng = np.random.default_rng(0)
    for p, v in zip(LAYERS, verified):
        x = rng.uniform(-1, 1, p.x_shape).astype(np.float32)
        w = rng.uniform(-1, 1, p.w_shape).astype(np.float32)
        pad = p.padding[0]
        # every strategy but fft, which is over 20x slower on these layers and would take most of the minute
        names = [n for n, s in cpu.STRATEGIES.items() if s.supports(p) and n != "fft"]
        heuristic = cpu.heuristic(p)

        def runner(strategy: str, x: Any = x, w: Any = w, pad: int = pad) -> Any:
            return lambda: gpuconv.conv2d(x, w, padding=pad, strategy=strategy)

        runs = {n: runner(n) for n in ["auto", *names]}
        runs["heuristic"] = lambda x=x, w=w, heuristic=heuristic, p=p: cpu.execute(p, heuristic, x, w, None)
        for run in runs.values():
            run()
        t = _interleaved(runs)
        best = min(t[n] for n in names)
        why = (p.x_shape, p.w_shape, v.status, {k: round(s * 1e3, 3) for k, s in t.items()},
               v.metrics.get("evidence", {}).get("reason"))
        # 1.3: what separates a right decision from a wrong one here is 1.5x and more; the rest is the noise of
        # a shared 2-core machine between rounds taken a second apart
        if v.status == "unverified":  # other work kept the machine busy: only the weaker promise holds
            assert t["auto"] <= 1.3 * t["heuristic"], why
        else:
            assert t["auto"] <= 1.3 * best, why
