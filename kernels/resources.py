"""Ahead-of-time compile of every Triton launch of ``kernels/`` for sm_80 and sm_90, on a CPU.

No GPU is needed: Triton compiles to PTX and, with the ``ptxas`` its wheel ships, to a cubin
for a named target. This module finds every launch configuration the dispatch code chooses for
the sizes the models and benchmarks use, compiles each for A100 (sm_80) and H100/H200 (sm_90),
and records what a GPU would otherwise report only at its first launch:

* shared memory per program (``metadata.shared``; checked against the target's per-block
  opt-in limit: a kernel over it fails at launch with "out of resource: shared memory"),
* registers per thread, spill stores/loads and stack frame (``ptxas -v``),
* registers × threads per program against the 65,536 registers of an SM.

How the launches are found. The launchers (``memory_addressing_forward``, ``vimco_forward``,
``gaussian_read_backward``, ...) run on small CPU tensors with the plan of the real sizes
(``make_plan`` with the target's SM count) while every ``@triton.jit`` kernel of the kernel
modules is replaced by a recorder: what is recorded is exactly what the launcher passes
(argument dtypes, integer values, constexprs, ``num_warps``, ``num_stages``). Each recorded
launch is compiled with ``JITFunction.warmup`` under a driver that reports the target (no
device), so the specialization (16-byte alignment of pointers, integers divisible by 16 or
equal to 1) is Triton's own; the compile is ``triton.compile(ASTSource(fn, signature,
constexprs, attrs), target=GPUTarget("cuda", 80 | 90, 32))``.

Limits (CUDA C Programming Guide, "Technical Specifications per Compute Capability"): maximum
shared memory per thread block (opt-in) 163 KB = 166,912 B on compute capability 8.0 (A100),
227 KB = 232,448 B on 9.0 (H100, H200); 64 K 32-bit registers per SM and at most 255 per
thread on both.

Commands (the kernel modules must be imported without ``TRITON_INTERPRET``; the command
re-runs itself without it when it is set)::

    python -m varmem.kernels.resources --write   # regenerate kernels/RESOURCES.md and kernels/RESOURCES.csv
    python -m varmem.kernels.resources --check   # compile, check limits and that the table is current (exit 1 if not)

Compiled kernels are cached by Triton (``TRITON_CACHE_DIR``, default ``~/.triton/cache``) and the
``ptxas -v`` figures of each compiled kernel by its Triton hash under
``$XDG_CACHE_HOME/varmem/aot`` (default ``~/.cache/varmem/aot``), so a second run only
re-traces the launchers; a fresh clone compiles everything (see RESOURCES.md for the time).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

KERNEL_MODULES = (
    "varmem.kernels.memory_addressing",
    "varmem.kernels.memory_read",
    "varmem.kernels.vimco",
    "varmem.kernels.gaussian_attention",
)
HERE = Path(__file__).resolve().parent
TABLE_MD = HERE / "RESOURCES.md"
TABLE_CSV = HERE / "RESOURCES.csv"
REGISTERS_PER_SM = 65_536
MAX_REGISTERS_PER_THREAD = 255


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # "sm_80"
    capability: int  # 80
    max_shared: int  # bytes per block, opt-in
    sms: int  # streaming multiprocessors of the GPU the plans are made for
    gpu: str


TARGETS = {
    "sm_80": Target("sm_80", 80, 166_912, 108, "A100"),
    "sm_90": Target("sm_90", 90, 232_448, 132, "H100/H200"),
}

# Spills that are accepted, with the reason: (target, kernel, dtype, config) -> reason, for one row;
# or a SpillRule of SPILL_RULES below, for a narrow group. A row with spill stores or loads that
# neither accepts fails `--check` and tests/kernels/test_compile.py.
ACCEPTED_SPILLS: dict[tuple[str, str, str, str], str] = {}


@dataclasses.dataclass(frozen=True)
class SpillRule:
    """Accepts the spills of rows whose kernel is in ``kernels``, dtype in ``dtypes`` and configuration
    matches ``config`` (a regular expression, from the start), up to ``max_bytes`` of spill stores and
    of spill loads per thread; ``at_register_cap``: only rows that use every register a thread may have
    (255, or 65,536 / threads). A larger spill, another size or dtype is not accepted."""

    name: str
    kernels: tuple[str, ...]
    dtypes: tuple[str, ...]
    config: str
    max_bytes: int
    reason: str
    at_register_cap: bool = False

    def accepts(self, row: dict[str, Any]) -> bool:
        if row["kernel"] not in self.kernels or row["dtype"] not in self.dtypes:
            return False
        if not re.match(self.config, row["config"]):
            return False
        if max(int(row["spill_stores"]), int(row["spill_loads"])) > self.max_bytes:
            return False
        cap = min(MAX_REGISTERS_PER_THREAD, REGISTERS_PER_SM // int(row["threads"]))
        return not self.at_register_cap or int(row["registers"]) >= cap - 1


_GAUSS = ("_gaussian_read_fwd_kernel", "_gaussian_read_bwd_kernel", "_gaussian_write_fwd_kernel",
          "_gaussian_write_bwd_kernel")
_MEMORY = ("_memory_addressing_fwd_kernel", "_memory_addressing_bwd_dq_kernel", "_memory_addressing_bwd_dk_kernel",
           "_memory_addressing_sample_kernel", "_memory_read_fwd_kernel", "_memory_read_bwd_dq_kernel",
           "_memory_read_bwd_dkv_kernel")
_SMALL_AT_CAP = ("at most 256 B per thread, in a kernel at the register cap: the spilled values go to local "
                 "memory cached in L1 (sm_80/sm_90: up to 256 KB per SM shared with shared memory), a few "
                 "loads per tile against kilobytes of operand traffic; smaller tiles were tried where the "
                 "spill was larger (see gaussian_num_warps, make_plan, dk_tile)")
SPILL_RULES: tuple[SpillRule, ...] = (
    SpillRule(
        "gaussian 128x128 tiles", _GAUSS, ("float32", "float16", "bfloat16"),
        r"N=(16 H=128 W=128 w16|32 H=128 W=128 w32) ", 2560,
        "one 128x128 image per program (105x105 Omniglot, the 128x128 limit) in fp32 FMA dots: 8 warps spilled "
        "3-33 KB per thread; gaussian_num_warps' 16/32 warps bring it to <= 2.5 KB; removing it needs a kernel "
        "that tiles the image rows (not written); the 26-64 px DRAW sizes do not spill this much"),
    SpillRule("gaussian 64x64 tiles, 16/32-bit", _GAUSS, ("float32", "float16", "bfloat16"),
              r"N=32 H=64 W=64 w8 ", 256, _SMALL_AT_CAP, at_register_cap=True),
    SpillRule(
        "float64 gaussian, 64x64", _GAUSS, ("float64",), r"N=32 H=64 W=64 w8 ", 2048,
        "float64 is a reference/test dtype on GPUs (fp64 runs at 1/2 (H100) to 1/64 (consumer) of fp32 rate), "
        "not a training dtype; only the float64 limit case (64x64, N = 32) spills; 4 and 16 warps spilled as much"),
    SpillRule(
        "float64 vimco", ("_vimco_fwd_kernel",), ("float64",), r"B=\d+ K=\d+ w[48] ", 6144,
        "float64 is a reference/test dtype on GPUs, not a training dtype (the models train VIMCO in float32): "
        "the forward's float64 row statistics over [BLOCK_B, K] need twice the registers of float32"),
    SpillRule("vimco, 16/32-bit", ("_vimco_fwd_kernel",), ("float32", "float16", "bfloat16"), r"B=\d+ K=\d+ w[48] ",
              256, _SMALL_AT_CAP, at_register_cap=True),
    SpillRule("memory kernels, one word", _MEMORY, ("float16", "bfloat16"), r"B=32 M=128 D=64 w8 ", 8,
              "4 B (one register) spilled by the tensor-core forward at 80 registers on sm_90: a compiler choice, "
              "one L1 access per program"),
    SpillRule(
        "memory_read dkeys/dvalues, d = dv = 128, float32", ("_memory_read_bwd_dkv_kernel",), ("float32",),
        r"B=16 M=16 D=128 DV=128 w8 ", 512,
        "the program holds the [BLOCK_M, 128] key and value tiles and both gradient accumulators for the whole "
        "loop over B in FMA dots: 344-428 B per thread at the smallest tile the plans use (BLOCK_B = BLOCK_M = 16, "
        "8 warps; 16 is make_plan's and launch_config's minimum, the tl.dot minimum of 16-bit inputs); measured "
        "alternatives (triton 3.9, sm_80/sm_90): BLOCK_B = 8 356-380 B, BLOCK_M = 8 292-312 B, 4 warps 604-652 B "
        "at BLOCK_B = 8, 16 warps 1.7-1.8 KB: none removes it; the spilled values are L1-cached local memory"),
    SpillRule("memory kernels, small", _MEMORY, ("float32", "float16", "bfloat16", "float64"), r"", 256, _SMALL_AT_CAP,
              at_register_cap=True),
)


def accepted_spill(row: dict[str, Any]) -> str | None:
    """The reason a row's spills are accepted (ACCEPTED_SPILLS, then SPILL_RULES), or None."""
    reason = ACCEPTED_SPILLS.get((row["target"], row["kernel"], row["dtype"], row["config"]))
    if reason is not None:
        return reason
    for rule in SPILL_RULES:
        if rule.accepts(row):
            return f"{rule.name} (<= {rule.max_bytes} B): {rule.reason}"
    return None


