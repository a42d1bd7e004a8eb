"""VIMCO weighting microbenchmark: triton / eager (the reference) / compile (torch.compile of it).

Ops: ``vimco`` (bound, weights, leave-one-out bounds; backward through bound and weights) and
``vimco_surrogate`` (the training op: value = bound; backward to log_w and log_q). Modes fwd /
bwd / full. Grid on CUDA: B×K ∈ {32×4, 1e4×16, 1e6×64} (``--quick``: 32×4, 1e4×16); on CPU
(eager and compile only) 32×4, 1e3×16, 2e4×64 (``--quick``: 32×4, 1e3×16).

    python -m varmem.benchmarks.bench_vimco [--quick] [--device cuda] [--providers triton,eager]
    varmem bench kernels --only vimco

Bytes moved, the minimum a fused implementation reads and writes (e = element size; the
surrogate's saved signal is counted at e although it is float32 for 16-bit inputs):
    vimco fwd:           read log_w BK, write bound B, weights BK, loo BK       = (3BK + B) e
    vimco bwd:           read weights BK, g_bound B, g_weights BK, write grad BK = (3BK + B) e
    vimco_surrogate fwd: read log_w BK, write bound B, weights BK, signal BK    = (3BK + B) e
    vimco_surrogate bwd: read g B, weights BK, signal BK, write 2 grads 2BK     = (4BK + B) e
    full = fwd + bwd.
"""
from __future__ import annotations

import argparse

import torch

from varmem.benchmarks import harness
from varmem.benchmarks._autograd_bench import finish, measure, resolve

STEM = "vimco"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from varmem.benchmarks.cli import _kernel_common_arguments

    _kernel_common_arguments(p)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of log_w and log_q")
    p.add_argument("--variant", default="geometric", choices=("geometric", "arithmetic"))
    p.add_argument("--cases", default=None, help="comma list of BxK (e.g. 32x4,1e6x64), replaces the grid")


def parse_cases(text: str) -> list[tuple[int, int]]:
    """``"32x4,1e6x64"`` → ``[(32, 4), (1000000, 64)]``."""
    out = []
    for item in text.split(","):
        try:
            b, k = item.strip().lower().split("x")
            out.append((int(float(b)), int(float(k))))
        except ValueError:
            raise SystemExit(f"--cases: {item.strip()!r} is not BxK (e.g. 32x4)") from None
    return out


def grid(device: torch.device, quick: bool) -> list[tuple[int, int]]:
    if device.type == "cuda":
        return [(32, 4), (10_000, 16)] if quick else [(32, 4), (10_000, 16), (1_000_000, 64)]
    return [(32, 4), (1_000, 16)] if quick else [(32, 4), (1_000, 16), (20_000, 64)]


def _callables(provider: str, variant: str):
    """(vimco, vimco_surrogate) for a provider."""
    from varmem.kernels.dispatch import use_backend
    from varmem.kernels.vimco import vimco, vimco_reference, vimco_surrogate, vimco_surrogate_reference

    if provider == "compile":
        v, s = torch.compile(vimco_reference), torch.compile(vimco_surrogate_reference)
        return (lambda x: v(x, variant)), (lambda x, q: s(x, q, variant))
    backend = "triton" if provider == "triton" else "reference"

    def v_call(x):
        with use_backend(backend):
            return vimco(x, variant)

    def s_call(x, q):
        with use_backend(backend):
            return vimco_surrogate(x, q, variant)

    return v_call, s_call


def run(args: argparse.Namespace) -> list[dict]:
    device, providers, modes = resolve(args)
    dtype = DTYPES[getattr(args, "dtype", "float32")]
    variant = getattr(args, "variant", "geometric")
    e = torch.empty((), dtype=dtype).element_size()
    copy_gbps = harness.copy_bandwidth_gbps(device)
    rows: list[dict] = []
    cases = parse_cases(args.cases) if getattr(args, "cases", None) else grid(device, args.quick)
    for B, K in cases:
        case = f"B={B} K={K}"
        harness.progress(f"vimco {case}")
        gen = torch.Generator(device="cpu").manual_seed(0)
        log_w0 = (torch.randn(B, K, generator=gen) * 5).to(device=device, dtype=dtype)
        log_q0 = torch.randn(B, K, generator=gen).to(device=device, dtype=dtype)
        nbytes = {
            "vimco": {"fwd": (3 * B * K + B) * e, "bwd": (3 * B * K + B) * e},
            "vimco_surrogate": {"fwd": (3 * B * K + B) * e, "bwd": (4 * B * K + B) * e},
        }
        for op in ("vimco", "vimco_surrogate"):
            nbytes[op]["full"] = nbytes[op]["fwd"] + nbytes[op]["bwd"]
        for provider in providers:
            fields_base = {"B": B, "K": K, "case": case, "dtype": str(dtype).replace("torch.", ""), "variant": variant}

            def make_vimco(provider=provider):
                v_call, _ = _callables(provider, variant)
                x = log_w0.clone().requires_grad_()
                return [x], lambda: tuple(v_call(x)[:2])  # bound, weights (loo has no gradient)

            def make_surrogate(provider=provider):
                _, s_call = _callables(provider, variant)
                x, q = log_w0.clone().requires_grad_(), log_q0.clone().requires_grad_()
                return [x, q], lambda: (s_call(x, q),)

            rows += measure({"op": "vimco", **fields_base}, provider, make_vimco, modes, device,
                            nbytes["vimco"], copy_gbps, quick=args.quick)
            rows += measure({"op": "vimco_surrogate", **fields_base}, provider, make_surrogate, modes, device,
                            nbytes["vimco_surrogate"], copy_gbps, quick=args.quick)
    return finish(STEM, rows, device, args, copy_gbps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_vimco", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
