"""VMA memory addressing streamed over M in PyTorch: any device, peak memory O(B·chunk + M), not O(B·M).

The same posterior as :mod:`varmem.kernels.memory_addressing` (its module docstring has the math,
the zero-norm convention and the invalid-row semantics, which hold here unchanged):

    S(e_q, e_a) = <e_q, e_a> / max(||e_a||, NORM_EPS)                         (VMA eq. 5)
    q(a | x_b)  = softmax_a S(e_q(x_b), e_a);  p(a) = softmax_a S(e_p, e_a) or 1/M

The dense reference (``memory_addressing_reference``) writes several [G, B, M] tensors (logits,
log q, q, the KL terms, a float64 CDF); at B = 32 and M = 10^7 that is > 10 GB. Here M is cut into
chunks of ``chunk_size`` entries (:data:`DEFAULT_CHUNK`) and each chunk c is reduced at once to

    m_c   = max_a S_a,   l_c = Σ_a exp(S_a − m_c),   t_c = Σ_a exp(S_a − m_c)(S_a − m_c − log p_a)

per query row (:class:`Partials`), which merge exactly as flash-decoding's split-K
(:func:`merge_partials`): m = max_c m_c, Z = Σ_c exp(m_c − m) l_c, lse = m + log Z and
KL = Σ_c exp(m_c − m)(t_c + (m_c − m) l_c) / Z − log Z (+ log M for the uniform prior).
Nothing B×M is ever held: the working set is a few [G, B, chunk] tensors per chunk, the [G, S, B]
partials (S = ⌈M / chunk⌉ chunks), the [G, S, B, K] candidates (K·B/chunk numbers an entry: 1/32 at
B = 32, K = 4; 0.8 at K = 100) and, with a learned prior, the inverse key norms and prior
log-probabilities [G, M]. Measured (benchmarks/bench_memory_scaling.py, B = 32, d = 128, K = 4, CPU):
+14 MiB at M = 10^6 and +153 MiB at M = 10^7 besides the keys, against +1,011 MiB at 10^6 for the dense
reference (~984 bytes an entry: 14.6 GiB predicted at 10^7).

**Exact sampling, the two-level scheme of the Triton kernel.** A sample of row b is a chunk c drawn
with P(c | b) = Z_c / Z (Z_c = exp(m_c) l_c), then an entry of c by inverse CDF inside it,
P(a | c, b) = exp(S_a) / Z_c; together P(a | b) = exp(S_a) / Z exactly (up to float rounding, as
``torch.multinomial``). Two uniforms per sample, drawn from ``generator`` in this order:
``u`` = torch.rand(G·B, K, float64) for the inverse CDF inside a chunk, then, only when there is
more than one chunk, ``v`` = torch.rand(G·B, K, float64) for the chunk (inverse CDF over the Z_c).
With one chunk (M ≤ chunk_size) only ``u`` is drawn, as the dense reference draws it, so both give
the same addresses for the same generator (up to a uniform landing within rounding of a CDF step).
Because ``u`` is known before the pass, every chunk's inverse-CDF draw (its *candidate*,
[G, S, B, K]) is taken while the chunk's logits are in hand; the chunk choice afterwards picks one
candidate per sample. One pass over the keys gives the statistics and the samples — which is what
lets shards on other processes (``varmem.distributed.memory_shards``) return candidates with their
partials and a driver merge them exactly, with the same addresses as one process.

Autograd (:class:`MemoryAddressingStream`): ``log_normalizer``, ``kl``, ``log_q`` and ``log_prior``
are differentiable with respect to query, keys and prior_query (the backward streams the chunks
again, recomputing the logits; it writes dkeys [G, M, d], the size of the keys); ``addresses`` are
not. Double backward is not supported (a backward with ``create_graph=True`` raises); use the dense
reference for higher-order gradients.

Dtypes: float16 / bfloat16 / float32 / float64 inputs; query and keys need not share a dtype (keys
may be float16 from a memory store while queries are float32): each chunk is computed in the
accumulation dtype (float64 for float64 queries, float32 otherwise) and the CDF inside a chunk in
float64. Keys may be any strided tensor, e.g. ``torch.from_numpy`` of a memory-mapped file: only one
chunk at a time is converted.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from varmem.kernels.memory_addressing import (
    INVALID_ADDRESS,
    NORM_EPS,
    MemoryAddressingOutput,
    _as_grouped,
    _clamped_norm,
    _nan_or_one,
    acc_dtype,
    check_memory_inputs,
    merge_partials,  # the split-K merge of the Triton forward, over chunks here
)

# Entries per chunk. Measured with `python -m varmem.benchmarks.bench_memory_scaling --sizes-m 1e6
# --chunks 1024,4096,16384,65536` (B = 32, d = 128, learned prior, K = 4, one thread, CPU time per call
# on the shared 2-core dev machine under load ~11): 1,024 → 505 ms, 4,096 → 442 ms, 16,384 → 470 ms,
# 65,536 → 646 ms; peak extra memory 15, 15, 31, 50 MiB. 4,096 is also the Triton kernel's SAMPLE_SPLIT_CAP.
DEFAULT_CHUNK = 4096
# Where streaming overtakes the dense reference on CPU (the dispatch threshold proposed for ``auto``):
# one thread, B = 32, d = 64, learned prior, K = 4, forward + backward / forward only, ms (dev machine,
# loaded): M = 1,024: 1.34 / 0.39 dense vs 1.43 / 0.97 streaming; M = 8,192: 10.3 / 5.8 vs 9.1 / 3.4;
# M = 65,536: 100 / 25 vs 48 / 20. Below ~8,192 entries the dense reference's few large ops win.
STREAM_MIN_ENTRIES = 8192


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def check_chunk_size(chunk_size: int | None, op: str = "memory_addressing_stream") -> int:
    """``chunk_size`` or the default; ValueError naming it when it is not an int ≥ 1."""
    if chunk_size is None:
        return DEFAULT_CHUNK
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"{op}: chunk_size must be an int >= 1, got {chunk_size!r}")
    return chunk_size


# ----------------------------------------------------------------------------------------------
# Per-chunk partial statistics (no autograd): the one computation every path shares
# ----------------------------------------------------------------------------------------------


class Partials(NamedTuple):
    """Per-chunk statistics of the address posterior, ``S`` chunks in address order.

    Merged by :func:`merge_partials` (lse, KL) and :func:`choose_chunks` / :func:`pick` (samples).
    Concatenating the partials of consecutive key ranges along dim 1 gives the partials of their
    union: that is how shards on other processes are merged.
    """

    max: torch.Tensor  # [G, S, B] m_c = max_a S_a over the chunk (acc dtype)
    sumexp: torch.Tensor  # [G, S, B] l_c = Σ_a exp(S_a − m_c)
    kl_sum: torch.Tensor  # [G, S, B] t_c = Σ_a exp(S_a − m_c)(S_a − m_c − log p_a); log p_a = 0 for the uniform prior
    argmax: torch.Tensor  # [G, S, B] int64, global address of the chunk's largest S (first of ties)
    candidates: torch.Tensor  # [G, S, B, K] int64, global address drawn inside the chunk with the uniforms u
    cand_logit: torch.Tensor | None  # [G, S, B, K] S at the candidate (``with_logits``), else None
    cand_log_prior: torch.Tensor | None  # [G, S, B, K] log p at the candidate (``with_logits`` and a prior)

    @staticmethod
    def cat(parts: list["Partials"]) -> "Partials":
        """The partials of consecutive key ranges, in order, as those of their union (dim 1)."""
        if len(parts) == 1:
            return parts[0]
        fields = []
        for i in range(len(Partials._fields)):
            items = [p[i] for p in parts]
            fields.append(None if any(t is None for t in items) else torch.cat(items, dim=1))
        return Partials(*fields)


def key_inverse_norms(keys: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """1 / max(||e_a||, NORM_EPS) [G, M] in the accumulation dtype of ``keys``' float32/64, chunk by chunk
    (never a float32 copy of all the keys)."""
    G, M, _ = keys.shape
    acc = torch.float64 if keys.dtype == torch.float64 else torch.float32
    out = torch.empty(G, M, dtype=acc, device=keys.device)
    for a0 in range(0, M, chunk):
        out[:, a0:a0 + chunk] = 1.0 / _clamped_norm(keys[:, a0:a0 + chunk])
    return out


def prior_logits_stream(keys: torch.Tensor, prior_query: torch.Tensor, inv_norm: torch.Tensor | None,
                        chunk: int = DEFAULT_CHUNK) -> torch.Tensor:
    """Prior logits P_a = S(e_p, e_a) [G, M] (acc dtype of ``prior_query``), chunk by chunk.

    ``prior_query`` [G, d] (already normalized for cosine); ``inv_norm`` [G, M] or None ("dot")."""
    G, M, _ = keys.shape
    acc = acc_dtype(prior_query.dtype)
    pq = prior_query.to(acc)
    out = torch.empty(G, M, dtype=acc, device=keys.device)
    for a0 in range(0, M, chunk):
        kc = keys[:, a0:a0 + chunk].to(acc)  # [G, n, d]
        p = (kc @ pq.unsqueeze(-1)).squeeze(-1)  # [G, n]
        if inv_norm is not None:
            p = p * inv_norm[:, a0:a0 + chunk]  # S(e_p, e_a)   (VMA eq. 5)
        out[:, a0:a0 + chunk] = p
    return out


def log_prior_from_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(a) [G, M], lse_p [G]) from prior logits [G, M]; an episode whose logits have no finite
    log-sum-exp is NaN (as ``log_softmax_or_nan``)."""
    lse_p = torch.logsumexp(logits, dim=-1)  # [G]
    return (logits - lse_p.unsqueeze(-1)) * _nan_or_one(lse_p).unsqueeze(-1), lse_p