# ----------------------------------------------------------------------------------------------
# The sizes the models and benchmarks use
# ----------------------------------------------------------------------------------------------

DTYPES = ("float32", "float16", "bfloat16", "float64")


@dataclasses.dataclass(frozen=True)
class MemoryCase:
    """One memory_addressing / memory_read call: G episodes, B queries, M entries, d (and dv).

    ``kl_grad``: whether the loss differentiates the KL (the benchmarks do; VMA logs it detached, so
    its backward drops the prior: HAS_PRIOR=False). ``dtypes``: the dtypes compiled; cases that only
    vary a specialization (similarity, prior, tf32) are compiled in float32.
    """

    source: str
    G: int
    B: int
    M: int
    d: int
    dv: int
    similarity: str = "normalized_dot"  # "dot" has no key scale (HAS_SCALE=False)
    prior: bool = True  # learned prior (HAS_PRIOR) or uniform
    tf32: bool = False
    kl_grad: bool = False
    dtypes: tuple[str, ...] = DTYPES


def memory_cases() -> list[MemoryCase]:
    f32 = ("float32",)
    cases = [
        # configs/vma_strokes.yaml, softattn_strokes.yaml: 8 ways x 4 targets, 32 entries, match/read dim 64
        MemoryCase("models: strokes episode (vma, soft_attention)", 1, 32, 32, 64, 64),
        MemoryCase("models: strokes episode, flat prior", 1, 32, 32, 64, 64, prior=False, dtypes=f32),
        MemoryCase("models: strokes episode, dot similarity", 1, 32, 32, 64, 64, similarity="dot", dtypes=f32),
        # configs/vma_recall.yaml: 2 episodes x 16 targets recalled from 16 entries
        MemoryCase("models: vma_recall", 2, 16, 16, 64, 64),
        # configs/vma_omniglot_small1.yaml: matching space 128 (the paper's); soft_attention default read_dim 128
        MemoryCase("models: omniglot (match_dim 128)", 1, 32, 32, 128, 128),
    ]
    # benchmarks/bench_memory_addressing.py, bench_memory_read.py on CUDA (issue 15's grid)
    for B in (32, 256):
        for M in (10_000, 100_000, 1_000_000, 10_000_000):
            cases.append(MemoryCase(f"bench: B={B} M={M:.0e} d=128", 1, B, M, 128, 128, kl_grad=True))
        cases.append(MemoryCase(f"bench --tf32: B={B} M=1e6 d=128", 1, B, 1_000_000, 128, 128, tf32=True, kl_grad=True,
                                dtypes=f32))
    return cases


@dataclasses.dataclass(frozen=True)
class VimcoCase:
    source: str
    B: int
    K: int
    variants: tuple[str, ...] = ("geometric",)
    dtypes: tuple[str, ...] = DTYPES


