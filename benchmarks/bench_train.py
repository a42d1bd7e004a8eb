"""Training throughput of VMA, its baselines (VAE, soft attention) and the sequential family (Rezende et al.
2016 and DRAW, at the papers' sizes: ``configs/sequential_strokes.yaml``, ``configs/draw_strokes.yaml``; their
Gaussian read/write attention is what the ``triton`` rows change), kernels on and off.

One row per (config, backend): the median and 20/80 quantiles of the time of one training step,
steps/s (1 / median), episodes/s (episodes per step × steps/s), CPU time per step (all threads of
the process), torch threads, peak RSS (CPU) or peak CUDA memory, the share of the run spent
waiting for episodes, which kernel ops dispatched to which backend, and the machine's 1-minute
load average before and after the case.

The step is the trainer's own: each case runs ``varmem.distributed.train_loop.train`` with a
:class:`~varmem.distributed.train_loop.TrainContext` whose ``reduce_gradients`` hook (called once per
step, after backward) records the time. The interval between two calls is one whole iteration
of the loop: clipping and the Adam step of one step, then the next step's episodes, objective
(``training_objective``) and backward. The first ``--warmup`` intervals are left out. Validation
and the checkpoint happen once, after the last timed step.

Backends (``varmem.kernels.dispatch``):

* ``reference``           the PyTorch path (``VARMEM_KERNELS=reference``);
* ``triton``              the fused Triton kernels (``VARMEM_KERNELS=triton``) on CUDA;
* ``triton-interpreter``  the same kernels on CPU tensors under ``TRITON_INTERPRET=1``: a
  correctness path whose speed says nothing about a GPU's (each kernel program runs as Python
  over numpy), so it gets ``--interpreter-steps`` steps.

Every case runs in its own process, so that ``TRITON_INTERPRET`` is set before ``kernels`` is
imported, the peak RSS is the case's own and one case's threads or allocator do not carry over.
A backend that cannot run says why in the row's ``reason`` (status ``unavailable`` or ``failed``).

    python -m varmem.benchmarks.bench_train [--configs configs/vma_strokes.yaml ...] [--backends reference,triton]
        [--steps 40] [--warmup 5] [--threads 1] [--device cpu|cuda] [--out benchmarks/results/train_cpu]
    varmem bench train ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from varmem.benchmarks.harness import (RESULTS_DIR, default_out, environment, format_table, progress, quantile_summary, synchronize,
                                write_results)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("configs/vma_strokes.yaml", "configs/vae_strokes.yaml", "configs/softattn_strokes.yaml",
                   "configs/sequential_strokes.yaml", "configs/draw_strokes.yaml")
BACKENDS = ("reference", "triton")
KERNEL_MODULES = ("varmem.kernels.memory_addressing", "varmem.kernels.memory_read", "varmem.kernels.vimco", "varmem.kernels.gaussian_attention")
COLUMNS = ("config", "model", "backend", "status", "threads", "steps", "median_ms", "q20_ms", "q80_ms", "steps_per_s",
           "episodes_per_s", "vs_reference", "cpu_ms_per_step", "peak_rss_mb", "peak_cuda_mb", "data_wait",
           "load_before", "load_after")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="run configs to train (space or comma separated; default: VMA, VAE, soft attention, the sequential "
                        "model and DRAW on strokes26)")
    p.add_argument("--backends", default=",".join(BACKENDS),
                   help="comma list from reference,triton (triton on CPU runs in the Triton interpreter)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the model trains")
    p.add_argument("--steps", type=int, default=40, help="timed steps per case")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    p.add_argument("--interpreter-steps", type=int, default=3, help="timed steps of a triton-interpreter case")
    p.add_argument("--interpreter-warmup", type=int, default=1, help="untimed steps of a triton-interpreter case")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (train.threads; default: the config's, 0 = torch's default)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override applied to every config, e.g. data.dir=data/strokes26 (repeatable)")
    p.add_argument("--out", type=Path, default=None,
                   help="output path without suffix: OUT.csv and OUT.json (default: benchmarks/results/train_<device>)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the case runs and logs go, kept (default: a temp dir, removed unless a case failed)")
    p.add_argument("--timeout", type=float, default=600, help="seconds per case")


# --- one case, in its own process -------------------------------------------------------------


def _case_backend(backend: str, device: str) -> str:
    """The row's label: Triton on CPU tensors is the interpreter."""
    return "triton-interpreter" if backend == "triton" and device == "cpu" else backend


