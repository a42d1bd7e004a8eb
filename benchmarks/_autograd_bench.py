"""Timing one autograd op in the modes fwd / bwd / full for the kernel benchmarks.

Used by ``bench_vimco`` and ``bench_gaussian_attention``: each case gives a ``forward()``
returning a tuple of outputs, the inputs that receive gradients, and the bytes each mode must
move at least; this module times the modes with ``harness.time_fn`` and builds the rows.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from varmem.benchmarks import harness

PROVIDERS = ("triton", "eager", "compile")
MODES = ("fwd", "bwd", "full")
COLUMNS = ("op", "case", "dtype", "provider", "mode", "median_ms", "q20_ms", "q80_ms", "mbytes", "gbps", "pct_of_copy", "peak_mib")


def resolve(args: argparse.Namespace) -> tuple[torch.device, list[str], list[str]]:
    """Device, providers and modes from the common kernel-benchmark arguments.

    On CPU the Triton provider is skipped (the interpreter measures nothing useful).
    """
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    providers = [p.strip() for p in (args.providers or ",".join(PROVIDERS)).split(",") if p.strip()]
    modes = [m.strip() for m in (args.modes or ",".join(MODES)).split(",") if m.strip()]
    for p in providers:
        if p not in PROVIDERS:
            raise SystemExit(f"--providers: {p!r} is not one of {', '.join(PROVIDERS)}")
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"--modes: {m!r} is not one of {', '.join(MODES)}")
    if device.type != "cuda" and "triton" in providers:
        harness.progress("note: skipping provider triton on CPU (Triton benchmarks need a CUDA device)")
        providers = [p for p in providers if p != "triton"]
    return device, providers, modes


def measure(
    fields: dict[str, Any],
    provider: str,
    make: Callable[[], tuple[Sequence[torch.Tensor], Callable[[], tuple[torch.Tensor, ...]]]],
    modes: Sequence[str],
    device: torch.device,
    nbytes: dict[str, int],
    copy_gbps: float,
    *,
    quick: bool,
) -> list[dict[str, Any]]:
    """Rows for one (case, provider): ``make()`` returns ``(inputs, forward)``."""
    rows: list[dict[str, Any]] = []
    reps, warmup = (5, 2) if quick else (20, 5)
    min_time_s = 0.0 if quick or device.type != "cuda" else 0.2
    try:
        inputs, forward = make()
        outs = forward()
        grads = tuple(torch.randn_like(o) for o in outs)
    except Exception as exc:  # one failing provider (e.g. compile unavailable) must not stop the run
        harness.progress(f"  {fields} {provider}: {type(exc).__name__}: {exc}")
        return [{**fields, "provider": provider, "mode": m, "error": f"{type(exc).__name__}: {exc}"} for m in modes]
    del outs
    state: dict[str, Any] = {}

    def fwd():
        return forward()

    def setup_bwd():
        state["outs"] = forward()

    def bwd():
        return torch.autograd.grad(state.pop("outs"), inputs, grads)

    def full():
        return torch.autograd.grad(forward(), inputs, grads)

    for mode in modes:
        fn, setup = {"fwd": (fwd, None), "bwd": (bwd, setup_bwd), "full": (full, None)}[mode]
        row: dict[str, Any] = {**fields, "provider": provider, "mode": mode}
        try:
            t = harness.time_fn(fn, device, warmup=warmup, reps=reps, min_time_s=min_time_s, setup=setup)
            if setup is not None:
                setup()
            peak = harness.peak_memory_bytes(fn, device)
        except Exception as exc:
            harness.progress(f"  {fields} {provider} {mode}: {type(exc).__name__}: {exc}")
            rows.append({**row, "error": f"{type(exc).__name__}: {exc}"})
            state.clear()
            continue
        state.clear()
        gbps = nbytes[mode] / (t["median_ms"] * 1e-3) / 1e9
        row.update(t)
        row.update(
            bytes=nbytes[mode],
            mbytes=nbytes[mode] / 1e6,
            gbps=gbps,
            copy_gbps=copy_gbps,
            pct_of_copy=100.0 * gbps / copy_gbps,
            peak_mem_bytes=peak,
            peak_mib=None if peak is None else peak / 2**20,
        )
        rows.append(row)
    return rows


def finish(
    stem: str, rows: list[dict[str, Any]], device: torch.device, args: argparse.Namespace, copy_gbps: float
) -> list[dict[str, Any]]:
    """Print the table and write CSV/JSON (``--out-dir`` or ``benchmarks/results``)."""
    print(f"{stem}: device {harness.environment(device)['device_name']}, copy bandwidth {copy_gbps:.1f} GB/s")
    print(harness.format_table(rows, COLUMNS))
    if args.out_dir:
        out = Path(args.out_dir) / harness.default_out(stem, device).name
    else:
        out = harness.default_out(stem, device)
    csv_path, json_path = harness.write_results(rows, out, env=harness.environment(device), extra={"copy_gbps": copy_gbps})
    harness.progress(f"wrote {csv_path} and {json_path}")
    return rows
