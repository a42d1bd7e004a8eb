"""scripts/gpu_check.sh: the dry run on CPU (so that the GPU script cannot rot) and the goal arithmetic."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from varmem.benchmarks import gpu_check

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_dry_run_writes_results_and_a_summary_without_ray(tmp_path):
    out = tmp_path / "gpu_check"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), str(out), "--dry-run", "--test-jobs", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    assert summary == done.stdout[-len(summary):]  # printed, and kept
    assert "dry run" in summary and "goals (issue 15):" in summary
    meta = json.loads((out / "summary.json").read_text())
    assert meta["ray_imports"] == [] and meta["dry_run"] is True
    # every kernel test file was collected, none failed to import
    files = {f["file"]: f for f in meta["tests"]["files"]}
    assert set(files) == {p.name for p in gpu_check.test_files()} - {"test_extreme_values.py"} | (
        {"test_extreme_values.py"} if "test_extreme_values.py" in files else set())
    assert all(f["rc"] == 0 and f["collected"] > 0 for f in files.values()), files
    # the benchmarks wrote CSV and JSON, reference rows only, without errors
    for stem in ("memory_addressing", "vimco", "gaussian_attention"):
        csvs = list((out / "bench" / "main").glob(f"{stem}_cpu.csv"))
        assert len(csvs) == 1, stem
        rows = json.loads(csvs[0].with_suffix(".json").read_text())["rows"]
        assert rows and {r["provider"] for r in rows} == {"eager"} and not any(r.get("error") for r in rows)
        assert {r["mode"] for r in rows} == {"fwd", "bwd", "full"}
    env_json = json.loads((out / "environment.json").read_text())
    assert env_json["copy_gbps"] > 0 and env_json["device"] == "cpu"
    assert all(g["state"] == "n/a" for g in meta["goals"])  # no Triton rows in a dry run


def _row(op, provider, mode, ms, **kw):
    return {"op": op, "provider": provider, "mode": mode, "median_ms": ms, **kw}


def test_goals_from_rows():
    ma = dict(B=256, M=1_000_000, d=128, case="B=256 M=1000000 d=128")
    rows = [
        _row("memory_addressing", "triton", "fwd", 1.0, pct_of_copy=85.0, **ma),
        _row("memory_addressing", "triton", "fwd", 1.0, pct_of_copy=70.0, B=32, M=100_000, d=128, case="B=32 M=100000 d=128"),
        _row("memory_addressing", "triton", "fwd", 1.0, pct_of_copy=10.0, B=32, M=10_000, d=128, case="small M"),  # not a goal size
        _row("memory_addressing", "triton", "full", 2.0, **ma),
        _row("memory_addressing", "eager", "full", 7.0, **ma),
        _row("memory_addressing", "compile", "full", 2.5, **ma),
        {"op": "memory_addressing", "provider": "triton", "B": 256, "largest_m_that_fits": 1 << 26},
        {"op": "memory_addressing", "provider": "eager", "B": 256, "largest_m_that_fits": 1 << 22},
        _row("vimco_surrogate", "triton", "full", 0.02, B=32, K=4),
        _row("vimco_surrogate", "eager", "full", 0.2, B=32, K=4),
        _row("draw_step", "triton", "full", 1.0, B=256, C=1, H=28, W=28, N=12),
        _row("draw_step", "eager", "full", 4.0, B=256, C=1, H=28, W=28, N=12),
        _row("draw_step", "eager", "fwd", 4.0, B=256, C=1, H=28, W=28, N=12, error="OOM"),
    ]
    g = {x["goal"].split(",")[0] + x["goal"].split(",")[-1]: x for x in gpu_check.goals(rows)}
    pct = next(x for x in gpu_check.goals(rows) if "% of copy" in x["goal"])
    assert pct["value"] == 70.0 and pct["state"] == "missed" and "B=32 M=100000" in pct["detail"]
    states = {x["goal"]: (x["value"], x["state"]) for x in gpu_check.goals(rows)}
    assert states["memory_addressing fwd+bwd B=256 M=1e6, speed-up over eager"] == (3.5, "met")
    assert states["memory_addressing fwd+bwd B=256 M=1e6, speed-up over torch.compile"] == (1.25, "missed")
    assert states["memory_addressing largest M at B=256, triton over eager"] == (16.0, "met")
    assert states["vimco_surrogate 32x4 fwd+bwd, speed-up over eager"][1] == "met"
    assert states["vimco 32x4 fwd+bwd, speed-up over eager"] == (None, "n/a")
    assert states["Gaussian read+write per DRAW step (256x1x28x28, N=12) full, speed-up over eager"] == (4.0, "missed")
    assert states["Gaussian read+write per DRAW step (256x1x28x28, N=12) fwd, speed-up over eager"] == (None, "n/a")
    assert g  # every goal has a distinct name


def test_junit_counts_by_dtype(tmp_path):
    xml = tmp_path / "r.xml"
    xml.write_text(
        '<testsuites><testsuite>'
        '<testcase classname="t" name="test_a[torch.float16-3]"/>'
        '<testcase classname="t" name="test_a[torch.bfloat16-3]"><failure message="x"/></testcase>'
        '<testcase classname="t" name="test_b[torch.float32]"><skipped/></testcase>'
        '<testcase classname="t" name="test_c"/>'
        '</testsuite></testsuites>')
    c = gpu_check.junit_counts(xml)
    assert (c["passed"], c["failed"], c["skipped"]) == (2, 1, 1)
    assert c["by_dtype"] == {"float16": {"passed": 1, "failed": 0, "skipped": 0},
                             "bfloat16": {"passed": 0, "failed": 1, "skipped": 0},
                             "float32": {"passed": 0, "failed": 0, "skipped": 1},
                             "other": {"passed": 1, "failed": 0, "skipped": 0}}
    assert c["failures"] == ["t::test_a[torch.bfloat16-3]"]
    missing = gpu_check.junit_counts(tmp_path / "none.xml")
    assert missing["failed"] == 1 and "no JUnit report" in missing["failures"][0]
