"""The package's shape: imports run one way (problem -> backends -> cache -> plan -> conv, tooling on top), with
no cycle, and the first call of a process loads only what it runs."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gpuconv"

#: Layer of each module, lowest first; a module may import its own layer or lower ones, never a higher one.
LAYERS: list[tuple[str, ...]] = [
    ("gpuconv._data", "gpuconv._dtypes", "gpuconv._arrays"),
    ("gpuconv.problem", "gpuconv.strategy", "gpuconv.adjoint"),
    ("gpuconv.cpu", "gpuconv.cuda", "gpuconv.backends"),
    ("gpuconv.cache",),
    ("gpuconv.plan",),
    ("gpuconv._calls",),
    ("gpuconv.conv", "gpuconv.grad", "gpuconv.transpose"),
    ("gpuconv.measure", "gpuconv.reference", "gpuconv.shapes", "gpuconv.torch", "gpuconv.jax"),
    ("gpuconv.autotune",),
    ("gpuconv.demo", "gpuconv"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every gpuconv module ``name`` imports, at module level or inside functions."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("gpuconv")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("gpuconv"):
                target = node.module
            else:
                continue
            subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known}
            out |= subs
            if len(subs) < len(node.names):  # a name defined in the package itself, not a submodule
                out.add(target)
    return {m for m in out if m in known and m != name}


def _layer(name: str) -> int:
    # the longest matching prefix wins ("gpuconv" matches everything; "gpuconv.cpu" is more specific)
    matches = [(len(m), i) for i, members in enumerate(LAYERS) for m in members
               if name == m or (m != "gpuconv" and name.startswith(m + "."))]
    if not matches:
        raise AssertionError(f"{name} is in no layer of LAYERS: place it")
    return max(matches)[1]


def test_imports_run_one_way_without_cycles() -> None:
    modules = _modules()
    known = set(modules)
    graph = {name: _imports(name, path, known) for name, path in modules.items()}
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in graph.items() for b in targets if _layer(b) > _layer(a)]
    assert not upward, "\n".join(upward)
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        if state.get(node) == 1:
            raise AssertionError("import cycle: " + " -> ".join(trail[trail.index(node):] + [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt.startswith(node + "."):  # a package importing its own submodules is not a cycle
                continue
            visit(nxt, trail + [node])
        state[node] = 2

    for name in sorted(graph):
        visit(name, [])


def test_the_runtime_never_imports_tooling() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    runtime = [n for n in graph if _layer(n) <= _layer("gpuconv.conv")]
    tooling = ("gpuconv.autotune", "gpuconv.reference", "gpuconv.measure", "gpuconv.demo")
    bad = [(a, b) for a in runtime for b in graph[a] if b.startswith(tooling)]
    assert not bad


def test_the_layer_table_rejects_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: plan importing the tuner is reported."""
    fake = tmp_path / "gpuconv" / "plan.py"
    fake.parent.mkdir()
    fake.write_text("from .autotune import first_call\n")
    names = {"gpuconv.plan", "gpuconv.autotune", "gpuconv.autotune.first_call"}
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "gpuconv"
    try:
        found = _imports("gpuconv.plan", fake, names)
    finally:
        PACKAGE = saved
    assert found and all(_layer(b) > _layer("gpuconv.plan") for b in found)


@pytest.mark.parametrize("call", ["conv2d(x, w)", "conv1d(x[0, :, 0], w[:, :, 0])"])
def test_first_call_loads_no_scipy_fft_jax_optuna_or_cupy(call: str) -> None:
    script = f"""
import sys, numpy as np, gpuconv
x = np.random.default_rng(0).uniform(-1, 1, (1, 3, 9, 9)).astype(np.float32)
w = np.random.default_rng(1).uniform(-1, 1, (4, 3, 5, 5)).astype(np.float32)
gpuconv.{call}
print(sorted(m for m in ("scipy.fft", "jax", "optuna", "cupy", "torch") if m in sys.modules))
"""
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_fast_len_matches_scipy() -> None:
    import scipy.fft

    from gpuconv.cpu.fft import fast_len

    assert [fast_len(n) for n in range(1, 3000)] == [scipy.fft.next_fast_len(n, real=True) for n in range(1, 3000)]
