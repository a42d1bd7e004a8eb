"""The prepared GPU check: kernel tests on CUDA, then the kernel benchmarks, one summary screen.

    scripts/gpu_check.sh OUT_DIR              # on a CUDA machine (H100/H200): under 8 minutes
    scripts/gpu_check.sh OUT_DIR --dry-run    # on a CPU: tiny sizes, reference backend (CI runs this)

Needs torch (2.11-2.13), triton (3.6-3.9), numpy, pytest (hypothesis for test_extreme_values);
not Ray: varmem is used from the checkout (nothing is installed), and the check fails if anything
imports ``ray`` (the test processes get a ``ray`` that refuses to import).

Steps, each inside what is left of ``--budget-s`` (default 450 s), everything under OUT_DIR:

1. ``environment.json``: GPU, versions, the device-to-device copy bandwidth (the anchor of
   every "% of copy").
2. Kernel tests on CUDA: ``pytest`` of each ``tests/kernels/test_*.py`` (not the CPU-only
   ahead-of-time compile test), several files at a time: float32 and float64 in every test, float16 and
   bfloat16 in the ``gpu``-marked tests, each against a float64 oracle with the tolerances of
   its file's ``TOL`` table. ``tests/<file>.xml`` (JUnit) and ``.log``; ``tests.json`` counts by file and dtype.
   The dry run collects the same tests without running them (the interpreter would take minutes).
3. Kernel benchmarks (``benchmarks/bench_*.py``), CSV and JSON under ``bench/``:
   memory_addressing fwd/bwd/full at B in {32, 256}, d = 128, M in {1e4, 1e5, 1e6, 1e7} against
   eager PyTorch (triton and eager on the whole grid; torch.compile at M = 1e6, where its compile
   time is paid once), the largest M that fits at B = 256 (``--max-m``); VIMCO at 32x4 and 1e6x64;
   Gaussian read+write at DRAW sizes. The dry run runs the reference ("eager") on tiny sizes.
4. ``summary.txt`` (printed) and ``summary.json``: tests passed/failed by dtype, and the goals of
   issue 15 with the measured values.
"""
from __future__ import annotations

import argparse
import importlib.abc
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DTYPE_TAGS = ("bfloat16", "float16", "float32", "float64")  # bfloat16 first: it contains "float16"
# Test files that do not belong on the GPU run: the ahead-of-time compile runs on CPU in CI.
SKIP_TEST_FILES = ("test_compile.py",)


# ----------------------------------------------------------------------------------------------
# No Ray
# ----------------------------------------------------------------------------------------------


class _NoRay(importlib.abc.MetaPathFinder):
    """Refuses ``import ray`` and remembers who tried (the check runs where Ray is not installed)."""

    attempts: list[str] = []

    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            self.attempts.append(name)
            raise ImportError(f"gpu_check: {name!r} was imported; the GPU check must run without Ray")
        return None


def _no_ray_dir(out: Path) -> Path:
    """A folder whose ``ray`` package refuses to import, for the PYTHONPATH of the test processes."""
    d = out / ".no_ray"
    (d / "ray").mkdir(parents=True, exist_ok=True)
    (d / "ray" / "__init__.py").write_text(
        'raise ImportError("gpu_check: ray was imported by a kernel test; the GPU check runs without Ray")\n'
    )
    return d


# ----------------------------------------------------------------------------------------------
# Steps
# ----------------------------------------------------------------------------------------------


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def test_files() -> list[Path]:
    return [p for p in sorted((REPO / "tests" / "kernels").glob("test_*.py")) if p.name not in SKIP_TEST_FILES]


