"""VIMCO weighting: Triton kernel and reference against a naive float64 oracle.

The oracle computes every leave-one-out bound by an explicit ``torch.logsumexp`` over the
K - 1 other samples in float64, which is exact for the magnitudes used here, and takes
gradients of ``logsumexp`` / ``softmax`` by autograd.
"""
from __future__ import annotations

import math

import pytest
import torch

from varmem.kernels import vimco, vimco_reference, vimco_surrogate
from varmem.kernels.dispatch import use_backend
from tests.assertions import TOLERANCES, assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ("triton", "reference")
VARIANTS = ("geometric", "arithmetic")


def oracle(log_w: torch.Tensor, variant: str):
    """(bound, weights, loo_bound, signal) in float64 by brute force; -inf conventions of kernels.vimco."""
    x = log_w.detach().to(torch.float64).cpu()
    B, K = x.shape
    bound = torch.logsumexp(x, -1) - math.log(K)
    all_ninf = torch.isneginf(x).all(-1, keepdim=True)
    weights = torch.where(all_ninf, torch.zeros_like(x), torch.softmax(x, -1))
    loo = torch.empty_like(x)
    for k in range(K):
        others = torch.cat([x[:, :k], x[:, k + 1 :]], dim=1)  # [B, K-1]
        if variant == "geometric":
            geo = others.mean(-1, keepdim=True)  # log of the geometric mean; -inf if any is -inf
            loo[:, k] = torch.logsumexp(torch.cat([others, geo], dim=1), -1) - math.log(K)
        else:
            loo[:, k] = torch.logsumexp(others, -1) - math.log(K - 1)
    signal = torch.where(all_ninf, torch.zeros_like(x), bound[:, None] - loo)
    return bound, weights, loo, signal


def oracle_grad(log_w: torch.Tensor, g_bound: torch.Tensor, g_weights: torch.Tensor) -> torch.Tensor:
    x = log_w.detach().to(torch.float64).cpu().requires_grad_()
    bound = torch.logsumexp(x, -1)
    weights = torch.softmax(x, -1)
    (grad,) = torch.autograd.grad((bound, weights), x, (g_bound.double().cpu(), g_weights.double().cpu()))
    return grad


def run(backend: str, log_w: torch.Tensor, variant: str):
    with use_backend(backend):
        return vimco(log_w, variant)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,K", [(3, 2), (3, 3), (3, 7), (3, 65), (40, 65)])