def chunk_partials(
    query: torch.Tensor,  # [G, B, d] (normalized for cosine)
    keys: torch.Tensor,  # [G, n, d] one chunk, any float dtype
    uniforms: torch.Tensor | None,  # [G, B, K] float64 in [0, 1): the inverse-CDF uniforms u; None: no samples
    *,
    scale: bool,  # normalized_dot / cosine: S = <e_q, e_a> r_a
    inv_norm: torch.Tensor | None = None,  # [G, n] r_a; computed here when None and ``scale``
    log_prior: torch.Tensor | None = None,  # [G, n] log p(a); None: uniform (log p = 0 in t_c)
    offset: int = 0,  # global address of the chunk's first entry
    with_logits: bool = False,
) -> tuple:
    """One chunk's (m [G, B], l [G, B], t [G, B], argmax [G, B], candidates [G, B, K], S at the candidates,
    log p at the candidates) — the fields of :class:`Partials` without the S axis. t_c = Σ exp(S − m)(S − m − log p)
    with entries of zero mass adding 0 (0 log 0 = 0). Memory: a few [G, B, n] tensors."""
    acc = acc_dtype(query.dtype)
    q = query.to(acc)
    kc = keys.to(acc)
    n = kc.shape[1]
    s = q @ kc.transpose(-1, -2)  # [G, B, n]
    if scale:
        r = (1.0 / _clamped_norm(kc)) if inv_norm is None else inv_norm.to(acc)  # [G, n]
        s.mul_(r.unsqueeze(1))  # S = <e_q, e_a> / ||e_a||   (VMA eq. 5)
    m, am = s.max(dim=-1)  # [G, B]; a NaN in a row makes m NaN (an invalid row)
    m_sh = torch.where(m == float("-inf"), torch.zeros_like(m), m)  # all S = −inf: shift by 0, not −inf
    z = s.sub_(m_sh.unsqueeze(-1))  # S − m_c, in place  [G, B, n]
    e = torch.exp(z)  # [G, B, n]
    l_c = e.sum(-1)  # [G, B]
    cand = cand_logit = cand_lp = None
    if uniforms is not None:
        cdf = torch.cumsum(e, dim=-1, dtype=torch.float64)  # [G, B, n]
        target = (uniforms * cdf[..., -1:]).contiguous()  # [G, B, K]: u · Σ_a exp(S_a − m_c)
        idx = torch.searchsorted(cdf, target, right=True)  # first a with cdf_a > u·l_c
        del cdf
        # rounding can leave u·l_c unreached: the last entry of positive mass instead (as the kernel)
        last = (n - 1) - torch.flip(e > 0, dims=[-1]).to(torch.uint8).argmax(-1, keepdim=True)  # [G, B, 1]
        idx = torch.where(idx >= n, last.expand_as(idx), idx)
        if with_logits:
            cand_logit = torch.gather(z, -1, idx) + m_sh.unsqueeze(-1)  # S at the candidate [G, B, K]
            if log_prior is not None:
                cand_lp = torch.gather(log_prior.to(acc), -1, idx.flatten(1)).view_as(idx)
        cand = idx + offset
    zero = e == 0  # S = −inf: q = 0, adds 0 to the KL (0 · (−inf) would be NaN)
    if log_prior is not None:
        z.sub_(log_prior.to(acc).unsqueeze(1))  # S − m_c − log p_a
    pu = e.mul_(z).masked_fill_(zero, 0.0)  # [G, B, n], in place of e
    return m, l_c, pu.sum(-1), am + offset, cand, cand_logit, cand_lp


