"""Variational Memory Addressing: the posterior over memory addresses, streamed over M.

VMA (Bornschein et al. 2017) reads one memory entry ``a`` per sample from

    S(e_q, e_a) = <e_q, e_a> / ||e_a||_2                                   (VMA eq. 5)
    q(a | x_b)  = softmax_a S(e_q(x_b), e_a)                               (VMA eq. 5)
    p(a)        = softmax_a S(e_p, e_a)  (learned prior query e_p), or 1/M

and needs, per query row b: K exact samples a_k ~ q(a|x_b), log q(a_k|x_b), log p(a_k),
KL(q(a|x_b) || p(a)) over all M entries, and the log-normalizer lse_b = log Σ_a exp S[b, a].

``similarity`` picks S: ``"normalized_dot"`` (eq. 5, the default), ``"dot"`` (<e_q, e_a>)
or ``"cosine"`` (both sides normalized).

Zero-norm convention (both backends): a norm is clamped below by ``NORM_EPS`` = 1e-6,
S = <e_q, e_a> / max(||e_a||, NORM_EPS). A zero key therefore has S = 0 exactly (it gets
the weight of a logit 0), and every gradient is finite: d S / d e_a = e_q / NORM_EPS at
e_a = 0, the gradient of the clamped formula (large, 1e6·|e_q|; for float16 keys it can
overflow to inf when |dS·e_q| > 0.065 -- use float32/bfloat16 keys if zero keys are expected).
Cosine clamps the query norm the same way.

Dtypes of the inputs: query, keys and prior_query must be floating point; anything else
(integer, bool, complex) raises ``ValueError`` naming the argument and its dtype (both backends).

Invalid rows (both backends, identical): a query row whose log-normalizer lse_b = log Σ_a exp S
is not finite -- a NaN or +inf logit, or all logits -inf; e.g. a NaN or inf in that query, a
NaN in any key (which invalidates every row), or a product that overflows -- is *invalid*:
its ``addresses`` are all ``INVALID_ADDRESS`` = -1 (never a valid address; ``torch.gather``
and ``index_select`` refuse it, but ``tensor[addresses]`` wraps -1 to the last entry, so
callers mask or check it), and its ``log_q``, ``log_prior``, ``kl`` and
``log_normalizer`` are NaN. Differentiating those outputs gives NaN gradients for every input
they depend on -- the row's query, every key of its episode (each takes part in the row's
softmax) and prior_query -- whatever the upstream gradient, 0 included (NaN is not masked by 0).
Nothing synchronizes with the host: the -1 and NaN are set on the device with ``torch.where``;
callers that must stop check ``(addresses < 0).any()`` (or ``log_normalizer.isnan()``) where a
sync is acceptable. Entries with S = -inf in a valid row have q = 0: they are never sampled and
add 0 to the KL (0 log 0 = 0). A learned prior whose logits have no finite log-sum-exp makes
``log p`` NaN for the whole episode: ``log_prior`` and ``kl`` are NaN there (and their gradients),
while ``addresses`` and ``log_q`` are unaffected; if the prior gives probability 0 to an entry
with q > 0, the KL is +inf. Infinite inputs in valid rows may still give NaN gradients where a
product 0 · inf arises (as in any matrix product).

Backends (see ``varmem.kernels.dispatch``):

* ``reference``: dense PyTorch on the [G, B, M] logits; the CPU path, the test oracle. Under ``auto``,
  a memory of at least ``STREAM_MIN_ENTRIES`` entries that would go to the reference goes to
  ``memory_addressing_stream`` instead (kernels/memory_addressing_stream.py: the same posterior
  streamed over M, never B×M); a forced ``reference`` always gets the dense oracle.
* ``triton``: never writes a B×M tensor. Cheap O(M·d) pieces stay in torch (inverse key norms,
  prior log-probabilities [G, M]); the B×M work is in kernels:

  - ``_memory_addressing_fwd_kernel``: grid (row blocks × splits of M, G); each program streams
    its split with an online softmax (flash-decoding) and writes, per (g, split, b), the running
    max m, Σ exp(S − m) and Σ exp(S − m)(S − m − log p_a). Splits are merged in torch.
  - ``_memory_addressing_bwd_dq_kernel``: grid (row blocks × splits, G), recomputes
    q(a|x) = exp(S − lse) and writes per-split partial dq (summed in torch; no atomics).
  - ``_memory_addressing_bwd_dk_kernel``: grid (M-blocks × splits of B, G), loops over its
    rows of B for d e_a, the gradient of the inverse norm and d log p_a; splits of B (only when
    the M-blocks do not fill the device) are summed in torch (no atomics, deterministic).
  - ``_memory_addressing_sample_kernel``: exact inverse-CDF sampling inside one split.

Exact sampling without per-element noise: the forward's per-split log-sum-exps give
P(split s | b) = Z_s / Z; torch draws the split (``torch.multinomial`` with ``generator``), then
a uniform u (``torch.rand`` with ``generator``); the sample kernel walks the chosen split,
accumulating exp(S − m_s) until the running sum exceeds u·Σ_s, which picks a with probability
exp(S_a)/Z_s. Together P(a) = exp(S_a)/Z (exact up to floating-point rounding, like
``torch.multinomial``). Split sizes are capped at ``SAMPLE_SPLIT_CAP`` so that a sample costs
at most that many key reads. Samples are grouped by (g, split) in torch, so one program scores
up to BLOCK_S samples' queries against each key tile with one ``tl.dot``.

log q(a_k|x_b) = S(e_q, e_{a_k}) − lse_b is computed in torch from the K gathered keys, with
lse_b from the custom autograd Function, so autograd handles it.

Autograd: ``log_q``, ``log_prior``, ``kl`` and ``log_normalizer`` are differentiable with
respect to query, keys and prior_query; ``addresses`` are not. Double backward is not
supported by the Triton backend (``once_differentiable``, and a backward called with
``create_graph=True`` raises); the reference supports it.

Dtypes: float16/bfloat16/float32/float64. For 16-bit inputs the log-probabilities and KL are
returned in float32 (both backends compute them in float32; the key norms and prior logits in
torch use a float32 copy of the keys). Float32 products use IEEE fp32 in ``tl.dot`` unless
``tf32=True`` (faster on GPU, ~1e-3 relative error in S).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import math
from collections.abc import Iterator
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from varmem.kernels.dispatch import choose, dtype_reason, interpret_mode, requested_backend, triton_device_reason

SIMILARITIES = ("normalized_dot", "dot", "cosine")
NORM_EPS = 1e-6
INVALID_ADDRESS = -1  # the address sampled for a row whose log-normalizer is not finite
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MAX_GROUPS = 65535  # G runs on CUDA grid axis 1
MAX_HEAD_DIM = 256  # the [BLOCK_M, d] key tile and the [BLOCK_B, d] query tile stay on chip
# Unmeasured heuristics (no GPU was available when these were written; tune with
# benchmarks/bench_memory_addressing.py on the target GPU and record the result here):
PROGRAMS_PER_SM = 4  # flash-decoding: split M until about this many programs per SM
SAMPLE_SPLIT_CAP = 4096  # entries per forward split at most: the cost of one sample in keys read


# ----------------------------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LaunchConfig:
    """Overrides for tile sizes and splits; ``None`` keeps the heuristic. Tests use it to force
    many splits with small blocks: ``with launch_config(block_m=16, split_size=32): ...``."""

    block_b: int | None = None  # query rows per program (power of two, >= 16)
    block_m: int | None = None  # memory entries per inner-loop tile (power of two, >= 16)
    split_size: int | None = None  # entries per forward split (rounded up to block_m)
    bwd_split_size: int | None = None  # entries per dq / read-forward split (rounded up to block_m)
    row_split_size: int | None = None  # query rows per dkeys split (rounded up to block_b)
    sample_block: int | None = None  # samples per program in the sampling kernel (power of two, >= 16)
    num_warps: int | None = None
    num_stages: int | None = None

    def __post_init__(self) -> None:
        for name in ("block_b", "block_m", "sample_block"):
            v = getattr(self, name)
            if v is not None and (v < 16 or v & (v - 1)):
                raise ValueError(f"launch_config {name}={v} must be a power of two >= 16")
        for name in ("split_size", "bwd_split_size", "row_split_size", "num_warps", "num_stages"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ValueError(f"launch_config {name}={v} must be >= 1")


_LAUNCH: contextvars.ContextVar[LaunchConfig] = contextvars.ContextVar("varmem_launch", default=LaunchConfig())


@contextlib.contextmanager
def launch_config(**overrides: int | None) -> Iterator[LaunchConfig]:
    """Override tile sizes / split sizes of the memory kernels inside a ``with`` block."""
    cfg = dataclasses.replace(_LAUNCH.get(), **overrides)
    token = _LAUNCH.set(cfg)
    try:
        yield cfg
    finally:
        _LAUNCH.reset(token)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Tile sizes and split layout of one call (computed once, used by forward, backward, sampling)."""

    block_b: int
    block_m: int
    block_d: int
    split_size: int  # forward: entries per split; the sampling kernel walks one split
    num_splits: int
    bwd_split_size: int  # dq backward (and memory_read forward): entries per split
    bwd_num_splits: int
    row_split_size: int  # dkeys backward: query rows per split (partials summed in torch)
    row_num_splits: int
    dk_block_b: int  # dkeys backward (memory_read: dkeys and dvalues): rows per inner step
    dk_block_m: int  # dkeys backward: entries per program
    dk_num_warps: int
    sample_block: int
    sample_block_m: int  # sampling kernel: entries per inner-loop tile (divides block_m, hence every split)
    num_warps: int  # forward and dq backward
    num_stages: int
    input_precision: str  # tl.dot input precision: "ieee" or "tf32"


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _round_up(a: int, b: int) -> int:
    return _cdiv(a, b) * b


