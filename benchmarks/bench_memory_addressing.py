"""VMA memory-addressing microbenchmark: triton / eager (the reference) / compile (torch.compile of it).

One call of ``memory_addressing`` with a learned prior query and K = 4 samples: lse, KL, samples,
log q and log p at the samples; the backward goes through all four log-quantities. Modes fwd /
bwd / full. Grid on CUDA: B ∈ {32, 256}, d = 128, M ∈ {1e4, 1e5, 1e6, 1e7} (cases that do not fit
are rows with an ``error``); ``--quick`` or CPU (eager and compile only): B = 8, d = 32,
M ∈ {512, 4096}.

    python -m varmem.benchmarks.bench_memory_addressing [--quick] [--device cuda] [--providers triton,eager]
    python -m varmem.benchmarks.bench_memory_addressing --max-m [--max-m-batch 32]   # GPU: largest M that fits
    varmem bench kernels --only memory_addressing

Bytes moved, the minimum a fused implementation reads and writes (e = element size; the
[M]-sized inverse norms and prior log-probabilities are counted at 4 bytes each):
    fwd:  read query Bd, keys Md, prior query d                 = (Bd + Md + d) e
          + write addresses BK (8 bytes) and lse, kl, log q, log p (2B + 2BK, 4 bytes)
    bwd:  read query Bd, keys Md, the [M] norms and log p (2M, 4 bytes), lse/kl and their
          grads (4B, 4 bytes); write dquery Bd, dkeys Md                = 2(Bd + Md) e + 4(2M + 4B)
    full = fwd + bwd.
The Triton forward also reads the keys twice more in torch (norms, prior logits): a measured
share of the copy bandwidth far below 100% at large M is partly that.
"""
from __future__ import annotations

import argparse

import torch

from varmem.benchmarks import harness
from varmem.benchmarks._autograd_bench import finish, measure, resolve

STEM = "memory_addressing"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
NUM_SAMPLES = 4  # VMA trains with K = 4 posterior samples


def add_arguments(p: argparse.ArgumentParser) -> None:
    from varmem.benchmarks.cli import _kernel_common_arguments

    _kernel_common_arguments(p)
    add_memory_arguments(p)
    p.add_argument("--max-m", action="store_true", help="GPU: double M at fixed B until each provider runs out of memory")
    p.add_argument("--max-m-batch", type=int, default=32, help="B for --max-m (default 32)")


def add_memory_arguments(p: argparse.ArgumentParser) -> None:
    """Options shared with bench_memory_read."""
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of query and keys")
    p.add_argument("--sizes-m", default=None, help="comma list of M (e.g. 1e4,1e6), replaces the grid's M")
    p.add_argument("--sizes-b", default=None, help="comma list of B, replaces the grid's B")
    p.add_argument("--tf32", action="store_true", help="allow TF32 in float32 Triton products")


def grid(device: torch.device, args: argparse.Namespace) -> list[tuple[int, int, int]]:
    """(B, M, d) cases."""
    if device.type == "cuda" and not args.quick:
        bs, ms, d = [32, 256], [10_000, 100_000, 1_000_000, 10_000_000], 128
    elif device.type == "cuda":
        bs, ms, d = [32, 256], [10_000, 1_000_000], 128
    else:
        bs, ms, d = [8], [512, 4096], 32
    bs = harness.parse_sizes(getattr(args, "sizes_b", None), bs)
    ms = harness.parse_sizes(getattr(args, "sizes_m", None), ms)
    return [(B, M, d) for B in bs for M in ms]


def make_inputs(B: int, M: int, d: int, dtype: torch.dtype, device: torch.device):
    """Random query [B, d], keys [M, d] (scaled by d^-1/2), prior query [d], made on the device."""
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(B, d, generator=gen, device=device, dtype=dtype)
    k = torch.randn(M, d, generator=gen, device=device, dtype=dtype).mul_(d**-0.5)
    pq = torch.randn(d, generator=gen, device=device, dtype=dtype)
    return q, k, pq


def _call(provider: str, tf32: bool):
    from varmem.kernels.dispatch import use_backend
    from varmem.kernels.memory_addressing import memory_addressing, memory_addressing_reference

    if provider == "compile":
        compiled = torch.compile(memory_addressing_reference)
        return lambda q, k, pq: compiled(q, k, prior_query=pq, num_samples=NUM_SAMPLES)
    if provider == "eager":
        return lambda q, k, pq: memory_addressing_reference(q, k, prior_query=pq, num_samples=NUM_SAMPLES)

    def triton_call(q, k, pq):
        with use_backend("triton"):
            return memory_addressing(q, k, prior_query=pq, num_samples=NUM_SAMPLES, tf32=tf32)

    return triton_call