def stream_partials(
    query: torch.Tensor,  # [G, B, d]
    keys: torch.Tensor,  # [G, M, d]
    uniforms: torch.Tensor | None,  # [G, B, K] float64, or None: no samples
    *,
    scale: bool,
    inv_norm: torch.Tensor | None = None,  # [G, M] or None (computed per chunk when ``scale``)
    log_prior: torch.Tensor | None = None,  # [G, M] or None (uniform)
    chunk: int = DEFAULT_CHUNK,
    offset: int = 0,
    with_logits: bool = False,
) -> Partials:
    """The :class:`Partials` of ``keys`` (global addresses from ``offset``), chunk by chunk: O(B·chunk) at a time."""
    G, M, _ = keys.shape
    B = query.shape[1]
    S = _cdiv(M, chunk)
    acc = acc_dtype(query.dtype)
    dev = query.device
    # written in place chunk by chunk: no small long-lived tensor is allocated between the chunks' large
    # temporaries (with glibc, such tensors pinned the freed [B, chunk] buffers and RSS grew ~1 MB per chunk)
    max_ = torch.empty(G, S, B, dtype=acc, device=dev)
    sumexp, kl_sum = torch.empty_like(max_), torch.empty_like(max_)
    argmax = torch.empty(G, S, B, dtype=torch.int64, device=dev)
    cand = cand_logit = cand_lp = None
    if uniforms is not None:
        K = uniforms.shape[-1]
        cand = torch.empty(G, S, B, K, dtype=torch.int64, device=dev)
        if with_logits:
            cand_logit = torch.empty(G, S, B, K, dtype=acc, device=dev)
            if log_prior is not None:
                cand_lp = torch.empty(G, S, B, K, dtype=acc, device=dev)
    for c, a0 in enumerate(range(0, M, chunk)):
        a1 = min(M, a0 + chunk)
        out = chunk_partials(
            query, keys[:, a0:a1], uniforms, scale=scale,
            inv_norm=None if inv_norm is None else inv_norm[:, a0:a1],
            log_prior=None if log_prior is None else log_prior[:, a0:a1],
            offset=offset + a0, with_logits=with_logits,
        )
        for dst, src in zip((max_, sumexp, kl_sum, argmax, cand, cand_logit, cand_lp), out):
            if dst is not None:
                dst[:, c] = src
        del out
    return Partials(max_, sumexp, kl_sum, argmax, cand, cand_logit, cand_lp)


