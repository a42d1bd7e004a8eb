"""Property tests: random extreme values (±inf, NaN, ±1e30, denormals, ±0) into every kernel op.

Each test asserts the semantics documented in the op's module docstring -- no exception except
the documented ones, NaN and ±inf exactly where documented -- on the reference path (many
examples), and that the Triton path (interpreter on CPU, a few derandomized examples) puts
NaN and ±inf in the same places with the same finite values.
"""
from __future__ import annotations

import math

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from varmem.kernels import (  # noqa: E402
    gaussian_read,
    gaussian_write,
    memory_addressing,
    memory_read,
    use_backend,
    vimco,
    vimco_surrogate,
)
from varmem.kernels.gaussian_attention import PARAM_RANGES  # noqa: E402
from varmem.kernels.memory_addressing import similarity_logits  # noqa: E402
from tests.assertions import assert_close  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INF, NAN = float("inf"), float("nan")
EXTREMES = [INF, -INF, NAN, 1e30, -1e30, 1e-40, -1e-40, 5e-324, 0.0, -0.0]  # 1e-40: fp32 denormal
FINITE_EXTREMES = [1e30, -1e30, 1e-40, -1e-40, 5e-324, 0.0, -0.0]
# image / patch values: non-finite and tiny ones; 1e30 pixels overflow float32 gradient products
# (e.g. 1e30 / Z with Z ~ 1e-7 through the filter normalisation), the documented range caveat
PIXEL_EXTREMES = [INF, -INF, NAN, 1e-40, -1e-40, 5e-324, 0.0, -0.0]
DTYPES = [torch.float32, torch.float64]

REFERENCE = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
TRITON = settings(max_examples=4, deadline=None, database=None, derandomize=True,
                  suppress_health_check=[HealthCheck.too_slow])


def values(pool, p_extreme: float = 0.35):
    """A float: from ``pool`` with probability ~p_extreme, else a moderate normal value."""
    weight = max(1, round(10 * p_extreme))
    return st.one_of(*([st.sampled_from(pool)] * weight), *([st.floats(-8.0, 8.0)] * (10 - weight)))


@st.composite
def tensors(draw, shape, pool=EXTREMES, p_extreme: float = 0.35, dtype=torch.float64):
    n = math.prod(shape)
    vals = draw(st.lists(values(pool, p_extreme), min_size=n, max_size=n))
    return torch.tensor(vals, dtype=torch.float64).reshape(shape).to(dtype=dtype, device=DEVICE)


def same_nonfinite(a: torch.Tensor, b: torch.Tensor, name: str) -> None:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert torch.equal(torch.isnan(a), torch.isnan(b)), f"{name}: NaN in different places\n{a}\n{b}"
    assert torch.equal(torch.isposinf(a), torch.isposinf(b)), f"{name}: +inf in different places\n{a}\n{b}"
    assert torch.equal(torch.isneginf(a), torch.isneginf(b)), f"{name}: -inf in different places\n{a}\n{b}"


# ---------------------------------------------------------------------------------------------
# VIMCO
# ---------------------------------------------------------------------------------------------


@st.composite
def vimco_case(draw, pool=EXTREMES):
    B, K = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    dtype = draw(st.sampled_from(DTYPES))
    log_w = draw(tensors((B, K), pool, draw(st.sampled_from([0.2, 0.5, 0.9])), dtype))
    variant = draw(st.sampled_from(["geometric", "arithmetic"]))
    g = draw(tensors((B,), [0.0], 0.3, dtype))  # upstream gradient, zero for some rows
    return log_w, variant, g


def vimco_all(backend, log_w, variant, g):
    lw = log_w.clone().requires_grad_()
    lq = torch.zeros_like(log_w, requires_grad=True)
    with use_backend(backend):
        out = vimco(lw, variant)
        s = vimco_surrogate(lw, lq, variant)
    grad_w, grad_q = torch.autograd.grad(s, (lw, lq), g)
    return out.bound, out.weights, out.loo_bound, s, grad_w, grad_q