def test_outputs_and_gradients_match_oracle(backend, variant, dtype, B, K):
    atol, rtol = TOLERANCES[dtype]
    log_w = (torch.randn(B, K, dtype=dtype, device=DEVICE) * 4 - 50).requires_grad_()
    out = run(backend, log_w, variant)
    bound, weights, loo, _ = oracle(log_w, variant)
    assert_close(out.bound, bound, atol=atol, rtol=rtol, name="bound")
    assert_close(out.weights, weights, atol=atol, rtol=rtol, name="weights")
    assert_close(out.loo_bound, loo, atol=atol, rtol=rtol, name="loo_bound")
    assert out.loo_bound.requires_grad is False
    g_bound = torch.randn(B, dtype=dtype, device=DEVICE)
    g_weights = torch.randn(B, K, dtype=dtype, device=DEVICE)
    (grad,) = torch.autograd.grad((out.bound, out.weights), log_w, (g_bound, g_weights))
    assert_close(grad, oracle_grad(log_w, g_bound, g_weights), atol=atol, rtol=rtol, name="grad log_w")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_surrogate_autograd_is_the_vimco_estimator(backend, variant, dtype):
    """∂/∂log_q = L̂ - L̂^{-k} (fixed), ∂/∂log_w = w̃; through log_w = log p - log q the total
    coefficient of ∇ log q(h_k) is (L̂ - L̂^{-k}) - w̃_k (Mnih & Rezende 2016)."""
    atol, rtol = TOLERANCES[dtype]
    B, K = 3, 5
    log_p = torch.randn(B, K, dtype=dtype, device=DEVICE) * 3
    log_q = (torch.randn(B, K, dtype=dtype, device=DEVICE) - 2).requires_grad_()
    log_w = log_p - log_q
    g = torch.randn(B, dtype=dtype, device=DEVICE)
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q, variant)
    bound, weights, _, signal = oracle(log_w, variant)
    assert_close(s, bound, atol=atol, rtol=rtol, name="surrogate value")
    (grad_q_total,) = torch.autograd.grad(s, log_q, g)
    by_hand = g.double().cpu()[:, None] * (signal - weights)
    assert_close(grad_q_total, by_hand, atol=atol, rtol=rtol, name="d/d log_q through log_w and log_q")

    # The two partial derivatives separately, with log_w a leaf.
    log_w = log_w.detach().requires_grad_()
    log_q = log_q.detach().requires_grad_()
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q, variant)
    grad_w, grad_q = torch.autograd.grad(s, (log_w, log_q), g)
    assert_close(grad_w, g.double().cpu()[:, None] * weights, atol=atol, rtol=rtol, name="d/d log_w")
    assert_close(grad_q, g.double().cpu()[:, None] * signal, atol=atol, rtol=rtol, name="d/d log_q")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dominant_sample_leave_one_out_is_exact(backend, dtype):
    """[-100, -140]: the leave-one-out log-sums are [-140, -100], not -inf (a known library bug)."""
    log_w = torch.tensor([[-100.0, -140.0]], dtype=dtype, device=DEVICE)
    out = run(backend, log_w, "arithmetic")  # K - 1 = 1: loo_bound is the leave-one-out log-sum
    assert torch.equal(out.loo_bound.cpu(), torch.tensor([[-140.0, -100.0]], dtype=dtype))
    out = run(backend, log_w, "geometric")  # geometric mean of one other sample is that sample
    assert_close(out.loo_bound, torch.tensor([[-140.0, -100.0]], dtype=torch.float64), atol=2e-5, rtol=0, name="geometric")
    # One sample dominating by hundreds of nats (an unofficial port was off by ~188 nats here).
    log_w = torch.tensor([[0.0, -200.0, -1000.0, -3000.0]], dtype=dtype, device=DEVICE)
    for variant in VARIANTS:
        out = run(backend, log_w, variant)
        _, _, loo, _ = oracle(log_w, variant)
        assert_close(out.loo_bound, loo, atol=1e-6, rtol=1e-6, name=f"{variant} loo_bound")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [7, 65])
