"""VIMCO (VMA eq. 8) is an unbiased gradient of the expected K-sample bound (VMA eq. 7).

A tiny VMA-like model with M = 3 memory entries and a deterministic weight w(a) (z integrated
out): q(a|x) = softmax_a <W_h m_a, W_q x>/||W_h m_a|| and p(a) = softmax_a S(e_p, W_h m_a) from
``varmem.kernels.memory_addressing``, log p(x|a) = −½||x − D m_a||², log w(a) = log p(x|a) + log p(a)
− log q(a|x). The exact gradient of E_{a_1..K ~ q}[log (1/K) Σ_k w(a_k)] comes from enumerating
all M^K address tuples (Σ_tuples Π_k q(a_k) · L̂(tuple), differentiated by autograd). The
estimator is the autograd of ``varmem.kernels.vimco_surrogate(log_w, log_q)`` on sampled addresses;
each of N draws has its own copy of the parameters, so one backward gives N per-draw gradients,
whose mean must match the exact gradient within statistical error (per-coordinate z-scores).

The same check must reject biased learning signals: without the score-function term (signal 0),
and with an off-by-one leave-one-out baseline (sample k's baseline L̂^{−(k+1)} contains w_k, so
it depends on a_k). It must accept unbiased ones: a constant added to the signal, and the
signal without the baseline (plain REINFORCE on L̂): baselines that do not depend on a_k add
nothing in expectation (E_q ∇ log q(a_k) = 0), only variance.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from varmem.kernels import memory_addressing, vimco, vimco_surrogate
from tests.assertions import assert_close

M, DX, D = 3, 4, 3  # memory entries, data dim, matching dim
NUM_DRAWS = 20000
Z_ACCEPT = 4.5  # max |z| over ~43 coordinates for a correct estimator: P(fail) ≈ 3e-4
Z_REJECT = 8.0  # a broken estimator must miss by more than this somewhere


def tiny_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    dt = torch.float64
    data = dict(x=torch.randn(DX, generator=g, dtype=dt), memory=torch.randn(M, DX, generator=g, dtype=dt))
    params = dict(
        W_q=0.5 * torch.randn(D, DX, generator=g, dtype=dt),
        W_h=torch.randn(D, DX, generator=g, dtype=dt),
        e_p=torch.randn(D, generator=g, dtype=dt),
        Dec=0.5 * torch.randn(DX, DX, generator=g, dtype=dt),
    )
    return data, params


def model_terms(params, data):
    """Per-row parameters [N, ...] → query [N, 1, D], keys [N, M, D], prior query [N, D], log p(x|a) [N, M]."""
    x, mem = data["x"], data["memory"]
    query = torch.einsum("ndi,i->nd", params["W_q"], x).unsqueeze(1)  # e_q = h_q(x)
    keys = torch.einsum("ndi,mi->nmd", params["W_h"], mem)  # e_a = h(m_a)
    recon = torch.einsum("nij,mj->nmi", params["Dec"], mem)  # D m_a   [N, M, DX]
    log_px = -0.5 * (x - recon).square().sum(-1)  # [N, M]
    return query, keys, params["e_p"], log_px


def exact_gradient(params, data, K: int) -> dict[str, torch.Tensor]:
    """∇ Σ_{a ∈ [M]^K} Π_k q(a_k|x) log (1/K) Σ_k w(a_k), by enumeration and autograd."""
    p = {k: v.clone().unsqueeze(0).requires_grad_() for k, v in params.items()}
    query, keys, e_p, log_px = model_terms(p, data)
    s = torch.einsum("nbd,nmd->nbm", query, keys) / keys.norm(dim=-1).unsqueeze(1)  # S (VMA eq. 5)
    log_q = torch.log_softmax(s[0, 0], -1)  # [M]
    log_prior = torch.log_softmax(keys[0] @ e_p[0] / keys[0].norm(dim=-1), -1)  # [M]
    log_w = log_px[0] + log_prior - log_q  # [M]
    tuples = torch.tensor(list(itertools.product(range(M), repeat=K)))  # [M^K, K]
    prob = log_q[tuples].sum(-1).exp()  # Π_k q(a_k)
    bound = torch.logsumexp(log_w[tuples], -1) - math.log(K)  # L̂(tuple)   (VMA eq. 7)
    objective = (prob * bound).sum()
    grads = torch.autograd.grad(objective, list(p.values()))
    return {k: g[0] for k, g in zip(p, grads)}


def estimated_gradients(params, data, K: int, variant: str, perturb=None, seed: int = 1):
    """Per-draw VIMCO gradients [N, ...] (one backward; each draw has its own parameter copy).

    ``perturb=None`` uses ``varmem.kernels.vimco_surrogate``; otherwise the surrogate is rebuilt from
    ``varmem.kernels.vimco`` as bound + Σ_k stop_grad(signal_k') log q(a_k), with
    signal' = perturb(bound, loo_bound, log_w).
    """
    p = {k: v.unsqueeze(0).repeat(NUM_DRAWS, *([1] * v.dim())).requires_grad_() for k, v in params.items()}
    query, keys, e_p, log_px = model_terms(p, data)
    g = torch.Generator().manual_seed(seed)
    out = memory_addressing(query, keys, prior_query=e_p, num_samples=K, generator=g)  # [N, 1, K]
    log_px_k = torch.gather(log_px.unsqueeze(1), 2, out.addresses)  # [N, 1, K]
    log_w = log_px_k + out.log_prior - out.log_q  # [N, 1, K]
    if perturb is None:
        surrogate = vimco_surrogate(log_w, out.log_q, variant)  # [N, 1]
    else:
        v = vimco(log_w, variant)
        signal = perturb(v.bound.detach(), v.loo_bound.detach(), log_w.detach())  # [N, 1, K]
        surrogate = v.bound + (signal * out.log_q).sum(-1)
    grads = torch.autograd.grad(surrogate.sum(), list(p.values()))
    return {k: gr for k, gr in zip(p, grads)}


def z_scores(per_draw: dict[str, torch.Tensor], exact: dict[str, torch.Tensor]) -> torch.Tensor:
    """(mean − exact) / standard error, per coordinate, all parameters flattened."""
    zs = []
    for k, ex in exact.items():
        g = per_draw[k].flatten(1)  # [N, P]
        mean, se = g.mean(0), g.std(0) / math.sqrt(g.shape[0])
        diff = mean - ex.flatten()
        zs.append(torch.where(se > 1e-12, diff / se.clamp_min(1e-300), diff.abs() * 1e12))
    return torch.cat(zs)


PERTURBATIONS = {
    # biased: must be rejected
    "no score-function term (signal 0)": (lambda b, loo, lw: torch.zeros_like(loo), False),
    "off-by-one leave-one-out baseline": (lambda b, loo, lw: b[..., None] - loo.roll(1, dims=-1), False),
    # unbiased (baselines independent of a_k): must be accepted
    "constant 5 added to the signal": (lambda b, loo, lw: b[..., None] - loo + 5.0, True),
    "no baseline (REINFORCE on the bound)": (lambda b, loo, lw: b[..., None].expand_as(loo), True),
}


@pytest.fixture(scope="module")
def problem():
    return tiny_problem()


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("variant", ["geometric", "arithmetic"])
def test_vimco_gradient_is_unbiased(problem, variant, K):
    data, params = problem
    exact = exact_gradient(params, data, K)
    per_draw = estimated_gradients(params, data, K, variant)
    z = z_scores(per_draw, exact)
    assert torch.isfinite(z).all()
    worst = int(z.abs().argmax())
    print(f"VIMCO {variant} K={K}: max |z| = {z.abs().max():.2f} over {z.numel()} coordinates, {NUM_DRAWS} draws")
    assert z.abs().max() < Z_ACCEPT, (
        f"VIMCO ({variant}, K={K}) mean gradient over {NUM_DRAWS} draws misses the exact gradient: "
        f"max |z| = {z.abs().max():.2f} at flat coordinate {worst}; z = {z.numpy().round(2).tolist()}"
    )
    # the score-function part matters here: the address-dependent parameters carry signal
    assert exact["W_q"].abs().max() > 1e-2


@pytest.mark.parametrize("K", [2, 3])
@pytest.mark.parametrize("variant", ["geometric", "arithmetic"])
@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_check_detects_biased_learning_signals(problem, variant, K, name):
    data, params = problem
    perturb, unbiased = PERTURBATIONS[name]
    exact = exact_gradient(params, data, K)
    z = z_scores(estimated_gradients(params, data, K, variant, perturb), exact).abs().max()
    print(f"VIMCO {variant} K={K}, {name}: max |z| = {z:.2f} ({'unbiased' if unbiased else 'biased'})")
    if unbiased:
        assert z < Z_ACCEPT, f"{name}: an unbiased signal was rejected (max |z| = {z:.2f})"
    else:
        assert z > Z_REJECT, f"{name}: a biased learning signal went undetected (max |z| = {z:.2f})"


@pytest.mark.parametrize("variant", ["geometric", "arithmetic"])
def test_rebuilt_surrogate_matches_kernel(problem, variant):
    """The rebuilt surrogate (bound + signal · log q) with the unperturbed signal is vimco_surrogate."""
    data, params = problem
    ident = lambda b, loo, lw: b[..., None] - loo  # noqa: E731
    kernel = estimated_gradients(params, data, 3, variant)
    rebuilt = estimated_gradients(params, data, 3, variant, ident)
    for k in kernel:
        assert_close(rebuilt[k], kernel[k], atol=1e-10, rtol=1e-9, name=f"per-draw grad {k}")