def vimco_cases() -> list[VimcoCase]:
    return [
        VimcoCase("models: vma K=4 (32 targets)", 32, 4),
        VimcoCase("models: vma K=4, arithmetic baseline", 32, 4, ("arithmetic",), ("float32",)),
        VimcoCase("bench: 32x4", 32, 4),
        VimcoCase("bench: 1e4x16", 10_000, 16),
        VimcoCase("bench: 1e6x64", 1_000_000, 64),
        VimcoCase("eval: K=1000 importance samples", 100, 1000),
        VimcoCase("limit: K=TRITON_MAX_K", 16, 8192),
    ]


@dataclasses.dataclass(frozen=True)
class GaussianCase:
    source: str
    B: int
    C: int
    H: int
    W: int
    N: int
    ops: tuple[str, ...] = ("read", "write")


def gaussian_cases() -> list[GaussianCase]:
    return [
        GaussianCase("bench: DRAW MNIST step", 256, 1, 28, 28, 12),
        GaussianCase("bench: DRAW colour step", 256, 3, 32, 32, 12),
        GaussianCase("bench: small glimpses", 4096, 1, 28, 28, 5),
        GaussianCase("bench: Omniglot 105x105", 64, 1, 105, 105, 12),
        # DRAW's MNIST attention (Gregor et al. 2015, table 3: read 2x2, write 5x5) on 26x26 strokes
        GaussianCase("models: DRAW on 26x26, read N=2", 32, 1, 26, 26, 2, ("read",)),
        GaussianCase("models: DRAW on 26x26, write N=5", 32, 1, 26, 26, 5, ("write",)),
        # the largest sizes the dispatch sends to Triton (TRITON_MAX_TILE, TRITON_MAX_N)
        GaussianCase("limit: 128x128, N=TRITON_MAX_N", 8, 1, 128, 128, 32),
        GaussianCase("limit float64: 64x64, N=TRITON_MAX_N", 8, 1, 64, 64, 32),
    ]


# The deliberately oversized launch (no dispatch chooses it: float64 stops at 64x64 tiles, N at
# TRITON_MAX_N): the Gaussian read backward at N = 64 on a 128x128 float64 image, 294,912 B of shared
# memory on sm_90 with triton 3.9. (In float32 the same N = 64 backward needs 147,456 B and fits.)
# tests/kernels/test_compile.py shows the check refuses it.
OVERSIZED_PROBE = GaussianCase("probe: float64 read backward at N=64, 128x128 (over the limit)", 2, 1, 128, 128, 64)
OVERSIZED_DTYPE = "float64"


# ----------------------------------------------------------------------------------------------
# Launch capture
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Launch:
    """One recorded kernel launch: the kernel, its positional and keyword arguments (tensors
    replaced by their dtype), and where it came from."""

    module: str
    kernel: str
    args: tuple
    kwargs: dict
    dtype: str  # the op's input dtype
    source: str  # the case that produced it
    flags: str  # op-level options that change the kernel (similarity, prior, tf32, variant)

    def config(self) -> str:
        """The launch configuration: constexpr block sizes, warps, stages."""
        keys = [k for k in self.kwargs if k.startswith("BLOCK_")]
        parts = [f"{k[6:]}={self.kwargs[k]}" for k in keys]
        parts.append(f"w{self.kwargs.get('num_warps', 4)}")
        parts.append(f"s{self.kwargs.get('num_stages', 'd')}")
        return " ".join(parts)

    def specialization(self) -> str:
        """The other constexprs and pointer dtypes (what separates launches of one configuration)."""
        skip = {"num_warps", "num_stages"}
        consts = [f"{k}={_short(v)}" for k, v in self.kwargs.items() if not k.startswith("BLOCK_") and k not in skip
                  and k not in _SIZE_CONSTEXPRS]
        ptrs = ",".join(_short(a) for a in self.args if isinstance(a, _TensorSpec))
        return " ".join(consts + [f"ptrs={ptrs}"])

    def key(self) -> tuple:
        """One compile per table row: kernel, dtype, launch configuration, constexpr and pointer
        specialization. Triton also specializes integer arguments (equal to 1, divisible by 16);
        those variants are represented by the first case's values (``int_classes`` in the CSV)."""
        return (self.module, self.kernel, self.dtype, self.config(), self.specialization())

    def int_classes(self) -> str:
        return ",".join(_int_class(a) for a in self.args if _is_int(a))


def _is_int(a: Any) -> bool:
    return isinstance(a, int) and not isinstance(a, bool)


def _int_class(n: int) -> str:
    """Triton's specialization of an integer argument: the value 1, divisible by 16, or neither (and its width)."""
    width = "i32" if -(2**31) <= n < 2**31 else "i64"
    return f"{width}:1" if n == 1 else f"{width}:16" if n % 16 == 0 else width


# Gaussian image sizes are constexprs too: shown in the configuration column, not the specialization.
_SIZE_CONSTEXPRS = ("N", "H", "W", "SPAN", "EPS", "C_LO", "C_HI", "L_LO", "L_HI")


@dataclasses.dataclass(frozen=True)
class _TensorSpec:
    dtype: str  # "float32"
    aligned: bool  # data_ptr % 16 == 0


def _short(v: Any) -> str:
    if isinstance(v, _TensorSpec):
        return {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "float64": "f64", "int64": "i64",
                "int32": "i32"}.get(v.dtype, v.dtype) + ("" if v.aligned else "(unaligned)")
    name = getattr(v, "name", None)
    if name is not None and type(v).__module__.startswith("triton"):
        return str(name)
    return str(v)


class _Recorder:
    def __init__(self, module: str, name: str, sink: list):
        self.module, self.name, self.sink = module, name, sink

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.sink.append((self.module, self.name, tuple(_spec(a) for a in args), dict(kwargs)))

        return launch


def _spec(a: Any) -> Any:
    import torch

    if isinstance(a, torch.Tensor):
        return _TensorSpec(str(a.dtype).replace("torch.", ""), a.data_ptr() % 16 == 0)
    return a