def test_weights_spanning_thousands_of_nats(backend, variant, dtype, K):
    atol, rtol = TOLERANCES[dtype]
    log_w = torch.empty(3, K, dtype=dtype, device=DEVICE).uniform_(-1e3, 1e3).requires_grad_()
    log_q = torch.zeros(3, K, dtype=dtype, device=DEVICE, requires_grad=True)
    out = run(backend, log_w, variant)
    bound, weights, loo, signal = oracle(log_w, variant)
    for name, got in zip(("bound", "weights", "loo_bound"), out):
        assert torch.isfinite(got).all(), f"{name} has non-finite entries: {got}"
    assert_close(out.bound, bound, atol=atol, rtol=rtol, name="bound")
    assert_close(out.weights, weights, atol=atol, rtol=rtol, name="weights")
    assert_close(out.loo_bound, loo, atol=atol, rtol=rtol, name="loo_bound")
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q, variant)
    grad_w, grad_q = torch.autograd.grad(s.sum(), (log_w, log_q))
    assert_close(grad_w, weights, atol=atol, rtol=rtol, name="d/d log_w")
    # The signal is a difference of ~1e3-nat bounds: compared with the bound's scale.
    assert_close(grad_q, signal, atol=atol * 1e3, rtol=rtol, name="d/d log_q")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_neg_inf_entries(backend, variant, dtype):
    ninf = float("-inf")
    rows = [
        [0.5, ninf, 3.0, -1.0],  # one zero-weight sample
        [ninf, ninf, ninf, ninf],  # all zero weight: bound -inf, weights 0, gradients 0
        [1.0, ninf, ninf, ninf],  # one finite: its leave-one-out bound is -inf
        [ninf, -2.0, ninf, -2.5],  # two finite
    ]
    atol, rtol = TOLERANCES[dtype]
    log_w = torch.tensor(rows, dtype=dtype, device=DEVICE, requires_grad=True)
    log_q = torch.zeros_like(log_w, requires_grad=True)
    out = run(backend, log_w, variant)
    bound, weights, loo, signal = oracle(log_w, variant)
    assert_close(out.bound, bound, atol=atol, rtol=rtol, name="bound")
    assert_close(out.weights, weights, atol=atol, rtol=rtol, name="weights")
    assert_close(out.loo_bound, loo, atol=atol, rtol=rtol, name="loo_bound")
    assert torch.equal(out.weights[1].cpu(), torch.zeros(4, dtype=dtype))
    (grad_w,) = torch.autograd.grad(out.bound.sum(), log_w)
    assert not torch.isnan(grad_w).any(), grad_w
    assert_close(grad_w, weights, atol=atol, rtol=rtol, name="d bound / d log_w")
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q, variant)
    g = torch.tensor([1.0, 1.0, 0.0, -2.0], dtype=dtype, device=DEVICE)  # row 2: 0 * (+inf) must give 0
    grad_w, grad_q = torch.autograd.grad(s, (log_w, log_q), g)
    assert not torch.isnan(grad_w).any() and not torch.isnan(grad_q).any(), (grad_w, grad_q)
    assert torch.equal(grad_q[1].cpu(), torch.zeros(4, dtype=dtype)) and torch.equal(grad_q[2].cpu(), torch.zeros(4, dtype=dtype))
    expected_q = torch.where(g.double().cpu()[:, None] == 0, torch.zeros_like(signal), g.double().cpu()[:, None] * signal)
    assert_close(grad_q, expected_q, atol=atol, rtol=rtol, name="d/d log_q")
    # With a nonzero upstream gradient, the sole finite sample's signal is +inf (exact).
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q, variant)
    (grad_q,) = torch.autograd.grad(s.sum(), log_q)
    assert grad_q[2, 0].item() == float("inf")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_all_equal_weights(backend, variant):
    K = 7
    log_w = torch.full((3, K), -12.5, dtype=torch.float64, device=DEVICE)
    out = run(backend, log_w, variant)
    assert_close(out.weights, torch.full((3, K), 1.0 / K, dtype=torch.float64), atol=1e-15, rtol=0, name="weights")
    assert_close(out.bound, torch.full((3,), -12.5, dtype=torch.float64), atol=1e-13, rtol=0, name="bound")
    assert_close(out.loo_bound, torch.full((3, K), -12.5, dtype=torch.float64), atol=1e-13, rtol=0, name="loo_bound")


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_batch_shape(backend):
    log_w = torch.randn(2, 3, 5, dtype=torch.float64, device=DEVICE)
    out = run(backend, log_w, "geometric")
    flat = run(backend, log_w.reshape(6, 5), "geometric")
    assert out.bound.shape == (2, 3) and out.weights.shape == (2, 3, 5) and out.loo_bound.shape == (2, 3, 5)
    for a, b in zip(out, flat):
        assert torch.equal(a.reshape(b.shape), b)
    with use_backend(backend):
        s = vimco_surrogate(log_w, torch.zeros_like(log_w), "geometric")
    assert s.shape == (2, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_k1_is_an_error(backend):
    with use_backend(backend), pytest.raises(ValueError, match="K=1"):
        vimco(torch.zeros(4, 1, device=DEVICE))
    with use_backend(backend), pytest.raises(ValueError, match="K=1"):
        vimco_surrogate(torch.zeros(4, 1, device=DEVICE), torch.zeros(4, 1, device=DEVICE))


def test_bad_arguments():
    with pytest.raises(ValueError, match="variant"):
        vimco(torch.zeros(2, 3), "harmonic")
    with pytest.raises(ValueError, match="log_q shape"):
        vimco_surrogate(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="floating point"):
        vimco(torch.zeros(2, 3, dtype=torch.int64))


def test_double_backward_is_refused():
    log_w = torch.randn(3, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    with use_backend("triton"):
        out = vimco(log_w)
    v = torch.ones(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    (grad,) = torch.autograd.grad(out.bound, log_w, v, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()


def test_reference_matches_vimco_reference_formula():
    """vimco_reference is what auto picks on CPU: check it is also the oracle's value."""
    log_w = torch.randn(5, 6, dtype=torch.float64) * 30
    for variant in VARIANTS:
        ref = vimco_reference(log_w, variant)
        bound, weights, loo, _ = oracle(log_w, variant)
        assert_close(ref.bound, bound, atol=1e-12, rtol=1e-12, name="bound")
        assert_close(ref.weights, weights, atol=1e-12, rtol=1e-12, name="weights")
        assert_close(ref.loo_bound, loo, atol=1e-12, rtol=1e-12, name="loo_bound")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,K", [(3, 7), (1000, 64)])
def test_half_precision_gpu(variant, dtype, B, K):
    atol, rtol = TOLERANCES[dtype]
    # Inputs rounded to the 16-bit dtype first: the oracle sees the same values.
    log_w = (torch.randn(B, K, device="cuda") * 4 - 20).to(dtype).requires_grad_()
    log_q = torch.zeros_like(log_w, requires_grad=True)
    out = run("triton", log_w, variant)
    bound, weights, loo, signal = oracle(log_w, variant)
    # Outputs are rounded to the dtype: compare with the oracle at the dtype's resolution of ~20.
    assert_close(out.bound, bound, atol=atol * 20, rtol=rtol, name="bound")
    assert_close(out.weights, weights, atol=atol, rtol=rtol, name="weights")
    assert_close(out.loo_bound, loo, atol=atol * 20, rtol=rtol, name="loo_bound")
    with use_backend("triton"):
        s = vimco_surrogate(log_w, log_q, variant)
    grad_w, grad_q = torch.autograd.grad(s.sum(), (log_w, log_q))
    assert_close(grad_w, weights, atol=atol, rtol=rtol, name="d/d log_w")
    assert_close(grad_q, signal, atol=atol, rtol=rtol, name="d/d log_q")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_large_batch_gpu(variant):
    log_w = torch.randn(100_003, 16, device="cuda", dtype=torch.float64) * 10
    tri = run("triton", log_w, variant)
    ref = run("reference", log_w, variant)
    for name, a, b in zip(("bound", "weights", "loo_bound"), tri, ref):
        assert_close(a, b, atol=1e-10, rtol=1e-9, name=name)


# ---------------------------------------------------------------------------------------------
# ±inf and NaN log-weights (module docstring: "Infinite weights", "NaN")
# ---------------------------------------------------------------------------------------------

T_LIMIT = 1e5  # +inf = T -> ∞: the oracle substitutes T (exp(f - T) = 0 for |f| << T in float64)


def oracle_extreme(log_w: torch.Tensor, variant: str):
    """float64 (bound, weights, loo_bound, signal) under the ±inf / NaN conventions, by brute force:
    +inf entries become one large T, the finite oracle runs, and the results are mapped back."""
    x = log_w.detach().to(torch.float64).cpu()
    row_nan = torch.isnan(x).any(-1)
    is_pinf = torch.isposinf(x)
    row_pinf = is_pinf.any(-1) & ~row_nan
    xt = torch.where(is_pinf, torch.full_like(x, T_LIMIT), torch.nan_to_num(x, nan=0.0, posinf=T_LIMIT, neginf=float("-inf")))
    bound, weights, loo, _ = oracle(xt, variant)
    signal = bound[:, None] - loo  # both near T where they hold a +inf: error ~ ulp(T) ≈ 1.5e-11
    all_ninf = torch.isneginf(xt).all(-1, keepdim=True)
    signal = torch.where(all_ninf, torch.zeros_like(signal), signal)
    signal = torch.where(torch.isneginf(loo), torch.full_like(signal, float("inf")), signal)
    big = loo > T_LIMIT / 2  # the others hold a +inf
    signal = torch.where(row_pinf[:, None] & ~big, torch.full_like(signal, float("inf")), signal)
    loo = torch.where(big, torch.full_like(loo, float("inf")), loo)
    bound = torch.where(row_pinf, torch.full_like(bound, float("inf")), bound)
    nan = float("nan")
    bound = torch.where(row_nan, torch.full_like(bound, nan), bound)
    weights, loo, signal = (torch.where(row_nan[:, None], torch.full_like(t, nan), t) for t in (weights, loo, signal))
    return bound, weights, loo, signal, xt


def oracle_extreme_grad(xt, row_nan, g_bound, g_weights):
    """∂/∂log w of <g_bound, bound> + <g_weights, weights> at the T-substituted values; NaN rows NaN."""
    all_ninf = torch.isneginf(xt).all(-1)
    x = torch.where(all_ninf[:, None], torch.zeros_like(xt), xt).requires_grad_()
    (grad,) = torch.autograd.grad((torch.logsumexp(x, -1), torch.softmax(x, -1)), x, (g_bound.double().cpu(), g_weights.double().cpu()))
    grad = torch.where(all_ninf[:, None], torch.zeros_like(grad), grad)  # all -inf: weights 0, gradients 0
    return torch.where(row_nan[:, None], torch.full_like(grad, float("nan")), grad)


def extreme_rows(K: int, dtype, seed: int) -> torch.Tensor:
    """Fresh random rows (log w ~ N(-50, 4²)) with ±inf and NaN inserted in every pattern."""
    gen = torch.Generator().manual_seed(seed)
    nan, inf = float("nan"), float("inf")
    rows = []
    for pattern in ("finite", "nan", "nan+inf", "pinf1", "pinf2", "pinf+ninf", "pinf_all", "ninf_rest", "nan_all"):
        r = torch.randn(K, generator=gen, dtype=torch.float64) * 4 - 50
        pos = torch.randperm(K, generator=gen).tolist()
        if pattern == "nan":
            r[pos[0]] = nan
        elif pattern == "nan+inf":
            r[pos[0]], r[pos[1]] = nan, inf
        elif pattern == "pinf1":
            r[pos[0]] = inf
        elif pattern == "pinf2":
            r[pos[0]] = inf
            r[pos[-1]] = inf
        elif pattern == "pinf+ninf":
            r[pos[0]], r[pos[-1]] = inf, -inf
        elif pattern == "pinf_all":
            r[:] = inf
        elif pattern == "ninf_rest":  # a sole +inf, all others -inf
            r[:] = -inf
            r[pos[0]] = inf
        elif pattern == "nan_all":
            r[:] = nan
        rows.append(r)
    return torch.stack(rows).to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K", [2, 3, 7, 65])
def test_inf_and_nan_entries(backend, variant, dtype, K):
    """Every output and gradient against the float64 T -> ∞ oracle; NaN rows all NaN."""
    atol, rtol = TOLERANCES[dtype]
    log_w = extreme_rows(K, dtype, seed=K).requires_grad_()
    B = log_w.shape[0]
    bound, weights, loo, signal, xt = oracle_extreme(log_w, variant)
    row_nan = torch.isnan(bound)
    out = run(backend, log_w, variant)
    assert_close(out.bound, bound, atol=atol, rtol=rtol, name="bound")
    assert_close(out.weights, weights, atol=atol, rtol=rtol, name="weights")
    assert_close(out.loo_bound, loo, atol=atol, rtol=rtol, name="loo_bound")
    # bound and weights: gradients with random upstream gradients, a zero one for some rows
    g_bound = torch.randn(B, dtype=dtype, device=DEVICE)
    g_bound[::3] = 0
    g_weights = torch.randn(B, K, dtype=dtype, device=DEVICE)
    (grad,) = torch.autograd.grad((out.bound, out.weights), log_w, (g_bound, g_weights))
    assert_close(grad, oracle_extreme_grad(xt, row_nan, g_bound, g_weights), atol=atol, rtol=rtol, name="grad log_w")
    # surrogate: value, ∂/∂log_w = g w̃, ∂/∂log_q = g (L̂ - L̂^{-k}) with 0 · inf = 0 but 0 · NaN = NaN
    log_w2 = log_w.detach().requires_grad_()
    log_q = torch.randn(B, K, dtype=dtype, device=DEVICE).requires_grad_()
    with use_backend(backend):
        s = vimco_surrogate(log_w2, log_q, variant)
    assert_close(s, bound, atol=atol, rtol=rtol, name="surrogate")
    g = g_bound.double().cpu()[:, None]
    grad_w, grad_q = torch.autograd.grad(s, (log_w2, log_q), g_bound)
    assert_close(grad_w, g * weights, atol=atol, rtol=rtol, name="surrogate d/d log_w")
    expected_q = torch.where((g == 0) & ~torch.isnan(signal), torch.zeros_like(signal), g * signal)
    # the signal is a difference of two bounds near T in the oracle: compare at T's resolution
    assert_close(grad_q, expected_q, atol=atol + 1e-10 * T_LIMIT, rtol=rtol, name="surrogate d/d log_q")
    # the documented shape of the semantics, independent of the oracle
    for b in range(B):
        if row_nan[b]:
            assert torch.isnan(grad_w[b]).all() and torch.isnan(grad_q[b]).all()
        else:
            assert not torch.isnan(out.weights[b]).any() and not torch.isnan(grad_w[b]).any()
    pinf = torch.isposinf(log_w.detach()).cpu() & ~row_nan[:, None]
    n = pinf.sum(-1, keepdim=True)
    rows = (n[:, 0] > 0)
    assert_close(out.weights[rows.to(out.weights.device)], (pinf.double() / n.clamp_min(1))[rows], atol=atol, rtol=0,
                 name="weights of +inf rows: 1/n on the +inf entries")


def test_inf_and_nan_examples():
    """The issue's cases written out: a NaN row gives NaN (was -inf), a +inf row gives +inf (was -inf)."""
    nan, inf = float("nan"), float("inf")
    log_w = torch.tensor([[0.0, nan, 1.0], [0.0, inf, 1.0], [inf, inf, 0.0]], dtype=torch.float64, device=DEVICE)
    for backend in BACKENDS:
        for variant in VARIANTS:
            out = run(backend, log_w, variant)
            assert torch.isnan(out.bound[0]) and out.bound[1].item() == inf and out.bound[2].item() == inf
            assert torch.isnan(out.weights[0]).all() and torch.isnan(out.loo_bound[0]).all()
            assert out.weights[1].tolist() == [0.0, 1.0, 0.0] and out.weights[2].tolist() == [0.5, 0.5, 0.0]
            assert out.loo_bound[1, 0].item() == inf and out.loo_bound[2].tolist() == [inf, inf, inf]
            # the sole +inf entry's leave-one-out bound is that of the others (finite)
            others = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
            expected = (torch.logsumexp(torch.cat([others, others.mean(-1, keepdim=True)], -1), -1) - math.log(3)
                        if variant == "geometric" else torch.logsumexp(others, -1) - math.log(2))
            assert out.loo_bound[1, 1].item() == pytest.approx(expected.item(), abs=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_row_gradients_are_nan_even_under_zero_upstream(backend):
    log_w = torch.randn(3, 5, dtype=torch.float64, device=DEVICE)
    log_w[1, 2] = float("nan")
    log_w.requires_grad_()
    log_q = torch.zeros_like(log_w, requires_grad=True)
    with use_backend(backend):
        s = vimco_surrogate(log_w, log_q)
    grad_w, grad_q = torch.autograd.grad(s, (log_w, log_q), torch.zeros(3, dtype=torch.float64, device=DEVICE))
    assert torch.isnan(grad_w[1]).all() and torch.isnan(grad_q[1]).all()
    assert torch.equal(grad_w[[0, 2]].cpu(), torch.zeros(2, 5, dtype=torch.float64))
    assert torch.equal(grad_q[[0, 2]].cpu(), torch.zeros(2, 5, dtype=torch.float64))