@REFERENCE
@given(vimco_case())
def test_vimco_reference_semantics(case):
    log_w, variant, g = case
    bound, weights, loo, s, grad_w, grad_q = vimco_all("reference", log_w, variant, g)
    x = log_w.cpu()
    K = x.shape[-1]
    for b in range(x.shape[0]):
        row, pinf, ninf = x[b], torch.isposinf(x[b]), torch.isneginf(x[b])
        if torch.isnan(row).any():  # NaN row: everything NaN, gradients too (even under g = 0)
            for t in (bound[b], weights[b], loo[b], s[b], grad_w[b], grad_q[b]):
                assert torch.isnan(t).all()
            continue
        for t in (bound[b], weights[b], loo[b], s[b], grad_w[b], grad_q[b]):
            assert not torch.isnan(t).any(), (row, t)
        assert torch.isfinite(grad_w[b]).all()
        n = int(pinf.sum())
        others_pinf = n - pinf.long()
        if n:  # +inf row: the T -> ∞ limit
            assert bound[b].item() == INF and s[b].item() == INF
            assert torch.allclose(weights[b].double().cpu(), pinf.double() / n, atol=1e-6)
            assert torch.equal(torch.isposinf(loo[b]).cpu(), others_pinf > 0)
            sole = pinf & (others_pinf == 0)
            assert torch.equal(torch.isinf(grad_q[b]).cpu(), sole & (g[b] != 0).cpu())  # g · (+inf)
            assert torch.isfinite(grad_q[b][~sole.to(grad_q.device)]).all()
        elif ninf.all():  # all -inf: bound = loo = -inf, weights 0, gradients 0
            assert bound[b].item() == -INF and torch.isneginf(loo[b]).all()
            assert not weights[b].any() and not grad_w[b].any() and not grad_q[b].any()
        else:
            assert torch.isfinite(bound[b]) and not torch.isinf(weights[b]).any()
            assert abs(weights[b].double().sum().item() - 1.0) < 1e-5 * K
            others_all_ninf = (int(ninf.sum()) - ninf.long()) == K - 1
            assert torch.equal(torch.isneginf(loo[b]).cpu(), others_all_ninf)
            assert not torch.isposinf(loo[b]).any()
            assert torch.equal(torch.isinf(grad_q[b]).cpu(), others_all_ninf & (g[b] != 0).cpu())


@TRITON
@given(vimco_case())
def test_vimco_triton_matches_reference(case):
    log_w, variant, g = case
    ref = vimco_all("reference", log_w, variant, g)
    tri = vimco_all("triton", log_w, variant, g)
    for name, a, e in zip(("bound", "weights", "loo_bound", "surrogate", "grad log_w", "grad log_q"), tri, ref):
        same_nonfinite(a, e, name)
        assert_close(a, e, atol=1e-5, rtol=1e-5, name=name)


# ---------------------------------------------------------------------------------------------
# DRAW Gaussian attention
# ---------------------------------------------------------------------------------------------


@st.composite
def gaussian_case(draw, param_pool=EXTREMES + [-1e4, 1e4, -20.0, 20.0], x_pool=None):
    B, C = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    H, W, N = draw(st.integers(1, 9)), draw(st.integers(1, 9)), draw(st.integers(2, 4))
    dtype = draw(st.sampled_from(DTYPES))
    params = draw(tensors((B, 5), param_pool, draw(st.sampled_from([0.3, 0.7])), dtype))
    op = draw(st.sampled_from(["read", "write"]))
    shape = (B, C, H, W) if op == "read" else (B, C, N, N)
    if x_pool is None:
        inp = draw(tensors(shape, [0.0, 1e-40, 1.0, -3.0], 0.3, dtype))
    else:
        inp = draw(tensors(shape, x_pool, 0.2, dtype))
    return op, inp, params, N, H, W


def gaussian_all(backend, op, inp, params, N, H, W):
    x = inp.clone().requires_grad_()
    p = params.clone().requires_grad_()
    with use_backend(backend):
        out = gaussian_read(x, p, N) if op == "read" else gaussian_write(x, p, H, W)
    up = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=out.device).reshape(out.shape)
    dx, dp = torch.autograd.grad(out, (x, p), up)
    return out, dx, dp


@REFERENCE
@given(gaussian_case())
def test_gaussian_reference_semantics(case):
    """Finite inputs: every output and gradient finite unless that example has a NaN parameter (then all NaN)."""
    out, dx, dp = gaussian_all("reference", *case)
    params = case[2]
    outside = torch.zeros_like(params, dtype=torch.bool)  # the clamp's gradient there is 0
    for j, (lo, hi) in enumerate(PARAM_RANGES):
        outside[:, j] = (params[:, j] < lo) | (params[:, j] > hi)
    for b in range(params.shape[0]):
        if torch.isnan(params[b]).any():
            assert torch.isnan(out[b]).all() and torch.isnan(dx[b]).all()
            assert torch.isnan(dp[b][~outside[b]]).all() and not dp[b][outside[b]].any()
        else:
            assert torch.isfinite(out[b]).all() and torch.isfinite(dx[b]).all() and torch.isfinite(dp[b]).all()


