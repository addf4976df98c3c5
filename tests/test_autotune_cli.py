"""``python -m gpuconv.autotune`` end to end on the CPU backend, in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gpuconv.autotune import cli


def _shapes(path: Path, entries: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps(entries))
    return path


SMALL = [
    {"name": "tiny3x3", "x": [1, 4, 8, 8], "w": [4, 4, 3, 3], "padding": 1},
    {"name": "tiny1d", "x": [2, 3, 20], "w": [5, 3, 4], "stride": 2},
]


@pytest.fixture(autouse=True)
def _own_timing_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The machine-wide timing lock of each test's own, for this process and the tuners it starts."""
    monkeypatch.setenv("GPUCONV_LOCK_DIR", str(tmp_path / "locks"))


def _run(args: list[str], cache_dir: Path, **kw: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, "-m", "gpuconv.autotune", *args, "--cache-dir", str(cache_dir)],
                          env=env, capture_output=True, text=True, timeout=180, **kw)


def test_tune_then_rerun_is_all_cache_hits(tmp_path: Path) -> None:
    shapes = _shapes(tmp_path / "shapes.json", SMALL)
    cache_dir = tmp_path / "cache"
    first = _run(["--shapes", str(shapes), "--backend", "cpu", "--trials", "8", "--report", str(tmp_path / "r.md"),
                  "--json", str(tmp_path / "r.json"), "--allow-noisy"], cache_dir)
    assert first.returncode == 0, first.stderr
    assert "Traceback" not in first.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [s["status"] for s in doc["shapes"]] == ["tuned", "tuned"]
    assert doc["summary"]["trials_run"] > 0 and not doc["summary"]["all_cache_hits"]
    for row in doc["shapes"]:
        assert row["strategy"] and row["time_s"] > 0 and row["gflops"] > 0
        assert row["heuristic"]["strategy"] and row["speedup_vs_heuristic"] > 0
        assert row["search"] in ("exhaustive", "tpe") and row["trials_run"] >= 1
        ev = row["evidence"]  # the evidence travels with the decision
        assert ev["verdict"] in ("separated", "incumbent", "indistinguishable") and ev["rounds"] >= 3
        assert ev["winner"]["strategy"] == row["strategy"] and ev["winner"]["median_s"] > 0
        assert ev["incumbent"]["strategy"] == row["heuristic"]["strategy"]
        assert row["load"]["level"] in ("quiet", "loaded", "heavy")
        assert row["load"]["source"] == ("proc" if sys.platform.startswith("linux") else row["load"]["source"])
    assert doc["info"]["timing_lock"]["acquired"] > 0 and doc["info"]["timing_lock"]["held"]
    report = (tmp_path / "r.md").read_text()
    assert "| shape | problem | status | strategy |" in report and "tiny3x3" in report and "tiny1d" in report
    assert "## Evidence" in report and "| evidence | load |" in report
    assert "tiny3x3" in first.stdout  # the table on the terminal

    again = _run(["--shapes", str(shapes), "--backend", "cpu", "--trials", "8", "--json", "--allow-noisy"], cache_dir)
    assert again.returncode == 0, again.stderr
    assert "all 2 shapes were cache hits (0 trials run)" in again.stderr  # human text moves to stderr with --json
    doc2 = json.loads(again.stdout)
    assert doc2["summary"]["trials_run"] == 0 and doc2["summary"]["all_cache_hits"]
    assert [s["status"] for s in doc2["shapes"]] == ["cached", "cached"]
    assert [s["strategy"] for s in doc2["shapes"]] == [s["strategy"] for s in doc["shapes"]]


def test_sigint_stops_after_the_current_trial_and_keeps_decisions(tmp_path: Path) -> None:
    entries = [{"name": f"s{i}", "x": [1, 2 + i, 6, 6], "w": [2, 2 + i, 3, 3]} for i in range(60)]
    shapes = _shapes(tmp_path / "many.json", entries)
    cache_dir = tmp_path / "cache"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-m", "gpuconv.autotune", "--shapes", str(shapes), "--backend", "cpu",
                             "--quiet", "--no-jax", "--cache-dir", str(cache_dir)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(cache_dir.glob("cpu-*.json"))
            if files and len(json.loads(files[0].read_text())["entries"]) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    (path,) = cache_dir.glob("cpu-*.json")
    stored = json.loads(path.read_text())["entries"]
    assert 1 <= len(stored) < len(entries)


@pytest.mark.parametrize("entries, expected", [
    ([SMALL[0], {"name": "bad", "x": [1, 4, 8], "w": [4, 4, 3, 3]}], "entry 1"),
    ([{"x": [1, 4, 8, 8], "w": [4, 4, 3, 3], "stride": 0}], "stride must be positive"),
    ([{"x": [1, 4, 8, 8], "w": "4x4x3x3"}], "field 'w'"),
    ([{"x": [1, 4, 8, 8], "w": [4, 4, 3, 3], "strdie": 2}], "unknown field"),
])
def test_bad_shapes_file_names_entry_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                entries: list[Any], expected: str) -> None:
    shapes = _shapes(tmp_path / "bad.json", entries)
    assert cli.main(["--shapes", str(shapes), "--backend", "cpu"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "error:" in err and "Traceback" not in err


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--shapes", "no-such-set", "--backend", "cpu"]) == 2
    assert "neither a file nor a shipped set" in capsys.readouterr().err
    assert cli.main(["--shapes", "resnet50", "--backend", "cpu", "--device", "0"]) == 2
    assert "cuda backend only" in capsys.readouterr().err
    assert cli.main(["--shapes", "resnet50", "--backend", "cpu", "--storage", str(tmp_path / "x" / "j.log")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["--shapes", "resnet50", "--trials", "0"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "--storage" in capsys.readouterr().out


def test_batch_and_dtype_overrides_with_shared_storage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shapes = _shapes(tmp_path / "one.json", SMALL[:1])
    args = ["--shapes", str(shapes), "--backend", "cpu", "--batch", "2", "--dtype", "float64", "--trials", "4",
            "--allow-noisy",
            "--storage", str(tmp_path / "journal.log"), "--cache-dir", str(tmp_path / "c"), "--quiet", "--no-jax",
            "--json", str(tmp_path / "out.json")]
    assert cli.main(args) == 0
    row = json.loads((tmp_path / "out.json").read_text())["shapes"][0]
    assert row["problem"]["n"] == 2 and row["problem"]["dtype"] == "float64"
    assert (tmp_path / "journal.log").stat().st_size > 0
    assert cli.main([*args, "--force"]) == 0  # re-tunes: the shared study already holds the budget
    row = json.loads((tmp_path / "out.json").read_text())["shapes"][0]
    assert row["status"] == "tuned" and row["trials_run"] == 0


def test_unwritable_cache_dir_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shapes = _shapes(tmp_path / "one.json", SMALL[:1])
    (tmp_path / "file").write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="cannot read the tuning cache"):  # the lookup, before tuning
        status = cli.main(["--shapes", str(shapes), "--backend", "cpu", "--trials", "2", "--quiet", "--no-jax",
                           "--cache-dir", str(tmp_path / "file" / "cache")])
    assert status == 1
    assert "cannot write the tuning cache" in capsys.readouterr().err