def _split(n: int, block: int, other_programs: int, device: torch.device, override: int | None, cap: int | None) -> int:
    """Length of one split of an axis of length ``n`` (a multiple of ``block``), so that
    ``other_programs`` × splits reaches about PROGRAMS_PER_SM programs per SM (flash-decoding)."""
    if override is not None:
        return _round_up(override, block)
    wanted = max(1, _cdiv(PROGRAMS_PER_SM * _num_sms(device), other_programs))
    size = _round_up(_cdiv(n, wanted), block)
    if cap is not None:
        size = min(size, _round_up(cap, block))
    return size


def make_plan(G: int, B: int, M: int, d: int, dtype: torch.dtype, device: torch.device, *, tf32: bool = False, dv: int = 0) -> Plan:
    """Tile sizes and splits for [G, B, d] queries against [G, M, d] keys (and [G, M, dv] values).

    Heuristics (no GPU timing yet): BLOCK_D = next power of two >= max(d, 16); BLOCK_B = the next
    power of two of B in [16, 64]; on a GPU, BLOCK_M keeps the [BLOCK_M, BLOCK_D (+ BLOCK_DV)] key (and
    value) tiles within 32 KiB, and BLOCK_B the query tiles likewise (two pipeline stages then fit in
    the A100's shared memory: kernels/RESOURCES.md); the interpreter uses BLOCK_M = 32.

    The dkeys backward has its own tile (``dk_*``, see :func:`dk_tile`): it holds a key tile and
    its gradient accumulator in registers for the whole loop over B, and in the FMA path (float32
    without TF32, float64) the forward's tile spills kilobytes of registers (kernels/RESOURCES.md).
    """
    cfg = _LAUNCH.get()
    fma = dtype == torch.float64 or (dtype == torch.float32 and not tf32)  # tl.dot on FMA units, not tensor cores
    block_d = max(16, triton.next_power_of_2(d))
    tile_d = max(block_d, triton.next_power_of_2(max(dv, 1)))  # widest [BLOCK_M, *] tile (keys or values)
    block_b = cfg.block_b or min(64, max(16, triton.next_power_of_2(B)))
    elem = torch.empty((), dtype=dtype).element_size()
    if cfg.block_m is not None:
        block_m = cfg.block_m
    elif interpret_mode() and device.type == "cpu":
        block_m = 32
    else:
        block_m = 128
        # keys, and for memory_read the values too: both [BLOCK_M, *] tiles count (an ahead-of-time
        # compile for sm_80 of the read backward at d = dv = 128 needed 213,248 B in float64 and
        # 197,120 B in float32 with TF32 when only one tile was counted: over the A100's 166,912 B)
        tile_width = block_d + (triton.next_power_of_2(dv) if dv else 0)
        while block_m * tile_width * elem > 32 * 1024 and block_m > 16:
            block_m //= 2
        # the [BLOCK_B, *] query (and, reading, upstream-gradient) tiles too: at d = dv = 128 in float64
        # the read backward's dq with BLOCK_B = 64 needed 172,160 B on sm_80 even at BLOCK_M = 16
        if cfg.block_b is None:
            while block_b * tile_width * elem > 32 * 1024 and block_b > 16:
                block_b //= 2
            # FMA dots (float32 without TF32, float64) hold whole operand rows per thread: at d = 128, float32,
            # BLOCK_B = 64 spilled 2.5-2.9 KB (forward, sm_90) and 13-19 KB (dq backward, sm_80) of registers
            # per thread; BLOCK_B = 32 compiles without spills (kernels/RESOURCES.md)
            if fma and tile_d >= 128:
                block_b = min(block_b, 32)
    row_programs = G * _cdiv(B, block_b)
    split_size = _split(M, block_m, row_programs, device, cfg.split_size, SAMPLE_SPLIT_CAP)
    bwd_split_size = _split(M, block_m, row_programs, device, cfg.bwd_split_size, None)
    sample_block = cfg.sample_block or (256 if interpret_mode() and device.type == "cpu" else 32)
    on_gpu = not (interpret_mode() and device.type == "cpu")  # the interpreter uses one tile for every kernel
    # memory_read in the FMA path: at 4 warps the read forward spilled 440 B (d = 64) and 748 B (d = 128) of
    # registers per thread on sm_90 (float32), the dq backward 56-68 B on sm_80; at 8 warps neither spills
    # (80-254 registers, sm_80 and sm_90; float64 too)
    num_warps = cfg.num_warps or (8 if block_m * tile_d >= 64 * 128 or (fma and dv and on_gpu) else 4)
    input_precision = "tf32" if (tf32 and dtype == torch.float32) else "ieee"
    if not on_gpu or cfg.block_m is not None or cfg.block_b is not None:
        dk_block_b, dk_block_m, dk_num_warps = block_b, block_m, num_warps  # tests force one tile for all kernels
        sample_block_m = block_m
    else:
        dk_block_b, dk_block_m, dk_num_warps = dk_tile(dtype, input_precision, tile_d, block_b, block_m, num_warps, reads=dv > 0)
        sample_block_m = min(block_m, FMA_SAMPLE_MAX_M) if fma else block_m
    dk_num_warps = cfg.num_warps or dk_num_warps
    # dkeys: split B when the M-blocks alone do not fill the device (large B, small M)
    row_split_size = _split(B, dk_block_b, G * _cdiv(M, dk_block_m), device, cfg.row_split_size, None)
    return Plan(
        block_b=block_b,
        block_m=block_m,
        block_d=block_d,
        split_size=split_size,
        num_splits=_cdiv(M, split_size),
        bwd_split_size=bwd_split_size,
        bwd_num_splits=_cdiv(M, bwd_split_size),
        row_split_size=row_split_size,
        row_num_splits=_cdiv(B, row_split_size),
        dk_block_b=dk_block_b,
        dk_block_m=dk_block_m,
        dk_num_warps=dk_num_warps,
        sample_block=sample_block,
        sample_block_m=sample_block_m,
        num_warps=num_warps,
        num_stages=cfg.num_stages or 2,
        input_precision=input_precision,
    )