@REFERENCE
@given(gaussian_case(param_pool=[0.0, 0.5, -0.5], x_pool=PIXEL_EXTREMES))
def test_gaussian_reference_non_finite_inputs(case):
    """A non-finite pixel or patch value: its (example, channel) plane is entirely non-finite, no other."""
    op, inp, params, N, H, W = case
    with use_backend("reference"):
        out = gaussian_read(inp, params, N) if op == "read" else gaussian_write(inp, params, H, W)
    bad = ~torch.isfinite(inp).flatten(2).all(-1)  # [B, C]
    finite = torch.isfinite(out).flatten(2)
    assert torch.equal(finite.all(-1), ~bad) and not finite[bad].any()


def _close_where_finite(a, e, name):
    scale = max(1.0, e.detach().nan_to_num(0.0, 0.0, 0.0).abs().max().item())
    a, e = a.detach().double().cpu(), e.detach().double().cpu()
    ok = torch.isfinite(e)
    assert torch.equal(torch.isfinite(a), ok), f"{name}: non-finite in different places\n{a}\n{e}"
    assert_close(a[ok], e[ok], atol=1e-4 * scale, rtol=1e-4, name=name)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@TRITON
@given(st.one_of(gaussian_case(), gaussian_case(param_pool=[0.0, 0.5, -0.5], x_pool=PIXEL_EXTREMES)))
def test_gaussian_triton_matches_reference(case):
    ref = gaussian_all("reference", *case)
    tri = gaussian_all("triton", *case)
    inputs_finite = bool(torch.isfinite(case[1]).all())
    for name, a, e in zip(("out", "d input", "d params"), tri, ref):
        if name == "out" or inputs_finite:
            same_nonfinite(a, e, name)  # NaN and ±inf in the same places
        # gradients with a non-finite input value: non-finite in the same places (NaN vs ±inf unspecified)
        _close_where_finite(a, e, name)


# ---------------------------------------------------------------------------------------------
# Memory addressing and read
# ---------------------------------------------------------------------------------------------


@st.composite
def memory_case(draw, value_pool=FINITE_EXTREMES):
    G = draw(st.sampled_from([None, 2]))
    B, M, d = draw(st.integers(1, 4)), draw(st.integers(1, 6)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from(DTYPES))
    lead = (G,) if G else ()
    p = draw(st.sampled_from([0.1, 0.3, 0.6]))
    q = draw(tensors((*lead, B, d), EXTREMES, p, dtype))
    k = draw(tensors((*lead, M, d), EXTREMES, p, dtype))
    prior = draw(st.sampled_from([None, "shared"]))
    pq = draw(tensors((d,), EXTREMES, p, dtype)) if prior else None
    v = draw(tensors((*lead, M, 3), value_pool, 0.3, dtype))
    similarity = draw(st.sampled_from(["normalized_dot", "dot", "cosine"]))
    return q, k, pq, v, similarity


def _lse(q, k, similarity):
    grouped = q.dim() == 3
    s = similarity_logits(q if grouped else q[None], k if grouped else k[None], similarity)
    lse = torch.logsumexp(s, dim=-1)
    return lse if grouped else lse[0]


@REFERENCE
@given(memory_case())
def test_memory_addressing_reference_semantics(case):
    q, k, pq, _, similarity = case
    with use_backend("reference"):
        out = memory_addressing(q, k, prior_query=pq, num_samples=3, similarity=similarity,
                                generator=torch.Generator(device=q.device.type).manual_seed(0))
    M = k.shape[-2]
    invalid = ~torch.isfinite(_lse(q, k, similarity))  # [G?, B]
    assert not torch.isinf(out.log_normalizer).any()  # finite or NaN, never ±inf
    assert torch.equal(torch.isnan(out.log_normalizer), invalid)
    assert torch.equal(out.addresses < 0, invalid.unsqueeze(-1).expand_as(out.addresses))
    assert bool((out.addresses[invalid] == -1).all())
    for name in ("log_q", "log_prior", "kl"):
        assert torch.isnan(getattr(out, name)[invalid]).all(), name
    valid = ~invalid
    a = out.addresses[valid]
    assert bool((a >= 0).all()) and bool((a < M).all())
    log_q = out.log_q[valid]
    assert torch.isfinite(log_q).all() and bool((log_q <= 1e-5).all())
    if pq is None:
        assert torch.equal(out.log_prior[valid], torch.full_like(out.log_prior[valid], -math.log(M)))
        prior_ok = torch.ones_like(invalid)
    else:
        kk = k if k.dim() == 3 else k[None]
        ppq = pq[None].expand(kk.shape[0], -1)[:, None]
        prior_ok = torch.isfinite(torch.logsumexp(similarity_logits(ppq, kk, similarity), dim=-1))  # [G, 1]
        prior_ok = prior_ok.squeeze(-1) if k.dim() == 3 else prior_ok[0]
        prior_ok = (prior_ok[:, None] if k.dim() == 3 else prior_ok).expand_as(invalid)  # [G?, B]
    bad_prior = valid & ~prior_ok
    assert torch.isnan(out.kl[bad_prior]).all() and torch.isnan(out.log_prior[bad_prior]).all()
    good = valid & prior_ok
    kl = out.kl[good]
    assert not torch.isnan(kl).any() and bool((kl >= -1e-4).all())  # +inf if p(a) = 0 where q(a) > 0
    assert not torch.isnan(out.log_prior[good]).any() and bool((out.log_prior[good] <= 1e-5).all())


