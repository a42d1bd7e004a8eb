"""Soft-attention memory read: out_b = Σ_a softmax_a(S[b, a]) v_a, streamed over M.

The soft-attention baseline of VMA (Bornschein et al. 2017, section 4) reads the whole memory
with the address posterior's weights instead of sampling one entry:

    S[b, a]  = S(e_q(x_b), e_a)        (same similarities as kernels.memory_addressing, VMA eq. 5)
    w[b, a]  = softmax_a S[b, a]
    out[b]   = Σ_a w[b, a] v_a          [B, dv]

This is flash-attention with one query per row (flash-decoding):

* ``_memory_read_fwd_kernel``: grid (row blocks × splits of M, G); online softmax accumulating
  Σ exp(S − m) v_a per split; torch merges the splits (weights exp(m_s − m)) and keeps
  lse_b = log Σ_a exp S[b, a] for the backward.
* ``_memory_read_bwd_dq_kernel``: grid (row blocks × splits, G); recomputes w = exp(S − lse),
  dS = w (g·v_a − g·out_b), writes per-split partial dq (summed in torch, no atomics).
* ``_memory_read_bwd_dkv_kernel``: grid (M-blocks × splits of B, G), loops over its rows:
  dv_a = Σ_b w g_b, d e_a and the gradient of the inverse key norm; splits of B (only when the
  M-blocks do not fill the device) are summed in torch (deterministic, no atomics).

Zero-norm keys follow ``varmem.kernels.memory_addressing`` (norms clamped below by NORM_EPS: S = 0
for a zero key, finite gradients). Inputs must be floating point (``ValueError`` naming the
argument and dtype otherwise: an integer read would be truncated). Invalid rows as in
``memory_addressing`` (log Σ_a exp S[b, a] not finite: a NaN or +inf logit, or all -inf) read
NaN, in both backends; their gradients are NaN for that query, every key and every value,
whatever the upstream gradient. Non-finite values propagate as in ``softmax(S) @ values``.
Double backward is not supported by the Triton backend (``once_differentiable``;
``create_graph=True`` raises); the reference supports it. Output dtype = values' dtype (16-bit
inputs are computed in float32 and rounded at the end).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from varmem.kernels.dispatch import choose
from varmem.kernels.memory_addressing import (
    Plan,
    _as_grouped,
    _cdiv,
    _clamped_norm,
    _dummy,
    _nan_or_one,
    _tl_acc,
    _triton_reason,
    acc_dtype,
    check_memory_inputs,
    dk_launch,
    make_plan,
    refuse_double_backward,
    similarity_logits,
)


def memory_read_reference(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, *, similarity: str = "normalized_dot"
) -> torch.Tensor:
    """Dense PyTorch soft read: softmax_a(S) @ values, [G?, B, dv] in values' dtype."""
    check_memory_inputs(query, keys, similarity=similarity, values=values, op="memory_read")
    q, k, _, v, squeeze = _as_grouped(query, keys, None, values)
    s = similarity_logits(q, k, similarity)  # [G, B, M]  (VMA eq. 5)
    w = torch.softmax(s, dim=-1)  # [G, B, M]
    valid = _nan_or_one(torch.logsumexp(s.detach(), dim=-1))  # [G, B]: 1, or NaN for an invalid row
    out = ((w @ v.to(w.dtype)) * valid.unsqueeze(-1)).to(values.dtype)  # [G, B, dv]
    return out.squeeze(0) if squeeze else out