def jit_kernels() -> dict[tuple[str, str], Any]:
    """Every ``@triton.jit`` kernel (a global named ``_*_kernel``) of the kernel modules."""
    from triton.runtime.jit import JITFunction

    found = {}
    for mod_name in KERNEL_MODULES:
        mod = importlib.import_module(mod_name)
        for name, obj in vars(mod).items():
            if name.endswith("_kernel") and name.startswith("_"):
                if not isinstance(obj, JITFunction):
                    raise RuntimeError(
                        f"{mod_name}.{name} is {type(obj).__name__}, not a JITFunction: the kernel modules were "
                        "imported with TRITON_INTERPRET set; run without it (python -m varmem.kernels.resources does)"
                    )
                found[(mod_name, name)] = obj
    return found


@contextlib.contextmanager
def _recording(sms: int) -> Iterator[list]:
    """Replace every kernel by a recorder and make plans for a GPU with ``sms`` SMs."""
    sink: list = []
    kernels = jit_kernels()
    ma = importlib.import_module("varmem.kernels.memory_addressing")
    saved = {key: fn for key, fn in kernels.items()}
    saved_sms = ma._num_sms
    try:
        for (mod_name, name) in kernels:
            setattr(importlib.import_module(mod_name), name, _Recorder(mod_name, name, sink))
        ma._num_sms = lambda device: sms
        yield sink
    finally:
        for (mod_name, name), fn in saved.items():
            setattr(importlib.import_module(mod_name), name, fn)
        ma._num_sms = saved_sms


def _small(n: int, cap: int) -> int:
    """A stand-in length for a large axis: at most ``cap``, same remainder mod 16 (Triton
    specializes integers on divisibility by 16)."""
    return n if n <= cap else cap - (cap % 16) + (n % 16)


def _torch_dtype(name: str):
    import torch

    return getattr(torch, name)


def capture_memory(case: MemoryCase, dtype_name: str, sms: int) -> list[Launch]:
    """Launches of memory_addressing (forward, backward, sampling) and memory_read (forward, backward)."""
    import torch

    ma = importlib.import_module("varmem.kernels.memory_addressing")
    mr = importlib.import_module("varmem.kernels.memory_read")
    dt = _torch_dtype(dtype_name)
    acc = ma.acc_dtype(dt)
    G, B, d, dv = case.G, case.B, case.d, case.dv
    M = _small(case.M, 4096)
    cpu = torch.device("cpu")
    flags = f"{case.similarity}{' prior' if case.prior else ' uniform'}{' tf32' if case.tf32 else ''}"
    out: list[Launch] = []
    with _recording(sms) as sink:
        q = torch.zeros(G, B, d, dtype=dt)
        k = torch.ones(G, M, d, dtype=dt)
        v = torch.ones(G, M, dv, dtype=dt)
        r = None if case.similarity == "dot" else torch.ones(G, M, dtype=acc)
        lp = torch.full((G, M), -1.0, dtype=acc) if case.prior else None
        plan = ma.make_plan(G, B, case.M, d, dt, cpu, tf32=case.tf32)
        ma.memory_addressing_forward(q, k, r, lp, plan)
        lse, kl, g = torch.zeros(G, B, dtype=acc), torch.zeros(G, B, dtype=acc), torch.ones(G, B, dtype=acc)
        if case.kl_grad:
            ma.memory_addressing_backward(q, k, r, lp, lse, kl, g, g, plan, (True, True, r is not None, lp is not None))
        else:  # KL not differentiated: MemoryAddressing.backward drops the prior
            ma.memory_addressing_backward(q, k, r, None, lse, kl, g, torch.zeros_like(g), plan,
                                          (True, True, r is not None, False))
        S = plan.num_splits
        ma.memory_addressing_sample(q, k, r, torch.zeros(G, S, B, dtype=acc), torch.ones(G, S, B, dtype=acc), 4, plan)
        for rec in sink:
            out.append(Launch(*rec[:4], dtype_name, case.source, flags))
        sink.clear()
        if case.prior:  # memory_read has no prior: one read per (shape, similarity, tf32)
            read_plan = ma.make_plan(G, B, case.M, d, dt, cpu, tf32=case.tf32, dv=dv)
            o, lse_r = mr.memory_read_forward(q, k, r, v, read_plan)
            mr.memory_read_backward(q, k, r, v, o, lse_r, torch.ones(G, B, dv, dtype=dt), read_plan, (True, True, r is not None, True))
            rflags = f"{case.similarity}{' tf32' if case.tf32 else ''}"
            for rec in sink:
                out.append(Launch(*rec[:4], dtype_name, case.source, rflags))
    return out


def capture_vimco(case: VimcoCase, dtype_name: str) -> list[Launch]:
    import torch

    vm = importlib.import_module("varmem.kernels.vimco")
    dt = _torch_dtype(dtype_name)
    B = _small(case.B, 8192)
    out: list[Launch] = []
    with _recording(1) as sink:
        for variant in case.variants:
            x = torch.zeros(B, case.K, dtype=dt)
            # B stands in for case.B: the launch configuration depends on B only below 4096 rows
            assert vm._launch_config(B, case.K) == vm._launch_config(case.B, case.K)
            _, w, _ = vm.vimco_forward(x, variant)  # vimco
            vm.vimco_backward(w, torch.zeros(B, dtype=dt), torch.zeros_like(w))
            for rec in sink:
                out.append(Launch(*rec[:4], dtype_name, case.source, f"{variant} vimco"))
            sink.clear()
            _, w, sig = vm.vimco_forward(x, variant, signal=True)  # vimco_surrogate
            vm.vimco_backward(w, torch.zeros(B, dtype=dt), None, sig, dt)
            for rec in sink:
                out.append(Launch(*rec[:4], dtype_name, case.source, f"{variant} surrogate"))
            sink.clear()
    return out


