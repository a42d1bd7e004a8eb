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

Variants (``--variants``): ways of running the same step, measured against today's step in the same
run. ``baseline`` is the step with every adopted speed-up switched off (:data:`BASELINE_OVERRIDES`);
a variant ``a+b`` is the baseline plus the features ``a`` and ``b`` of :data:`FEATURES`; ``config``
(the default, the only variant without ``--variants``) is the config as given. With ``--repeats R``
every (config, backend, threads, variant) case runs R times, the cases interleaved (A B A B ...) so
that a change of the shared machine's load falls on all of them alike; a row then pools its R runs:
quantiles over all their timed steps, ``cpu_ms_per_step`` the median of the runs' values, and
``vs_baseline`` the median over the R runs of (baseline CPU ms / this variant's CPU ms) of the same
repeat, with its smallest and largest (``vs_baseline_range``). CPU time, not wall time, is the
measure on a shared machine (a loaded core stretches wall time, not the process's CPU time);
``first_step_s`` (wall) and ``first_step_cpu_s`` are from ``train()``'s call to the first step's
backward: the model build, the first episodes and, for ``compile``, the compilation.
``--profile-steps P`` runs P more steps after the timed ones under ``torch.profiler`` (one table
per case, ``OUT.profile/<case>.txt``; the row's ``profile_top``: the top ops by self CPU time).

    python -m varmem.benchmarks.bench_train [--configs configs/vma_strokes.yaml ...] [--backends reference,triton]
        [--steps 40] [--warmup 5] [--threads 1[,2]] [--device cpu|cuda] [--out benchmarks/results/train_cpu]
        [--variants baseline,shared_skips,channels_last,compile,...] [--repeats 3] [--profile-steps 10]
    varmem bench train ...
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import shutil
import statistics
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
COLUMNS = ("config", "model", "backend", "variant", "status", "threads", "steps", "median_ms", "q20_ms", "q80_ms",
           "steps_per_s", "episodes_per_s", "vs_reference", "cpu_ms_per_step", "vs_baseline", "vs_baseline_range",
           "first_step_s", "peak_rss_mb", "peak_cuda_mb", "data_wait", "load_before", "load_after")
# Today's step: every adopted speed-up off (issue 17). A variant adds features to it.
BASELINE_OVERRIDES = ("train.shared_skip_convs=false", "train.channels_last=false")
# Each feature: its config overrides, its environment for the case's process, and what it does to the built model.
FEATURES: dict[str, dict[str, Any]] = {
    "shared_skips": {"overrides": ["train.shared_skip_convs=true"],
                     "help": "the decoder's skip convolutions once per memory entry (models/networks.py; adopted)"},
    "channels_last": {"overrides": ["train.channels_last=true"],
                      "help": "conv weights, and so every conv activation, in channels-last (NHWC) memory format "
                              "(models/networks.py; adopted)"},
    "compile": {"env": {"TORCHINDUCTOR_COMPILE_THREADS": "1"},  # compile in the process: its CPU time is counted
                "help": "torch.compile (inductor) of every pyramid, decoder and MLP head (nn.Module.compile; a fresh "
                        "inductor cache per case, so the first step pays the whole compilation)"},
    "passive_wait": {"env": {"OMP_WAIT_POLICY": "PASSIVE"},
                     "help": "OMP_WAIT_POLICY=PASSIVE: idle OpenMP threads sleep instead of spinning (2 threads)"},
}


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
    p.add_argument("--threads", default=None,
                   help="torch intra-op threads (train.threads), a comma list runs each (e.g. 1,2; default: the config's, "
                        "0 = torch's default)")
    p.add_argument("--variants", default="config",
                   help="comma list of variants: config (as given), baseline (today's step: every adopted speed-up off), "
                        f"or baseline plus features joined by '+' from {', '.join(FEATURES)} (e.g. shared_skips+compile)")
    p.add_argument("--repeats", type=int, default=1, help="runs of every case, interleaved; a row pools its runs")
    p.add_argument("--profile-steps", type=int, default=0,
                   help="steps after the timed ones run under torch.profiler (0 = none); tables in OUT.profile/")
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


def _case_env(backend: str, device: str, features: tuple[str, ...] = (), scratch: Path | None = None) -> dict[str, str]:
    """The child's environment: the backend forced, ``TRITON_INTERPRET`` only for the interpreter, the
    features' variables (``compile``: a fresh inductor cache under ``scratch``)."""
    env = dict(os.environ, VARMEM_KERNELS=backend)
    env.pop("TRITON_INTERPRET", None)
    if _case_backend(backend, device) == "triton-interpreter":
        env["TRITON_INTERPRET"] = "1"
    for feature in features:
        env.update(FEATURES[feature].get("env", {}))
    if "compile" in features and scratch is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "inductor-cache")
    return env


def parse_variant(name: str) -> tuple[tuple[str, ...] | None, list[str]]:
    """A variant's features (None for ``config``) and its config overrides; SystemExit naming an unknown one."""
    if name == "config":
        return None, []
    features = () if name == "baseline" else tuple(f.strip() for f in name.split("+"))
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise SystemExit(f"variant {name!r}: unknown feature(s) {unknown}: choose from {', '.join(FEATURES)} "
                         "(or the variants config, baseline)")
    return features, [*BASELINE_OVERRIDES, *(o for f in features for o in FEATURES[f].get("overrides", []))]


def apply_features(model: torch.nn.Module, features: tuple[str, ...]) -> torch.nn.Module:
    """The model-side features of a variant, applied in place once the model is built: ``compile`` (every
    pyramid, decoder and MLP head compiled with inductor, their parameter names unchanged). The adopted
    features are config fields (their ``overrides``)."""
    from varmem.models.networks import Decoder, MLPHead, Pyramid

    if "compile" in features:
        for module in model.modules():
            if isinstance(module, (Pyramid, Decoder, MLPHead)):
                module.compile()
    return model


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

    ``spec``: config (path), overrides, backend, device, steps, warmup, threads (or None), run_dir; optional
    features (the model-side ones are applied here) and profile_steps with profile_out (a text file).
    ``TRITON_INTERPRET`` must already be what the case needs (the parent sets it for the child).
    """
    from varmem.distributed.config import RunConfig
    from varmem.distributed.train_loop import TrainContext, train
    from varmem.kernels.dispatch import use_backend

    device = torch.device(spec["device"])
    features = tuple(spec.get("features") or ())
    profile_steps = int(spec.get("profile_steps") or 0)
    timed_marks = spec["warmup"] + spec["steps"] + 1  # the first step has no interval before it
    total = timed_marks + profile_steps
    overrides = [*spec["overrides"], f"train.steps={total}", f"train.log_every={total}", "train.val_every=0",
                 "train.val_episodes=1", "train.val_samples=1", "train.eval_batch=1", f"train.checkpoint_every={total}",
                 "train.keep_checkpoints=1", "run.tensorboard=false", f"run.out={spec['run_dir']}", f"train.device={device.type}"]
    if spec["threads"] is not None:
        overrides.append(f"train.threads={spec['threads']}")
    config = RunConfig.load(spec["config"], overrides)

    marks: list[tuple[float, float]] = []  # (wall, process CPU) after each step's backward
    peak: dict[str, int] = {}
    profiler: list[Any] = []  # the torch.profiler of the steps after the timed ones
    first_cpu: list[float] = []  # CPU seconds at the first step's backward, the compiler's processes included

    @dataclasses.dataclass
    class StepClock(TrainContext):
        def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
            return apply_features(model, features)

        def reduce_gradients(self, model: torch.nn.Module) -> None:
            synchronize(device)
            if len(marks) < timed_marks:
                marks.append((time.perf_counter(), time.process_time()))
                if len(marks) == 1:
                    first_cpu.append(_cpu_with_children())
                peak["rss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
                if device.type == "cuda":
                    peak["cuda"] = torch.cuda.max_memory_allocated(device)
                if len(marks) == timed_marks and profile_steps:  # profile whole iterations, from this mark on
                    profiler.append(torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                                           + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])))
                    profiler[0].__enter__()
            else:
                marks.append((time.perf_counter(), time.process_time()))
                if len(marks) == total and profiler:
                    profiler[0].__exit__(None, None, None)

    served: dict[str, set[str]] = {}
    _record_dispatch(served)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = (time.perf_counter(), _cpu_with_children())
    with use_backend(spec["backend"]):
        final = train(config, overwrite=True, context=StepClock(quiet=True))
    profile = profile_summary(profiler[0], spec.get("profile_out"), profile_steps) if profiler else {}
    first = marks[0]
    marks = marks[:timed_marks]
    walls = [b[0] - a[0] for a, b in zip(marks, marks[1:])][spec["warmup"]:]
    cpus = [b[1] - a[1] for a, b in zip(marks, marks[1:])][spec["warmup"]:]
    t = quantile_summary([1e3 * s for s in walls], method="inclusive")  # a few steps: stay within them
    steps_per_s = 1e3 / t["median_ms"]
    per_step = final["episodes_per_step"]
    return {
        "model": config.model.family, "steps": len(walls), "warmup": spec["warmup"], "episodes_per_step": per_step,
        "median_ms": t["median_ms"], "q20_ms": t["q20_ms"], "q80_ms": t["q80_ms"], "mean_ms": 1e3 * sum(walls) / len(walls),
        "steps_per_s": steps_per_s, "episodes_per_s": steps_per_s * per_step,
        "cpu_ms_per_step": 1e3 * (marks[-1][1] - marks[spec["warmup"]][1]) / len(walls),
        "step_wall_ms": [1e3 * w for w in walls], "step_cpu_ms": [1e3 * c for c in cpus],  # pooled over repeats
        "first_step_s": first[0] - start[0], "first_step_cpu_s": first_cpu[0] - start[1],
        "threads": torch.get_num_threads(), "interop_threads": torch.get_num_interop_threads(),
        "peak_rss_mb": peak["rss"] / 2**20, "peak_cuda_mb": peak["cuda"] / 2**20 if "cuda" in peak else None,
        "data_wait": final["train"].get("data_wait"),
        "mean_loss": final["train"].get("loss"),  # over all the case's steps (one logging window): finite, comparable at equal steps
        "kernels": " ".join(f"{op}:{'/'.join(sorted(b))}" for op, b in sorted(served.items())) or "none",
        "triton_interpret": os.environ.get("TRITON_INTERPRET", "0"),
        **profile,
    }


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its finished children (inductor's compiler runs gcc as children)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def profile_summary(prof: Any, out: str | None, steps: int, top: int = 8) -> dict[str, Any]:
    """The profiled steps' ops by self CPU time: the table written to ``out`` (if given), the top ``top``
    as ``name share%`` in ``profile_top``."""
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    ranked = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(f"{steps} steps under torch.profiler, {torch.get_num_threads()} thread(s); self CPU time total "
                             f"{total / 1e3:.1f} ms ({total / 1e3 / steps:.1f} ms per step)\n"
                             + events.table(sort_by="self_cpu_time_total", row_limit=40) + "\n")
    return {"profile_steps": steps, "profile_self_cpu_ms_per_step": total / 1e3 / steps,
            "profile_top": "; ".join(f"{e.key} {100 * e.self_cpu_time_total / total:.1f}%" for e in ranked[:top])}


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


def run_case(config: Path, backend: str, args: argparse.Namespace, workdir: Path, index: int, *,
             threads: int | None = None, variant: str = "config") -> dict[str, Any]:
    """One (config, backend, threads, variant) case in a child process; a row, whatever happens to the child."""
    label = _case_backend(backend, args.device)
    interp = label == "triton-interpreter"
    features, variant_overrides = parse_variant(variant)
    row: dict[str, Any] = {"config": _display(config), "backend": label, "variant": variant, "device": args.device,
                           "steps": args.interpreter_steps if interp else args.steps,
                           "warmup": args.interpreter_warmup if interp else args.warmup}
    why = unavailable_reason(backend, args.device)
    if why is not None:
        return {**row, "status": "unavailable", "reason": why, "threads": threads}
    name = f"case-{index}-{config.stem}-{label}" + (f"-t{threads}" if threads is not None else "") + (
        f"-{variant.replace('+', '_')}" if variant != "config" else "")
    spec_path = workdir / f"{name}.json"
    profile_out = None
    if args.profile_steps:
        profile_out = str(_out_path(args).with_suffix(".profile") / f"{config.stem}-{label}-t{threads}-{variant.replace('+', '_')}.txt")
    spec = {"config": str(config), "overrides": [*args.overrides, *variant_overrides], "backend": backend,
            "device": args.device, "steps": row["steps"], "warmup": row["warmup"], "threads": threads,
            "features": list(features or ()), "profile_steps": args.profile_steps, "profile_out": profile_out,
            "run_dir": str(workdir / f"run-{name[len('case-'):]}")}
    spec_path.write_text(json.dumps(spec))
    log = spec_path.with_suffix(".log")
    progress(f"{row['config']} / {label} / {variant}" + (f" / {threads} thread(s)" if threads is not None else "")
             + f": {row['warmup']} + {row['steps']} steps, log in {log}")
    row["load_before"] = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        with open(log, "w") as f:
            proc = subprocess.run([sys.executable, "-m", "varmem.benchmarks.bench_train", "--run-case", str(spec_path)], cwd=REPO,
                                  env=_case_env(backend, args.device, features or (), workdir / name),
                                  stdout=f, stderr=subprocess.STDOUT, timeout=args.timeout)
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
    shutil.rmtree(workdir / name / "inductor-cache", ignore_errors=True)
    return row


def pool_repeats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row from the R runs of a case: step-time quantiles over all their timed steps, the median of
    their per-run CPU ms per step (each run's values listed in ``cpu_ms_repeats``)."""
    ok = [r for r in runs if r["status"] == "ok"]
    if len(ok) < len(runs) or len(runs) == 1:
        row = {k: v for k, v in next((r for r in runs if r["status"] != "ok"), runs[0]).items()
               if k not in ("step_wall_ms", "step_cpu_ms")}
        row["repeats"] = len(runs)
        return row
    walls = [w for r in ok for w in r["step_wall_ms"]]
    row = {k: v for k, v in ok[0].items() if k not in ("step_wall_ms", "step_cpu_ms")}
    t = quantile_summary(walls, method="inclusive")
    row.update(t, steps=len(walls), repeats=len(ok), steps_per_s=1e3 / t["median_ms"],
               episodes_per_s=1e3 / t["median_ms"] * row["episodes_per_step"], mean_ms=sum(walls) / len(walls))
    for key in ("cpu_ms_per_step", "first_step_s", "first_step_cpu_s", "peak_rss_mb", "data_wait", "mean_loss"):
        values = [r[key] for r in ok if r.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row["cpu_ms_repeats"] = " ".join(f"{r['cpu_ms_per_step']:.1f}" for r in ok)
    row["load_before"] = min(r["load_before"] for r in ok)
    row["load_after"] = max(r["load_after"] for r in ok)
    row["wall_s"] = sum(r["wall_s"] for r in ok)
    return row


def _display(config: Path) -> str:
    return str(config.relative_to(REPO)) if config.is_relative_to(REPO) else str(config)


def _resolve_config(text: str) -> Path:
    path = Path(text)
    for candidate in (path, REPO / path):
        if candidate.is_file():
            return candidate.resolve()
    raise SystemExit(f"config {text} not found (looked in the working directory and {REPO})")


def _out_path(args: argparse.Namespace) -> Path:
    """OUT without suffix: ``--out``, else ``benchmarks/results/train_<device>``."""
    seen = args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu"
    return args.out or (default_out("train", seen) if seen == args.device else RESULTS_DIR / f"train_{args.device}")


def _thread_list(text: str | int | None) -> list[int | None]:
    if text is None:
        return [None]
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--threads must be an int or a comma list of ints, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise SystemExit(f"--threads must be ints ≥ 0, got {text!r}")
    return values


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    configs = [_resolve_config(c) for item in args.configs for c in item.split(",") if c.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)}")
    for name in ("steps", "warmup", "interpreter_steps", "interpreter_warmup", "repeats", "profile_steps"):
        minimum = 1 if name.endswith("steps") and name != "profile_steps" or name == "repeats" else 0
        if getattr(args, name) < minimum:
            raise SystemExit(f"--{name.replace('_', '-')} must be ≥ {minimum}, got {getattr(args, name)}")
    threads_list = _thread_list(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        parse_variant(v)  # an unknown feature stops the run before any case
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="varmem-bench-train-"))
    workdir.mkdir(parents=True, exist_ok=True)

    # every case once per repeat, interleaved: A B A B ..., so that the shared machine's load falls on all alike
    cases = [(config, backend, threads, variant) for config in configs for backend in backends
             for threads in threads_list for variant in variants]
    runs: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(cases))}
    for repeat in range(args.repeats):
        for i, (config, backend, threads, variant) in enumerate(cases):
            runs[i].append(run_case(config, backend, args, workdir, repeat * len(cases) + i, threads=threads, variant=variant))
    keep = args.workdir is not None or any(r["status"] == "failed" for rs in runs.values() for r in rs)  # a failed case's log says why
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    rows = []
    for i, (config, backend, threads, variant) in enumerate(cases):
        # the baseline of the same config, backend and threads, repeat by repeat: how much this variant changes the step's CPU time
        base = next((j for j, c in enumerate(cases) if c[:3] == (config, backend, threads) and c[3] == "baseline"), None)
        ratios = [b["cpu_ms_per_step"] / r["cpu_ms_per_step"] for r, b in zip(runs[i], runs[base] if base is not None else [])
                  if r["status"] == "ok" and b["status"] == "ok"]
        row = pool_repeats(runs[i])
        row["vs_baseline"] = statistics.median(ratios) if ratios else None
        row["vs_baseline_range"] = f"{min(ratios):.2f}-{max(ratios):.2f}" if len(ratios) > 1 else None
        rows.append(row)
    for r in rows:  # the same config's reference row: how much the kernels change the step rate
        ref = next((x for x in rows if (x["config"], x["variant"], x.get("threads")) == (r["config"], r["variant"], r.get("threads"))
                    and x["backend"] == "reference" and x["status"] == "ok"), None)
        r["vs_reference"] = r["steps_per_s"] / ref["steps_per_s"] if ref and r["status"] == "ok" else None

    print(format_table(rows, COLUMNS))
    for r in rows:
        label = f"{r['config']} / {r['backend']}" + (f" / {r['variant']}" if r["variant"] != "config" else "")
        if r["status"] != "ok":
            print(f"{label}: {r['status']}: {r['reason']}")
        else:
            print(f"{label}: kernels {r['kernels']}; "
                  f"mean loss over its {r['warmup'] + r['steps'] // r['repeats'] + 1} steps {r['mean_loss']:.2f}"
                  + (f"; CPU ms per step by repeat {r['cpu_ms_repeats']}" if r.get("cpu_ms_repeats") else "")
                  + (f"; first step {r['first_step_s']:.1f} s wall, {r['first_step_cpu_s']:.1f} s CPU" if variant_run(variants) else ""))
            if r.get("profile_top"):
                print(f"  profile ({r['profile_steps']} steps, {r['profile_self_cpu_ms_per_step']:.1f} ms self CPU per step): "
                      f"{r['profile_top']}")
    print("steps_per_s = 1000 / median_ms; episodes_per_s = steps_per_s × episodes per step; cpu_ms_per_step: CPU time "
          "of the case's process (all threads) per timed step; load: 1-minute load average before and after each case"
          + ("; vs_baseline: baseline CPU ms / this row's, the median over the interleaved repeats (range: smallest-largest)"
             if variant_run(variants) else ""))
    # the machine is described on a device torch can see; a CUDA run without CUDA names its rows' device only
    seen = args.device if args.device == "cpu" or torch.cuda.is_available() else "cpu"
    out = _out_path(args)
    extra = {"configs": [_display(c) for c in configs], "backends": backends, "overrides": args.overrides,
             "steps": args.steps, "warmup": args.warmup, "interpreter_steps": args.interpreter_steps,
             "interpreter_warmup": args.interpreter_warmup,
             "threads": threads_list[0] if len(threads_list) == 1 else threads_list, "variants": variants,
             "repeats": args.repeats, "baseline_overrides": list(BASELINE_OVERRIDES),
             "features": {k: v["help"] for k, v in FEATURES.items()}, "profile_steps": args.profile_steps}
    csv_path, json_path = write_results(rows, out, env=environment(seen), extra=extra)
    progress(f"wrote {csv_path} and {json_path}" + (f"; runs and logs in {workdir}" if keep else ""))
    return rows


def variant_run(variants: list[str]) -> bool:
    return variants != ["config"]


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