def nbytes(B: int, M: int, d: int, e: int) -> dict[str, int]:
    K = NUM_SAMPLES
    fwd = (B * d + M * d + d) * e + 8 * B * K + 4 * (2 * B + 2 * B * K)
    bwd = 2 * (B * d + M * d) * e + 4 * (2 * M + 4 * B)
    return {"fwd": fwd, "bwd": bwd, "full": fwd + bwd}


def run(args: argparse.Namespace) -> list[dict]:
    device, providers, modes = resolve(args)
    dtype = DTYPES[getattr(args, "dtype", "float32")]
    tf32 = bool(getattr(args, "tf32", False))
    if getattr(args, "max_m", False):
        return run_max_m(args, device, providers, dtype, tf32)
    e = torch.empty((), dtype=dtype).element_size()
    copy_gbps = harness.copy_bandwidth_gbps(device)
    rows: list[dict] = []
    for B, M, d in grid(device, args):
        case = f"B={B} M={M} d={d}"
        harness.progress(f"{STEM} {case}")
        fields = {"op": STEM, "case": case, "B": B, "M": M, "d": d, "K": NUM_SAMPLES,
                  "dtype": str(dtype).replace("torch.", ""), "tf32": tf32}
        try:
            q0, k0, p0 = make_inputs(B, M, d, dtype, device)
        except torch.cuda.OutOfMemoryError as exc:
            rows += [{**fields, "provider": p, "mode": m, "error": f"inputs: {type(exc).__name__}"} for p in providers for m in modes]
            continue
        for provider in providers:

            def make(provider=provider, q0=q0, k0=k0, p0=p0):
                call = _call(provider, tf32)
                q, k, pq = (t.clone().requires_grad_() for t in (q0, k0, p0))
                # addresses are sampled inside the timed call; the four log-quantities carry gradients
                return [q, k, pq], lambda: tuple(call(q, k, pq)[1:])

            rows += measure(fields, provider, make, modes, device, nbytes(B, M, d, e), copy_gbps, quick=args.quick)
            _release(device)
        del q0, k0, p0
        _release(device)
    return finish(STEM, rows, device, args, copy_gbps)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_max_m(args, device: torch.device, providers: list[str], dtype: torch.dtype, tf32: bool) -> list[dict]:
    """Double M at fixed B (d = 128) until forward + backward runs out of memory, per provider."""
    if device.type != "cuda":
        raise SystemExit("--max-m needs a CUDA device (CPU memory is not the limit we look for)")
    B, d = args.max_m_batch, 128
    rows: list[dict] = []
    total = torch.cuda.get_device_properties(device).total_memory
    for provider in providers:
        call = _call(provider, tf32)
        M, largest = 1 << 14, None
        while M * d * torch.empty((), dtype=dtype).element_size() < total:
            row = {"op": STEM, "case": f"max-m B={B} M={M} d={d}", "B": B, "M": M, "d": d,
                   "dtype": str(dtype).replace("torch.", ""), "provider": provider, "mode": "full"}
            try:
                q, k, pq = (t.requires_grad_() for t in make_inputs(B, M, d, dtype, device))
                out = call(q, k, pq)
                torch.autograd.grad([o.sum() for o in out[1:]], [q, k, pq])
                torch.cuda.synchronize(device)
                row["peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
                largest = M
            except torch.cuda.OutOfMemoryError as exc:
                row["error"] = f"OOM: {str(exc).splitlines()[0][:120]}"
                rows.append(row)
                break
            except Exception as exc:  # e.g. compile failures: record and stop this provider
                row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                break
            finally:
                q = k = pq = out = None  # noqa: F841
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            rows.append(row)
            harness.progress(f"{STEM} --max-m {provider}: M={M} fits")
            M *= 2
        rows.append({"op": STEM, "case": f"max-m B={B} d={d}", "provider": provider, "mode": "full",
                     "B": B, "d": d, "largest_m_that_fits": largest})
    print(harness.format_table(rows, ("provider", "case", "M", "peak_mib", "largest_m_that_fits", "error")))
    out_dir = args.out_dir
    from pathlib import Path

    out = (Path(out_dir) if out_dir else harness.RESULTS_DIR) / (harness.default_out(STEM, device).name + "_max_m")
    harness.write_results(rows, out, env=harness.environment(device))
    harness.progress(f"wrote {out}.csv and {out}.json")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_memory_addressing", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