# The dkeys backward's tile in the FMA path (float32 with input_precision="ieee", float64: tl.dot
# runs on FMA units, and each thread holds whole operand rows). Chosen from ahead-of-time compiles
# for sm_90 and sm_80 with triton 3.9 (kernels/RESOURCES.md): at d = 64, float32, the forward's tile
# (BLOCK_M = 128, BLOCK_B = 32, 8 warps) spilled 8.3 KB of registers per thread (4 warps: 18 KB);
# BLOCK_B = 16 with BLOCK_M = 32 (d <= 64) or 16 (d = 128) and 8 warps compiles without spills
# (203 and 200 registers). Tensor-core dtypes (float16, bfloat16, float32 with TF32) keep the forward's tile.
TENSOR_CORE_DK_MAX_M = 64
# The sampling kernel's key tile in the FMA path: at BLOCK_M = 128, d = 64 (float32, sm_80) it spilled 344 B
# of registers per thread, at BLOCK_M = 64, d = 128 4.4 KB (ptxas fell back to 48 registers); BLOCK_M = 32
# compiles without spills on sm_80 and sm_90 at d = 64 and 128 (80-97 registers). Splits are multiples of
# BLOCK_M (a power of two >= 32 on a GPU), so this smaller tile walks a split exactly.
FMA_SAMPLE_MAX_M = 32
FMA_DK_TILE = {64: (16, 32, 8), 128: (16, 16, 8), 256: (16, 16, 8)}  # tile_d -> (BLOCK_B, BLOCK_M, warps)


def dk_tile(dtype: torch.dtype, input_precision: str, tile_d: int, block_b: int, block_m: int, num_warps: int,
            reads: bool = False) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_M, num_warps) of the dkeys backward on a GPU (see FMA_DK_TILE)."""
    fma = dtype == torch.float64 or (dtype == torch.float32 and input_precision == "ieee")
    if not fma:
        # tensor cores: at BLOCK_M = 128 the float16/bfloat16 dkeys backward spilled 36-744 B of registers
        # per thread on sm_80 and sm_90 (BLOCK_B 16-64, d 64-128); BLOCK_M = 64 compiles without spills
        return block_b, min(block_m, TENSOR_CORE_DK_MAX_M), num_warps
    b, m, w = FMA_DK_TILE[max(64, tile_d)]
    # memory_read's dkeys/dvalues backward also holds the value tile and its gradient: at d = dv = 64,
    # BLOCK_M = 32 spilled 2.3 KB per thread (float32, sm_80/sm_90); BLOCK_M = 16 compiles without spills
    return b, (16 if reads else m), w


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation / statistics dtype: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _tl_acc(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


# ----------------------------------------------------------------------------------------------
# Validation, shapes and the O(M·d) torch pieces shared by both backends (and memory_read)
# ----------------------------------------------------------------------------------------------


def _shape(t: torch.Tensor) -> str:
    return str(tuple(t.shape))


def check_memory_inputs(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    similarity: str,
    prior_query: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    num_samples: int | None = None,
    op: str = "memory_addressing",
) -> None:
    """Raise ``ValueError`` naming the argument and its shape (or dtype) when the inputs do not fit."""
    if not isinstance(query, torch.Tensor) or not isinstance(keys, torch.Tensor):
        raise ValueError(f"{op}: query and keys must be tensors, got {type(query).__name__} and {type(keys).__name__}")
    for name, t in (("query", query), ("keys", keys), ("prior_query", prior_query), ("values", values)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            # integer inputs would be computed in float and the result truncated: refused
            raise ValueError(f"{op}: {name} must be floating point, got dtype {t.dtype}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"{op}: similarity={similarity!r} is not one of {', '.join(SIMILARITIES)}")
    if query.dim() not in (2, 3):
        raise ValueError(f"{op}: query must be [B, d] or [G, B, d], got shape {_shape(query)}")
    if keys.dim() != query.dim():
        raise ValueError(
            f"{op}: keys must be [M, d] for query [B, d], or [G, M, d] for query [G, B, d]; got query "
            f"{_shape(query)} and keys {_shape(keys)} (for one memory shared by G episodes, flatten the "
            f"query to [G*B, d])"
        )
    if query.dim() == 3 and keys.shape[0] != query.shape[0]:
        raise ValueError(f"{op}: keys {_shape(keys)} and query {_shape(query)} disagree on G (dim 0)")
    d = query.shape[-1]
    if keys.shape[-1] != d:
        raise ValueError(f"{op}: keys {_shape(keys)} have d={keys.shape[-1]} but query {_shape(query)} has d={d}")
    if d == 0:
        raise ValueError(f"{op}: query {_shape(query)} has d=0; the matching space needs at least one dimension")
    if keys.shape[-2] == 0:
        raise ValueError(f"{op}: keys {_shape(keys)} have M=0 entries; the memory must hold at least one entry")
    if query.shape[-2] == 0:
        raise ValueError(f"{op}: query {_shape(query)} has B=0 rows; pass at least one query")
    if prior_query is not None:
        ok = prior_query.shape == (d,) or (query.dim() == 3 and prior_query.shape == (query.shape[0], d))
        if not ok:
            want = f"[{d}]" if query.dim() == 2 else f"[{d}] or [{query.shape[0]}, {d}]"
            raise ValueError(f"{op}: prior_query must be {want} for query {_shape(query)}, got shape {_shape(prior_query)}")
    if values is not None:
        if values.dim() != keys.dim() or values.shape[:-1] != keys.shape[:-1]:
            want = "[M, dv]" if keys.dim() == 2 else "[G, M, dv]"
            raise ValueError(f"{op}: values must be {want} matching keys {_shape(keys)}, got shape {_shape(values)}")
        if values.shape[-1] == 0:
            raise ValueError(f"{op}: values {_shape(values)} have dv=0")
    if num_samples is not None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise ValueError(f"{op}: num_samples must be an int >= 1, got {num_samples!r}")


def _as_grouped(query: torch.Tensor, keys: torch.Tensor, prior_query: torch.Tensor | None = None, values: torch.Tensor | None = None):
    """Add a leading G=1 to 2-D inputs; prior_query becomes [G, d]."""
    squeeze = query.dim() == 2
    if squeeze:
        query, keys = query.unsqueeze(0), keys.unsqueeze(0)
        values = values.unsqueeze(0) if values is not None else None
    if prior_query is not None and prior_query.dim() == 1:
        prior_query = prior_query.unsqueeze(0).expand(query.shape[0], -1)
    return query, keys, prior_query, values, squeeze


def _clamped_norm(x: torch.Tensor) -> torch.Tensor:
    """max(||x||_2, NORM_EPS) over the last dim, in the accumulation dtype ([..., n])."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=acc_dtype(x.dtype)).clamp_min(NORM_EPS)