def capture_gaussian(case: GaussianCase, dtype_name: str) -> list[Launch]:
    import torch

    ga = importlib.import_module("varmem.kernels.gaussian_attention")
    dt = _torch_dtype(dtype_name)
    B = min(case.B, 2)  # B and C only size the grid
    out: list[Launch] = []
    with _recording(1) as sink:
        x = torch.zeros(B, case.C, case.H, case.W, dtype=dt)
        w = torch.zeros(B, case.C, case.N, case.N, dtype=dt)
        p = torch.zeros(B, 5, dtype=dt)
        if "read" in case.ops:
            ga.gaussian_read_forward(x, p, case.N)
            ga.gaussian_read_backward(w, x, p, case.N)
        if "write" in case.ops:
            ga.gaussian_write_forward(w, p, case.H, case.W)
            ga.gaussian_write_backward(x, w, p, case.H, case.W)
        for rec in sink:
            out.append(Launch(*rec[:4], dtype_name, case.source, ""))
    return out


def gaussian_dispatch_allows(case: GaussianCase, dtype_name: str) -> bool:
    """Whether gaussian_read/write send this size to Triton (else the reference serves it)."""
    ga = importlib.import_module("varmem.kernels.gaussian_attention")
    return ga.size_reason(_torch_dtype(dtype_name), case.N, case.H, case.W) is None


def vimco_dispatch_allows(case: VimcoCase) -> bool:
    vm = importlib.import_module("varmem.kernels.vimco")
    return case.K <= vm.TRITON_MAX_K


def all_launches(target: Target) -> list[Launch]:
    """Every distinct launch the dispatch code chooses for the cases above, on ``target``'s GPU."""
    launches: list[Launch] = []
    for dtype in DTYPES:
        for case in memory_cases():
            if dtype in case.dtypes:
                launches += capture_memory(case, dtype, target.sms)
        for case in vimco_cases():
            if dtype in case.dtypes and vimco_dispatch_allows(case):
                launches += capture_vimco(case, dtype)
        for case in gaussian_cases():
            if gaussian_dispatch_allows(case, dtype):
                launches += capture_gaussian(case, dtype)
    return dedupe(launches)


def dedupe(launches: Sequence[Launch]) -> list[Launch]:
    """One launch per distinct (kernel, arguments, constexprs); its sources joined."""
    by_key: dict[tuple, Launch] = {}
    for launch in launches:
        key = launch.key()
        if key in by_key:
            first = by_key[key]
            if launch.source not in first.source.split("; "):
                first.source += "; " + launch.source
            if launch.flags and launch.flags not in first.flags.split(" | "):
                first.flags = f"{first.flags} | {launch.flags}" if first.flags else launch.flags
        else:
            by_key[key] = dataclasses.replace(launch)
    return list(by_key.values())


# ----------------------------------------------------------------------------------------------
# Compilation for a target without a device
# ----------------------------------------------------------------------------------------------


class _TargetDriver:
    """The part of a Triton driver that ``JITFunction.warmup`` asks: the target, a device, a stream."""

    def __init__(self, capability: int):
        from triton.backends.compiler import GPUTarget

        self.target = GPUTarget("cuda", capability, 32)
        self.device = capability  # one kernel cache per target inside each JITFunction

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return self.device

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")

    def is_active(self):
        return True


_PTXAS_RE = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_stores": re.compile(r"(\d+) bytes spill stores"),
    "spill_loads": re.compile(r"(\d+) bytes spill loads"),
}


def parse_ptxas(log: str) -> dict[str, int]:
    """Registers, stack frame and spills from a ``ptxas -v`` log (one entry function)."""
    out = {}
    for key, rx in _PTXAS_RE.items():
        m = rx.search(log)
        if m is None:
            raise ValueError(f"ptxas -v log has no {key!r}: {log[-400:]!r}")
        out[key] = int(m.group(1))
    return out


def _ptxas_path(capability: int) -> str:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        return get_ptxas(capability).path
    except ImportError:  # older triton: one ptxas
        from triton import knobs

        return knobs.nvidia.ptxas.path


def run_ptxas(ptx: str, capability: int) -> str:
    """``ptxas -v`` on ``ptx`` with the flags Triton uses; returns the log."""
    from triton.backends.nvidia.compiler import sm_arch_from_capability

    arch = sm_arch_from_capability(capability)
    with _tempdir() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        cmd = [_ptxas_path(capability), "-lineinfo", "-v", "--regAllocOptLevel=2", f"--gpu-name={arch}", str(src),
               "-o", str(Path(tmp) / "k.cubin")]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ptxas failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stderr + done.stdout


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="varmem-aot-") as tmp:
        yield tmp


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "varmem" / "aot"


class _Hashed(Exception):
    """Raised instead of compiling: carries the Triton hash of the compile that would run."""


def _prepare(launch: Launch, target: Target, fn: Any) -> list:
    """Point Triton at ``target`` and return the launch's arguments (tensors as MockTensor)."""
    from triton.runtime import driver
    from triton.runtime.jit import MockTensor

    driver.set_active(_TargetDriver(target.capability))
    fn.device_caches[target.capability]  # builds the binder (and sets fn.compile) for this target
    return [MockTensor(_torch_dtype(a.dtype)) if isinstance(a, _TensorSpec) else a for a in launch.args]


def launch_hash(launch: Launch, target: Target, fn: Any) -> str:
    """The hash Triton gives this compile (its cache key: kernel source and dependencies, signature,
    constexprs, options, target, triton and ptxas versions), without compiling."""
    from triton.compiler import compiler as tc

    args = _prepare(launch, target, fn)
    real = fn.compile

    def hash_only(src, target=None, options=None, _env_vars=None):
        backend = tc.make_backend(target)
        opts = backend.parse_options(dict(options or {}, **src.parse_options()))
        env = tc.get_cache_invalidating_env_vars() if _env_vars is None else _env_vars
        raise _Hashed(hashlib.sha256(tc.get_cache_key(src, backend, opts, env_vars=env).encode("utf-8")).hexdigest())

    fn.compile = hash_only
    try:
        compiled = fn.warmup(*args, grid=(1,), **launch.kwargs)  # compiled before in this process
        return compiled.hash
    except _Hashed as h:
        return h.args[0]
    finally:
        fn.compile = real


RECORD_KEYS = ("shared_bytes", "registers", "stack_bytes", "spill_stores", "spill_loads")