# ----------------------------------------------------------------------------------------------
# Exact merges
# ----------------------------------------------------------------------------------------------




def choose_chunks(max_: torch.Tensor, sumexp: torch.Tensor, v: torch.Tensor | None, num_samples: int) -> torch.Tensor:
    """The chunk of each sample: int64 [G, B, K], drawn with P(c | b) = Z_c / Z by inverse CDF of the
    uniforms ``v`` [G, B, K] (float64); all zeros when there is one chunk (``v`` None). Invalid rows get
    some chunk in range (their addresses are marked −1 by the caller)."""
    G, S, B = max_.shape
    if S == 1 or v is None:
        return torch.zeros(G, B, num_samples, dtype=torch.int64, device=max_.device)
    log_z = (max_ + torch.log(sumexp)).to(torch.float64).permute(0, 2, 1)  # [G, B, S]
    probs = torch.softmax(log_z, dim=-1)
    cdf = torch.cumsum(probs, dim=-1)  # [G, B, S]
    idx = torch.searchsorted(cdf.contiguous(), (v * cdf[..., -1:]).contiguous(), right=True)  # [G, B, K]
    last = (S - 1) - torch.flip(probs > 0, dims=[-1]).to(torch.uint8).argmax(-1, keepdim=True)  # [G, B, 1]
    return torch.where(idx >= S, last.expand_as(idx), idx)