def _case_env(backend: str, device: str) -> dict[str, str]:
    """The child's environment: the backend forced, ``TRITON_INTERPRET`` only for the interpreter."""
    env = dict(os.environ, VARMEM_KERNELS=backend)
    env.pop("TRITON_INTERPRET", None)
    if _case_backend(backend, device) == "triton-interpreter":
        env["TRITON_INTERPRET"] = "1"
    return env


def _record_dispatch(served: dict[str, set[str]]) -> None:
    """Record which backend ``varmem.kernels.dispatch.choose`` picks for each op (the kernel modules import
    ``choose`` by name: each module's binding is wrapped). Shows whether a model calls kernels at all."""
    import importlib

    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        choose = getattr(module, "choose", None)
        if choose is None:
            continue

        def counting(op, tensors, reasons, _choose=choose):
            backend = _choose(op, tensors, reasons)
            served.setdefault(op, set()).add(backend)
            return backend

        module.choose = counting


def measure_case(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``train()`` for one case in this process and time its steps; returns the case's measurements.

    ``spec``: config (path), overrides, backend, device, steps, warmup, threads (or None), run_dir.
    ``TRITON_INTERPRET`` must already be what the case needs (the parent sets it for the child).
    """
    from varmem.distributed.config import RunConfig
    from varmem.distributed.train_loop import TrainContext, train
    from varmem.kernels.dispatch import use_backend

    device = torch.device(spec["device"])
    total = spec["warmup"] + spec["steps"] + 1  # the first step has no interval before it
    overrides = [*spec["overrides"], f"train.steps={total}", f"train.log_every={total}", "train.val_every=0",
                 "train.val_episodes=1", "train.val_samples=1", "train.eval_batch=1", f"train.checkpoint_every={total}",
                 "train.keep_checkpoints=1", "run.tensorboard=false", f"run.out={spec['run_dir']}", f"train.device={device.type}"]
    if spec["threads"] is not None:
        overrides.append(f"train.threads={spec['threads']}")
    config = RunConfig.load(spec["config"], overrides)

    marks: list[tuple[float, float]] = []  # (wall, process CPU) after each step's backward
    peak: dict[str, int] = {}

    @dataclasses.dataclass
    class StepClock(TrainContext):
        def reduce_gradients(self, model: torch.nn.Module) -> None:
            synchronize(device)
            marks.append((time.perf_counter(), time.process_time()))
            peak["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
            if device.type == "cuda":
                peak["cuda"] = torch.cuda.max_memory_allocated(device)

    served: dict[str, set[str]] = {}
    _record_dispatch(served)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with use_backend(spec["backend"]):
        final = train(config, overwrite=True, context=StepClock(quiet=True))
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])][spec["warmup"]:]
    t = quantile_summary([1e3 * s for s in walls], method="inclusive")  # a few steps: stay within them
    steps_per_s = 1e3 / t["median_ms"]
    per_step = final["episodes_per_step"]
    return {
        "model": config.model.family, "steps": len(walls), "warmup": spec["warmup"], "episodes_per_step": per_step,
        "median_ms": t["median_ms"], "q20_ms": t["q20_ms"], "q80_ms": t["q80_ms"], "mean_ms": 1e3 * sum(walls) / len(walls),
        "steps_per_s": steps_per_s, "episodes_per_s": steps_per_s * per_step,
        "cpu_ms_per_step": 1e3 * (marks[-1][1] - marks[spec["warmup"]][1]) / len(walls),
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "peak_rss_mb": peak["rss"] / 2**20, "peak_cuda_mb": peak["cuda"] / 2**20 if "cuda" in peak else None,
        "data_wait": final["train"].get("data_wait"),
        "mean_loss": final["train"].get("loss"),  # over all the case's steps (one logging window): finite, comparable at equal steps
        "kernels": " ".join(f"{op}:{'/'.join(sorted(b))}" for op, b in sorted(served.items())) or "none",
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
    }


def _child(spec_path: Path) -> int:
    """``python -m varmem.benchmarks.bench_train --run-case SPEC``: measure one case, write SPEC.result.json."""
    spec = json.loads(spec_path.read_text())
    try:
        result = {"status": "ok", **measure_case(spec)}
    except Exception as exc:
        from varmem.kernels.dispatch import BackendUnavailable

        status = "unavailable" if isinstance(exc, BackendUnavailable) else "failed"
        result = {"status": status, "reason": f"{type(exc).__name__}: {exc}"}
        import traceback

        traceback.print_exc()
    spec_path.with_suffix(".result.json").write_text(json.dumps(result))
    return 0


def unavailable_reason(backend: str, device: str) -> str | None:
    """Why a case cannot start here (checked before spawning it), or None."""
    if device == "cuda" and not torch.cuda.is_available():
        return "torch sees no CUDA device (run with --device cpu)"
    if backend == "triton":
        from varmem.kernels.dispatch import triton_import_error

        return triton_import_error()
    return None


def run_case(config: Path, backend: str, args: argparse.Namespace, workdir: Path, index: int) -> dict[str, Any]:
    """One (config, backend) case in a child process; a row, whatever happens to the child."""
    label = _case_backend(backend, args.device)
    interp = label == "triton-interpreter"
    row: dict[str, Any] = {"config": _display(config), "backend": label, "device": args.device,
                           "steps": args.interpreter_steps if interp else args.steps,
                           "warmup": args.interpreter_warmup if interp else args.warmup}
    why = unavailable_reason(backend, args.device)
    if why is not None:
        return {**row, "status": "unavailable", "reason": why}
    spec_path = workdir / f"case-{index}-{config.stem}-{label}.json"
    spec = {"config": str(config), "overrides": args.overrides, "backend": backend, "device": args.device,
            "steps": row["steps"], "warmup": row["warmup"], "threads": args.threads,
            "run_dir": str(workdir / f"run-{index}-{config.stem}-{label}")}
    spec_path.write_text(json.dumps(spec))
    log = spec_path.with_suffix(".log")
    progress(f"{row['config']} / {label}: {row['warmup']} + {row['steps']} steps, log in {log}")
    row["load_before"] = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "varmem.benchmarks.bench_train", "--run-case", str(spec_path)], cwd=REPO,
                                  env=_case_env(backend, args.device), stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
        result_path = spec_path.with_suffix(".result.json")
        if result_path.is_file():
            row.update(json.loads(result_path.read_text()))
        else:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            row.update(status="failed", reason=f"the case's process exited with {proc.returncode}: {' | '.join(tail)}")
    except subprocess.TimeoutExpired:
        row.update(status="failed", reason=f"timed out after {args.timeout:.0f} s (--timeout); see {log}")
    row["wall_s"] = time.perf_counter() - t0
    row["load_after"] = os.getloadavg()[0]
    return row


def _display(config: Path) -> str:
    return str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)


def _resolve_config(text: str) -> Path:
    path = Path(text)
    for candidate in (path, REPO / path):
        if candidate.is_file():
            return candidate.resolve()
    raise SystemExit(f"config {text} not found (looked in the working directory and {REPO})")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = [_resolve_config(c) for item in args.configs for c in item.split(",") if c.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    for name in ("steps", "warmup", "interpreter_steps", "interpreter_warmup"):
        minimum = 1 if name.endswith("steps") else 0
        if getattr(args, name) < minimum:
            raise SystemExit(f"--{name.replace('_', '-')} must be ≥ {minimum}, got {getattr(args, name)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="varmem-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)

    rows = [run_case(config, backend, args, workdir, i * len(backends) + j)
            for i, config in enumerate(configs) for j, backend in enumerate(backends)]
    keep = args.workdir is not None or any(r["status"] == "failed" for r in rows)  # a failed case's log says why
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    for r in rows:  # the same config's reference row: how much the kernels change the step rate
        ref = next((x for x in rows if x["config"] == r["config"] and x["backend"] == "reference" and x["status"] == "ok"), None)
        r["vs_reference"] = r["steps_per_s"] / ref["steps_per_s"] if ref and r["status"] == "ok" else None

    print(format_table(rows, COLUMNS))
    for r in rows:
        if r["status"] != "ok":
            print(f"{r['config']} / {r['backend']}: {r['status']}: {r['reason']}")
        else:
            print(f"{r['config']} / {r['backend']}: kernels {r['kernels']}; "
                  f"mean loss over its {r['warmup'] + r['steps'] + 1} steps {r['mean_loss']:.2f}")
    print("steps_per_s = 1000 / median_ms; episodes_per_s = steps_per_s × episodes per step; cpu_ms_per_step: CPU time "
          "of the case's process (all threads) per timed step; load: 1-minute load average before and after each case")
    # the machine is described on a device torch can see; a CUDA run without CUDA names its rows' device only
    seen = args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu"
    out = args.out or (default_out("train", seen) if seen == args.device else RESULTS_DIR / f"train_{args.device}")
    extra = {"configs": [_display(c) for c in configs], "backends": backends, "overrides": args.overrides,
             "steps": args.steps, "warmup": args.warmup, "interpreter_steps": args.interpreter_steps,
             "interpreter_warmup": args.interpreter_warmup, "threads": args.threads}
    csv_path, json_path = write_results(rows, out, env=environment(seen), extra=extra)
    progress(f"wrote {csv_path} and {json_path}" + (f"; runs and logs in {workdir}" if keep else ""))
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-case"]:
        return _child(Path(argv[1]))
    p = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