@REFERENCE
@given(memory_case())
def test_memory_read_reference_semantics(case):
    q, k, _, v, similarity = case
    with use_backend("reference"):
        out = memory_read(q, k, v, similarity=similarity)
    invalid = ~torch.isfinite(_lse(q, k, similarity))
    assert torch.isnan(out[invalid]).all()
    assert torch.isfinite(out[~invalid]).all()  # finite values: a convex combination stays finite


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@TRITON
@given(memory_case())
def test_memory_triton_matches_reference(case):
    q, k, pq, v, similarity = case
    outs = {}
    for backend in ("reference", "triton"):
        with use_backend(backend):
            a = memory_addressing(q, k, prior_query=pq, num_samples=3, similarity=similarity,
                                  generator=torch.Generator(device=q.device.type).manual_seed(0))
            r = memory_read(q, k, v, similarity=similarity)
        outs[backend] = (a, r)
    (ra, rr), (ta, tr) = outs["reference"], outs["triton"]
    assert torch.equal(ra.addresses < 0, ta.addresses < 0)
    for name in ("log_normalizer", "kl"):
        same_nonfinite(getattr(ta, name), getattr(ra, name), name)
    same_nonfinite(tr, rr, "memory_read")
    # values: only in rows whose logits the dtype resolves (an error of one ulp of |S| ~ 1e30
    # decides which of two "equal" logits wins, in any implementation)
    grouped = q.dim() == 3
    s = similarity_logits(q if grouped else q[None], k if grouped else k[None], similarity)
    s = s if grouped else s[0]
    eps = torch.finfo(q.dtype).eps
    cond = torch.where(torch.isfinite(s), s.abs(), torch.zeros_like(s)).amax(-1) * eps  # [G?, B]
    ok = (cond < 1e-4) & (ta.addresses[..., 0] >= 0)
    tol = 1e-4 if q.dtype == torch.float32 else 1e-9
    for name in ("log_normalizer", "kl"):
        assert_close(getattr(ta, name)[ok], getattr(ra, name)[ok], atol=tol, rtol=tol, name=name)
    # log q at Triton's samples against the dense log q (the two samplers' streams differ)
    log_q_all = torch.log_softmax(s, -1)
    want = torch.gather(log_q_all, -1, ta.addresses.clamp_min(0))
    assert_close(ta.log_q[ok], want[ok], atol=tol, rtol=tol, name="log_q at the samples")
    # the read: a convex combination of values up to 1e30 cancels at their scale
    scale = max(1.0, v.abs().max().item())
    assert_close(tr[ok], rr[ok], atol=tol * scale, rtol=tol, name="memory_read")


# ---------------------------------------------------------------------------------------------
# The only exceptions: non-floating inputs (ValueError naming the argument and dtype)
# ---------------------------------------------------------------------------------------------


@settings(max_examples=20, deadline=None, database=None)
@given(st.sampled_from([torch.int8, torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]),
       st.sampled_from(["vimco", "gaussian_read", "gaussian_write", "memory_addressing", "memory_read"]))
def test_non_floating_inputs_raise_value_error(dtype, op):
    bad = lambda *shape: torch.ones(*shape).to(dtype)  # noqa: E731
    calls = {
        "vimco": lambda: vimco(bad(2, 3)),
        "gaussian_read": lambda: gaussian_read(bad(1, 1, 4, 4), torch.zeros(1, 5), 2),
        "gaussian_write": lambda: gaussian_write(torch.ones(1, 1, 2, 2), bad(1, 5), 4, 4),
        "memory_addressing": lambda: memory_addressing(torch.ones(2, 3), bad(4, 3)),
        "memory_read": lambda: memory_read(torch.ones(2, 3), torch.ones(4, 3), bad(4, 2)),
    }
    with pytest.raises(ValueError, match=f"floating point, got dtype {dtype}"):
        calls[op]()
