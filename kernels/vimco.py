"""VIMCO weighting: the multi-sample bound, normalized weights and leave-one-out bounds.

Given K importance log-weights per example, ``log_w [..., K]`` with
``log w_k = log p(x, h_k) - log q(h_k | x)``, this module computes in one pass

* ``bound [...]``        L̂ = log (1/K) Σ_k w_k                       (VMA eq. 7)
* ``weights [..., K]``   w̃_k = w_k / Σ_j w_j                          (∂L̂/∂log w_k)
* ``loo_bound [..., K]`` L̂^{-k}, the bound with sample k left out:
    - ``"geometric"`` (Mnih & Rezende 2016's baseline): w_k replaced by the geometric mean
      of the others, L̂^{-k} = log (1/K) (Σ_{j≠k} w_j + exp(mean_{j≠k} log w_j));
    - ``"arithmetic"`` (VMA eq. 8 as printed): L̂^{-k} = log (1/(K-1)) Σ_{j≠k} w_j.

and :func:`vimco_surrogate`, whose autograd is the VIMCO estimator (VMA eq. 8): the gradient
with respect to ``log_w`` is ``weights`` and with respect to ``log_q`` (the log-probability
of each sample under the proposal) is the learning signal ``bound - loo_bound``, held fixed.
Since log w_k contains -log q(h_k), autograd through ``log_w`` adds the ``-w̃_k`` part of the
VIMCO coefficient ``(L̂ - L̂^{-k}) - w̃_k``.

Exactness. Weights routinely span hundreds of nats, so every log-sum-exp is shifted by a max
that is in the sum. For the leave-one-out sums: for every k except the row's argmax a, the
sum over j≠k still contains w_a, so it is shifted by the global max m1 and computed as
S1 - exp(log w_k - m1) with S1 = Σ_j exp(log w_j - m1) ≥ 1; the result is ≥ 1 (the term of
a stays), so the subtraction never cancels catastrophically. For k = a the sum is recomputed
shifted by the second max m2 (a second exp per element). For ``log_w = [-100, -140]`` the
leave-one-out log-sums are exactly ``[-140, -100]``. The geometric mean is computed from the
max-shifted log-weights, so no large common offset is summed. Nothing is clamped.

Zero weights. A ``-inf`` log-weight is a sample of weight 0: its normalized weight is 0; in
the geometric variant a -inf among the others makes their geometric mean 0 (it contributes
nothing). If every other sample of k has weight 0, L̂^{-k} = -inf and the learning signal of k
is +inf, which is the exact value; its gradient contribution is ±inf (0 where the upstream
gradient is 0, never NaN). A row whose log-weights are all -inf has bound = loo_bound = -inf,
weights all 0 (there is no distribution to normalize) and learning signal 0, so its gradients
are 0, not NaN.

Infinite weights. A ``+inf`` log-weight is taken as one common value T -> ∞ shared by all the
+inf entries of its row, and every output is the limit: ``bound`` = +inf; ``weights`` = 1/n on
the row's n +inf entries and 0 elsewhere; ``loo_bound`` = +inf for every k whose others hold
a +inf, and the finite leave-one-out bound of the others for the row's sole +inf entry (if
n = 1); the learning signal L̂ - L̂^{-k} = +inf for that sole entry, else the finite limit
log(n / (n_k + g_k)) + log(denominator / K), with n_k the +inf entries among the others and
g_k = 1 when (geometric) all K - 1 others are +inf, else 0. Gradients are those limits too
(finite): ∂L̂/∂log w = ``weights`` and the softmax Jacobian at those weights; the signal of
the sole +inf entry is +inf (0 where the upstream gradient is 0, as above). -inf entries in
such a row keep weight 0.

NaN. A row holding a NaN log-weight (anywhere in the row) has ``bound``, every ``weights``
and ``loo_bound`` entry and every learning signal NaN, and NaN gradients for every entry of
its ``log_w`` and ``log_q``, even under a zero upstream gradient (NaN is not masked by 0).
Other rows are unaffected. Reference and Triton follow these rules identically.

Autograd. ``vimco``: ``bound`` and ``weights`` are differentiable (bound → weights; weights →
the softmax Jacobian); ``loo_bound`` is not (VIMCO uses it as a constant; it is marked
non-differentiable). ``vimco_surrogate``: gradients for ``log_w`` and ``log_q``. Double
backward is not supported by the Triton path and raises (``once_differentiable``).

Chain of names: ``_vimco_fwd_kernel`` / ``_vimco_bwd_kernel`` → ``vimco_forward`` /
``vimco_backward`` → ``Vimco``, ``VimcoSurrogate`` (autograd) → ``vimco``, ``vimco_surrogate``;
``vimco_reference`` and ``vimco_surrogate_reference`` are the plain-torch oracle and CPU path.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from varmem.kernels.dispatch import choose, dtype_reason, triton_device_reason

__all__ = [
    "VARIANTS",
    "VimcoOutput",
    "Vimco",
    "VimcoSurrogate",
    "vimco",
    "vimco_surrogate",
    "vimco_reference",
    "vimco_surrogate_reference",
    "vimco_forward",
    "vimco_backward",
]

VARIANTS = ("geometric", "arithmetic")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The Triton kernel holds a whole row of K log-weights in one tile. Beyond this the tile
# would spill registers; larger K (e.g. the K = 5000 evaluation bounds) go to the reference.
TRITON_MAX_K = 8192
# Elements per program: BLOCK_B rows x BLOCK_K columns. Not measured on a GPU yet (none in
# the session that wrote this); `python -m varmem.benchmarks.bench_vimco` is how to tune it.
_TILE_ELEMENTS = 4096


class VimcoOutput(NamedTuple):
    bound: torch.Tensor  # [...]      log (1/K) Σ_k w_k
    weights: torch.Tensor  # [..., K] w_k / Σ_j w_j
    loo_bound: torch.Tensor  # [..., K] L̂^{-k}


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _vimco_fwd_kernel(
    logw_ptr,  # [B, K] contiguous
    bound_ptr,  # [B]
    weights_ptr,  # [B, K]
    loo_ptr,  # [B, K]: L̂^{-k}, or the learning signal L̂ - L̂^{-k} when SIGNAL
    B,
    K,
    GEOMETRIC: tl.constexpr,
    SIGNAL: tl.constexpr,
    CDT: tl.constexpr,  # compute dtype: float64 for float64 inputs, else float32
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    NEG_INF: tl.constexpr = float("-inf")
    POS_INF: tl.constexpr = float("inf")
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    cols = tl.arange(0, BLOCK_K)  # [BK]
    row_ok = rows < B
    col_ok = cols < K
    mask = row_ok[:, None] & col_ok[None, :]  # [BB, BK]
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    x = tl.load(logw_ptr + offs, mask=mask, other=NEG_INF).to(CDT)  # [BB, BK] log w

    # NaN rows: every output NaN (set at the end); the NaN entries are read as -inf meanwhile,
    # so that max/argmax do not depend on how the hardware orders NaN.
    is_nan = (x != x) & mask
    row_nan = tl.sum(tl.where(is_nan, 1, 0), axis=1) > 0  # [BB]
    x = tl.where(is_nan, NEG_INF, x)
    is_pinf = (x == POS_INF) & mask
    is_ninf = (x == NEG_INF) & mask
    n_pinf = tl.sum(tl.where(is_pinf, 1, 0), axis=1)  # [BB]
    n_ninf = tl.sum(tl.where(is_ninf, 1, 0), axis=1)
    row_pinf = n_pinf > 0

    k_f = K.to(CDT)
    log_k = tl.log(k_f)
    # Max, first argmax a and second max (max over j ≠ a) of each row.
    m1 = tl.max(x, axis=1)  # [BB]
    is_top = (x == m1[:, None]) & mask
    a1 = tl.min(tl.where(is_top, cols[None, :], BLOCK_K), axis=1)  # [BB]
    is_a1 = cols[None, :] == a1[:, None]  # [BB, BK]
    m2 = tl.max(tl.where(is_a1, NEG_INF, x), axis=1)  # [BB]
    # Shifts. An infinite max is replaced by 0: an all -inf row (or max over nothing) so that
    # -inf - shift stays -inf; a +inf max by the T -> ∞ limit below.
    m1_inf = m1 == POS_INF
    m2_inf = m2 == POS_INF
    m1s = tl.where((m1 == NEG_INF) | m1_inf, 0.0, m1).to(CDT)
    m2s = tl.where((m2 == NEG_INF) | m2_inf, 0.0, m2).to(CDT)
    # +inf entries are one common value T -> ∞: shifted by T they are 0 and finite ones -inf.
    at_t = tl.where(is_pinf, 0.0, NEG_INF).to(CDT)  # [BB, BK]

    x1 = tl.where(m1_inf[:, None], at_t, x - m1s[:, None])
    e1 = tl.exp(x1)  # [BB, BK] w_j / exp(m1); 0 at -inf and padding
    s1 = tl.sum(e1, axis=1)  # [BB] ≥ 1 unless the row is all -inf
    # w_j / exp(m2) for j ≠ a (x_j ≤ m2 there; the minimum keeps the unused entry a finite)
    x2 = tl.where(m2_inf[:, None], at_t, x - m2s[:, None])
    e2 = tl.where(is_a1, 0.0, tl.exp(tl.minimum(x2, 0.0)))
    s2 = tl.sum(e2, axis=1)  # [BB] Σ_{j≠a} w_j / exp(m2)

    s1_pos = s1 > 0
    s1_safe = tl.where(s1_pos, s1, 1.0)
    log_s1 = tl.log(s1_safe)
    bound = tl.where(s1_pos, m1s + log_s1, NEG_INF) - log_k  # VMA eq. 7
    bound = tl.where(row_pinf, POS_INF, bound)
    weights = e1 / s1_safe[:, None]  # 0 everywhere for an all -inf row; 1/n on n +inf entries

    # Leave-one-out sums Σ_{j≠k} w_j / exp(shift_k): shifted by m1 for k ≠ a (w_a stays in
    # the sum, so S1 - e1_k ≥ 1), by m2 for k = a.
    loo_sum = tl.where(is_a1, s2[:, None], s1[:, None] - e1)  # [BB, BK]
    shift = tl.where(is_a1, m2s[:, None], m1s[:, None])  # [BB, BK]
    shift_inf = tl.where(is_a1, m2_inf[:, None], m1_inf[:, None])  # [BB, BK] shift is T
    if GEOMETRIC:
        # Geometric mean of the others, exp(mean_{j≠k} log w_j), from d_j = log w_j - c with
        # c the largest finite shift (m1, or m2 when m1 = +inf).
        c = tl.where(m1_inf, m2s, m1s)  # [BB]
        is_fin = mask & (~is_pinf) & (~is_ninf)
        d = tl.where(is_fin, x - c[:, None], 0.0)  # [BB, BK]; 0 at ±inf and padding
        t = tl.sum(d, axis=1)  # [BB] Σ_j d_j over finite j
        others_ninf = n_ninf[:, None] - tl.where(is_ninf, 1, 0)  # -inf count among j ≠ k
        others_pinf = n_pinf[:, None] - tl.where(is_pinf, 1, 0)  # +inf count among j ≠ k
        mean_d = (t[:, None] - d) / (k_f - 1.0)  # mean_{j≠k} log w_j - c (others finite)
        # mean_{j≠k} log w_j ≤ max_{j≠k} log w_j = shift_k, so the exponent is ≤ 0; the
        # minimum only removes rounding excess (and keeps the unused branch finite).
        geo_arg = tl.minimum(mean_d + (c[:, None] - shift), 0.0)
        geo = tl.where((others_ninf == 0) & (others_pinf == 0), tl.exp(geo_arg), 0.0)
        # Shift T: the geometric mean over e^T is 1 if the others are all +inf, else 0.
        geo = tl.where(shift_inf, tl.where(others_pinf == K - 1, 1.0, 0.0), geo)
        loo_sum = loo_sum + geo
        log_denom = log_k  # VIMCO: log (1/K)(Σ_{j≠k} w_j + geometric mean)
    else:
        log_denom = tl.log(k_f - 1.0)  # VMA eq. 8: log (1/(K-1)) Σ_{j≠k} w_j
    loo_pos = loo_sum > 0
    loo_safe = tl.where(loo_pos, loo_sum, 1.0)
    if SIGNAL:
        # L̂ - L̂^{-k} without subtracting two large numbers: (m1 - shift) + log(S1 / loo_sum)
        # + log(denominator / K). +inf where the others all have weight 0; 0 for an all -inf row.
        # With m1 = T: m1 - shift is 0 where the shift is T too, +inf where it is finite.
        sig = (m1s[:, None] - shift) + tl.log(s1_safe[:, None] / loo_safe) + (log_denom - log_k)
        sig = tl.where(loo_pos & (~(m1_inf[:, None] & (~shift_inf))), sig, POS_INF)
        out = tl.where(s1_pos[:, None], sig, 0.0)
    else:
        out = tl.where(loo_pos, shift + tl.log(loo_safe), NEG_INF) - log_denom
        out = tl.where(shift_inf, POS_INF, out)

    bound = tl.where(row_nan, float("nan"), bound)
    weights = tl.where(row_nan[:, None], float("nan"), weights)
    out = tl.where(row_nan[:, None], float("nan"), out)
    tl.store(bound_ptr + rows, bound.to(bound_ptr.dtype.element_ty), mask=row_ok)
    tl.store(weights_ptr + offs, weights.to(weights_ptr.dtype.element_ty), mask=mask)
    tl.store(loo_ptr + offs, out.to(loo_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _vimco_bwd_kernel(
    weights_ptr,  # [B, K]
    g_bound_ptr,  # [B]     upstream gradient of the bound (or of the surrogate)
    g_weights_ptr,  # [B, K] upstream gradient of the weights (when HAS_GW)
    signal_ptr,  # [B, K]   learning signal L̂ - L̂^{-k} (when HAS_Q)
    g_logw_ptr,  # [B, K]   out: gradient wrt log_w
    g_logq_ptr,  # [B, K]   out: gradient wrt log_q (when HAS_Q)
    B,
    K,
    HAS_GW: tl.constexpr,
    HAS_Q: tl.constexpr,
    CDT: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    cols = tl.arange(0, BLOCK_K)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < K)[None, :]
    offs = rows[:, None].to(tl.int64) * K + cols[None, :]
    w = tl.load(weights_ptr + offs, mask=mask, other=0.0).to(CDT)  # [BB, BK]
    gb = tl.load(g_bound_ptr + rows, mask=row_ok, other=0.0).to(CDT)  # [BB]
    g_logw = gb[:, None] * w  # ∂L̂/∂log w_k = w̃_k
    if HAS_GW:
        # Softmax Jacobian: ∂w̃_k/∂log w_j = w̃_k (δ_kj - w̃_j).
        gw = tl.load(g_weights_ptr + offs, mask=mask, other=0.0).to(CDT)
        inner = tl.sum(gw * w, axis=1)  # [BB]
        g_logw += w * (gw - inner[:, None])
    tl.store(g_logw_ptr + offs, g_logw.to(g_logw_ptr.dtype.element_ty), mask=mask)
    if HAS_Q:
        sig = tl.load(signal_ptr + offs, mask=mask, other=0.0).to(CDT)
        # VMA eq. 8: the signal multiplies ∇ log q(h_k); 0 * inf is taken as 0, not NaN
        # (0 * NaN stays NaN: a row holding NaN has NaN gradients).
        g_logq = gb[:, None] * tl.where((gb[:, None] == 0) & (sig == sig), 0.0, sig)
        tl.store(g_logq_ptr + offs, g_logq.to(g_logq_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _launch_config(B: int, K: int) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_K, num_warps) for a [B, K] problem: one row per tile row."""
    block_k = max(triton.next_power_of_2(K), 2)
    block_b = max(1, min(triton.next_power_of_2(max(B, 1)), _TILE_ELEMENTS // block_k))
    num_warps = 8 if block_k >= 2048 else 4
    return block_b, block_k, num_warps


def vimco_forward(log_w: torch.Tensor, variant: str = "geometric", *, signal: bool = False):
    """One launch of ``_vimco_fwd_kernel`` on ``log_w [B, K]`` (contiguous).

    Returns ``(bound [B], weights [B, K], loo [B, K])`` in ``log_w``'s dtype; with
    ``signal=True`` the third tensor is the learning signal ``bound - loo_bound`` instead,
    computed without cancellation and kept in float32 for 16-bit inputs.
    """
    B, K = log_w.shape
    log_w = log_w.contiguous()
    bound = torch.empty(B, dtype=log_w.dtype, device=log_w.device)
    weights = torch.empty_like(log_w)
    third_dtype = torch.float32 if (signal and log_w.dtype in (torch.float16, torch.bfloat16)) else log_w.dtype
    third = torch.empty((B, K), dtype=third_dtype, device=log_w.device)
    if B == 0:
        return bound, weights, third
    block_b, block_k, num_warps = _launch_config(B, K)
    grid = (triton.cdiv(B, block_b),)
    _vimco_fwd_kernel[grid](
        log_w, bound, weights, third, B, K,
        GEOMETRIC=(variant == "geometric"), SIGNAL=signal, CDT=_compute_dtype(log_w.dtype),
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=num_warps,
    )
    return bound, weights, third


def vimco_backward(
    weights: torch.Tensor,
    g_bound: torch.Tensor | None,
    g_weights: torch.Tensor | None = None,
    signal: torch.Tensor | None = None,
    log_q_dtype: torch.dtype | None = None,
):
    """One launch of ``_vimco_bwd_kernel``: ``(grad_log_w [B, K], grad_log_q [B, K] or None)``.

    ``g_bound [B]`` (None means zeros), ``g_weights [B, K]`` (optional) and, for the
    surrogate, ``signal [B, K]`` from :func:`vimco_forward` with ``signal=True``.
    """
    B, K = weights.shape
    if g_bound is None:
        g_bound = torch.zeros(B, dtype=weights.dtype, device=weights.device)
    g_bound = g_bound.contiguous()
    has_gw = g_weights is not None
    has_q = signal is not None
    g_weights = g_weights.contiguous() if has_gw else weights  # dummy pointer when unused
    sig = signal.contiguous() if has_q else weights
    g_logw = torch.empty_like(weights)
    g_logq = torch.empty((B, K), dtype=log_q_dtype or weights.dtype, device=weights.device) if has_q else None
    if B == 0:
        return g_logw, g_logq
    block_b, block_k, num_warps = _launch_config(B, K)
    grid = (triton.cdiv(B, block_b),)
    _vimco_bwd_kernel[grid](
        weights, g_bound, g_weights, sig, g_logw, g_logq if has_q else g_logw, B, K,
        HAS_GW=has_gw, HAS_Q=has_q, CDT=_compute_dtype(weights.dtype),
        BLOCK_B=block_b, BLOCK_K=block_k, num_warps=num_warps,
    )
    return g_logw, g_logq


# ---------------------------------------------------------------------------------------------
# Autograd functions (Triton path)
# ---------------------------------------------------------------------------------------------


class Vimco(torch.autograd.Function):
    """``(bound, weights, loo_bound)`` of ``log_w [B, K]``; gradients through bound and weights."""

    @staticmethod
    def forward(ctx, log_w: torch.Tensor, variant: str):
        bound, weights, loo = vimco_forward(log_w, variant)
        ctx.mark_non_differentiable(loo)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(weights)
        return bound, weights, loo

    @staticmethod
    @once_differentiable
    def backward(ctx, g_bound, g_weights, g_loo):
        (weights,) = ctx.saved_tensors
        if g_bound is None and g_weights is None:
            return None, None
        g_logw, _ = vimco_backward(weights, g_bound, g_weights)
        return g_logw, None


class VimcoSurrogate(torch.autograd.Function):
    """Value ``bound [B]``; gradient ``weights`` to ``log_w`` and ``bound - loo_bound`` to ``log_q``."""

    @staticmethod
    def forward(ctx, log_w: torch.Tensor, log_q: torch.Tensor, variant: str):
        bound, weights, signal = vimco_forward(log_w, variant, signal=True)
        ctx.save_for_backward(weights, signal)
        ctx.log_q_dtype = log_q.dtype
        return bound

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        weights, signal = ctx.saved_tensors
        g_logw, g_logq = vimco_backward(weights, g, None, signal, ctx.log_q_dtype)
        return g_logw, g_logq, None


# ---------------------------------------------------------------------------------------------
# Reference (plain torch): the CPU path, the oracle's formula, the documentation of the math
# ---------------------------------------------------------------------------------------------


def _upcast(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _reference_values(x: torch.Tensor, variant: str):
    """bound [...], weights, loo_bound and signal [..., K] of log-weights ``x`` (no autograd).

    The same steps as ``_vimco_fwd_kernel`` (see the module docstring for the conventions).
    """
    K = x.shape[-1]
    log_k = math.log(K)
    inf = torch.tensor(float("inf"), dtype=x.dtype, device=x.device)
    nan = torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    is_nan = torch.isnan(x)
    row_nan = is_nan.any(-1)  # [...]
    x = x.masked_fill(is_nan, float("-inf"))  # read as -inf; the row's outputs are NaN at the end
    is_pinf, is_ninf = torch.isposinf(x), torch.isneginf(x)
    n_pinf = is_pinf.sum(-1)
    n_ninf = is_ninf.sum(-1)
    row_pinf = n_pinf > 0
    m1, a1 = x.max(dim=-1)  # [...] max and first argmax
    is_a1 = torch.nn.functional.one_hot(a1, K).bool()  # [..., K]
    m2 = x.masked_fill(is_a1, float("-inf")).max(dim=-1).values  # second max
    m1_inf, m2_inf = torch.isposinf(m1), torch.isposinf(m2)
    m1s = torch.where(torch.isinf(m1), zero, m1)  # an infinite max shifts by 0
    m2s = torch.where(torch.isinf(m2), zero, m2)
    at_t = torch.where(is_pinf, zero, -inf)  # +inf entries = T -> ∞, shifted by T
    e1 = torch.exp(torch.where(m1_inf[..., None], at_t, x - m1s[..., None]))  # w_j / e^{m1}
    s1 = e1.sum(-1)  # [...]
    s1_pos = s1 > 0
    s1_safe = torch.where(s1_pos, s1, torch.ones_like(s1))
    bound = torch.where(s1_pos, m1s + torch.log(s1_safe), -inf) - log_k  # VMA eq. 7
    bound = torch.where(row_pinf, inf, bound)
    weights = e1 / s1_safe[..., None]
    x2 = torch.where(m2_inf[..., None], at_t, x - m2s[..., None])
    s2 = torch.exp(x2.clamp(max=0.0)).masked_fill(is_a1, 0.0).sum(-1)  # Σ_{j≠a} w_j / e^{m2}
    loo_sum = torch.where(is_a1, s2[..., None], s1[..., None] - e1)  # Σ_{j≠k} w_j / e^{shift}
    shift = torch.where(is_a1, m2s[..., None], m1s[..., None])
    shift_inf = torch.where(is_a1, m2_inf[..., None], m1_inf[..., None])
    if variant == "geometric":
        c = torch.where(m1_inf, m2s, m1s)  # the largest finite shift
        is_fin = torch.isfinite(x)
        d = torch.where(is_fin, x - c[..., None], zero)
        others_ninf = n_ninf[..., None] - is_ninf.long()
        others_pinf = n_pinf[..., None] - is_pinf.long()
        mean_d = (d.sum(-1, keepdim=True) - d) / (K - 1)  # mean_{j≠k} log w_j - c
        geo_arg = torch.clamp(mean_d + (c[..., None] - shift), max=0.0)
        geo = torch.where((others_ninf == 0) & (others_pinf == 0), torch.exp(geo_arg), zero)
        geo = torch.where(shift_inf, (others_pinf == K - 1).to(x.dtype), geo)
        loo_sum = loo_sum + geo
        log_denom = log_k  # VIMCO geometric-mean baseline
    else:
        log_denom = math.log(K - 1)  # VMA eq. 8
    loo_pos = loo_sum > 0
    loo_safe = torch.where(loo_pos, loo_sum, torch.ones_like(loo_sum))
    loo = torch.where(loo_pos, shift + torch.log(loo_safe), -inf) - log_denom
    loo = torch.where(shift_inf, inf, loo)
    sig = (m1s[..., None] - shift) + torch.log(s1_safe[..., None] / loo_safe) + (log_denom - log_k)
    sig = torch.where(loo_pos & ~(m1_inf[..., None] & ~shift_inf), sig, inf)
    sig = torch.where(s1_pos[..., None], sig, zero)
    bound = torch.where(row_nan, nan, bound)
    weights, loo, sig = (torch.where(row_nan[..., None], nan, t) for t in (weights, loo, sig))
    return bound, weights, loo, sig


class _BoundAndWeights(torch.autograd.Function):
    """``(bound, weights)`` given their values; backward ∂L̂/∂log w = w̃ and the softmax Jacobian.

    Written as a Function so that the +inf (limit) and NaN conventions hold for the gradients
    too: a NaN row's weights are NaN, so its gradients are NaN whatever the upstream gradient.
    The backward is differentiable (double backward works through the saved weights output).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, bound: torch.Tensor, weights: torch.Tensor):
        bound, weights = bound.clone(), weights.clone()
        ctx.save_for_backward(weights)
        return bound, weights

    @staticmethod
    def backward(ctx, g_bound, g_weights):
        (w,) = ctx.saved_tensors
        grad = g_bound[..., None] * w  # ∂L̂/∂log w_k = w̃_k
        grad = grad + w * (g_weights - (g_weights * w).sum(-1, keepdim=True))  # w̃_k (δ_kj - w̃_j)
        return grad, None, None


def _reference_parts(log_w: torch.Tensor, variant: str):
    """bound [...], weights [..., K] (both differentiable) and, detached, loo_bound and signal."""
    x = _upcast(log_w)  # [..., K]
    with torch.no_grad():
        bound, weights, loo, sig = _reference_values(x.detach(), variant)
    bound, weights = _BoundAndWeights.apply(x, bound, weights)
    return bound, weights, loo, sig


def vimco_reference(log_w: torch.Tensor, variant: str = "geometric") -> VimcoOutput:
    """Plain-torch :func:`vimco`: same outputs, conventions and gradients (through autograd)."""
    _check(log_w, None, variant)
    bound, weights, loo, _ = _reference_parts(log_w, variant)
    dt = log_w.dtype
    return VimcoOutput(bound.to(dt), weights.to(dt), loo.to(dt))


class _LearningSignal(torch.autograd.Function):
    """Zero-valued term whose gradient wrt ``log_q [..., K]`` is ``g * signal`` (0 where g is 0, unless NaN)."""

    @staticmethod
    def forward(ctx, log_q: torch.Tensor, signal: torch.Tensor):
        ctx.save_for_backward(signal)
        return log_q.new_zeros(log_q.shape[:-1])

    @staticmethod
    def backward(ctx, g):
        (signal,) = ctx.saved_tensors
        g = g[..., None]
        grad = g * torch.where((g == 0) & ~torch.isnan(signal), torch.zeros_like(signal), signal)
        return grad, None


def vimco_surrogate_reference(log_w: torch.Tensor, log_q: torch.Tensor, variant: str = "geometric") -> torch.Tensor:
    """Plain-torch :func:`vimco_surrogate`."""
    _check(log_w, log_q, variant)
    bound, _, _, sig = _reference_parts(log_w, variant)
    return (bound + _LearningSignal.apply(_upcast(log_q), sig.to(_upcast(log_q).dtype))).to(log_w.dtype)


# ---------------------------------------------------------------------------------------------
# Functional API with dispatch
# ---------------------------------------------------------------------------------------------


def _check(log_w: torch.Tensor, log_q: torch.Tensor | None, variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(f"vimco: variant={variant!r} is not one of {', '.join(VARIANTS)}")
    if not isinstance(log_w, torch.Tensor) or log_w.dim() < 1:
        raise ValueError("vimco: log_w must be a tensor of shape [..., K] (K samples in the last dimension)")
    if not log_w.is_floating_point():
        raise ValueError(f"vimco: log_w must be floating point, got dtype {log_w.dtype}")
    K = log_w.shape[-1]
    if K < 2:
        raise ValueError(
            f"vimco: K={K} samples in the last dimension of log_w (shape {tuple(log_w.shape)}); the "
            "leave-one-out bounds need K >= 2 samples per example"
        )
    if log_q is not None:
        if log_q.shape != log_w.shape:
            raise ValueError(f"vimco_surrogate: log_q shape {tuple(log_q.shape)} != log_w shape {tuple(log_w.shape)}")
        if not log_q.is_floating_point():
            raise ValueError(f"vimco_surrogate: log_q must be floating point, got dtype {log_q.dtype}")


def _reasons(tensors: list[torch.Tensor], K: int):
    def triton_reason():
        why = triton_device_reason(tensors) or dtype_reason(tensors, TRITON_DTYPES)
        if why is None and K > TRITON_MAX_K:
            why = f"K={K} > {TRITON_MAX_K}: the kernel holds a row in one tile"
        return why

    return {"triton": triton_reason, "reference": lambda: None}


def vimco(log_w: torch.Tensor, variant: str = "geometric") -> VimcoOutput:
    """VIMCO weighting of ``log_w [..., K]`` (K ≥ 2): ``VimcoOutput(bound, weights, loo_bound)``.

    See the module docstring for the definitions, the two ``variant`` choices, the treatment
    of ±inf and NaN log-weights and which outputs carry gradients.
    """
    _check(log_w, None, variant)
    lead, K = log_w.shape[:-1], log_w.shape[-1]
    if choose("vimco", [log_w], _reasons([log_w], K)) == "reference":
        return vimco_reference(log_w, variant)
    bound, weights, loo = Vimco.apply(log_w.reshape(-1, K), variant)  # [B], [B, K], [B, K]
    return VimcoOutput(bound.reshape(lead), weights.reshape(*lead, K), loo.reshape(*lead, K))


def vimco_surrogate(log_w: torch.Tensor, log_q: torch.Tensor, variant: str = "geometric") -> torch.Tensor:
    """Surrogate ``[...]`` whose autograd is the VIMCO estimator (VMA eq. 8).

    Its value is the bound L̂; ∂/∂log_w = normalized weights; ∂/∂log_q = L̂ - L̂^{-k} (held
    fixed). Maximize it (or minimize its negative): ``log_w = log p(x, h) - log q(h|x)`` with
    ``h`` sampled without reparameterization and ``log_q = log q(h|x)``.
    """
    _check(log_w, log_q, variant)
    lead, K = log_w.shape[:-1], log_w.shape[-1]
    if choose("vimco_surrogate", [log_w, log_q], _reasons([log_w, log_q], K)) == "reference":
        return vimco_surrogate_reference(log_w, log_q, variant)
    out = VimcoSurrogate.apply(log_w.reshape(-1, K), log_q.reshape(-1, K), variant)  # [B]
    return out.reshape(lead)