def run_tests(out: Path, *, dry_run: bool, budget: Budget, jobs: int, python: str) -> dict[str, Any]:
    """pytest of each kernel test file in its own process; returns counts by file and by dtype."""
    tdir = out / "tests"
    tdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_no_ray_dir(out)), str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"  # as tests/conftest.py sets it without a GPU
    files = test_files()
    notes: list[str] = []
    try:
        import hypothesis  # noqa: F401
    except ImportError:
        files = [f for f in files if f.name != "test_extreme_values.py"]
        notes.append("test_extreme_values.py not run: hypothesis is not installed")

    def one(path: Path) -> dict[str, Any]:
        xml = tdir / f"{path.stem}.xml"
        log = tdir / f"{path.stem}.log"
        cmd = [python, "-m", "pytest", str(path), "-q", "-p", "no:cacheprovider", f"--junitxml={xml}",
               "-o", "junit_family=xunit1"]
        if dry_run:
            cmd.append("--collect-only")
        timeout = max(10.0, budget.left() - 5)
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
            log.write_text(done.stdout + done.stderr)
            rc = done.returncode
            text = done.stdout
        except subprocess.TimeoutExpired as exc:
            log.write_text(f"timed out after {timeout:.0f} s\n{exc.stdout or ''}")
            rc, text = "timeout", ""
        res = {"file": path.name, "rc": rc, "seconds": round(time.monotonic() - t0, 1)}
        if dry_run:
            res["collected"] = sum(1 for line in text.splitlines() if "::" in line)
        else:
            res.update(junit_counts(xml))
        return res

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, files))
    summary = {"files": results, "notes": notes, "dry_run": dry_run}
    if not dry_run:
        summary["by_dtype"] = merge_dtype_counts([r.get("by_dtype", {}) for r in results])
    (out / "tests.json").write_text(json.dumps(summary, indent=1))
    return summary


def junit_counts(xml: Path) -> dict[str, Any]:
    """passed/failed/skipped overall and by the dtype named in each test id, from a JUnit XML file."""
    counts = {"passed": 0, "failed": 0, "skipped": 0, "by_dtype": {}, "failures": []}
    if not xml.exists():
        counts["failed"] += 1
        counts["failures"].append(f"{xml.name}: no JUnit report (collection error or crash; see the .log)")
        return counts
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = case.get("name", "")
        if case.find("skipped") is not None:
            outcome = "skipped"
        elif case.find("failure") is not None or case.find("error") is not None:
            outcome = "failed"
            counts["failures"].append(f"{case.get('classname', '')}::{name}")
        else:
            outcome = "passed"
        counts[outcome] += 1
        tags = [t for t in DTYPE_TAGS if t in name] or ["other"]
        for t in tags[:1]:
            d = counts["by_dtype"].setdefault(t, {"passed": 0, "failed": 0, "skipped": 0})
            d[outcome] += 1
    return counts


def merge_dtype_counts(parts: Sequence[dict[str, dict[str, int]]]) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for part in parts:
        for dtype, c in part.items():
            t = total.setdefault(dtype, {"passed": 0, "failed": 0, "skipped": 0})
            for k, v in c.items():
                t[k] += v
    return total


def bench_plan(dry_run: bool) -> list[tuple[str, str, list[str]]]:
    """(stem, sub-folder, arguments) of each benchmark run."""
    if dry_run:
        common = ["--device", "cpu", "--providers", "eager", "--modes", "fwd,bwd,full", "--quick"]
        return [
            ("memory_addressing", "main", common + ["--sizes-b", "4", "--sizes-m", "64,256"]),
            ("vimco", "main", common + ["--cases", "8x4,64x16"]),
            ("gaussian_attention", "main", common + ["--cases", "4,1,28,28,12"]),
        ]
    cuda = ["--device", "cuda", "--modes", "fwd,bwd,full"]
    return [
        ("memory_addressing", "main", cuda + ["--providers", "triton,eager", "--sizes-b", "32,256",
                                              "--sizes-m", "1e4,1e5,1e6,1e7"]),
        ("memory_addressing", "compile", cuda + ["--providers", "compile", "--sizes-b", "32,256", "--sizes-m", "1e6"]),
        ("memory_addressing", "max_m", ["--device", "cuda", "--providers", "triton,eager", "--max-m", "--max-m-batch", "256"]),
        ("vimco", "main", cuda + ["--providers", "triton,eager,compile", "--cases", "32x4,1e6x64"]),
        ("gaussian_attention", "main", cuda + ["--providers", "triton,eager,compile",
                                               "--cases", "256,1,28,28,12;256,3,32,32,12"]),
        ("gaussian_attention", "more", cuda + ["--providers", "triton,eager", "--cases", "4096,1,28,28,5;64,1,105,105,12"]),
    ]