def compile_launch(launch: Launch, target: Target, fn: Any) -> dict[str, Any]:
    """Compile one launch for ``target`` and return its resource record (or the compile error)."""
    from triton import knobs

    args = _prepare(launch, target, fn)
    rec: dict[str, Any] = {"target": target.name, "from": "compiled"}
    t0 = time.perf_counter()
    log = io.StringIO()
    try:
        knobs.nvidia.dump_ptxas_log = True
        with contextlib.redirect_stdout(log):
            compiled = fn.warmup(*args, grid=(1,), **launch.kwargs)
    except Exception as exc:  # a compile error is a result (the check fails on it)
        msg = str(exc).strip()
        rec.update(error=f"{type(exc).__name__}: {msg.splitlines()[0][:300] if msg else ''}")
        rec["compile_s"] = time.perf_counter() - t0
        return rec
    finally:
        knobs.nvidia.dump_ptxas_log = False
    md = compiled.metadata
    rec.update(shared_bytes=int(md.shared), num_warps=int(md.num_warps), num_stages=int(md.num_stages),
               triton_hash=compiled.hash)
    if "Used " in log.getvalue():
        rec.update(parse_ptxas(log.getvalue()))
    else:  # Triton's cache served the cubin: run ptxas -v on its PTX
        rec.update(parse_ptxas(run_ptxas(compiled.asm["ptx"], target.capability)))
    rec["compile_s"] = time.perf_counter() - t0
    return rec


def _record_path(target: Target, h: str) -> Path:
    return cache_dir() / f"{target.name}-{h}.json"


def _save_record(target: Target, rec: dict[str, Any]) -> None:
    try:
        path = _record_path(target, rec["triton_hash"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({k: rec[k] for k in RECORD_KEYS}))
        tmp.replace(path)
    except OSError:
        pass


def known_record(target: Target, h: str, table: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any] | None:
    """The figures of a compile with Triton hash ``h``: from the committed table, else the user cache."""
    row = table.get((target.name, h))
    if row is not None:
        return {**{k: int(row[k]) for k in RECORD_KEYS}, "from": "table"}
    try:
        rec = json.loads(_record_path(target, h).read_text())
        if all(k in rec for k in RECORD_KEYS):
            return {**rec, "from": "cache"}
    except (OSError, json.JSONDecodeError):
        pass
    return None


def _quiet() -> None:
    """Triton 3.9 warns that its fp-fusion default will change; the compiles here use the default a GPU user gets."""
    import warnings

    warnings.filterwarnings("ignore", message="TRITON_DEFAULT_FP_FUSION")


def _compile_chunk(items: list[tuple[Launch, str]], table: dict | None = None, reuse: bool = True) -> list[dict[str, Any]]:
    _quiet()
    kernels = jit_kernels()
    out = []
    for launch, t in items:
        target, fn = TARGETS[t], kernels[(launch.module, launch.kernel)]
        t0 = time.perf_counter()
        h = launch_hash(launch, target, fn)
        rec = known_record(target, h, table or {}) if reuse else None
        if rec is not None:
            rec.update(target=t, triton_hash=h, compile_s=time.perf_counter() - t0)
        else:
            rec = compile_launch(launch, target, fn)
            if "error" not in rec:
                _save_record(target, rec)
        out.append(rec)
    return out


def table_index(table: Sequence[dict[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["target"], r["triton_hash"]): r for r in table if r.get("triton_hash") and not r.get("error")}


def compile_all(launches_by_target: dict[str, list[Launch]], jobs: int = 1, table: Sequence[dict[str, str]] = (),
                reuse: bool = True) -> list[dict[str, Any]]:
    """Compile every launch for its target (``jobs`` processes), reusing the figures of compiles with
    the same Triton hash from ``table`` or the user cache when ``reuse``. One row per launch."""
    items = [(launch, t) for t, ls in launches_by_target.items() for launch in ls]
    index = table_index(table)
    if jobs <= 1 or len(items) < 2:
        recs = _compile_chunk(items, index, reuse)
    else:
        import multiprocessing

        chunks = [items[i::jobs] for i in range(jobs)]
        with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_compile_chunk, chunks, [index] * jobs, [reuse] * jobs))
        recs = [None] * len(items)
        for i, part in enumerate(parts):
            for j, rec in enumerate(part):
                recs[i + j * jobs] = rec
    return [make_row(launch, rec) for (launch, _), rec in zip(items, recs)]


# ----------------------------------------------------------------------------------------------
# Rows, checks, table
# ----------------------------------------------------------------------------------------------

COLUMNS = ("target", "kernel", "dtype", "config", "specialization", "shared_bytes", "shared_limit", "registers",
           "threads", "spill_stores", "spill_loads", "stack_bytes", "status", "reason", "flags", "source", "int_classes", "triton_hash")


def make_row(launch: Launch, rec: dict[str, Any]) -> dict[str, Any]:
    target = TARGETS[rec["target"]]
    row = {
        "target": target.name,
        "kernel": launch.kernel,
        "dtype": launch.dtype,
        "config": launch.config() + _size_config(launch),
        "specialization": launch.specialization(),
        "shared_limit": target.max_shared,
        "threads": 32 * int(launch.kwargs.get("num_warps", 4)),
        "flags": launch.flags,
        "source": launch.source,
        "int_classes": launch.int_classes(),
    }
    for key in ("shared_bytes", "registers", "spill_stores", "spill_loads", "stack_bytes", "error", "compile_s",
                "triton_hash", "from"):
        if key in rec:
            row[key] = rec[key]
    row["status"], row["reason"] = status(row)
    return row


def _size_config(launch: Launch) -> str:
    if "N" in launch.kwargs and "H" in launch.kwargs:
        return f" (N={launch.kwargs['N']} H={launch.kwargs['H']} W={launch.kwargs['W']})"
    return ""


def row_id(row: dict[str, Any]) -> tuple[str, str, str, str, str]:
    return (row["target"], row["kernel"], row["dtype"], row["config"], row["specialization"])