def similarity_logits(query: torch.Tensor, keys: torch.Tensor, similarity: str) -> torch.Tensor:
    """Dense logits S [G, B, M] from query [G, B, d] and keys [G, M, d], in the accumulation dtype."""
    acc = acc_dtype(query.dtype)
    q, k = query.to(acc), keys.to(acc)
    if similarity == "cosine":
        q = q / _clamped_norm(q).unsqueeze(-1)  # [G, B, d]
    s = q @ k.transpose(-1, -2)  # [G, B, M]
    if similarity in ("normalized_dot", "cosine"):
        s = s / _clamped_norm(k).unsqueeze(-2)  # S = <e_q, e_a> / ||e_a||   (VMA eq. 5)
    return s


def _nan_or_one(lse: torch.Tensor) -> torch.Tensor:
    """1 where ``lse`` is finite, NaN elsewhere (detached): multiplying by it marks an invalid row
    NaN in value and in gradient, without a host sync."""
    lse = lse.detach()
    return torch.where(torch.isfinite(lse), torch.ones_like(lse), torch.full_like(lse, float("nan")))


def log_softmax_or_nan(logits: torch.Tensor) -> torch.Tensor:
    """log_softmax over the last dim; rows whose logsumexp is not finite are NaN (see the module docstring)."""
    return torch.log_softmax(logits, dim=-1) * _nan_or_one(torch.logsumexp(logits.detach(), dim=-1)).unsqueeze(-1)


def prior_log_probs(keys: torch.Tensor, prior_query: torch.Tensor | None, similarity: str) -> torch.Tensor | None:
    """log p(a) [G, M] = log_softmax_a S(e_p, e_a) for a learned prior query [G, d]; None: uniform.

    An episode whose prior logits have no finite log-sum-exp (NaN, +inf, all -inf) gets NaN.
    """
    if prior_query is None:
        return None
    logits = similarity_logits(prior_query.unsqueeze(1), keys, similarity).squeeze(1)  # [G, M]
    return log_softmax_or_nan(logits)


# ----------------------------------------------------------------------------------------------
# Reference (dense) implementation: the CPU path and the test oracle
# ----------------------------------------------------------------------------------------------


class MemoryAddressingOutput(NamedTuple):
    """Outputs of :func:`memory_addressing`; leading [G] present iff the inputs had it."""

    addresses: torch.Tensor  # [G?, B, K] int64, a_k ~ q(a | x_b); -1 for an invalid row
    log_q: torch.Tensor  # [G?, B, K] log q(a_k | x_b)
    log_prior: torch.Tensor  # [G?, B, K] log p(a_k)
    kl: torch.Tensor  # [G?, B] KL(q(a | x_b) || p(a)), exact over all M entries
    log_normalizer: torch.Tensor  # [G?, B] log Σ_a exp S[b, a]


def memory_log_softmax(query: torch.Tensor, keys: torch.Tensor, *, similarity: str = "normalized_dot") -> torch.Tensor:
    """Dense log q(a | x_b) [G?, B, M] (reference only: for small M and debugging)."""
    check_memory_inputs(query, keys, similarity=similarity, op="memory_log_softmax")
    q, k, _, _, squeeze = _as_grouped(query, keys)
    out = torch.log_softmax(similarity_logits(q, k, similarity), dim=-1)  # [G, B, M]
    return out.squeeze(0) if squeeze else out


def sample_inverse_cdf(log_probs: torch.Tensor, num_samples: int, generator: torch.Generator | None) -> torch.Tensor:
    """K exact samples per row of log-probabilities [N, M] by inverse CDF: int64 [N, K]."""
    probs = torch.exp(log_probs.detach().to(torch.float64))  # [N, M]
    probs = torch.nan_to_num(probs, nan=0.0)  # invalid (NaN) rows: any index; the caller marks them
    cdf = torch.cumsum(probs, dim=-1)  # [N, M]
    u = torch.rand(probs.shape[0], num_samples, generator=generator, device=probs.device, dtype=torch.float64)
    target = u * cdf[:, -1:]  # [N, K]
    idx = torch.searchsorted(cdf, target, right=True)  # first a with cdf_a > u·Z
    return idx.clamp_max(probs.shape[-1] - 1)


def memory_addressing_reference(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    prior_query: torch.Tensor | None = None,
    num_samples: int = 4,
    similarity: str = "normalized_dot",
    generator: torch.Generator | None = None,
) -> MemoryAddressingOutput:
    """Dense PyTorch VMA addressing (see the module docstring); same contract as :func:`memory_addressing`."""
    check_memory_inputs(query, keys, similarity=similarity, prior_query=prior_query, num_samples=num_samples)
    q, k, pq, _, squeeze = _as_grouped(query, keys, prior_query)
    G, B, _ = q.shape
    M = k.shape[1]
    s = similarity_logits(q, k, similarity)  # [G, B, M]   (VMA eq. 5)
    lse = torch.logsumexp(s, dim=-1)  # [G, B]
    valid = _nan_or_one(lse)  # [G, B]: 1, or NaN for an invalid row (lse not finite)
    lse = lse * valid  # NaN in value and gradient for invalid rows
    # log q(a | x_b) [G, B, M]; log_softmax shifts by the max, so it stays exact where S - lse
    # would lose log q to rounding (|S| ≥ 2^24 in float32)
    log_q_all = torch.log_softmax(s, dim=-1) * valid.unsqueeze(-1)
    log_p = prior_log_probs(k, pq, similarity)  # [G, M] or None (uniform)
    if log_p is None:
        log_p_all = torch.full((G, 1, M), -math.log(M), dtype=s.dtype, device=s.device)
    else:
        log_p_all = log_p.unsqueeze(1)  # [G, 1, M]
    q_all = log_q_all.exp()
    # KL(q(a|x) || p(a)) with 0 log 0 = 0: entries of zero posterior mass (S = -inf) add nothing
    u = torch.where(q_all == 0, torch.zeros_like(log_q_all), log_q_all - log_p_all)
    kl = (q_all * u).sum(-1)  # [G, B]
    addresses = sample_inverse_cdf(log_q_all.reshape(G * B, M), num_samples, generator).view(G, B, num_samples)
    log_q = torch.gather(log_q_all, 2, addresses)  # [G, B, K]
    log_prior = torch.gather(log_p_all.expand(G, B, M) * valid.unsqueeze(-1), 2, addresses)  # [G, B, K]
    addresses = torch.where(torch.isnan(valid).unsqueeze(-1), torch.full_like(addresses, INVALID_ADDRESS), addresses)
    out = MemoryAddressingOutput(addresses, log_q, log_prior, kl, lse)
    if squeeze:
        out = MemoryAddressingOutput(*(t.squeeze(0) for t in out))
    return out


# ----------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------


