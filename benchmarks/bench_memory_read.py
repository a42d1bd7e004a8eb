"""Soft-attention memory read microbenchmark: triton / eager (the reference) / compile (torch.compile of it).

``memory_read(query, keys, values)`` = Σ_a softmax_a(S) v_a with the VMA similarity (eq. 5).
Modes fwd / bwd / full. Grid on CUDA: B ∈ {32, 256}, d = dv = 128, M ∈ {1e4, 1e5, 1e6, 1e7}
(cases that do not fit are rows with an ``error``); ``--quick`` or CPU (eager and compile only):
B = 8, d = dv = 32, M ∈ {512, 4096}.

    python -m varmem.benchmarks.bench_memory_read [--quick] [--device cuda] [--providers triton,eager]
    varmem bench kernels --only memory_read

Bytes moved, the minimum a fused implementation reads and writes (e = element size, inverse key
norms [M] and the saved lse [B] at 4 bytes):
    fwd:  read query Bd, keys Md, values M dv; write out B dv          = (Bd + Md + M dv + B dv) e
    bwd:  read query Bd, keys Md, values M dv, out B dv, grad B dv, norms M, lse B;
          write dquery Bd, dkeys Md, dvalues M dv   = (2Bd + 2Md + 2M dv + 2B dv) e + 4(M + B)
    full = fwd + bwd.
"""
from __future__ import annotations

import argparse

import torch

from varmem.benchmarks import harness
from varmem.benchmarks._autograd_bench import finish, measure, resolve
from varmem.benchmarks.bench_memory_addressing import DTYPES, add_memory_arguments, grid

STEM = "memory_read"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from varmem.benchmarks.cli import _kernel_common_arguments

    _kernel_common_arguments(p)
    add_memory_arguments(p)


def _call(provider: str, tf32: bool):
    from varmem.kernels.dispatch import use_backend
    from varmem.kernels.memory_read import memory_read, memory_read_reference

    if provider == "compile":
        return torch.compile(memory_read_reference)
    if provider == "eager":
        return memory_read_reference

    def triton_call(q, k, v):
        with use_backend("triton"):
            return memory_read(q, k, v, tf32=tf32)

    return triton_call


def nbytes(B: int, M: int, d: int, dv: int, e: int) -> dict[str, int]:
    fwd = (B * d + M * d + M * dv + B * dv) * e
    bwd = (2 * B * d + 2 * M * d + 2 * M * dv + 2 * B * dv) * e + 4 * (M + B)
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}


def run(args: argparse.Namespace) -> list[dict]:
    device, providers, modes = resolve(args)
    dtype = DTYPES[getattr(args, "dtype", "float32")]
    tf32 = bool(getattr(args, "tf32", False))
    e = torch.empty((), dtype=dtype).element_size()
    copy_gbps = harness.copy_bandwidth_gbps(device)
    rows: list[dict] = []
    for B, M, d in grid(device, args):
        dv = d
        case = f"B={B} M={M} d={d} dv={dv}"
        harness.progress(f"{STEM} {case}")
        fields = {"op": STEM, "case": case, "B": B, "M": M, "d": d, "dv": dv,
                  "dtype": str(dtype).replace("torch.", ""), "tf32": tf32}
        try:
            gen = torch.Generator(device=device).manual_seed(0)
            q0 = torch.randn(B, d, generator=gen, device=device, dtype=dtype)
            k0 = torch.randn(M, d, generator=gen, device=device, dtype=dtype)
            v0 = torch.randn(M, dv, generator=gen, device=device, dtype=dtype)
        except torch.cuda.OutOfMemoryError as exc:
            rows += [{**fields, "provider": p, "mode": m, "error": f"inputs: {type(exc).__name__}"} for p in providers for m in modes]
            continue
        for provider in providers:

            def make(provider=provider, q0=q0, k0=k0, v0=v0):
                call = _call(provider, tf32)
                q, k, v = (t.clone().requires_grad_() for t in (q0, k0, v0))
                return [q, k, v], lambda: (call(q, k, v),)

            rows += measure(fields, provider, make, modes, device, nbytes(B, M, d, dv, e), copy_gbps, quick=args.quick)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del q0, k0, v0
    return finish(STEM, rows, device, args, copy_gbps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_memory_read", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