def status(row: dict[str, Any]) -> tuple[str, str]:
    """("ok" | "accepted" | "FAIL", reason) for one compiled launch."""
    if row.get("error"):
        return "FAIL", f"compile error: {row['error']}"
    problems = []
    if row["shared_bytes"] > row["shared_limit"]:
        problems.append(f"shared memory {row['shared_bytes']:,} B > {row['shared_limit']:,} B per block on {row['target']}")
    if row["registers"] * row["threads"] > REGISTERS_PER_SM:
        problems.append(f"{row['registers']} registers x {row['threads']} threads > {REGISTERS_PER_SM:,} per SM")
    if problems:
        return "FAIL", "; ".join(problems)
    if row["spill_stores"] or row["spill_loads"]:
        accepted = accepted_spill(row)
        if accepted is None:
            return "FAIL", (f"register spills ({row['spill_stores']} B stores, {row['spill_loads']} B loads) not accepted in "
                            "kernels/resources.py ACCEPTED_SPILLS or SPILL_RULES")
        return "accepted", f"spills accepted: {accepted}"
    return "ok", ""


def failures(rows: Sequence[dict[str, Any]]) -> list[str]:
    return [f"{r['target']} {r['kernel']} {r['dtype']} [{r['config']}] {r['specialization']}: {r['reason']}"
            for r in rows if r["status"] == "FAIL"]


def write_table(rows: Sequence[dict[str, Any]], meta: dict[str, Any], md_path: Path = TABLE_MD, csv_path: Path = TABLE_CSV) -> None:
    from varmem.episodes.files import atomic_write_text

    rows = sorted(rows, key=lambda r: (r["kernel"], r["target"], DTYPES.index(r["dtype"]), r["config"], r["specialization"]))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    atomic_write_text(md_path, render_markdown(rows, meta))


def render_markdown(rows: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Triton kernel resources for sm_80 (A100) and sm_90 (H100/H200)",
        "",
        "Generated by `python -m varmem.kernels.resources --write` (do not edit by hand); guarded by",
        "`tests/kernels/test_compile.py`, which fails on a compile error, shared memory over the per-block limit,",
        "registers × threads over 65,536, register spills not accepted in `ACCEPTED_SPILLS` of",
        "`kernels/resources.py`, or a table that no longer matches what the dispatch code launches. Rows: every",
        "launch configuration the dispatch code chooses for the sizes of the models and benchmarks (listed in",
        "`kernels/resources.py`: `memory_cases`, `vimco_cases`, `gaussian_cases`), in every dtype the kernel",
        "accepts, compiled ahead of time on a CPU with the ptxas of the Triton wheel. The same rows, with the",
        "sizes and flags each comes from and its Triton hash, in `kernels/RESOURCES.csv`.",
        "",
        f"- triton {meta['triton']}, torch {meta['torch']}; ptxas: {meta['ptxas']}",
        "- limits: shared memory per block (opt-in) sm_80 166,912 B, sm_90 232,448 B; 65,536 registers per SM",
        f"- {len(rows)} compiles ({meta['launches']}); config: constexpr block sizes, `w` = num_warps, "
        "`s` = num_stages (`sd`: Triton's default, 3)",
        "",
        "## Per kernel: the largest figures over all dtypes and configurations",
        "",
        "| kernel | target | compiles | max shared B | % of limit | max regs | rows with spills | status |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    groups: dict[tuple[str, str], list] = {}
    for r in rows:
        groups.setdefault((r["kernel"], r["target"]), []).append(r)
    for (kernel, target), rs in sorted(groups.items()):
        ok = [r for r in rs if not r.get("error")]
        smax = max((r["shared_bytes"] for r in ok), default=0)
        lim = TARGETS[target].max_shared
        spills = sum(1 for r in ok if r["spill_stores"] or r["spill_loads"])
        states = sorted({r["status"] for r in rs})
        lines.append(f"| {kernel} | {target} | {len(rs)} | {smax:,} | {100.0 * smax / lim:.0f}% | "
                     f"{max((r['registers'] for r in ok), default=0)} | {spills} | {', '.join(states)} |")
    lines += [
        "",
        "## Every compile",
        "",
        "| target | kernel | dtype | config | specialization | shared B | % of limit | regs | spills (st/ld B) | status |",
        "|---|---|---|---|---|---:|---:|---:|---|---|",
    ]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['target']} | {r['kernel']} | {r['dtype']} | {r['config']} | {r['specialization']} | - | - | - | - | "
                         f"FAIL: {r['reason']} |")
            continue
        pct = 100.0 * r["shared_bytes"] / r["shared_limit"]
        st = r["status"] + (f": {r['reason']}" if r["reason"] else "")
        lines.append(f"| {r['target']} | {r['kernel']} | {r['dtype']} | {r['config']} | {r['specialization']} | "
                     f"{r['shared_bytes']:,} | {pct:.0f}% | {r['registers']} | {r['spill_stores']}/{r['spill_loads']} | {st} |")
    lines.append("")
    return "\n".join(lines)


def read_table(csv_path: Path = TABLE_CSV) -> list[dict[str, str]]:
    with csv_path.open(newline="") as f:
        return list(csv.DictReader(f))


def compare_with_table(rows: Sequence[dict[str, Any]], table: Sequence[dict[str, str]], same_versions: bool) -> list[str]:
    """Differences between freshly compiled rows and the committed table: rows missing on either side
    always; resource figures only when compiled with the table's triton version."""
    fresh = {row_id(r): r for r in rows}
    committed = {row_id(r): r for r in table}
    problems = []
    for k in sorted(set(fresh) - set(committed)):
        problems.append(f"not in kernels/RESOURCES.csv: {' '.join(k)}")
    for k in sorted(set(committed) - set(fresh)):
        problems.append(f"in kernels/RESOURCES.csv but no longer launched: {' '.join(k)}")
    if same_versions:
        for k in sorted(set(fresh) & set(committed)):
            for col in ("shared_bytes", "registers", "spill_stores", "spill_loads"):
                a, b = fresh[k].get(col), committed[k].get(col)
                if str(a) != str(b):
                    problems.append(f"{' '.join(k)}: {col} {b} in the table, {a} compiled now")
    return problems


