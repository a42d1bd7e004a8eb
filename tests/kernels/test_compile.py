"""Ahead-of-time compile of every Triton launch for sm_80 (A100) and sm_90 (H100/H200), on the CPU.

``python -m varmem.kernels.resources --check`` runs once (a subprocess: the kernels must be
JITFunctions, not the interpreter's) over every launch configuration the dispatch code chooses
for the models' and benchmarks' sizes, in every dtype. A launch whose Triton hash (kernel source,
signature, constexprs, options, target, triton and ptxas versions) is in kernels/RESOURCES.csv
reuses the committed figures; every other launch is compiled, and one launch of every kernel
per target is always compiled for real (``--verify-sample``) and must give the committed figures.
The tests fail on a compile error, shared memory over the target's per-block limit, registers x
threads over an SM's 65,536, register spills not accepted in ``ACCEPTED_SPILLS``, or a stale table.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
resources = importlib.import_module("varmem.kernels.resources")


@pytest.fixture(scope="module")
def aot(tmp_path_factory):
    out = tmp_path_factory.mktemp("aot") / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-m", "varmem.kernels.resources", "--check", "--verify-sample", "--probe-oversized",
         "--json", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )
    assert out.exists(), f"resources --check wrote no JSON (rc {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    result = json.loads(out.read_text())
    result["rc"], result["stdout"] = done.returncode, done.stdout
    return result


def test_every_kernel_compiles_for_both_targets(aot):
    rows = aot["rows"]
    errors = [f"{r['target']} {r['kernel']} {r['dtype']} [{r['config']}]: {r['error']}" for r in rows if r.get("error")]
    assert not errors, "\n".join(errors)
    kernels = _kernel_names()
    for target in resources.TARGETS:
        compiled = {r["kernel"] for r in rows if r["target"] == target}
        assert compiled == kernels, f"{target}: kernels never launched by any case: {sorted(kernels - compiled)}"
        dtypes = {(r["kernel"], r["dtype"]) for r in rows if r["target"] == target}
        missing = [(k, d) for k in kernels for d in resources.DTYPES if (k, d) not in dtypes]
        assert not missing, f"{target}: no launch in these dtypes: {missing}"


def _kernel_names() -> set[str]:
    """Every ``_*_kernel`` defined with @triton.jit in kernels/*.py (read from the source, no import)."""
    import re

    names = set()
    for path in (REPO / "kernels").glob("*.py"):
        names |= set(re.findall(r"@triton\.jit\s*\ndef (_\w+_kernel)\(", path.read_text()))
    return names


def test_shared_memory_and_registers_within_limits(aot):
    over = [f for f in aot["failures"] if "shared memory" in f or "registers x" in f or "compile error" in f]
    assert not over, "\n".join(over)
    for r in aot["rows"]:
        assert r["shared_bytes"] <= resources.TARGETS[r["target"]].max_shared, r


def test_no_register_spills_unless_accepted(aot):
    spills = [f for f in aot["failures"] if "register spills" in f]
    assert not spills, f"{len(spills)} launches spill registers:\n" + "\n".join(spills[:40])
    assert all(r["status"] in ("ok", "accepted") for r in aot["rows"])


def test_committed_table_is_current_and_reused_figures_are_real(aot):
    assert not aot["table_problems"], "\n".join(aot["table_problems"][:30])
    verify = aot["verify"]["rows"]
    assert {(r["target"], r["kernel"]) for r in verify} == {(t, k) for t in resources.TARGETS for k in _kernel_names()}
    assert all(r.get("from") == "compiled" and not r.get("error") for r in verify), verify


def test_oversized_gaussian_backward_is_caught_before_a_gpu_sees_it(aot):
    """The Gaussian read backward at N = 64 on a 128x128 float64 image: Triton compiles it, only a launch on
    an H100 would fail ("out of resource: shared memory"); the check refuses it on the CPU."""
    row = aot["oversized"]
    assert row["kernel"] == "_gaussian_read_bwd_kernel" and row["dtype"] == "float64"
    assert "(N=64 H=128 W=128)" in row["config"]
    assert not row.get("error"), row
    assert row["shared_bytes"] > 232_448
    assert row["status"] == "FAIL" and "shared memory" in row["reason"] and "232,448 B per block on sm_90" in row["reason"]
    assert resources.failures([row]) == [
        f"sm_90 _gaussian_read_bwd_kernel float64 [{row['config']}] {row['specialization']}: {row['reason']}"]
    # the dispatch never sends it to Triton
    import torch

    ga = importlib.import_module("varmem.kernels.gaussian_attention")
    assert ga.size_reason(torch.float64, 64, 128, 128) is not None
    assert ga.size_reason(torch.float32, 64, 28, 28) is not None  # N > TRITON_MAX_N


def test_status_rules():
    base = {"target": "sm_80", "kernel": "_k", "dtype": "float32", "config": "B=16 w4 s2", "specialization": "",
            "shared_bytes": 1000, "shared_limit": 166_912, "registers": 100, "threads": 128, "spill_stores": 0,
            "spill_loads": 0}
    assert resources.status(base) == ("ok", "")
    assert resources.status({**base, "shared_bytes": 166_913})[0] == "FAIL"
    assert resources.status({**base, "shared_bytes": 166_912})[0] == "ok"
    assert "65,536" in resources.status({**base, "registers": 255, "threads": 512})[1]
    state, reason = resources.status({**base, "spill_stores": 8, "spill_loads": 8})
    assert state == "FAIL" and "ACCEPTED_SPILLS" in reason
    key = ("sm_80", "_k", "float32", "B=16 w4 s2")
    resources.ACCEPTED_SPILLS[key] = "measured: no slower"
    try:
        assert resources.status({**base, "spill_stores": 8, "spill_loads": 8}) == ("accepted", "spills accepted: measured: no slower")
    finally:
        del resources.ACCEPTED_SPILLS[key]
    assert resources.status({**base, "error": "CompilationError: x"})[0] == "FAIL"


def test_ptxas_log_parsing():
    log = ("ptxas info    : Function properties for _k\n    16 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n"
           "ptxas info    : Used 168 registers, used 1 barriers, 16 bytes cumulative stack size\n")
    assert resources.parse_ptxas(log) == {"registers": 168, "stack_bytes": 16, "spill_stores": 8, "spill_loads": 12}
    with pytest.raises(ValueError, match="registers"):
        resources.parse_ptxas("ptxas info: nothing")
