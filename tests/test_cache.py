"""Tuned decisions: the store (round trips, bad files set aside, concurrent writers) and plan's keys and checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gpuconv import cache, cpu, plan
from gpuconv.cache import TuningCache
from gpuconv.problem import make_problem
from gpuconv.strategy import Plan, Strategy

FILE = plan.cache_file("cpu")

PROBLEM = make_problem("conv2d", (1, 3, 8, 8), (4, 3, 3, 3), "float32", False, padding=1)


@pytest.fixture
def alt(monkeypatch: pytest.MonkeyPatch) -> Strategy:
    """A second CPU strategy with an int tunable (computes through im2col), so decisions can differ."""
    im2col = cpu.STRATEGIES["im2col"]
    strategy = Strategy("alt", lambda p, x, w, **k: im2col.run(p, x, w, **dict(im2col.defaults)),
                        space={"block": [1, 2, 4]}, constraints=(lambda params, p: params["block"] != 4,),
                        defaults={"block": 1})
    monkeypatch.setitem(cpu.STRATEGIES, "alt", strategy)
    return strategy


def _env(directory: Path) -> dict[str, str]:
    return {**os.environ, "GPUCONV_CACHE_DIR": str(directory), "PYTHONPATH": os.pathsep.join(sys.path)}


def test_round_trip_and_file_format(alt: Strategy) -> None:
    store = TuningCache()
    assert plan.lookup(PROBLEM, "cpu", store=store) is None
    plan.store_decision(PROBLEM, "cpu", Plan("alt", {"block": 2}), {"time_s": 1e-3}, store=store)
    assert plan.lookup(PROBLEM, "cpu", store=store) == Plan("alt", {"block": 2}, "tuned")
    data = json.loads(store.path(FILE).read_text())
    assert data["format"] == cache.FORMAT and data["schema"] == cache.SCHEMA_VERSION
    (record,) = data["entries"].values()
    assert record["problem"] == PROBLEM.to_dict() and record["metrics"] == {"time_s": 1e-3}
    assert record["fingerprint"]["source"] and record["fingerprint"]["numpy"] == np.__version__
    fresh = TuningCache()  # a new process's view: read from disk
    assert plan.lookup(PROBLEM, "cpu", store=fresh) == Plan("alt", {"block": 2}, "tuned")
    assert plan.lookup(make_problem("conv2d", (1, 3, 8, 8), (4, 3, 3, 3), "float64", False, padding=1), "cpu") is None


def test_key_covers_problem_dtype_backend_and_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    other_dtype = make_problem("conv2d", (1, 3, 8, 8), (4, 3, 3, 3), "float16", False, padding=1)
    other_stride = make_problem("conv2d", (1, 3, 8, 8), (4, 3, 3, 3), "float32", False, padding=1, stride=2)
    keys = {plan.cache_key(p, "cpu") for p in (PROBLEM, other_dtype, other_stride)}
    assert len(keys) == 3
    before = plan.cache_key(PROBLEM, "cpu")
    monkeypatch.setattr(cpu, "fingerprint", lambda d=0: {"device": "x", "source": "changed"})
    assert plan.cache_key(PROBLEM, "cpu") != before  # a code change is a miss


def test_key_does_not_move_with_optional_packages(alt: Strategy) -> None:
    """Tune, then hide an optional package (and add one back): the decision is still found, in a new process."""
    store = TuningCache()
    plan.store_decision(PROBLEM, "cpu", Plan("alt", {"block": 2}), store=store)
    script = textwrap.dedent("""
        import sys
        for name in ("threadpoolctl", "optuna", "jax", "torch", "cupy", "matplotlib", "scipy"):
            sys.modules[name] = None  # import fails as if it were not installed
        from gpuconv import cpu, plan
        print(plan.cache_key(PROBLEM_SOURCE, "cpu"))
    """).replace("PROBLEM_SOURCE", _problem_source_exact())
    env = _env(store.directory)
    hidden = subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=120, capture_output=True,
                            text=True).stdout.strip()
    shown = subprocess.run([sys.executable, "-c", script.replace("sys.modules[name] = None", "__import__(name)")
                            .replace('"cupy", ', "").replace('"jax", ', "")],
                           env=env, check=True, timeout=120, capture_output=True, text=True).stdout.strip()
    assert hidden == shown == plan.cache_key(PROBLEM, "cpu")
    assert plan.lookup(PROBLEM, "cpu", store=TuningCache()) == Plan("alt", {"block": 2}, "tuned")


def test_records_of_older_code_are_pruned(alt: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TuningCache()
    plan.store_decision(PROBLEM, "cpu", Plan("alt", {"block": 2}), store=store)
    real = dict(cpu.fingerprint())
    monkeypatch.setattr(cpu, "fingerprint", lambda d=0: {**real, "source": "newer"})
    other = make_problem("conv2d", (1, 3, 9, 9), (4, 3, 3, 3), "float32", False)
    plan.store_decision(other, "cpu", Plan("alt", {"block": 1}), store=store)
    entries = json.loads(store.path(FILE).read_text())["entries"]
    assert [e["fingerprint"]["source"] for e in entries.values()] == ["newer"]


def test_second_lookup_does_not_touch_the_disk(alt: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    plan.store_decision(PROBLEM, "cpu", plan=Plan("alt", {"block": 2}))
    plan.forget()
    assert plan.lookup(PROBLEM, "cpu") == Plan("alt", {"block": 2}, "tuned")
    cache.default().path(FILE).unlink()

    def no_disk(*a: Any, **k: Any) -> Any:
        raise AssertionError("the disk was read")

    monkeypatch.setattr(Path, "read_bytes", no_disk)
    assert plan.lookup(PROBLEM, "cpu") == Plan("alt", {"block": 2}, "tuned")
    plan.choose("conv2d", PROBLEM, "cpu", cpu, "auto")
    monkeypatch.setattr(plan, "cache_key", no_disk)  # a memoized choice recomputes not even the key
    assert plan.choose("conv2d", PROBLEM, "cpu", cpu, "auto") == Plan("alt", {"block": 2}, "tuned")


def test_conv2d_uses_a_seeded_decision(alt: Strategy, monkeypatch: pytest.MonkeyPatch) -> None:
    assert plan.choose("conv2d", PROBLEM, "cpu", cpu, "auto") == cpu.heuristic(PROBLEM)
    plan.store_decision(PROBLEM, "cpu", plan=Plan("alt", {"block": 2}))
    ran: list[Any] = []
    monkeypatch.setitem(cpu.STRATEGIES, "alt", Strategy("alt", lambda p, x, w, **k: ran.append(k) or alt.run(p, x, w),
                                                        space=alt.space, constraints=alt.constraints))
    import gpuconv

    x = np.random.default_rng(0).uniform(-1, 1, PROBLEM.x_shape).astype(np.float32)
    w = np.random.default_rng(1).uniform(-1, 1, PROBLEM.w_shape).astype(np.float32)
    y = gpuconv.conv2d(x, w, padding=1)
    assert ran == [{"block": 2}]
    np.testing.assert_allclose(y, gpuconv.conv2d(x, w, padding=1, strategy="im2col"), rtol=1e-5, atol=1e-5)


def _valid_file(store: TuningCache) -> bytes:
    plan.store_decision(PROBLEM, "cpu", store=store, plan=Plan("im2col", dict(cpu.STRATEGIES["im2col"].defaults)))
    return store.path(FILE).read_bytes()


@pytest.mark.parametrize("kind", ["truncated", "corrupt", "old-schema", "foreign", "not-utf8", "entries-list"])
def test_bad_file_is_set_aside_with_one_warning(kind: str) -> None:
    store = TuningCache()
    good = _valid_file(store)
    path = store.path(FILE)
    content = {
        "truncated": good[: len(good) // 2],
        "corrupt": b"{\"format\": \"gpuconv-tuning-cache\", \"schema\": 1, \"entries\": {,,}",
        "old-schema": json.dumps({**json.loads(good), "schema": 0}).encode(),
        "foreign": json.dumps({"some": "other tool"}).encode(),
        "not-utf8": b"\xff\xfe\x00garbage",
        "entries-list": json.dumps({"format": cache.FORMAT, "schema": cache.SCHEMA_VERSION, "entries": []}).encode(),
    }[kind]
    path.write_bytes(content)
    reader = TuningCache()
    with pytest.warns(RuntimeWarning, match=r"tuning cache .* is .*moved it to"):
        assert plan.lookup(PROBLEM, "cpu", store=reader) is None
    assert not path.exists()
    aside = [p for p in path.parent.iterdir() if p.name.startswith(path.name + ".")
             and not p.name.endswith(".lock")]
    assert len(aside) == 1 and aside[0].read_bytes() == content
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert plan.lookup(PROBLEM, "cpu", store=TuningCache()) is None  # reported once: the file is gone
        plan.store_decision(PROBLEM, "cpu", store=reader, plan=Plan("im2col", dict(cpu.STRATEGIES["im2col"].defaults)))
    assert plan.lookup(PROBLEM, "cpu", store=TuningCache()) is not None  # and the library keeps working


@pytest.mark.parametrize("change, reason", [
    ({"strategy": "nonexistent"}, "unknown strategy"),
    ({"strategy": 3}, "unknown strategy"),
    ({"params": {"block": 8}}, "outside the space"),
    ({"params": {"block": 4}}, "outside the space"),  # in the value list but breaks the constraint
    ({"params": {"block": "2"}}, "must map names to ints"),
    ({"params": {"block": 2.0}}, "must map names to ints"),
    ({"params": {"block": True}}, "must map names to ints"),
    ({"params": {"block": 2, "extra": 1}}, "outside the space"),
    ({"params": {}}, "outside the space"),
    ({"params": ["block", 2]}, "must map names to ints"),
    ({"strategy": "depthwise", "params": {"wide": 0}}, "cannot compute this problem"),
    ({"problem": {"n": 2}}, "another problem"),
    ({"fingerprint": {"device": "elsewhere"}}, "another machine"),
])
def test_injected_bad_values_are_rejected(alt: Strategy, change: dict[str, Any], reason: str) -> None:
    store = TuningCache()
    plan.store_decision(PROBLEM, "cpu", store=store, plan=Plan("alt", {"block": 2}))
    path = store.path(FILE)
    data = json.loads(path.read_text())
    (k,) = data["entries"]
    data["entries"][k].update(change)
    path.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match=f"ignoring the tuned entry.*{reason}"):
        assert plan.lookup(PROBLEM, "cpu", store=TuningCache()) is None
    plan.forget()
    with pytest.warns(RuntimeWarning, match="ignoring"):
        assert plan.choose("conv2d", PROBLEM, "cpu", cpu, "auto") == cpu.heuristic(PROBLEM)
    assert path.exists()  # one bad entry is ignored, not the whole file


def test_non_object_entry_is_rejected() -> None:
    store = TuningCache()
    _valid_file(store)
    data = json.loads(store.path(FILE).read_text())
    (k,) = data["entries"]
    data["entries"][k] = "im2col"
    store.path(FILE).write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="entry is a str"):
        assert plan.lookup(PROBLEM, "cpu", store=TuningCache()) is None


def test_store_refuses_an_invalid_plan(alt: Strategy) -> None:
    with pytest.raises(ValueError, match="outside the space"):
        plan.store_decision(PROBLEM, "cpu", store=TuningCache(), plan=Plan("alt", {"block": 16}))
    with pytest.raises(ValueError, match="unknown strategy"):
        plan.store_decision(PROBLEM, "cpu", store=TuningCache(), plan=Plan("nope", {}))


def _problem_source(i: int | str) -> str:
    """The same problem, written once for this process and the subprocesses."""
    return f"make_problem('conv2d', (1, {i} + 1, 6, 6), (2, {i} + 1, 3, 3), 'float32', False)"


def _problem(i: int) -> Any:
    return make_problem("conv2d", (1, i + 1, 6, 6), (2, i + 1, 3, 3), "float32", False)


def test_reuse_across_processes(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        from gpuconv import cpu, plan
        from gpuconv.problem import make_problem
        from gpuconv.strategy import Plan
        plan.store_decision({_problem_source(0)}, 'cpu', Plan('im2col', dict(cpu.STRATEGIES['im2col'].defaults)))
    """)
    subprocess.run([sys.executable, "-c", script], env=_env(tmp_path), check=True, timeout=120)
    found = plan.lookup(_problem(0), "cpu", store=TuningCache(tmp_path))
    assert found is not None and found.strategy == "im2col" and found.source == "tuned"