def versions() -> dict[str, str]:
    import torch
    import triton

    try:
        out = subprocess.run([_ptxas_path(90), "--version"], capture_output=True, text=True).stdout
        ptxas = out.strip().splitlines()[-1]
    except Exception as exc:  # pragma: no cover
        ptxas = f"unknown ({exc})"
    return {"triton": triton.__version__, "torch": torch.__version__.split("+")[0], "ptxas": ptxas}


def collect(targets: Sequence[str] = tuple(TARGETS), jobs: int = 1, table: Sequence[dict[str, str]] = (),
            reuse: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Capture and compile every launch for ``targets``: (rows, metadata with timings)."""
    t0 = time.perf_counter()
    launches = {t: all_launches(TARGETS[t]) for t in targets}
    t1 = time.perf_counter()
    rows = compile_all(launches, jobs=jobs, table=table, reuse=reuse)
    t2 = time.perf_counter()
    origin = {k: sum(1 for r in rows if r.get("from") == k) for k in ("compiled", "table", "cache")}
    meta = {**versions(), "launches": ", ".join(f"{t}: {len(v)}" for t, v in launches.items()),
            "capture_s": round(t1 - t0, 2), "compile_s": round(t2 - t1, 2), "jobs": jobs, "from": origin}
    return rows, meta


def verify_sample(rows: Sequence[dict[str, Any]], targets: Sequence[str], jobs: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    """Compile the first launch of every kernel for every target for real (a fresh Triton cache, no
    reuse) and compare with ``rows``: the figures reused by Triton hash must be what a compile gives."""
    import tempfile

    wanted: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows:
        if r["target"] in targets and not r.get("error"):
            wanted.setdefault((r["target"], r["kernel"]), r)
    launches: dict[str, list[Launch]] = {t: [] for t in targets}
    by_id = {}
    for t in targets:
        for la in all_launches(TARGETS[t]):
            by_id[(t, la.kernel, la.dtype, la.config() + _size_config(la), la.specialization())] = la
    for (t, _), r in wanted.items():
        launches[t].append(by_id[row_id(r)])
    saved = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory(prefix="varmem-aot-verify-") as tmp:
        os.environ["TRITON_CACHE_DIR"] = tmp
        try:
            fresh = compile_all(launches, jobs=jobs, reuse=False)
        finally:
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR", None)
            else:
                os.environ["TRITON_CACHE_DIR"] = saved
    problems = []
    for f in fresh:
        r = wanted[(f["target"], f["kernel"])]
        for col in ("shared_bytes", "registers", "spill_stores", "spill_loads", "triton_hash"):
            if str(f.get(col)) != str(r.get(col)):
                problems.append(f"{' '.join(row_id(f))}: {col} {r.get(col)} reused, {f.get(col)} compiled")
    return fresh, problems


def probe_oversized(target: str = "sm_90") -> dict[str, Any]:
    """Compile the deliberately oversized Gaussian read backward (N=64, 128x128, float64) and return its row."""
    launches = [la for la in capture_gaussian(OVERSIZED_PROBE, OVERSIZED_DTYPE) if la.kernel == "_gaussian_read_bwd_kernel"]
    return compile_all({target: launches})[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m varmem.kernels.resources", description=__doc__.splitlines()[0])
    p.add_argument("--write", action="store_true", help="regenerate kernels/RESOURCES.md and kernels/RESOURCES.csv")
    p.add_argument("--check", action="store_true", help="fail (exit 1) on limits, unaccepted spills or a stale table")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="compile processes (default 2)")
    p.add_argument("--targets", default=",".join(TARGETS), help="comma list of sm_80,sm_90")
    p.add_argument("--no-reuse", action="store_true",
                   help="compile everything; by default a launch whose Triton hash is in the table or the cache is not recompiled")
    p.add_argument("--verify-sample", action="store_true",
                   help="also compile one launch of every kernel per target for real and compare with the reused figures")
    p.add_argument("--json", default=None, help="also write every row and the timings to this JSON file")
    p.add_argument("--probe-oversized", action="store_true", help="also compile the oversized Gaussian backward (N=64, float64)")
    args = p.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):  # kernels must be JITFunctions: run again without it
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        return subprocess.call([sys.executable, "-m", "varmem.kernels.resources", *(argv if argv is not None else sys.argv[1:])],
                               env=env)
    _quiet()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    for t in targets:
        if t not in TARGETS:
            p.error(f"--targets: {t!r} is not one of {', '.join(TARGETS)}")
    table = read_table() if TABLE_CSV.exists() else []
    rows, meta = collect(targets, jobs=args.jobs, table=table, reuse=not args.no_reuse)
    result: dict[str, Any] = {"meta": meta, "rows": rows}
    problems: list[str] = []
    if args.verify_sample:
        t0 = time.perf_counter()
        fresh, problems = verify_sample(rows, targets, jobs=args.jobs)
        result["verify"] = {"rows": fresh, "seconds": round(time.perf_counter() - t0, 2)}
    if args.probe_oversized:
        result["oversized"] = probe_oversized()
    bad = failures(rows)
    if args.check and table:
        problems += compare_with_table(rows, table, same_versions=_table_triton_version() == meta["triton"])
    elif args.check:
        problems.append("kernels/RESOURCES.csv is missing: run python -m varmem.kernels.resources --write")
    result["failures"], result["table_problems"] = bad, problems
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.write:
        write_table(rows, meta)
        print(f"wrote {TABLE_MD} and {TABLE_CSV}")
    print(f"{len(rows)} launches ({meta['launches']}): {meta['from']['compiled']} compiled, {meta['from']['table']} "
          f"reused from the table, {meta['from']['cache']} from {cache_dir()}, by Triton hash; {meta['compile_s']} s "
          f"with {args.jobs} jobs (capture {meta['capture_s']} s); {len(bad)} failing")
    for line in bad:
        print("FAIL", line)
    for line in problems[:20]:
        print("TABLE", line)
    if problems:
        print("the table is stale or wrong: run python -m varmem.kernels.resources --write")
    return 1 if (args.check and (bad or problems)) else 0


def _table_triton_version() -> str | None:
    try:
        m = re.search(r"- triton (\S+),", TABLE_MD.read_text())
    except OSError:
        return None
    return m.group(1) if m else None


if __name__ == "__main__":
    raise SystemExit(main())