@triton.jit
def _memory_read_fwd_kernel(
    q_ptr, k_ptr, r_ptr, v_ptr,  # [G, B, D], [G, M, D], [G, M], [G, M, DV]
    m_ptr, l_ptr, o_ptr,  # [G, S, B], [G, S, B], [G, S, B, DV]: max, Σ exp(S − m), Σ exp(S − m) v
    B, M, D, DV, SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_vg, stride_vm,
    stride_mg, stride_ms, stride_og, stride_os, stride_ob,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
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
    offs_v = tl.arange(0, BLOCK_DV)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask_v = offs_v < DV
    q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                mask=mask_b[:, None] & mask_d[None, :], other=0.0)
    m_i = tl.full([BLOCK_B], float("-inf"), dtype=ACC)
    l_i = tl.zeros([BLOCK_B], dtype=ACC)
    acc = tl.zeros([BLOCK_B, BLOCK_DV], dtype=ACC)
    start = pid_s * SPLIT
    end = tl.minimum(start + SPLIT, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        rows = offs_m[:, None].to(tl.int64)
        k = tl.load(k_ptr + g * stride_kg + rows * stride_km + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        v = tl.load(v_ptr + g * stride_vg + rows * stride_vm + offs_v[None, :],
                    mask=mask_m[:, None] & mask_v[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)
        if HAS_SCALE:
            r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
            s = s * r[None, :]
        s = tl.where(mask_m[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # shift by 0 while every S so far is −inf (exp(−inf − (−inf)) would be NaN)
        m_sh = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m_i - m_sh)
        p = tl.exp(s - m_sh[:, None])
        l_i = alpha * l_i + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION).to(ACC)
        m_i = m_new
    out = g * stride_mg + pid_s * stride_ms + offs_b
    tl.store(m_ptr + out, m_i, mask=mask_b)
    tl.store(l_ptr + out, l_i, mask=mask_b)
    tl.store(o_ptr + g * stride_og + pid_s * stride_os + offs_b[:, None].to(tl.int64) * stride_ob + offs_v[None, :], acc,
             mask=mask_b[:, None] & mask_v[None, :])


@triton.jit
def _memory_read_bwd_dq_kernel(
    q_ptr, k_ptr, r_ptr, v_ptr, go_ptr,  # [G, B, D], [G, M, D], [G, M], [G, M, DV], [G, B, DV]
    lse_ptr, delta_ptr,  # [G, B]: log Σ exp S, Σ_j g_bj out_bj
    dq_ptr,  # [G, S, B, D] partial dq (ACC)
    B, M, D, DV, SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_vg, stride_vm, stride_gg, stride_gb, stride_cg,
    stride_dg, stride_ds, stride_db,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
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
    offs_v = tl.arange(0, BLOCK_DV)
    mask_b = offs_b < B
    mask_d = offs_d < D
    mask_v = offs_v < DV
    q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                mask=mask_b[:, None] & mask_d[None, :], other=0.0)
    go = tl.load(go_ptr + g * stride_gg + offs_b[:, None].to(tl.int64) * stride_gb + offs_v[None, :],
                 mask=mask_b[:, None] & mask_v[None, :], other=0.0)
    lse = tl.load(lse_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
    delta = tl.load(delta_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
    acc = tl.zeros([BLOCK_B, BLOCK_D], dtype=ACC)
    start = pid_s * SPLIT
    end = tl.minimum(start + SPLIT, M)
    for m0 in range(start, end, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < end
        rows = offs_m[:, None].to(tl.int64)
        k = tl.load(k_ptr + g * stride_kg + rows * stride_km + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        v = tl.load(v_ptr + g * stride_vg + rows * stride_vm + offs_v[None, :],
                    mask=mask_m[:, None] & mask_v[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)
        if HAS_SCALE:
            r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
            s = s * r[None, :]
        p = tl.where(mask_m[None, :], tl.exp(s - lse[:, None]), 0.0)  # w[b, a]
        dp = tl.dot(go, tl.trans(v), input_precision=PRECISION).to(ACC)  # g_b · v_a
        ds = p * (dp - delta[:, None])
        if HAS_SCALE:
            ds = ds * r[None, :]
        acc += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION).to(ACC)
    tl.store(dq_ptr + g * stride_dg + pid_s * stride_ds + offs_b[:, None].to(tl.int64) * stride_db + offs_d[None, :], acc,
             mask=mask_b[:, None] & mask_d[None, :])


@triton.jit
def _memory_read_bwd_dkv_kernel(
    q_ptr, k_ptr, r_ptr, v_ptr, go_ptr,
    lse_ptr, delta_ptr,
    dk_ptr, dr_ptr, dv_ptr,  # [G, SB, M, D], [G, SB, M], [G, SB, M, DV]: partial sums per split of B
    B, M, D, DV, ROW_SPLIT,
    stride_qg, stride_qb, stride_kg, stride_km, stride_rg, stride_vg, stride_vm, stride_gg, stride_gb, stride_cg,
    stride_dkg, stride_dks, stride_dkm, stride_drg, stride_drs, stride_dvg, stride_dvs, stride_dvm,
    HAS_SCALE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    # axis 0 = (split of B, M-block), M-blocks fastest; axis 1 = G
    pid = tl.program_id(0)
    n_m_blocks = tl.cdiv(M, BLOCK_M)
    pid_m = pid % n_m_blocks
    pid_r = (pid // n_m_blocks).to(tl.int64)
    g = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_v = tl.arange(0, BLOCK_DV)
    mask_m = offs_m < M
    mask_d = offs_d < D
    mask_v = offs_v < DV
    rows = offs_m[:, None].to(tl.int64)
    k = tl.load(k_ptr + g * stride_kg + rows * stride_km + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    v = tl.load(v_ptr + g * stride_vg + rows * stride_vm + offs_v[None, :],
                mask=mask_m[:, None] & mask_v[None, :], other=0.0)
    if HAS_SCALE:
        r = tl.load(r_ptr + g * stride_rg + offs_m, mask=mask_m, other=0.0)
    dk_acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)  # Σ_b dS[b, a] e_q(b)
    dv_acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=ACC)  # Σ_b w[b, a] g_b
    b_start = pid_r * ROW_SPLIT
    b_end = tl.minimum(b_start + ROW_SPLIT, B)
    for b0 in range(b_start, b_end, BLOCK_B):
        offs_b = b0 + tl.arange(0, BLOCK_B)
        mask_b = offs_b < B
        q = tl.load(q_ptr + g * stride_qg + offs_b[:, None].to(tl.int64) * stride_qb + offs_d[None, :],
                    mask=mask_b[:, None] & mask_d[None, :], other=0.0)
        go = tl.load(go_ptr + g * stride_gg + offs_b[:, None].to(tl.int64) * stride_gb + offs_v[None, :],
                     mask=mask_b[:, None] & mask_v[None, :], other=0.0)
        lse = tl.load(lse_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
        delta = tl.load(delta_ptr + g * stride_cg + offs_b, mask=mask_b, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION).to(ACC)
        if HAS_SCALE:
            s = s * r[None, :]
        valid = mask_b[:, None] & mask_m[None, :]
        p = tl.where(valid, tl.exp(s - lse[:, None]), 0.0)
        dv_acc += tl.dot(tl.trans(p.to(go.dtype)), go, input_precision=PRECISION).to(ACC)
        dp = tl.dot(go, tl.trans(v), input_precision=PRECISION).to(ACC)
        ds = tl.where(valid, p * (dp - delta[:, None]), 0.0)
        dk_acc += tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PRECISION).to(ACC)
    if HAS_SCALE:
        dr = tl.sum(dk_acc * k.to(ACC), axis=1)  # dL/dr_a = Σ_b dS <e_q, e_a>
        tl.store(dr_ptr + g * stride_drg + pid_r * stride_drs + offs_m, dr, mask=mask_m)
        dk_acc = dk_acc * r[:, None]
    tl.store(dk_ptr + g * stride_dkg + pid_r * stride_dks + rows * stride_dkm + offs_d[None, :],
             dk_acc.to(dk_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])
    tl.store(dv_ptr + g * stride_dvg + pid_r * stride_dvs + rows * stride_dvm + offs_v[None, :],
             dv_acc.to(dv_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_v[None, :])


def memory_read_forward(
    query: torch.Tensor,  # [G, B, d] (normalized for cosine), contiguous
    keys: torch.Tensor,  # [G, M, d], contiguous
    inv_norm: torch.Tensor | None,  # [G, M] or None ("dot")
    values: torch.Tensor,  # [G, M, dv], contiguous
    plan: Plan,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [G, B, dv] in values' dtype, lse [G, B] in the accumulation dtype)."""
    G, B, D = query.shape
    M, DV = values.shape[1], values.shape[2]
    acc = acc_dtype(query.dtype)
    S = plan.bwd_num_splits
    m_s = torch.empty(G, S, B, device=query.device, dtype=acc)
    l_s = torch.empty_like(m_s)
    o_s = torch.empty(G, S, B, DV, device=query.device, dtype=acc)
    r = _dummy(inv_norm, m_s)
    _memory_read_fwd_kernel[(_cdiv(B, plan.block_b) * S, G)](
        query, keys, r, values, m_s, l_s, o_s,
        B, M, D, DV, plan.bwd_split_size,
        query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), r.stride(0), values.stride(0), values.stride(1),
        m_s.stride(0), m_s.stride(1), o_s.stride(0), o_s.stride(1), o_s.stride(2),
        HAS_SCALE=inv_norm is not None, ACC=_tl_acc(query.dtype), PRECISION=plan.input_precision,
        BLOCK_B=plan.block_b, BLOCK_M=plan.block_m, BLOCK_D=plan.block_d,
        BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    m = m_s.max(dim=1).values  # [G, B]
    w = torch.exp(m_s - m.unsqueeze(1))  # [G, S, B]
    total = (w * l_s).sum(dim=1)  # [G, B]
    out = (w.unsqueeze(-1) * o_s).sum(dim=1) / total.unsqueeze(-1)  # [G, B, dv]
    lse = m + torch.log(total)
    # invalid rows (no finite log-normalizer) read NaN, as in the reference (no host sync)
    ok = torch.isfinite(lse)
    out = torch.where(ok.unsqueeze(-1), out, torch.full_like(out, float("nan")))
    return out.to(values.dtype), torch.where(ok, lse, torch.full_like(lse, float("nan")))


def memory_read_backward(
    query, keys, inv_norm, values, out, lse, grad_out, plan: Plan, needs: tuple[bool, bool, bool, bool]
):
    """Gradients (dquery, dkeys, dinv_norm, dvalues): dS = w (g·v_a − g·out_b), dv_a = Σ_b w g_b."""
    G, B, D = query.shape
    M, DV = values.shape[1], values.shape[2]
    acc = acc_dtype(query.dtype)
    grad_out = grad_out.contiguous()
    delta = (grad_out.to(acc) * out.to(acc)).sum(-1).contiguous()  # [G, B]
    lse = lse.contiguous()
    has_scale = inv_norm is not None
    r = _dummy(inv_norm, lse)
    common = dict(
        HAS_SCALE=has_scale, ACC=_tl_acc(query.dtype), PRECISION=plan.input_precision,
        BLOCK_B=plan.block_b, BLOCK_M=plan.block_m, BLOCK_D=plan.block_d,
        BLOCK_DV=max(16, triton.next_power_of_2(DV)),
        num_warps=plan.num_warps, num_stages=plan.num_stages,
    )
    strides = (query.stride(0), query.stride(1), keys.stride(0), keys.stride(1), r.stride(0),
               values.stride(0), values.stride(1), grad_out.stride(0), grad_out.stride(1), lse.stride(0))
    dq = dk = dr = dv = None
    if needs[0]:
        S2 = plan.bwd_num_splits
        dq_part = torch.empty(G, S2, B, D, device=query.device, dtype=acc)
        _memory_read_bwd_dq_kernel[(_cdiv(B, plan.block_b) * S2, G)](
            query, keys, r, values, grad_out, lse, delta, dq_part,
            B, M, D, DV, plan.bwd_split_size, *strides,
            dq_part.stride(0), dq_part.stride(1), dq_part.stride(2),
            **common,
        )
        dq = dq_part.sum(dim=1).to(query.dtype)
    if needs[1] or needs[2] or needs[3]:
        SB = plan.row_num_splits
        # one split of B: write dkeys / dvalues in their dtypes; several: float partials summed here
        dk_part = torch.empty(G, SB, M, D, device=query.device, dtype=keys.dtype if SB == 1 else acc)
        dv_part = torch.empty(G, SB, M, DV, device=query.device, dtype=values.dtype if SB == 1 else acc)
        dr_part = torch.empty(G, SB, M, device=query.device, dtype=acc) if has_scale else None
        vec = _dummy(dr_part, dk_part[:, :, :, 0])
        _memory_read_bwd_dkv_kernel[(_cdiv(M, plan.dk_block_m) * SB, G)](
            query, keys, r, values, grad_out, lse, delta, dk_part, vec, dv_part,
            B, M, D, DV, plan.row_split_size, *strides,
            dk_part.stride(0), dk_part.stride(1), dk_part.stride(2), vec.stride(0), vec.stride(1),
            dv_part.stride(0), dv_part.stride(1), dv_part.stride(2),
            **dk_launch(common, plan),
        )
        dk = dk_part[:, 0] if SB == 1 else dk_part.sum(dim=1).to(keys.dtype)
        dv = dv_part[:, 0] if SB == 1 else dv_part.sum(dim=1).to(values.dtype)
        dr = None if dr_part is None else dr_part.sum(dim=1)
    return dq, dk, dr, dv


class MemoryRead(torch.autograd.Function):
    """out [G, B, dv] = softmax_a(S) v; inputs query [G, B, d], keys [G, M, d], inv_norm [G, M] or
    None, values [G, M, dv]. Double backward: not supported (raises)."""

    @staticmethod
    def forward(ctx, query, keys, inv_norm, values, plan):
        out, lse = memory_read_forward(query, keys, inv_norm, values, plan)
        ctx.save_for_backward(query, keys, inv_norm, values, out, lse)
        ctx.plan = plan
        return out

    @staticmethod
    @refuse_double_backward("memory_read")
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        query, keys, inv_norm, values, out, lse = ctx.saved_tensors
        needs = tuple(ctx.needs_input_grad[:4])
        dq, dk, dr, dv = memory_read_backward(query, keys, inv_norm, values, out, lse, grad_out, ctx.plan, needs)
        return (
            dq if needs[0] else None,
            dk if needs[1] else None,
            dr if needs[2] else None,
            dv if needs[3] else None,
            None,
        )


def memory_read(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    *,
    similarity: str = "normalized_dot",
    tf32: bool = False,
) -> torch.Tensor:
    """Soft-attention read Σ_a softmax_a(S[b, a]) v_a: [B, dv] (or [G, B, dv]).

    query [B, d] or [G, B, d]; keys [M, d] or [G, M, d]; values [M, dv] or [G, M, dv];
    ``similarity`` as in :func:`varmem.kernels.memory_addressing`. Differentiable in query, keys, values.
    """
    check_memory_inputs(query, keys, similarity=similarity, values=values, op="memory_read")
    tensors = [query, keys, values]
    backend = choose(
        "memory_read",
        tensors,
        {"triton": lambda: _triton_reason(tensors, max(query.shape[-1], values.shape[-1])), "reference": lambda: None},
    )
    if backend == "reference":
        return memory_read_reference(query, keys, values, similarity=similarity)
    q, k, _, v, squeeze = _as_grouped(query, keys, None, values)
    G, B, d = q.shape
    M = k.shape[1]
    acc = acc_dtype(q.dtype)
    q_eff = (q.to(acc) / _clamped_norm(q).unsqueeze(-1)).to(q.dtype) if similarity == "cosine" else q
    inv_norm = None if similarity == "dot" else (1.0 / _clamped_norm(k)).contiguous()  # [G, M]
    plan = make_plan(G, B, M, d, q.dtype, q.device, tf32=tf32, dv=v.shape[-1])
    out = MemoryRead.apply(q_eff.contiguous(), k.contiguous(), inv_norm, v.contiguous(), plan)
    return out.squeeze(0) if squeeze else out
