"""``benchmarks/gpu_run.sh --dry-run`` on this machine: everything up to the first CUDA call runs (wheels, imports,
the estimate, collecting the GPU tests), the GPU steps are skipped, and a skipped step is a failure: the summary
names it, the exit status is non-zero, and the tarball and the summary are the only files under $OUT."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash and timeout")
def test_dry_run_reports_skipped_steps_as_failures(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "TMPDIR": str(tmp_path), "GPU_RUN_DRY": "1"}
    env.pop("GPUCONV_CACHE_DIR", None)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_run.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stdout + done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_run.tar.gz", "gpu_run_summary.txt"]
    summary = (out / "gpu_run_summary.txt").read_text()
    assert "estimate: at most" in summary and "DRY RUN" in summary
    lines = {line.split()[0]: line.split()[1] for line in summary.splitlines() if line and not line.startswith(" ")
             and len(line.split()) >= 2}
    assert lines.get("setup") == "ok", summary + (done.stdout + done.stderr)
    assert lines.get("device") == "ok"
    for name in ("tests-gpu", "overhead", "autotune", "bench-b1", "bench-b32"):
        assert lines.get(name) == "skipped", name
    result = [line for line in summary.splitlines() if line.startswith("RESULT:")]
    assert result and "FAILED" in result[0] and "tests-gpu" in result[0] and "bench-b32" in result[0]
    with tarfile.open(out / "gpu_run.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"gpu_run/setup.log", "gpu_run/collect-gpu.log", "gpu_run/gpu_run_summary.txt"} <= names
    assert not list(tmp_path.glob("gpu_run.*")), "the work directory was left behind"