@triton.jit
def _memory_addressing_fwd_kernel(
    q_ptr, k_ptr, r_ptr, logp_ptr,  # [G, B, D], [G, M, D], [G, M], [G, M]
    m_ptr, l_ptr, t_ptr,  # [G, S, B] each: running max, Σ exp(S − m), Σ exp(S − m)(S − m − log p)
    B, M, D, SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_pg, stride_og, stride_os,
    HAS_SCALE: tl.constexpr, HAS_PRIOR: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # axis 0 = (split, row block) with row blocks fastest, so that the programs sharing one
    # split's keys run together (L2 reuse); axis 1 = G (CUDA allows 65535 there)
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(B, BLOCK_B)
    pid_b = pid % n_row_blocks
    pid_s = (pid // n_row_blocks).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                mask=mask_b[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_B, BLOCK_D]
    m_i = tl.full([BLOCK_B], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_B], dtype=ACC)
    t_i = tl.zeros([BLOCK_B], dtype=ACC)
    start = pid_s * SPLIT
    end = tl.minimum(start + SPLIT, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        k = tl.load(k_ptr + g * stride_kg + offs_m[:, None].to(tl.int64) * stride_km + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)  # [BLOCK_B, BLOCK_M]
        if HAS_SCALE:
            r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
            s = s * r[None, :]  # S = <e_q, e_a> / ||e_a||   (VMA eq. 5)
        s = tl.where(mask_m[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # shift by 0 while every S so far is −inf (exp(−inf − (−inf)) would be NaN)
        m_sh = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_sh)
        p = tl.exp(s - m_sh[:, None])
        u = s - m_sh[:, None]
        if HAS_PRIOR:
            logp = tl.load(logp_ptr + g * stride_pg + offs_m, mask=mask_m, other=0.0)
            u = u - logp[None, :]
        u = tl.where(mask_m[None, :], u, 0.0)
        # re-centre Σ exp(S − m)(S − m − log p) on the new max: + (m_old − m_new)·l_old
        # (m_old = −inf only before the first tile, where l_old = 0)
        dm = tl.where(l_i > 0, m_i - m_new, 0.0)
        pu = tl.where(p == 0, 0.0, p * u)  # 0 log 0 = 0 (an S = −inf entry); NaN stays NaN
        t_i = alpha * (t_i + dm * l_i) + tl.sum(pu, axis=1)
        l_i = alpha * l_i + tl.sum(p, axis=1)
        m_i = m_new
    out = g * stride_og + pid_s * stride_os + offs_b
    tl.store(m_ptr + out, m_i, mask=mask_b)
    tl.store(l_ptr + out, l_i, mask=mask_b)
    tl.store(t_ptr + out, t_i, mask=mask_b)


@triton.jit
def _memory_addressing_bwd_dq_kernel(
    q_ptr, k_ptr, r_ptr, logp_ptr,  # [G, B, D], [G, M, D], [G, M], [G, M]
    lse_ptr, c1_ptr, c2_ptr,  # [G, B]: dS = q(a|x)·(c1 + c2·(S − lse − log p))
    dq_ptr,  # [G, S, B, D] partial dq per split (ACC dtype)
    B, M, D, SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_pg, stride_cg,
    stride_dg, stride_ds, stride_db,
    HAS_SCALE: tl.constexpr, HAS_PRIOR: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # axis 0 = (split, row block) with row blocks fastest, so that the programs sharing one
    # split's keys run together (L2 reuse); axis 1 = G (CUDA allows 65535 there)
    pid = tl.program_id(0)
    n_row_blocks = tl.cdiv(B, BLOCK_B)
    pid_b = pid % n_row_blocks
    pid_s = (pid // n_row_blocks).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    offs_d = tl.arange(0, BLOCK_D)
    mask_b = offs_b < B
    mask_d = offs_d < D
    q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                mask=mask_b[:, None] & mask_d[None, :], other=0.0)
    lse = tl.load(lse_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
    c1 = tl.load(c1_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
    c2 = tl.load(c2_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    start = pid_s * SPLIT
    end = tl.minimum(start + SPLIT, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        k = tl.load(k_ptr + g * stride_kg + offs_m[:, None].to(tl.int64) * stride_km + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)
        if HAS_SCALE:
            r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
            s = s * r[None, :]
        z = s - lse[:, None]  # log q(a | x_b)
        p = tl.where(mask_m[None, :], tl.exp(z), 0.0)
        u = z
        if HAS_PRIOR:
            logp = tl.load(logp_ptr + g * stride_pg + offs_m, mask=mask_m, other=0.0)
            u = u - logp[None, :]
        ds = tl.where(mask_m[None, :] & (p != 0), p * (c1[:, None] + c2[:, None] * u), 0.0)
        if HAS_SCALE:
            ds = ds * r[None, :]
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION).to(ACC)
    tl.store(dq_ptr + g * stride_dg + pid_s * stride_ds + offs_b[:, None].to(tl.int64) * stride_db + offs_d[None, :], acc,
             mask=mask_b[:, None] & mask_d[None, :])


@triton.jit
def _memory_addressing_bwd_dk_kernel(
    q_ptr, k_ptr, r_ptr, logp_ptr,  # [G, B, D], [G, M, D], [G, M], [G, M]
    lse_ptr, c1_ptr, c2_ptr,  # [G, B]
    dk_ptr, dr_ptr, dlogp_ptr,  # [G, SB, M, D], [G, SB, M], [G, SB, M]: partial sums per split of B
    B, M, D, ROW_SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_pg, stride_cg,
    stride_dkg, stride_dks, stride_dkm, stride_drg, stride_drs,
    HAS_SCALE: tl.constexpr, HAS_PRIOR: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # axis 0 = (split of B, M-block), M-blocks fastest; axis 1 = G
    pid = tl.program_id(0)
    n_m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = pid % n_m_blocks
    pid_r = (pid // n_m_blocks).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_m = offs_m < M
    mask_d = offs_d < D
    rows_m = offs_m[:, None].to(tl.int64)
    k = tl.load(k_ptr + g * stride_kg + rows_m * stride_km + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if HAS_SCALE:
        r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
    if HAS_PRIOR:
        logp = tl.load(logp_ptr + g * stride_pg + offs_m, mask=mask_m, other=0.0)
    dacc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)  # Σ_b dS[b, a] e_q(b)
    dlogp = tl.zeros([BLOCK_M], dtype=ACC)  # −Σ_b g_kl[b] q(a | x_b)
    b_start = pid_r * ROW_SPLIT
    b_end = tl.minimum(b_start + ROW_SPLIT, B)
    for b0 in range(b_start, b_end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < B
        q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                    mask=mask_b[:, None] & mask_d[None, :], other=0.0)
        lse = tl.load(lse_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
        c1 = tl.load(c1_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
        c2 = tl.load(c2_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)  # [BLOCK_B, BLOCK_M]
        if HAS_SCALE:
            s = s * r[None, :]
        z = s - lse[:, None]
        valid = mask_b[:, None] & mask_m[None, :]
        p = tl.where(valid, tl.exp(z), 0.0)
        u = z
        if HAS_PRIOR:
            u = u - logp[None, :]
        ds = tl.where(valid & (p != 0), p * (c1[:, None] + c2[:, None] * u), 0.0)
        dacc += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION).to(ACC)
        if HAS_PRIOR:
            dlogp -= tl.sum(c2[:, None] * p, axis=0)
    if HAS_SCALE:
        # S = r_a <e_q, e_a>: dL/dr_a = Σ_b dS <e_q, e_a>, dL/de_a = r_a Σ_b dS e_q
        dr = tl.sum(dacc * k.to(ACC), axis=1)
        tl.store(dr_ptr + g * stride_drg + pid_r * stride_drs + offs_m, dr, mask=mask_m)
        dacc = dacc * r[:, None]
    tl.store(dk_ptr + g * stride_dkg + pid_r * stride_dks + rows_m * stride_dkm + offs_d[None, :],
             dacc.to(dk_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    if HAS_PRIOR:
        tl.store(dlogp_ptr + g * stride_drg + pid_r * stride_drs + offs_m, dlogp, mask=mask_m)


@triton.jit
def _memory_addressing_sample_kernel(
    q_ptr, k_ptr, r_ptr,  # [G, B, D], [G, M, D], [G, M]
    blk_group_ptr, blk_first_ptr, blk_count_ptr,  # [NBLK]: (g·S + split), first sorted sample, count
    smp_b_ptr, smp_m_ptr, smp_target_ptr,  # [N] per sorted sample: row b, split max m_s, u·Σ_s exp(S − m_s)
    out_ptr,  # [N] int64 addresses, in sorted order
    M, D, SPLIT, NUM_SPLITS,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    group = tl.load(blk_group_ptr + pid)
    first = tl.load(blk_first_ptr + pid)
    count = tl.load(blk_count_ptr + pid)
    g = (group // NUM_SPLITS).to(tl.int64)
    split = group % NUM_SPLITS
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < count
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    b = tl.load(smp_b_ptr + first + offs_s, mask=mask_s, other=0)
    m_s = tl.load(smp_m_ptr + first + offs_s, mask=mask_s, other=0.0)
    target = tl.load(smp_target_ptr + first + offs_s, mask=mask_s, other=0.0)
    q = tl.load(q_ptr + g * stride_qg + b[:, None] * stride_qb + offs_d[None, :],
                mask=mask_s[:, None] & mask_d[None, :], other=0.0)  # [BLOCK_S, BLOCK_D]
    running = tl.zeros([BLOCK_S], dtype=ACC)  # Σ exp(S − m_s) over the entries walked so far
    result = tl.zeros([BLOCK_S], dtype=tl.int64)
    found = tl.zeros([BLOCK_S], dtype=tl.int1)
    last_pos = tl.zeros([BLOCK_S], dtype=tl.int64)  # fallback if rounding leaves u·Σ unreached
    start = split * SPLIT
    end = tl.minimum(start + SPLIT, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        k = tl.load(k_ptr + g * stride_kg + offs_m[:, None].to(tl.int64) * stride_km + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)  # [BLOCK_S, BLOCK_M]
        if HAS_SCALE:
            r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
            s = s * r[None, :]
        e = tl.where(mask_m[None, :], tl.exp(s - m_s[:, None]), 0.0)
        cdf = running[:, None] + tl.cumsum(e, axis=1)
        idx = offs_m.to(tl.int64)[None, :] + tl.zeros([BLOCK_S, BLOCK_M], dtype=tl.int64)
        hit = (cdf > target[:, None]) & mask_m[None, :]
        first_hit = tl.min(tl.where(hit, idx, M), axis=1)
        take = (~found) & (first_hit < M)
        result = tl.where(take, first_hit, result)
        found = found | take
        last_pos = tl.maximum(last_pos, tl.max(tl.where((e > 0) & mask_m[None, :], idx, 0), axis=1))
        running += tl.sum(e, axis=1)
    result = tl.where(found, result, last_pos)
    tl.store(out_ptr + first + offs_s, result, mask=mask_s)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------


def _dummy(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return t if t is not None else like


def memory_addressing_forward(
    query: torch.Tensor,  # [G, B, d] (already normalized for cosine), contiguous
    keys: torch.Tensor,  # [G, M, d], contiguous
    inv_norm: torch.Tensor | None,  # [G, M] 1 / max(||e_a||, eps), ACC dtype; None for "dot"
    log_prior: torch.Tensor | None,  # [G, M] log p(a), ACC dtype; None: uniform
    plan: Plan,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Streamed forward: (lse [G, B], kl [G, B], split_max [G, S, B], split_sumexp [G, S, B])."""
    G, B, D = query.shape
    M = keys.shape[1]
    acc = acc_dtype(query.dtype)
    S = plan.num_splits
    m_s = torch.empty(G, S, B, device=query.device, dtype=acc)
    l_s = torch.empty_like(m_s)
    t_s = torch.empty_like(m_s)
    r = _dummy(inv_norm, m_s)
    lp = _dummy(log_prior, m_s)
    grid = (_cdiv(B, plan.block_b) * S, G)
    _memory_addressing_fwd_kernel[grid](
        query, keys, r, lp, m_s, l_s, t_s,
        B, M, D, plan.split_size,
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1),
        r.stride(0), lp.stride(0), m_s.stride(0), m_s.stride(1),
        HAS_SCALE=inv_norm is not None, HAS_PRIOR=log_prior is not None, ACC=_tl_acc(query.dtype),
        PRECISION=plan.input_precision, BLOCK_B=plan.block_b, BLOCK_M=plan.block_m, BLOCK_D=plan.block_d,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    # merge the splits (flash-decoding): weights exp(m_s − m); invalid rows NaN, as in the reference (no host sync)
    lse, kl = merge_partials(m_s, l_s, t_s, None if log_prior is not None else M)
    return lse, kl, m_s, l_s


def merge_partials(max_: torch.Tensor, sumexp: torch.Tensor, kl_sum: torch.Tensor,
                   uniform_prior_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lse [G, B], kl [G, B]) from chunk partials [G, S, B] (flash-decoding's split-K merge).

    ``uniform_prior_size``: M when p(a) = 1/M (the partials then hold log p = 0 and log M is added).
    A row whose lse is not finite is NaN in both (an invalid row)."""
    m = max_.max(dim=1).values  # [G, B]
    w = torch.exp(max_ - m.unsqueeze(1))  # [G, S, B]
    total = (w * sumexp).sum(dim=1)  # Σ_a exp(S_a − m)
    # re-centre each chunk's Σ e (S − m_c − log p) on the global max; a chunk of all −inf has l = 0 and m_c = −inf
    dm = torch.where(sumexp > 0, (max_ - m.unsqueeze(1)) * sumexp, torch.zeros_like(sumexp))
    t = (w * (kl_sum + dm)).sum(dim=1)
    lse = m + torch.log(total)
    kl = t / total - torch.log(total)  # Σ_a q_a (S_a − lse − log p_a)
    if uniform_prior_size is not None:
        kl = kl + math.log(uniform_prior_size)
    ok = torch.isfinite(lse)
    nan = torch.full_like(lse, float("nan"))
    return torch.where(ok, lse, nan), torch.where(ok, kl, nan)


def memory_addressing_backward(
    query: torch.Tensor,
    keys: torch.Tensor,
    inv_norm: torch.Tensor | None,
    log_prior: torch.Tensor | None,
    lse: torch.Tensor,  # [G, B]
    kl: torch.Tensor,  # [G, B]
    grad_lse: torch.Tensor,  # [G, B]
    grad_kl: torch.Tensor,  # [G, B]
    plan: Plan,
    needs: tuple[bool, bool, bool, bool],  # grads wanted for (query, keys, inv_norm, log_prior)
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Gradients (dquery, dkeys, dinv_norm, dlog_prior) of lse and kl.

    dS[b, a] = g_lse q_ba + g_kl q_ba (S_ba − lse_b − log p_a − kl_b), d log p_a = −Σ_b g_kl q_ba.
    """
    G, B, D = query.shape
    M = keys.shape[1]
    acc = acc_dtype(query.dtype)
    grad_lse, grad_kl = grad_lse.to(acc), grad_kl.to(acc)
    c1 = grad_lse - grad_kl * kl
    if log_prior is None:
        c1 = c1 + grad_kl * math.log(M)  # u = log q − log p = log q + log M
    c1, c2 = c1.contiguous(), grad_kl.contiguous()
    lse = lse.contiguous()
    has_scale, has_prior = inv_norm is not None, log_prior is not None
    r = _dummy(inv_norm, lse)
    lp = _dummy(log_prior, lse)
    common = dict(
        HAS_SCALE=has_scale, HAS_PRIOR=has_prior, ACC=_tl_acc(query.dtype), PRECISION=plan.input_precision,
        BLOCK_B=plan.block_b, BLOCK_M=plan.block_m, BLOCK_D=plan.block_d,
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    dq = dk = dr = dlp = None
    if needs[0]:
        S2 = plan.bwd_num_splits
        dq_part = torch.empty(G, S2, B, D, device=query.device, dtype=acc)
        _memory_addressing_bwd_dq_kernel[(_cdiv(B, plan.block_b) * S2, G)](
            query, keys, r, lp, lse, c1, c2, dq_part,
            B, M, D, plan.bwd_split_size,
            query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), r.stride(0), lp.stride(0), c1.stride(0),
            dq_part.stride(0), dq_part.stride(1), dq_part.stride(2),
            **common,
        )
        dq = dq_part.sum(dim=1).to(query.dtype)
    if needs[1] or (needs[2] and has_scale) or (needs[3] and has_prior):
        SB = plan.row_num_splits
        # one split of B: write dkeys in its dtype directly; several: float partials, summed here
        dk_part = torch.empty(G, SB, M, D, device=query.device, dtype=keys.dtype if SB == 1 else acc)
        dr_part = torch.empty(G, SB, M, device=query.device, dtype=acc) if has_scale else None
        dlp_part = torch.empty(G, SB, M, device=query.device, dtype=acc) if has_prior else None
        vec = _dummy(dr_part, _dummy(dlp_part, dk_part[:, :, :, 0]))  # strides of the [G, SB, M] outputs
        _memory_addressing_bwd_dk_kernel[(_cdiv(M, plan.dk_block_m) * SB, G)](
            query, keys, r, lp, lse, c1, c2, dk_part, _dummy(dr_part, vec), _dummy(dlp_part, vec),
            B, M, D, plan.row_split_size,
            query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), r.stride(0), lp.stride(0), c1.stride(0),
            dk_part.stride(0), dk_part.stride(1), dk_part.stride(2), vec.stride(0), vec.stride(1),
            **dk_launch(common, plan),
        )
        dk = dk_part[:, 0] if SB == 1 else dk_part.sum(dim=1).to(keys.dtype)
        dr = None if dr_part is None else dr_part.sum(dim=1)
        dlp = None if dlp_part is None else dlp_part.sum(dim=1)
    return dq, dk, dr, dlp


def dk_launch(common: dict, plan: Plan) -> dict:
    """The launch arguments of a dkeys backward: ``common`` with the dk tile."""
    return {**common, "BLOCK_B": plan.dk_block_b, "BLOCK_M": plan.dk_block_m, "num_warps": plan.dk_num_warps}


def memory_addressing_sample(
    query: torch.Tensor,  # [G, B, d] as given to the forward
    keys: torch.Tensor,  # [G, M, d]
    inv_norm: torch.Tensor | None,  # [G, M]
    split_max: torch.Tensor,  # [G, S, B]
    split_sumexp: torch.Tensor,  # [G, S, B]
    num_samples: int,
    plan: Plan,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Exact samples a ~ softmax_a S[b, a]: int64 [G, B, K] (split by multinomial, then inverse CDF)."""
    G, B, D = query.shape
    M = keys.shape[1]
    S, K = plan.num_splits, num_samples
    acc = acc_dtype(query.dtype)
    dev = query.device
    with torch.no_grad():
        # P(split s | b) = Z_s / Z with Z_s = exp(m_s) Σ_s
        log_z = split_max + torch.log(split_sumexp)  # [G, S, B]
        probs = torch.softmax(log_z.to(torch.float64), dim=1).permute(0, 2, 1).reshape(G * B, S)
        # invalid rows (NaN statistics): draw from any valid distribution, the caller marks them −1
        row_ok = torch.isfinite(probs).all(dim=1, keepdim=True)
        probs = torch.where(row_ok, probs, torch.ones_like(probs))
        if S == 1:  # one split: the draw is certain; consume the generator exactly as the reference does
            split = torch.zeros(G * B, K, dtype=torch.int64, device=dev)
        else:
            split = torch.multinomial(probs, K, replacement=True, generator=generator)  # [G*B, K]
        u = torch.rand(G * B, K, generator=generator, device=dev, dtype=torch.float64)
        g_idx = torch.arange(G, device=dev).repeat_interleave(B * K)  # [N]
        b_idx = torch.arange(B, device=dev).repeat_interleave(K).repeat(G)  # [N]
        s_idx = split.reshape(-1)  # [N]
        m_smp = split_max[g_idx, s_idx, b_idx]
        target = (u.reshape(-1) * split_sumexp[g_idx, s_idx, b_idx].to(torch.float64)).to(acc)
        group = g_idx * S + s_idx  # samples sharing (g, split) share key tiles
        order = torch.argsort(group, stable=True)
        counts = torch.bincount(group, minlength=G * S)  # [G*S]
        starts = torch.cumsum(counts, 0) - counts
        blocks = (counts + plan.sample_block - 1) // plan.sample_block
        nblk = int(blocks.sum())  # one host sync: the grid size
        blk_group = torch.repeat_interleave(torch.arange(G * S, device=dev), blocks, output_size=nblk)
        blk_rank = torch.arange(nblk, device=dev) - (torch.cumsum(blocks, 0) - blocks)[blk_group]
        blk_first = starts[blk_group] + blk_rank * plan.sample_block
        blk_count = (counts[blk_group] - blk_rank * plan.sample_block).clamp_max(plan.sample_block)
        out_sorted = torch.empty(G * B * K, device=dev, dtype=torch.int64)
        r = _dummy(inv_norm, split_max)
        _memory_addressing_sample_kernel[(nblk,)](
            query, keys, r,
            blk_group, blk_first, blk_count,
            b_idx[order].contiguous(), m_smp[order].contiguous(), target[order].contiguous(),
            out_sorted,
            M, D, plan.split_size, S,
            query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), r.stride(0),
            HAS_SCALE=inv_norm is not None, ACC=_tl_acc(query.dtype), PRECISION=plan.input_precision,
            BLOCK_S=plan.sample_block, BLOCK_M=plan.sample_block_m, BLOCK_D=plan.block_d,
            num_warps=4, num_stages=plan.num_stages,
        )
        addresses = torch.empty_like(out_sorted)
        addresses[order] = out_sorted
    return addresses.view(G, B, K)


def refuse_double_backward(op: str):
    """Decorator for ``Function.backward``: raise when called with ``create_graph=True``.

    ``once_differentiable`` alone only errors when the upstream gradients require grad; a
    gradient penalty on ``dquery`` would otherwise get a silently detached gradient.
    """

    def wrap(backward):
        @functools.wraps(backward)
        def checked(ctx, *grads):
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"{op}: the Triton backend does not support double backward (create_graph=True); "
                    f"run it under kernels.use_backend('reference') for higher-order gradients"
                )
            return backward(ctx, *grads)

        return checked

    return wrap


class MemoryAddressing(torch.autograd.Function):
    """(lse, kl) of the address posterior, streamed over M; split statistics for the sampler.

    Inputs: query [G, B, d], keys [G, M, d], inv_norm [G, M] or None, log_prior [G, M] or None.
    Outputs: lse [G, B], kl [G, B] (differentiable), split_max / split_sumexp [G, S, B] (not).
    Double backward: not supported (raises).
    """

    @staticmethod
    def forward(ctx, query, keys, inv_norm, log_prior, plan):
        lse, kl, m_s, l_s = memory_addressing_forward(query, keys, inv_norm, log_prior, plan)
        ctx.save_for_backward(query, keys, inv_norm, log_prior, lse, kl)
        ctx.plan = plan
        ctx.mark_non_differentiable(m_s, l_s)
        ctx.set_materialize_grads(False)
        return lse, kl, m_s, l_s

    @staticmethod
    @refuse_double_backward("memory_addressing")
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_lse, grad_kl, _gm, _gl):
        query, keys, inv_norm, log_prior, lse, kl = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        if grad_lse is None and grad_kl is None:
            return None, None, None, None, None
        if grad_lse is None:
            grad_lse = torch.zeros_like(lse)
        if grad_kl is None:
            # kl is not part of the loss: leave out its terms entirely, as autograd does in the
            # reference (a NaN kl from an invalid prior must not reach the gradients as 0 * NaN)
            grad_kl, kl, log_prior = torch.zeros_like(kl), torch.zeros_like(kl), None
        dq, dk, dr, dlp = memory_addressing_backward(
            query, keys, inv_norm, log_prior, lse, kl, grad_lse, grad_kl, ctx.plan, needs
        )
        return (
            dq if needs[0] else None,
            dk if needs[1] else None,
            dr if needs[2] else None,
            dlp if needs[3] else None,
            None,
        )


# ----------------------------------------------------------------------------------------------
# Public functional API
# ----------------------------------------------------------------------------------------------


def _triton_reason(tensors: list, d: int) -> str | None:
    why = triton_device_reason(tensors) or dtype_reason(tensors, SUPPORTED_DTYPES)
    if why is None and d > MAX_HEAD_DIM:
        why = f"d={d} > {MAX_HEAD_DIM} (the key and query tiles must fit on chip); use the reference"
    if why is None and tensors[0].dim() == 3 and tensors[0].shape[0] > MAX_GROUPS:
        why = f"G={tensors[0].shape[0]} > {MAX_GROUPS} episodes (CUDA grid axis 1); split the call"
    return why


def memory_addressing(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    prior_query: torch.Tensor | None = None,
    num_samples: int = 4,
    similarity: str = "normalized_dot",
    generator: torch.Generator | None = None,
    tf32: bool = False,
) -> MemoryAddressingOutput:
    """VMA address posterior q(a|x) = softmax_a S(e_q, e_a): samples, log q, log p, KL, lse.

    query [B, d] or [G, B, d]; keys [M, d] or [G, M, d]; prior_query None (uniform p(a) = 1/M),
    [d] or [G, d] (learned prior query e_p). ``num_samples`` K (VMA uses K = 4). ``generator``
    drives the sampling. ``tf32``: allow TF32 in float32 products on GPU (Triton backend only).
    Returns :class:`MemoryAddressingOutput` (addresses [.., B, K] int64, log_q [.., B, K],
    log_prior [.., B, K], kl [.., B], log_normalizer [.., B]). A row without a finite
    log-normalizer gets addresses -1 and NaN outputs (module docstring, "Invalid rows").
    """
    check_memory_inputs(query, keys, similarity=similarity, prior_query=prior_query, num_samples=num_samples)
    tensors = [query, keys, prior_query]
    backend = choose(
        "memory_addressing",
        tensors,
        {"triton": lambda: _triton_reason(tensors, query.shape[-1]), "reference": lambda: None},
    )
    if backend == "reference":
        # imported here: the stream module imports this one
        from varmem.kernels.memory_addressing_stream import STREAM_MIN_ENTRIES, memory_addressing_stream

        if requested_backend() == "auto" and keys.shape[-2] >= STREAM_MIN_ENTRIES:  # large memory: stream over M
            return memory_addressing_stream(
                query, keys, prior_query=prior_query, num_samples=num_samples, similarity=similarity, generator=generator
            )
        return memory_addressing_reference(
            query, keys, prior_query=prior_query, num_samples=num_samples, similarity=similarity, generator=generator
        )
    q, k, pq, _, squeeze = _as_grouped(query, keys, prior_query)
    G, B, d = q.shape
    M = k.shape[1]
    acc = acc_dtype(q.dtype)
    q_eff = (q.to(acc) / _clamped_norm(q).unsqueeze(-1)).to(q.dtype) if similarity == "cosine" else q
    q_eff, k = q_eff.contiguous(), k.contiguous()
    inv_norm = None if similarity == "dot" else (1.0 / _clamped_norm(k)).contiguous()  # [G, M]
    log_p = None  # [G, M] log p(a); None: uniform
    if pq is not None:  # the O(M·d) prior in torch, reusing the key norms
        pq_eff = pq.to(acc)
        if similarity == "cosine":
            pq_eff = pq_eff / _clamped_norm(pq_eff).unsqueeze(-1)
        prior_logits = (k.to(acc) @ pq_eff.unsqueeze(-1)).squeeze(-1)  # [G, M]
        if inv_norm is not None:
            prior_logits = prior_logits * inv_norm  # S(e_p, e_a)   (VMA eq. 5)
        log_p = log_softmax_or_nan(prior_logits).contiguous()
    plan = make_plan(G, B, M, d, q.dtype, q.device, tf32=tf32)
    lse, kl, m_s, l_s = MemoryAddressing.apply(q_eff, k, inv_norm, log_p, plan)
    addresses = memory_addressing_sample(q_eff.detach(), k.detach(), None if inv_norm is None else inv_norm.detach(),
                                         m_s, l_s, num_samples, plan, generator)  # [G, B, K]
    valid = _nan_or_one(lse)  # [G, B]: 1, or NaN for invalid rows (lse is NaN there)
    addresses = torch.where(torch.isnan(valid).unsqueeze(-1), torch.full_like(addresses, INVALID_ADDRESS), addresses)
    # log q(a_k | x_b) = S(e_q, e_{a_k}) − lse_b on the K gathered keys (B·K·d, torch autograd)
    flat = addresses.reshape(G, B * num_samples).clamp_min(0)  # invalid rows gather entry 0 (their log_q is NaN)
    k_sel = torch.gather(k, 1, flat.unsqueeze(-1).expand(G, B * num_samples, d)).view(G, B, num_samples, d)
    s_sel = (q_eff.to(acc).unsqueeze(2) * k_sel.to(acc)).sum(-1)  # [G, B, K]
    if inv_norm is not None:
        s_sel = s_sel * torch.gather(inv_norm, 1, flat).view(G, B, num_samples)
    # computed as (S − m) − log Σ_a exp(S_a − m) with the row max m, like log_softmax: S − lse
    # would lose log q to rounding where |S| ≥ 2^24 (float32). lse_rel has lse's gradient.
    with torch.no_grad():
        m = m_s.max(dim=1).values  # [G, B]
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        log_total = torch.log((torch.exp(m_s - m.unsqueeze(1)) * l_s).sum(dim=1))  # lse − m, unrounded
    lse_rel = log_total + (lse - lse.detach())  # NaN for invalid rows
    log_q = (s_sel - m.unsqueeze(-1)) - lse_rel.unsqueeze(-1)
    if log_p is None:
        log_prior = torch.full((G, B, num_samples), -math.log(M), device=q.device, dtype=acc)
    else:
        log_prior = torch.gather(log_p, 1, flat).view(G, B, num_samples)
    log_prior = log_prior * valid.unsqueeze(-1)  # NaN (value and gradient) for invalid rows
    out = MemoryAddressingOutput(addresses, log_q, log_prior, kl, lse)
    if squeeze:
        out = MemoryAddressingOutput(*(t.squeeze(0) for t in out))
    return out
