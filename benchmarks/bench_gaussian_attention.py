"""DRAW Gaussian attention microbenchmark: triton / eager (the reference) / compile.

Ops: ``read`` (γ F_y x F_xᵀ), ``write`` ((1/γ) F_yᵀ w F_x) and ``draw_step`` (one read and one
write, as in a DRAW time step), each in modes fwd / bwd / full. Cases (B, C, H, W, N) on CUDA:
the DRAW MNIST step (256, 1, 28, 28, 12), a colour step (256, 3, 32, 32, 12), a large batch of
small glimpses (4096, 1, 28, 28, 5) and Omniglot-sized images (64, 1, 105, 105, 12);
``--quick`` keeps the first two. On CPU (eager and compile only): (16, 1, 28, 28, 12), and with
``--quick`` that alone; otherwise also (256, 1, 28, 28, 12).

    python -m varmem.benchmarks.bench_gaussian_attention [--quick] [--device cuda]
    varmem bench kernels --only gaussian_attention

Bytes moved, the minimum a fused implementation reads and writes (e = element size;
X = B·C·H·W image elements, P = B·C·N² patch elements, 5B parameters):
    read fwd:  read X + 5B, write P            read bwd:  read P (grad) + X + 5B, write X + 5B
    write fwd: read P + 5B, write X            write bwd: read X (grad) + P + 5B, write P + 5B
    draw_step = read + write;  full = fwd + bwd.
The filterbanks are rebuilt in registers, never stored, so they cost no bytes.
"""
from __future__ import annotations

import argparse

import torch

from varmem.benchmarks import harness
from varmem.benchmarks._autograd_bench import finish, measure, resolve

STEM = "gaussian_attention"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from varmem.benchmarks.cli import _kernel_common_arguments

    _kernel_common_arguments(p)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="dtype of images, patches and params")
    p.add_argument("--cases", default=None, help="semicolon list of B,C,H,W,N (e.g. 256,1,28,28,12), replaces the grid")


def parse_cases(text: str) -> list[tuple[int, int, int, int, int]]:
    """``"256,1,28,28,12;64,1,105,105,12"`` → ``[(256, 1, 28, 28, 12), (64, 1, 105, 105, 12)]``."""
    out = []
    for item in text.split(";"):
        parts = [x.strip() for x in item.split(",")]
        if len(parts) != 5 or not all(x.isdigit() for x in parts):
            raise SystemExit(f"--cases: {item.strip()!r} is not B,C,H,W,N (e.g. 256,1,28,28,12)")
        out.append(tuple(int(x) for x in parts))
    return out


def grid(device: torch.device, quick: bool) -> list[tuple[int, int, int, int, int]]:
    if device.type == "cuda":
        cases = [(256, 1, 28, 28, 12), (256, 3, 32, 32, 12), (4096, 1, 28, 28, 5), (64, 1, 105, 105, 12)]
        return cases[:2] if quick else cases
    return [(16, 1, 28, 28, 12)] if quick else [(16, 1, 28, 28, 12), (256, 1, 28, 28, 12)]


def _callables(provider: str):
    """(read, write) for a provider."""
    from varmem.kernels.dispatch import use_backend
    from varmem.kernels.gaussian_attention import gaussian_read, gaussian_read_reference, gaussian_write, gaussian_write_reference

    if provider == "compile":
        return torch.compile(gaussian_read_reference), torch.compile(gaussian_write_reference)
    backend = "triton" if provider == "triton" else "reference"

    def read(x, p, N):
        with use_backend(backend):
            return gaussian_read(x, p, N)

    def write(w, p, H, W):
        with use_backend(backend):
            return gaussian_write(w, p, H, W)

    return read, write


def _params(B: int, gen: torch.Generator) -> torch.Tensor:
    p = torch.empty(B, 5)
    p[:, 0:2] = torch.rand(B, 2, generator=gen) * 1.4 - 0.7  # g̃x, g̃y
    p[:, 2] = torch.rand(B, generator=gen) * 2 - 1  # log σ²
    p[:, 3] = torch.rand(B, generator=gen) - 0.5  # log δ̃
    p[:, 4] = torch.rand(B, generator=gen) - 0.5  # log γ
    return p


def run(args: argparse.Namespace) -> list[dict]:
    device, providers, modes = resolve(args)
    dtype = DTYPES[getattr(args, "dtype", "float32")]
    e = torch.empty((), dtype=dtype).element_size()
    copy_gbps = harness.copy_bandwidth_gbps(device)
    rows: list[dict] = []
    cases = parse_cases(args.cases) if getattr(args, "cases", None) else grid(device, args.quick)
    for B, C, H, W, N in cases:
        case = f"B={B} C={C} {H}x{W} N={N}"
        harness.progress(f"gaussian_attention {case}")
        gen = torch.Generator().manual_seed(0)
        x0 = torch.rand(B, C, H, W, generator=gen).to(device=device, dtype=dtype)
        w0 = torch.randn(B, C, N, N, generator=gen).to(device=device, dtype=dtype)
        p_read0 = _params(B, gen).to(device=device, dtype=dtype)
        p_write0 = _params(B, gen).to(device=device, dtype=dtype)
        X, P, Q = B * C * H * W, B * C * N * N, 5 * B
        read_bytes = {"fwd": (X + Q + P) * e, "bwd": (P + X + Q + X + Q) * e}
        write_bytes = {"fwd": (P + Q + X) * e, "bwd": (X + P + Q + P + Q) * e}
        nbytes = {
            "read": read_bytes,
            "write": write_bytes,
            "draw_step": {m: read_bytes[m] + write_bytes[m] for m in ("fwd", "bwd")},
        }
        for d in nbytes.values():
            d["full"] = d["fwd"] + d["bwd"]
        for provider in providers:
            fields = {"B": B, "C": C, "H": H, "W": W, "N": N, "case": case, "dtype": str(dtype).replace("torch.", "")}

            def inputs():
                return (x0.clone().requires_grad_(), w0.clone().requires_grad_(),
                        p_read0.clone().requires_grad_(), p_write0.clone().requires_grad_())

            def make_read(provider=provider):
                read, _ = _callables(provider)
                x, _, pr, _ = inputs()
                return [x, pr], lambda: (read(x, pr, N),)

            def make_write(provider=provider):
                _, write = _callables(provider)
                _, w, _, pw = inputs()
                return [w, pw], lambda: (write(w, pw, H, W),)

            def make_step(provider=provider):
                read, write = _callables(provider)
                x, w, pr, pw = inputs()
                return [x, w, pr, pw], lambda: (read(x, pr, N), write(w, pw, H, W))

            for op, make in (("read", make_read), ("write", make_write), ("draw_step", make_step)):
                rows += measure({"op": op, **fields}, provider, make, modes, device, nbytes[op], copy_gbps, quick=args.quick)
    return finish(STEM, rows, device, args, copy_gbps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m varmem.benchmarks.bench_gaussian_attention", description=__doc__.splitlines()[0])
    add_arguments(parser)
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