def run_benchmarks(out: Path, *, dry_run: bool, budget: Budget) -> dict[str, Any]:
    import importlib

    results: dict[str, Any] = {"runs": [], "rows": []}
    for stem, sub, argv in bench_plan(dry_run):
        if budget.left() < 20:
            results["runs"].append({"stem": stem, "sub": sub, "skipped": "time budget spent"})
            continue
        module = importlib.import_module(f"varmem.benchmarks.bench_{stem}")
        parser = argparse.ArgumentParser(prog=f"bench_{stem}")
        module.add_arguments(parser)
        args = parser.parse_args(argv + ["--out-dir", str(out / "bench" / sub)])
        t0 = time.monotonic()
        try:
            rows = module.run(args)
            status = "ok"
        except (Exception, SystemExit) as exc:  # one failing benchmark must not stop the others
            rows, status = [], f"{type(exc).__name__}: {exc}"
        results["runs"].append({"stem": stem, "sub": sub, "status": status, "seconds": round(time.monotonic() - t0, 1)})
        for r in rows:
            results["rows"].append({**r, "bench": stem, "sub": sub})
    return results


# ----------------------------------------------------------------------------------------------
# Goals (issue 15) and the summary
# ----------------------------------------------------------------------------------------------


def _median(rows, **match) -> float | None:
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()) and r.get("median_ms") is not None and not r.get("error"):
            return float(r["median_ms"])
    return None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def goals(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each goal of issue 15: the measured value(s), the target, and met / missed / n/a."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float, unit: str, detail: str = "") -> None:
        state = "n/a" if value is None else ("met" if value >= target else "missed")
        out.append({"goal": name, "value": value, "target": target, "unit": unit, "state": state, "detail": detail})

    ma = [r for r in rows if r.get("op") == "memory_addressing"]
    fwd = [r for r in ma if r.get("provider") == "triton" and r.get("mode") == "fwd" and not r.get("error")
           and r.get("B", 0) <= 256 and r.get("d") == 128 and r.get("M", 0) >= 100_000 and r.get("pct_of_copy") is not None]
    worst = min(fwd, key=lambda r: r["pct_of_copy"]) if fwd else None
    add("memory_addressing fwd, % of copy bandwidth (worst of B<=256, d=128, M>=1e5)",
        None if worst is None else float(worst["pct_of_copy"]), 80.0, "%",
        "" if worst is None else f"worst at {worst['case']}; " + ", ".join(f"{r['case']}: {r['pct_of_copy']:.0f}%" for r in fwd))
    t = _median(ma, provider="triton", mode="full", B=256, M=1_000_000)
    add("memory_addressing fwd+bwd B=256 M=1e6, speed-up over eager",
        _ratio(_median(ma, provider="eager", mode="full", B=256, M=1_000_000), t), 3.0, "x")
    add("memory_addressing fwd+bwd B=256 M=1e6, speed-up over torch.compile",
        _ratio(_median(ma, provider="compile", mode="full", B=256, M=1_000_000), t), 1.5, "x")
    largest = {r["provider"]: r.get("largest_m_that_fits") for r in ma if "largest_m_that_fits" in r and r.get("B") == 256}
    add("memory_addressing largest M at B=256, triton over eager", _ratio(largest.get("triton"), largest.get("eager")), 10.0, "x",
        f"largest M: {largest}" if largest else "")
    vi = [r for r in rows if r.get("op") in ("vimco", "vimco_surrogate")]
    for op in ("vimco_surrogate", "vimco"):
        add(f"{op} 32x4 fwd+bwd, speed-up over eager",
            _ratio(_median(vi, op=op, provider="eager", mode="full", B=32, K=4), _median(vi, op=op, provider="triton", mode="full", B=32, K=4)),
            5.0, "x")
    ga = [r for r in rows if r.get("op") == "draw_step"]
    for mode in ("fwd", "full"):
        m = dict(op="draw_step", mode=mode, B=256, C=1, H=28, W=28, N=12)
        add(f"Gaussian read+write per DRAW step (256x1x28x28, N=12) {mode}, speed-up over eager",
            _ratio(_median(ga, provider="eager", **m), _median(ga, provider="triton", **m)), 5.0, "x")
    return out


def render_summary(env: dict[str, Any], tests: dict[str, Any] | None, bench: dict[str, Any] | None,
                   goal_rows: Sequence[dict[str, Any]], seconds: float, dry_run: bool) -> str:
    lines = [f"varmem gpu_check{' (dry run: CPU, reference backend, tiny sizes)' if dry_run else ''} "
             f"on {env.get('device_name')} - torch {env.get('torch')}, triton {env.get('triton')}, "
             f"ray {env.get('ray') or 'not installed'}; {seconds:.0f} s",
             f"copy bandwidth {env.get('copy_gbps', float('nan')):.1f} GB/s (read + written)"]
    if tests is not None:
        if tests.get("dry_run"):
            n = sum(f.get("collected", 0) for f in tests["files"])
            bad = [f["file"] for f in tests["files"] if f["rc"] not in (0,)]
            lines.append(f"tests: {n} kernel tests collected in {len(tests['files'])} files (not run in a dry run)"
                         + (f"; collection failed: {', '.join(bad)}" if bad else ""))
        else:
            p = sum(f.get("passed", 0) for f in tests["files"])
            fl = sum(f.get("failed", 0) for f in tests["files"])
            sk = sum(f.get("skipped", 0) for f in tests["files"])
            lines.append(f"tests on CUDA: {p} passed, {fl} failed, {sk} skipped")
            for dtype, c in sorted(tests.get("by_dtype", {}).items()):
                lines.append(f"  {dtype:9s} {c['passed']:4d} passed {c['failed']:3d} failed {c['skipped']:3d} skipped")
            for f in tests["files"]:
                for name in f.get("failures", [])[:3]:
                    lines.append(f"  FAILED {name}")
        for note in tests.get("notes", []):
            lines.append(f"  note: {note}")
    if bench is not None:
        for run in bench["runs"]:
            if run.get("skipped") or run.get("status") != "ok":
                lines.append(f"bench {run['stem']}/{run['sub']}: {run.get('skipped') or run.get('status')}")
        errors = [r for r in bench["rows"] if r.get("error")]
        lines.append(f"benchmarks: {len(bench['rows'])} rows ({len(errors)} with an error) in {', '.join(sorted({r['stem'] + '/' + r['sub'] for r in bench['runs']}))}")
    lines.append("goals (issue 15):")
    for g in goal_rows:
        v = "-" if g["value"] is None else f"{g['value']:.2f}{g['unit']}"
        lines.append(f"  [{g['state']:6s}] {g['goal']}: {v} (goal >= {g['target']:g}{g['unit']})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--dry-run", action="store_true", help="CPU: collect the tests, reference benchmarks at tiny sizes")
    p.add_argument("--budget-s", type=float, default=450.0, help="time for the whole check (default 450 s)")
    p.add_argument("--test-jobs", type=int, default=4, help="test files run at once (default 4)")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--skip-bench", action="store_true")
    args = p.parse_args(argv)
    no_ray = _NoRay()
    sys.meta_path.insert(0, no_ray)
    t0 = time.monotonic()
    budget = Budget(args.budget_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    import torch

    from varmem.benchmarks import harness

    if not args.dry_run and not torch.cuda.is_available():
        p.error("no CUDA device: run on a GPU machine, or pass --dry-run")
    device = torch.device("cpu" if args.dry_run else "cuda")
    env = harness.environment(device)
    env["copy_gbps"] = harness.copy_bandwidth_gbps(device)
    (out / "environment.json").write_text(json.dumps(env, indent=1, default=str))
    tests = None if args.skip_tests else run_tests(out, dry_run=args.dry_run, budget=budget, jobs=args.test_jobs,
                                                   python=sys.executable)
    bench = None if args.skip_bench else run_benchmarks(out, dry_run=args.dry_run, budget=budget)
    goal_rows = goals(bench["rows"] if bench else [])
    seconds = time.monotonic() - t0
    text = render_summary(env, tests, bench, goal_rows, seconds, args.dry_run)
    if no_ray.attempts or "ray" in sys.modules:
        text += f"ERROR: ray was imported ({sorted(set(no_ray.attempts))})\n"
    (out / "summary.txt").write_text(text)
    (out / "summary.json").write_text(json.dumps({"environment": env, "tests": tests, "goals": goal_rows,
                                                  "bench_runs": bench["runs"] if bench else None,
                                                  "seconds": seconds, "dry_run": args.dry_run,
                                                  "ray_imports": no_ray.attempts}, indent=1, default=str))
    print(text, end="")
    failed_tests = tests is not None and any(f["rc"] != 0 for f in tests["files"])
    return 1 if (failed_tests or no_ray.attempts) else 0


if __name__ == "__main__":
    raise SystemExit(main())