def test_four_concurrent_writers_lose_no_entry(tmp_path: Path) -> None:
    per_process = 6
    script = textwrap.dedent(f"""
        import sys
        from gpuconv import cpu
        from gpuconv import plan as gplan
        from gpuconv.problem import make_problem
        from gpuconv.strategy import Plan
        base = int(sys.argv[1]) * {per_process}
        for i in range(base, base + {per_process}):
            p = Plan('im2col', dict(cpu.STRATEGIES['im2col'].defaults))
            gplan.store_decision({_problem_source("i")}, 'cpu', p)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(n)], env=_env(tmp_path)) for n in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = TuningCache(tmp_path)
    data = json.loads(store.path(FILE).read_text())
    assert len(data["entries"]) == 4 * per_process
    for i in range(4 * per_process):
        assert plan.lookup(_problem(i), "cpu", store=store) is not None, i
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]  # no temporary file left behind


def test_reload_sees_other_writers() -> None:
    reader, writer = TuningCache(), TuningCache()
    assert plan.lookup(PROBLEM, "cpu", store=reader) is None
    plan.store_decision(PROBLEM, "cpu", store=writer, plan=Plan("im2col", dict(cpu.STRATEGIES["im2col"].defaults)))
    assert plan.lookup(PROBLEM, "cpu", store=reader) is None  # memoized miss
    reader.reload()
    assert plan.lookup(PROBLEM, "cpu", store=reader) is not None


def test_default_dir_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUCONV_CACHE_DIR", str(tmp_path / "here"))
    assert cache.default_dir() == tmp_path / "here"
    assert cache.default().directory == tmp_path / "here"
    monkeypatch.delenv("GPUCONV_CACHE_DIR")
    import platformdirs

    assert cache.default_dir() == Path(platformdirs.user_cache_dir("gpuconv"))


def _problem_source_exact() -> str:
    return "make_problem('conv2d', (1, 3, 8, 8), (4, 3, 3, 3), 'float32', False, padding=1)".replace(
        "make_problem", "__import__('gpuconv.problem', fromlist=['x']).make_problem")
