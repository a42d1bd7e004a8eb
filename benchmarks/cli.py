"""``varmem bench kernels|episodes|distributed|train``: run the benchmark modules from the command line.

Each ``benchmarks/bench_<stem>.py`` exposes ``add_arguments(parser)`` and ``run(args) -> rows``
and is also runnable as ``python -m varmem.benchmarks.bench_<stem>``.
"""
from __future__ import annotations

import argparse
import importlib

KERNEL_STEMS = ("memory_addressing", "memory_read", "vimco", "gaussian_attention")


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="microbenchmarks: kernels, episode sampling, distributed training, "
                                "training steps with the kernels on and off")
    bench_sub = bench.add_subparsers(dest="bench_target", required=True, metavar="TARGET")

    kernels = bench_sub.add_parser("kernels", help="kernel microbenchmarks (triton / eager / torch.compile)")
    kernels.add_argument("--only", choices=KERNEL_STEMS, action="append", help="run only these kernels (repeatable)")
    _kernel_common_arguments(kernels)
    kernels.set_defaults(func=_run_kernels)

    episodes = bench_sub.add_parser("episodes", help="dataset build and episode sampling throughput")
    importlib.import_module("varmem.benchmarks.bench_episodes").add_arguments(episodes)
    episodes.set_defaults(func=lambda a: importlib.import_module("varmem.benchmarks.bench_episodes").run(a) and 0)

    dist = bench_sub.add_parser("distributed", help="training steps/s in-process and on Ray Train (1 and 2 workers), "
                                "data wait, time to the first step")
    importlib.import_module("varmem.benchmarks.bench_distributed").add_arguments(dist)
    dist.set_defaults(func=lambda a: importlib.import_module("varmem.benchmarks.bench_distributed").run(a) and 0)

    train = bench_sub.add_parser("train", help="training steps/s and episodes/s of VMA, VAE and soft attention, "
                                 "reference kernels against Triton (the interpreter on CPU)")
    importlib.import_module("varmem.benchmarks.bench_train").add_arguments(train)
    train.set_defaults(func=lambda a: importlib.import_module("varmem.benchmarks.bench_train").run(a) and 0)


def _kernel_common_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if available)")
    p.add_argument("--quick", action="store_true", help="a small grid, for CI and smoke checks")
    p.add_argument("--providers", default=None, help="comma list from triton,eager,compile (default: all that run here)")
    p.add_argument("--modes", default="fwd,bwd,full", help="comma list from fwd,bwd,full")
    p.add_argument("--out-dir", default=None, help="where CSV/JSON go (default: benchmarks/results)")


def _run_kernels(args: argparse.Namespace) -> int:
    for stem in args.only or KERNEL_STEMS:
        module = importlib.import_module(f"varmem.benchmarks.bench_{stem}")
        module.run(args)
    return 0