def pick(per_chunk: torch.Tensor, chunk: torch.Tensor) -> torch.Tensor:
    """per_chunk [G, S, B, K] at the chosen chunks [G, B, K] → [G, B, K]."""
    return torch.gather(per_chunk.permute(0, 2, 3, 1), -1, chunk.unsqueeze(-1)).squeeze(-1)


def top1(max_: torch.Tensor, argmax: torch.Tensor) -> torch.Tensor:
    """The address of the largest S of each row [G, B] (the mode of q(a|x)) from chunk partials [G, S, B]."""
    best = max_.nan_to_num(nan=float("-inf")).argmax(dim=1, keepdim=True)  # [G, 1, B]
    return torch.gather(argmax, 1, best).squeeze(1)


def draw_uniforms(G: int, B: int, K: int, num_chunks: int, generator: torch.Generator | None,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(u [G, B, K], v [G, B, K] or None): the sampler's uniforms, in the documented order
    (u first, as the dense reference draws it; v only when there is more than one chunk)."""
    u = torch.rand(G * B, K, generator=generator, device=device, dtype=torch.float64).view(G, B, K)
    v = None
    if num_chunks > 1:
        v = torch.rand(G * B, K, generator=generator, device=device, dtype=torch.float64).view(G, B, K)
    return u, v


# ----------------------------------------------------------------------------------------------
# Autograd
# ----------------------------------------------------------------------------------------------


def _refuse_double_backward(backward):
    def checked(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "memory_addressing_stream does not support double backward (create_graph=True); "
                "use memory_addressing_reference (kernels.use_backend('reference')) for higher-order gradients"
            )
        return backward(ctx, *grads)

    return checked


class MemoryAddressingStream(torch.autograd.Function):
    """(lse, kl, lse_p) of the address posterior, streamed over M, and the per-chunk sampling statistics.

    Inputs: query [G, B, d] (normalized for cosine), keys [G, M, d], prior_query [G, d] or None
    (normalized for cosine), scale (bool: S divides by ||e_a||), uniforms [G, B, K] float64, chunk.
    Outputs: lse [G, B], kl [G, B], lse_p [G] (log Σ_a exp S(e_p, e_a); empty without a prior) —
    differentiable — and, not differentiable: max, sumexp [G, S, B], candidates [G, S, B, K],
    argmax [G, S, B]. Double backward: not supported (raises).
    """

    @staticmethod
    def forward(ctx, query, keys, prior_query, scale, uniforms, chunk):
        G, M, _ = keys.shape
        acc = acc_dtype(query.dtype)
        inv_norm = key_inverse_norms(keys, chunk).to(acc) if (scale and prior_query is not None) else None
        log_p = lse_p = None
        if prior_query is not None:
            log_p, lse_p = log_prior_from_logits(prior_logits_stream(keys, prior_query, inv_norm, chunk))
        part = stream_partials(query, keys, uniforms, scale=scale, inv_norm=inv_norm, log_prior=log_p, chunk=chunk)
        lse, kl = merge_partials(part.max, part.sumexp, part.kl_sum, None if prior_query is not None else M)
        ctx.save_for_backward(query, keys, prior_query, inv_norm, log_p, lse, kl)
        ctx.scale, ctx.chunk = scale, chunk
        if lse_p is None:
            lse_p = lse.new_zeros(0)
        ctx.mark_non_differentiable(part.max, part.sumexp, part.candidates, part.argmax)
        ctx.set_materialize_grads(False)
        return lse, kl, lse_p, part.max, part.sumexp, part.candidates, part.argmax

    @staticmethod
    @_refuse_double_backward
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_lse, g_kl, g_lse_p, _g_max, _g_sum, _g_cand, _g_arg):
        query, keys, prior_query, inv_norm, log_p, lse, kl = ctx.saved_tensors
        scale, chunk = ctx.scale, ctx.chunk
        need_q, need_k, need_p = ctx.needs_input_grad[:3]
        G, B, d = query.shape
        M = keys.shape[1]
        acc = acc_dtype(query.dtype)
        has_prior = prior_query is not None
        if g_lse is None and g_kl is None and g_lse_p is None:
            return None, None, None, None, None, None
        g_lse = torch.zeros_like(lse) if g_lse is None else g_lse.to(acc)
        use_kl = g_kl is not None
        if not use_kl:
            # kl is not in the loss: leave its terms out entirely (a NaN kl of an invalid prior must not
            # reach the gradients as 0 · NaN), as autograd does in the reference
            g_kl, kl_v, lp = torch.zeros_like(lse), torch.zeros_like(kl), None
        else:
            g_kl, kl_v, lp = g_kl.to(acc), kl, log_p
        # dS[b, a] = q_ba (c1_b + c2_b (S_ba − lse_b − log p_a)),  c1 = g_lse − g_kl kl,  c2 = g_kl
        c1 = g_lse - g_kl * kl_v
        if not has_prior and use_kl:
            c1 = c1 + g_kl * math.log(M)  # log q − log p = (S − lse) + log M
        c2 = g_kl
        q = query.to(acc)
        dq = torch.zeros(G, B, d, dtype=acc, device=query.device) if need_q else None
        dk = torch.zeros(G, M, d, dtype=acc, device=query.device) if (need_k or need_p) else None
        dr = torch.zeros(G, M, dtype=acc, device=query.device) if scale else None  # dL / d r_a
        dlogp = torch.zeros(G, M, dtype=acc, device=query.device) if (has_prior and lp is not None) else None
        for a0 in range(0, M, chunk):
            a1 = min(M, a0 + chunk)
            kc = keys[:, a0:a1].to(acc)  # [G, n, d]
            raw = q @ kc.transpose(-1, -2)  # <e_q, e_a> [G, B, n]
            if scale:
                r = inv_norm[:, a0:a1] if inv_norm is not None else 1.0 / _clamped_norm(kc)  # [G, n]
                s = raw * r.unsqueeze(1)
            else:
                s = raw
            z = s - lse.unsqueeze(-1)  # log q(a | x_b)
            p = torch.exp(z)
            u = z if lp is None else z - lp[:, a0:a1].unsqueeze(1)
            ds = torch.where(p != 0, p * (c1.unsqueeze(-1) + c2.unsqueeze(-1) * u), torch.zeros_like(p))  # [G, B, n]
            if scale:
                dr[:, a0:a1] = (ds * raw).sum(1)  # S = r_a <e_q, e_a>: dL/dr_a = Σ_b dS <e_q, e_a>
                ds = ds * r.unsqueeze(1)
            if dq is not None:
                dq += ds @ kc
            if dk is not None:
                dk[:, a0:a1] = ds.transpose(-1, -2) @ q
            if dlogp is not None:
                dlogp[:, a0:a1] = -(c2.unsqueeze(-1) * p).sum(1)
        dpq = None
        prior_used = dlogp is not None or (g_lse_p is not None and g_lse_p.numel() > 0)
        if has_prior and not prior_used:
            dpq = torch.zeros(G, d, dtype=acc, device=query.device)  # e_p reaches neither lse nor log q
        if has_prior and prior_used:
            # log p = P − lse_p with P_a = r_a <e_p, e_a>: dP = dlogp − p_a Σ dlogp + g_lse_p p_a
            prior = torch.exp(log_p) if log_p is not None else None
            g_P = torch.zeros(G, M, dtype=acc, device=query.device)
            if dlogp is not None:
                g_P = g_P + dlogp - prior * dlogp.sum(-1, keepdim=True)
            if g_lse_p is not None and g_lse_p.numel():
                g_P = g_P + g_lse_p.to(acc).unsqueeze(-1) * prior
            pq = prior_query.to(acc)
            dpq = torch.zeros(G, d, dtype=acc, device=query.device)
            for a0 in range(0, M, chunk):
                a1 = min(M, a0 + chunk)
                kc = keys[:, a0:a1].to(acc)
                gp = g_P[:, a0:a1]  # [G, n]
                if scale:
                    r = inv_norm[:, a0:a1]
                    dr[:, a0:a1] += gp * (kc @ pq.unsqueeze(-1)).squeeze(-1)
                    gp = gp * r
                dpq += (gp.unsqueeze(1) @ kc).squeeze(1)  # Σ_a dP_a r_a e_a
                if dk is not None:
                    dk[:, a0:a1] += gp.unsqueeze(-1) * pq.unsqueeze(1)
        if scale and dk is not None:
            # r = 1 / max(||e_a||, eps): dr/de_a = −r³ e_a above eps, 0 where the clamp holds
            for a0 in range(0, M, chunk):
                a1 = min(M, a0 + chunk)
                kc = keys[:, a0:a1].to(acc)
                norm = torch.linalg.vector_norm(kc, dim=-1)  # [G, n]
                r = 1.0 / norm.clamp_min(NORM_EPS)
                coef = torch.where(norm > NORM_EPS, -dr[:, a0:a1] * r ** 3, torch.zeros_like(norm))
                dk[:, a0:a1] += coef.unsqueeze(-1) * kc
        return (
            dq.to(query.dtype) if need_q else None,
            dk.to(keys.dtype) if need_k else None,
            dpq.to(prior_query.dtype) if (need_p and dpq is not None) else None,
            None, None, None,
        )


# ----------------------------------------------------------------------------------------------
# Public functional API
# ----------------------------------------------------------------------------------------------


def memory_addressing_stream(
    query: torch.Tensor,
    keys: torch.Tensor,
    *,
    prior_query: torch.Tensor | None = None,
    num_samples: int = 4,
    similarity: str = "normalized_dot",
    generator: torch.Generator | None = None,
    chunk_size: int | None = None,
) -> MemoryAddressingOutput:
    """VMA address posterior streamed over M: same inputs and outputs as ``memory_addressing``.

    query [B, d] or [G, B, d]; keys [M, d] or [G, M, d] (any float dtype, any strides: a memory-mapped
    store works); prior_query None (p(a) = 1/M), [d] or [G, d]. ``num_samples`` K; ``generator`` drives
    the sampling (module docstring: u, then v when M > chunk_size). ``chunk_size``: entries per chunk
    (default :data:`DEFAULT_CHUNK`). Returns :class:`MemoryAddressingOutput`; a row without a finite
    log-normalizer gets addresses −1 and NaN outputs, as in ``memory_addressing``.
    """
    check_memory_inputs(query, keys, similarity=similarity, prior_query=prior_query, num_samples=num_samples,
                        op="memory_addressing_stream")
    chunk = check_chunk_size(chunk_size)
    q, k, pq, _, squeeze = _as_grouped(query, keys, prior_query)
    G, B, d = q.shape
    M, K = k.shape[1], num_samples
    acc = acc_dtype(q.dtype)
    scale = similarity != "dot"
    q_eff = q.to(acc)
    if similarity == "cosine":
        q_eff = q_eff / _clamped_norm(q_eff).unsqueeze(-1)
    pq_eff = None
    if pq is not None:
        pq_eff = pq.to(acc)
        if similarity == "cosine":
            pq_eff = pq_eff / _clamped_norm(pq_eff).unsqueeze(-1)
    u, v = draw_uniforms(G, B, K, _cdiv(M, chunk), generator, q.device)
    lse, kl, lse_p, m_s, l_s, cand, _ = MemoryAddressingStream.apply(q_eff, k, pq_eff, scale, u, chunk)
    addresses = pick(cand, choose_chunks(m_s, l_s, v, K))  # [G, B, K]
    valid = _nan_or_one(lse)  # [G, B]: 1, or NaN for an invalid row
    addresses = torch.where(torch.isnan(valid).unsqueeze(-1), torch.full_like(addresses, INVALID_ADDRESS), addresses)
    # log q(a_k | x_b) = S(e_q, e_{a_k}) − lse_b on the K gathered keys (B·K·d, torch autograd)
    flat = addresses.reshape(G, B * K).clamp_min(0)  # invalid rows gather entry 0 (their log_q is NaN)
    k_sel = torch.gather(k, 1, flat.unsqueeze(-1).expand(G, B * K, d)).to(acc)  # [G, B·K, d]
    r_sel = (1.0 / _clamped_norm(k_sel)) if scale else None  # [G, B·K]
    s_sel = (q_eff.unsqueeze(2) * k_sel.view(G, B, K, d)).sum(-1)  # [G, B, K]
    if r_sel is not None:
        s_sel = s_sel * r_sel.view(G, B, K)
    # (S − m) − log Σ_a exp(S_a − m) with the row max m, as log_softmax: S − lse would lose log q to
    # rounding where |S| ≥ 2^24 (float32); lse_rel carries lse's gradient
    with torch.no_grad():
        m = m_s.max(dim=1).values  # [G, B]
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        log_total = torch.log((torch.exp(m_s - m.unsqueeze(1)) * l_s).sum(dim=1))  # lse − m
    lse_rel = log_total + (lse - lse.detach())
    log_q = (s_sel - m.unsqueeze(-1)) - lse_rel.unsqueeze(-1)
    if pq_eff is None:
        log_prior = torch.full((G, B, K), -math.log(M), device=q.device, dtype=acc)
    else:
        p_sel = (k_sel * pq_eff.unsqueeze(1)).sum(-1)  # <e_p, e_a> [G, B·K]
        if r_sel is not None:
            p_sel = p_sel * r_sel
        lse_p_ok = lse_p * _nan_or_one(lse_p)  # NaN for an episode whose prior has no finite normalizer
        log_prior = p_sel.view(G, B, K) - lse_p_ok.view(G, 1, 1)
    log_prior = log_prior * valid.unsqueeze(-1)  # NaN (value and gradient) for invalid rows
    out = MemoryAddressingOutput(addresses, log_q, log_prior, kl, lse)
    if squeeze:
        out = MemoryAddressingOutput(*(t.squeeze(0) for t in out))
    return out
