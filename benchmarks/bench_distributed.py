"""Training throughput in-process and on Ray Train, the data-wait share and the time to the first step.

Each case is one ``python -m varmem.distributed.train`` process, as a user runs it (a Ray case starts its
own local cluster, so the time to the first step includes ``ray.init``):

* ``in-process``  ``--workers 0``: no Ray;
* ``ray-1``       ``--workers 1``: the same loop in one Ray Train worker (no all-reduce; a report per log);
* ``ray-2``       ``--workers 2``: DDP over gloo, twice the global batch.

Per case: steady-state steps/s and episodes/s (from the rows of ``metrics.jsonl`` after the first
logging window: (last step − first logged step) / (elapsed time between them), so reports to Ray
and everything else the loop does are in it; validation and checkpoints only at the end), the
median share of step time spent waiting for episodes (``data_wait``), rank 0's CPU time per step
(all its threads: what a step costs whatever else runs on the machine), the wall time from starting
the command to the end of its first step, and the total wall time. Goals: Ray at 1 worker within
10% of in-process at steady state; data wait < 5%.

    python -m varmem.benchmarks.bench_distributed [--config configs/smoke_tiny.yaml] [--steps 300] [--cases in-process,ray-1,ray-2]
    varmem bench distributed ...

The machine's 1-minute load average is recorded before and after each case: on a shared machine
the numbers move with it.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from varmem.benchmarks.harness import RESULTS_DIR, environment, format_table, progress, write_results

REPO = Path(__file__).resolve().parents[1]
CASES = {"in-process": 0, "ray-1": 1, "ray-2": 2}
SMOKE_DATA = ("--source", "strokes", "--classes", "60", "--images-per-class", "10", "--seed", "0")
COLUMNS = ("case", "workers", "global_batch", "steps_per_s", "episodes_per_s", "vs_in_process", "cpu_ms_per_step", "data_wait",
           "first_step_s", "wall_s", "steps", "load_before", "load_after")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=REPO / "configs" / "smoke_tiny.yaml", help="run config to train")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset directory (default: the config's data.dir; for smoke_tiny built into --workdir if missing)")
    p.add_argument("--steps", type=int, default=300, help="steps per case")
    p.add_argument("--log-every", type=int, default=10, help="steps per logging window")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of every training process (train.threads; a Ray worker of 1 CPU gets 1 anyway)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma list from {','.join(CASES)}")
    p.add_argument("--repeats", type=int, default=3,
                   help="runs per case, interleaved (in-process, ray-1, ray-2, in-process, ...); the table shows medians")
    p.add_argument("--workdir", type=Path, default=None, help="where runs (and the smoke dataset) go (default: a temp dir)")
    p.add_argument("--out-dir", type=Path, default=None, help="where CSV/JSON go (default: benchmarks/results)")
    p.add_argument("--timeout", type=float, default=900, help="seconds per case")


def run_case(name: str, workers: int, args: argparse.Namespace, data: Path, workdir: Path, repeat: int) -> dict[str, Any]:
    run_dir = workdir / f"run-{name}-{repeat}"
    log = workdir / f"{name}-{repeat}.log"
    cmd = [sys.executable, "-m", "varmem.distributed.train", "--config", str(args.config), "--out", str(run_dir), "--overwrite",
           "--steps", str(args.steps), "--workers", str(workers), "--set", f"data.dir={data}",
           "--set", f"train.log_every={args.log_every}", "--set", "train.val_every=0",  # one small validation, at the end
           "--set", "train.val_episodes=2", "--set", "train.val_samples=10",
           "--set", f"train.checkpoint_every={args.steps}", "--set", "run.tensorboard=true",
           "--set", f"train.threads={args.threads}"]
    progress(f"{name}, run {repeat + 1} of {args.repeats}: output in {log}")
    load_before = os.getloadavg()[0]
    t0 = time.time()
    with open(log, "w") as f:
        f.write(" ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
    wall = time.time() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    final = json.loads((run_dir / "final_metrics.json").read_text())
    rows = [r for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "train"]
    first, last = rows[0], rows[-1]  # the first window holds the warm-up
    steps_per_s = (last["step"] - first["step"]) / (last["elapsed_s"] - first["elapsed_s"])
    # rank 0's CPU time per step (all its threads: prefetch, Ray's): what the step costs, whatever the load
    cpu_ms = 1e3 * (last["process_cpu_s"] - first["process_cpu_s"]) / (last["step"] - first["step"])
    batch = final["episodes_per_step"]
    return {
        "case": name, "repeat": repeat, "workers": workers, "global_batch": batch, "steps": args.steps,
        "steps_per_s": steps_per_s, "episodes_per_s": steps_per_s * batch, "cpu_ms_per_step": cpu_ms,
        "data_wait": statistics.median(r["data_wait"] for r in rows[1:]) if len(rows) > 1 else first["data_wait"],
        "first_step_s": final["first_step_at"] - t0, "wall_s": wall,
        "load_before": load_before, "load_after": os.getloadavg()[0], "log": str(log),
    }


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}: choose from {', '.join(CASES)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="varmem-bench-distributed-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        from varmem.distributed.config import RunConfig

        data = Path(RunConfig.from_yaml(args.config).data.dir)
        data = data if data.is_absolute() else REPO / data
        if not (data / "manifest.json").is_file() and args.config.name == "smoke_tiny.yaml":
            data = workdir / "smoke_tiny"
            if not (data / "manifest.json").is_file():
                progress(f"building the smoke dataset in {data}")
                subprocess.run([sys.executable, "-m", "varmem.cli", "data", "build", *SMOKE_DATA, "--out", str(data),
                                "--quiet"], cwd=REPO, check=True)

    rows = [run_case(name, CASES[name], args, data, workdir, repeat) for repeat in range(args.repeats) for name in cases]
    config = str(args.config.relative_to(REPO) if args.config.is_relative_to(REPO) else args.config)
    for r in rows:
        r["config"] = config
    summary = []
    for name in cases:  # medians over the repeats
        runs = [r for r in rows if r["case"] == name]
        med = {k: statistics.median(r[k] for r in runs) for k in ("steps_per_s", "episodes_per_s", "cpu_ms_per_step", "data_wait",
                                                                  "first_step_s", "wall_s", "load_before", "load_after")}
        summary.append({**runs[0], **med, "repeat": f"median of {len(runs)}", "config": config})
    base = next((r for r in summary if r["case"] == "in-process"), None)
    for r in summary:  # episodes/s against in-process: 1 − overhead at 1 worker, the DDP speed-up at 2
        r["vs_in_process"] = r["episodes_per_s"] / base["episodes_per_s"] if base else None
    print(format_table(summary, COLUMNS))
    for r in summary:
        if base is not None and r["case"] == "ray-1":
            print(f"Ray overhead at 1 worker (steady state): {100 * (1 - r['steps_per_s'] / base['steps_per_s']):.1f}% (goal ≤ 10%)")
    waits = ", ".join(f"{r['case']} {100 * r['data_wait']:.1f}%" for r in summary)
    print(f"data wait (median share of step time): {waits} (goal < 5%)")
    env = {**environment("cpu"), "ray_train_health_check_interval_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")}
    out = (args.out_dir or RESULTS_DIR) / f"distributed_{Path(args.config).stem}_cpu"
    csv_path, json_path = write_results(rows, out, env=env, extra={"config": config, "steps": args.steps,
                                                                   "log_every": args.log_every, "summary": summary})
    progress(f"wrote {csv_path} and {json_path}; runs and logs in {workdir}")
    return summary


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_distributed", description=__doc__.split("\n")[0])
    add_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
