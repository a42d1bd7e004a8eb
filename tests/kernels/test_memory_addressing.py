"""varmem.kernels.memory_addressing: the Triton backend against the float64 reference.

Every output (lse, kl, log q and log p at the sampled addresses) and every gradient (query,
keys, prior_query) under random upstream gradients; odd sizes, M = 1, G > 1, forced splits over
M, extreme logits, zero-norm keys; a chi-square test that the samples follow q(a|x).
"""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import varmem.kernels.dispatch as dispatch
from varmem.kernels import BackendUnavailable, memory_addressing, memory_addressing_reference, use_backend
from varmem.kernels.memory_addressing import NORM_EPS, launch_config, memory_log_softmax, prior_log_probs, similarity_logits
from tests.assertions import TOLERANCES, assert_close

DTYPES = [torch.float32, torch.float64]
SIMILARITIES = ["normalized_dot", "dot", "cosine"]
# (dtype, atol, rtol) against the float64 oracle; GPU rows for the 16-bit kernels.
TOL = {torch.float64: TOLERANCES[torch.float64], torch.float32: TOLERANCES[torch.float32],
       torch.float16: (2e-2, 2e-2), torch.bfloat16: (6e-2, 6e-2)}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(seed, B, M, d, dtype, *, G=None, prior=None, scale=1.0, device=None):
    """Random query [G?, B, d] (times ``scale``), keys [G?, M, d], prior_query None / [d] / [G, d]."""
    gen = torch.Generator().manual_seed(seed)
    lead = (G,) if G else ()
    q = torch.randn(*lead, B, d, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(*lead, M, d, generator=gen, dtype=torch.float64) / math.sqrt(d) * 2.0
    k = k * torch.rand(*lead, M, 1, generator=gen, dtype=torch.float64).add(0.5)  # varied norms
    pq = None
    if prior == "shared":
        pq = torch.randn(d, generator=gen, dtype=torch.float64)
    elif prior == "per_episode":
        pq = torch.randn(G, d, generator=gen, dtype=torch.float64)
    dev = device or _device()
    cast = lambda t: None if t is None else t.to(dev, dtype).requires_grad_(True)  # noqa: E731
    return cast(q), cast(k), cast(pq)


def _oracle(q, k, pq, similarity, addresses):
    """float64 lse, kl, log q and log p gathered at ``addresses`` from the dense reference."""
    q64, k64 = q.double(), k.double()
    pq64 = None if pq is None else pq.double()
    ref = memory_addressing_reference(q64, k64, prior_query=pq64, num_samples=1, similarity=similarity)
    log_q_all = memory_log_softmax(q64, k64, similarity=similarity)  # [G?, B, M]
    log_q = torch.gather(log_q_all, -1, addresses)
    M = k.shape[-2]
    if pq64 is None:
        log_p = torch.full_like(log_q, -math.log(M))
    else:
        grouped_k = k64 if k64.dim() == 3 else k64.unsqueeze(0)
        grouped_p = pq64 if pq64.dim() == 2 else pq64.unsqueeze(0).expand(grouped_k.shape[0], -1)
        lp = prior_log_probs(grouped_k, grouped_p, similarity)  # [G, M]
        lp = lp if k64.dim() == 3 else lp.squeeze(0)
        log_p = torch.gather(lp.unsqueeze(-2).expand(*log_q.shape[:-1], M), -1, addresses)
    return {"log_normalizer": ref.log_normalizer, "kl": ref.kl, "log_q": log_q, "log_prior": log_p}


def _check_against_oracle(q, k, pq, similarity, *, num_samples=3, tol=None, seed=0, gen_device=None):
    """Run the Triton backend, compare every output and gradient with the float64 oracle."""
    atol, rtol = tol or TOL[q.dtype]
    gen = torch.Generator(device=gen_device or q.device.type).manual_seed(seed)
    with use_backend("triton"):
        out = memory_addressing(q, k, prior_query=pq, num_samples=num_samples, similarity=similarity, generator=gen)
    M = k.shape[-2]
    assert out.addresses.dtype == torch.int64 and out.addresses.shape == (*q.shape[:-1], num_samples)
    assert int(out.addresses.min()) >= 0 and int(out.addresses.max()) < M
    expected = _oracle(q, k, pq, similarity, out.addresses)
    names = ["log_normalizer", "kl", "log_q", "log_prior"]
    for name in names:
        assert_close(getattr(out, name), expected[name], atol=atol, rtol=rtol, name=name)
    # every gradient, under random upstream gradients
    ups = {n: torch.randn(getattr(out, n).shape, generator=torch.Generator().manual_seed(seed + 1 + i),
                          dtype=torch.float64).to(q.device) for i, n in enumerate(names)}
    inputs = [t for t in (q, k, pq) if t is not None]
    loss = sum((getattr(out, n).double() * ups[n]).sum() for n in names)
    loss_ref = sum((expected[n] * ups[n]).sum() for n in names)
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    grads_ref = torch.autograd.grad(loss_ref, inputs, allow_unused=True)
    for name, g, g_ref in zip(["query", "keys", "prior_query"], grads, grads_ref):
        assert g is not None, f"no gradient for {name}"
        assert g.dtype == q.dtype
        assert_close(g, g_ref, atol=atol, rtol=rtol, name=f"d{name}")
    return out


# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("prior", [None, "shared"])
@pytest.mark.parametrize("B,M,d", [(3, 1, 5), (5, 7, 33), (5, 130, 5)])
def test_matches_reference(dtype, similarity, prior, B, M, d):
    seed = zlib.crc32(repr((dtype, similarity, prior, B, M, d)).encode()) % 10_000
    q, k, pq = _inputs(seed, B, M, d, dtype, prior=prior)
    _check_against_oracle(q, k, pq, similarity, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prior", [None, "shared", "per_episode"])
def test_grouped_episodes(dtype, prior):
    """[G, B, d] queries against per-episode memories [G, M, d] in one call."""
    q, k, pq = _inputs(11, 3, 130, 33, dtype, G=3, prior=prior)
    out = _check_against_oracle(q, k, pq, "normalized_dot", seed=11)
    assert out.kl.shape == (3, 3) and out.addresses.shape == (3, 3, 3)
    # episodes are independent: episode 1 alone gives the same lse
    with use_backend("triton"):
        alone = memory_addressing(q[1], k[1], prior_query=None if pq is None else (pq if pq.dim() == 1 else pq[1]))
    assert_close(alone.log_normalizer, out.log_normalizer[1], atol=TOL[dtype][0], rtol=TOL[dtype][1], name="lse[g=1]")


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_splits_and_row_blocks(dtype):
    """Small tiles force 9 forward splits, 5 dq splits, 3 query-row blocks and 3 dkeys row splits."""
    q, k, pq = _inputs(21, 37, 130, 33, dtype, prior="shared")
    with launch_config(block_b=16, block_m=16, split_size=16, bwd_split_size=32, row_split_size=16):
        _check_against_oracle(q, k, pq, "normalized_dot", seed=21)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e3, 1e-6])
def test_extreme_logits(dtype, scale):
    """Queries scaled by 1e3 (q(a|x) one-hot, logits ~1e3) and by 1e-6 (q(a|x) uniform)."""
    q, k, pq = _inputs(31, 5, 130, 33, dtype, prior="shared", scale=scale)
    atol, rtol = TOL[dtype]
    if dtype == torch.float32 and scale > 1:
        # |S| reaches ~3e3, where one fp32 ulp is 2.4e-4: log q = S − lse and q = exp(S − lse)
        # carry ~4e-4 absolute error in any fp32 implementation (the fp32 reference: 4e-4 in kl)
        atol, rtol = 2e-3, 1e-3
    with launch_config(block_m=16, split_size=32):
        out = _check_against_oracle(q, k, pq, "normalized_dot", tol=(atol, rtol), seed=31)
    assert torch.isfinite(out.kl).all() and (out.kl > -atol).all()
    if scale < 1:  # q ≈ uniform: KL to the uniform prior → 0
        with use_backend("triton"):
            flat = memory_addressing(q, k, num_samples=1)
        assert_close(flat.kl, torch.zeros(5, dtype=torch.float64), atol=1e-6, rtol=0, name="kl(uniform q)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", ["normalized_dot", "cosine"])
def test_zero_norm_keys(dtype, similarity):
    """||e_a|| is clamped below by NORM_EPS: S = 0 at a zero key, all gradients finite, both backends."""
    q, k, pq = _inputs(41, 5, 7, 33, dtype, prior="shared")
    with torch.no_grad():
        k[2].zero_()
        k[5].zero_()
        if similarity == "cosine":
            q[1].zero_()  # a zero query too
    out = _check_against_oracle(q, k, pq, similarity, seed=41)
    log_q = memory_log_softmax(q.double(), k.double(), similarity=similarity)
    assert_close(log_q[:, 2], -out.log_normalizer.double(), atol=1e-6, rtol=0, name="log q at the zero key = 0 − lse")
    with use_backend("triton"):
        out = memory_addressing(q, k, prior_query=pq, similarity=similarity)
    g = torch.autograd.grad(out.kl.sum() + out.log_normalizer.sum(), (q, k, pq))
    assert all(torch.isfinite(t).all() for t in g)
    # the gradient at a zero key is the clamped formula's: d S / d e_a = e_q / NORM_EPS
    assert g[1][2].abs().max() > 1.0 / NORM_EPS * 1e-8


def test_all_keys_zero_gives_uniform_posterior():
    q, k, _ = _inputs(42, 3, 7, 5, torch.float64)
    with torch.no_grad():
        k.zero_()
    with use_backend("triton"):
        out = memory_addressing(q, k, num_samples=2)
    assert_close(out.log_normalizer, torch.full((3,), math.log(7), dtype=torch.float64), atol=1e-12, rtol=0, name="lse")
    assert_close(out.kl, torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0, name="kl")


def _chi_square_pvalue(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square goodness of fit per row, summed; cells with expected < 5 are merged."""
    stat, dof = 0.0, 0
    for c, p in zip(counts.double(), probs.double()):
        n = c.sum()
        order = torch.argsort(p)
        c, e = c[order], p[order] * n
        cells_c, cells_e, acc_c, acc_e = [], [], 0.0, 0.0
        for ci, ei in zip(c.tolist(), e.tolist()):
            acc_c, acc_e = acc_c + ci, acc_e + ei
            if acc_e >= 5:
                cells_c.append(acc_c)
                cells_e.append(acc_e)
                acc_c, acc_e = 0.0, 0.0
        if acc_e > 0 and cells_e:
            cells_c[-1] += acc_c
            cells_e[-1] += acc_e
        cc, ee = torch.tensor(cells_c), torch.tensor(cells_e)
        stat += float(((cc - ee) ** 2 / ee).sum())
        dof += len(cells_c) - 1
    if dof == 0:
        return 1.0
    # survival function of chi2(dof): Q(dof/2, stat/2)
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64)))


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("M", [7, 130])
def test_samples_follow_posterior(backend, M):
    """Chi-square goodness of fit of 20,000 samples per row against softmax_a S (false failure ~1e-6)."""
    B, K = 3, 20_000
    q, k, _ = _inputs(51 + M, B, M, 33, torch.float32)
    gen = torch.Generator(device=q.device.type).manual_seed(51 + M)
    with torch.no_grad(), use_backend(backend), launch_config(block_m=16, split_size=32):
        out = memory_addressing(q, k, num_samples=K, generator=gen)
    probs = memory_log_softmax(q.detach().double(), k.detach().double()).exp()  # [B, M]
    counts = torch.stack([torch.bincount(out.addresses[b].cpu(), minlength=M) for b in range(B)])
    p_value = _chi_square_pvalue(counts, probs.cpu())
    assert p_value > 1e-6, f"samples do not follow q(a|x): chi-square p = {p_value:.3g}"
    # and a sampler that ignores the logits would fail: uniform counts vs q
    if M == 130:
        assert _chi_square_pvalue(counts, torch.full_like(probs, 1.0 / M).cpu()) < 1e-6


def test_sampling_is_reproducible_from_generator():
    q, k, _ = _inputs(61, 5, 130, 5, torch.float32)
    gen = lambda seed: torch.Generator(device=q.device.type).manual_seed(seed)  # noqa: E731
    with use_backend("triton"), launch_config(block_m=16, split_size=32):
        a1 = memory_addressing(q, k, num_samples=50, generator=gen(7)).addresses
        a2 = memory_addressing(q, k, num_samples=50, generator=gen(7)).addresses
        a3 = memory_addressing(q, k, num_samples=50, generator=gen(8)).addresses
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_uniform_prior_is_minus_log_m(backend):
    q, k, _ = _inputs(71, 5, 130, 5, torch.float64)
    with use_backend(backend):
        out = memory_addressing(q, k, num_samples=4)
    assert torch.equal(out.log_prior, torch.full((5, 4), -math.log(130), dtype=torch.float64))
    assert not out.log_prior.requires_grad


def test_reference_matches_vma_formula():
    """The oracle itself, against eq. 5 written out: S = <q, e_a>/||e_a||, KL = Σ q log(q/p)."""
    q, k, pq = _inputs(81, 4, 9, 6, torch.float64, prior="shared")
    q, k, pq = q.detach(), k.detach(), pq.detach()
    S = torch.empty(4, 9, dtype=torch.float64)
    for b in range(4):
        for a in range(9):
            S[b, a] = (q[b] * k[a]).sum() / k[a].norm()
    Sp = torch.stack([(pq * k[a]).sum() / k[a].norm() for a in range(9)])
    qa = S.exp() / S.exp().sum(1, keepdim=True)
    pa = Sp.exp() / Sp.exp().sum()
    kl = (qa * (qa / pa).log()).sum(1)
    ref = memory_addressing_reference(q, k, prior_query=pq, num_samples=5, generator=torch.Generator().manual_seed(0))
    assert_close(ref.log_normalizer, S.exp().sum(1).log(), atol=1e-12, rtol=1e-12, name="lse")
    assert_close(ref.kl, kl, atol=1e-12, rtol=1e-12, name="kl")
    assert_close(ref.log_q, torch.gather(qa.log(), 1, ref.addresses), atol=1e-12, rtol=1e-12, name="log_q")
    assert_close(ref.log_prior, pa.log()[ref.addresses], atol=1e-12, rtol=1e-12, name="log_prior")
    # the similarity variants
    assert_close(similarity_logits(q[None], k[None], "dot")[0], q @ k.T, atol=1e-12, rtol=0, name="dot")
    qn = q / q.norm(dim=1, keepdim=True)
    kn = k / k.norm(dim=1, keepdim=True)
    assert_close(similarity_logits(q[None], k[None], "cosine")[0], qn @ kn.T, atol=1e-12, rtol=0, name="cosine")


def test_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(91)
    q = torch.randn(7, 33, generator=gen, dtype=torch.float64).T.requires_grad_(True)  # [33, 7] column-major
    k = torch.randn(7, 130, generator=gen, dtype=torch.float64).T.requires_grad_(True)  # [130, 7]
    assert not q.is_contiguous() and not k.is_contiguous()
    _check_against_oracle(q, k, None, "normalized_dot")


def test_double_backward_is_refused():
    q, k, _ = _inputs(101, 3, 7, 5, torch.float64)
    with use_backend("triton"):
        out = memory_addressing(q, k)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.kl.sum(), q, create_graph=True)
    with use_backend("reference"):  # the reference does
        ref = memory_addressing(q, k)
    (gq,) = torch.autograd.grad(ref.kl.sum(), q, create_graph=True)
    assert gq.requires_grad


def test_auto_uses_the_reference_for_cpu_tensors():
    q, k, _ = _inputs(131, 3, 7, 5, torch.float64, device="cpu")
    with use_backend("auto"):
        out = memory_addressing(q, k, num_samples=6, generator=torch.Generator().manual_seed(3))
    ref = memory_addressing_reference(q, k, num_samples=6, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.addresses, ref.addresses)  # same sampler, same stream


def test_forced_triton_that_cannot_serve_lists_both_backends(monkeypatch):
    q, k, _ = _inputs(111, 3, 7, 5, torch.float32, device="cpu")
    monkeypatch.setattr(dispatch, "interpret_mode", lambda: False)
    with use_backend("triton"), pytest.raises(BackendUnavailable) as err:
        memory_addressing(q, k)
    msg = str(err.value)
    assert "triton: tensors on cpu" in msg and "reference:" in msg and "memory_addressing" in msg


@pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="no float8 dtype in this torch")
def test_unsupported_dtype_refused_by_triton():
    q = torch.randn(3, 5, device=_device()).to(torch.float8_e4m3fn)
    k = torch.randn(7, 5, device=_device()).to(torch.float8_e4m3fn)
    with use_backend("triton"), pytest.raises(BackendUnavailable) as err:
        memory_addressing(q, k)
    assert "dtype torch.float8_e4m3fn not supported" in str(err.value) and "reference:" in str(err.value)


def test_head_dim_limit_refused_by_triton():
    q, k, _ = _inputs(121, 2, 3, 257, torch.float32)
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="d=257"):
        memory_addressing(q, k)


@pytest.mark.parametrize("bad", [dict(block_m=24), dict(block_b=8), dict(split_size=0)])
def test_launch_config_validates(bad):
    with pytest.raises(ValueError, match="launch_config"):
        with launch_config(**bad):
            pass


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(q=(3, 5), k=(7, 5), num_samples=0), "num_samples must be an int >= 1"),
        (dict(q=(3, 5), k=(7, 6)), r"keys \(7, 6\) have d=6 but query \(3, 5\) has d=5"),
        (dict(q=(3, 5), k=(0, 5)), "M=0"),
        (dict(q=(5,), k=(7, 5)), r"query must be \[B, d\] or \[G, B, d\], got shape \(5,\)"),
        (dict(q=(2, 3, 5), k=(7, 5)), r"keys must be \[M, d\] for query \[B, d\], or \[G, M, d\]"),
        (dict(q=(2, 3, 5), k=(3, 7, 5)), "disagree on G"),
        (dict(q=(3, 5), k=(7, 5), similarity="l2"), "similarity='l2' is not one of"),
        (dict(q=(3, 5), k=(7, 5), prior=(4,)), r"prior_query must be \[5\]"),
        (dict(q=(2, 3, 5), k=(2, 7, 5), prior=(3, 5)), r"prior_query must be \[5\] or \[2, 5\]"),
    ],
)
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_invalid_inputs_raise_value_error(kwargs, match, backend):
    q = torch.randn(*kwargs["q"])
    k = torch.randn(*kwargs["k"])
    pq = torch.randn(*kwargs["prior"]) if "prior" in kwargs else None
    with use_backend(backend), pytest.raises(ValueError, match=match):
        memory_addressing(q, k, prior_query=pq, num_samples=kwargs.get("num_samples", 2),
                          similarity=kwargs.get("similarity", "normalized_dot"))


# ----------------------------------------------------------------------------------------------
# GPU only: 16-bit kernels (bf16 arithmetic is wrong in the interpreter), TF32, larger shapes.


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("prior", [None, "shared"])
def test_half_precision_gpu(dtype, prior):
    q, k, pq = _inputs(131, 37, 1000, 64, dtype, prior=prior, device="cuda")
    out = _check_against_oracle(q, k, pq, "normalized_dot", seed=131)
    assert out.kl.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("tf32,tol", [(False, TOL[torch.float32]), (True, (3e-3, 3e-3))])
def test_large_gpu(tf32, tol):
    q, k, pq = _inputs(141, 256, 20_000, 128, torch.float32, prior="shared", device="cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    with use_backend("triton"):
        out = memory_addressing(q, k, prior_query=pq, num_samples=4, generator=gen, tf32=tf32)
    exp = _oracle(q, k, pq, "normalized_dot", out.addresses)
    for name in ("log_normalizer", "kl", "log_q", "log_prior"):
        assert_close(getattr(out, name), exp[name], atol=tol[0], rtol=tol[1], name=name)


# ----------------------------------------------------------------------------------------------
# Invalid rows (module docstring): no finite log-normalizer → addresses −1, NaN outputs and gradients


def _dense_lse64(q, k, similarity):
    q64, k64 = q.detach().double(), k.detach().double()
    grouped = q64.dim() == 3
    s = similarity_logits(q64 if grouped else q64[None], k64 if grouped else k64[None], similarity)
    lse = torch.logsumexp(s, dim=-1)
    return lse if grouped else lse[0]


def _check_invalid_rows(q, k, pq, similarity, backend, *, seed=0, zero_upstream_on_invalid=False):
    """Run ``backend``; check the documented semantics and compare valid rows with the float64 oracle."""
    atol, rtol = TOL[q.dtype]
    invalid = ~torch.isfinite(_dense_lse64(q, k, similarity)).to(q.device)  # [G?, B]
    gen = torch.Generator(device=q.device.type).manual_seed(seed)
    with use_backend(backend), launch_config(block_m=16, split_size=16, bwd_split_size=16):
        out = memory_addressing(q, k, prior_query=pq, num_samples=3, similarity=similarity, generator=gen)
    M = k.shape[-2]
    addr = out.addresses
    assert torch.equal(addr[invalid], torch.full_like(addr[invalid], -1))
    assert bool((addr[~invalid] >= 0).all()) and bool((addr[~invalid] < M).all())
    for name in ("log_q", "log_prior", "kl", "log_normalizer"):
        t = getattr(out, name)
        assert torch.isnan(t[invalid]).all(), name
        if pq is not None and not torch.isfinite(pq).all():
            continue
        assert not torch.isnan(t[~invalid]).any(), name
    # valid rows against the float64 oracle, every output
    expected = _oracle(q, k, pq, similarity, addr.clamp_min(0))
    for name in ("log_normalizer", "kl", "log_q", "log_prior"):
        assert_close(getattr(out, name)[~invalid], expected[name][~invalid], atol=atol, rtol=rtol, name=name)
    # gradients: NaN for the invalid rows' queries, every key and prior_query; valid query rows
    # as in the oracle (rows are independent in dq)
    names = ["log_normalizer", "kl", "log_q", "log_prior"]
    ups = {n: torch.randn(getattr(out, n).shape, generator=torch.Generator().manual_seed(seed + i), dtype=torch.float64).to(q.device)
           for i, n in enumerate(names)}
    if zero_upstream_on_invalid:
        for n in names:
            ups[n][invalid] = 0.0
    inputs = [t for t in (q, k, pq) if t is not None]
    grads = torch.autograd.grad(sum((getattr(out, n).double() * ups[n]).sum() for n in names), inputs, allow_unused=True)
    dq = grads[0]
    assert torch.isnan(dq[invalid]).all() and not torch.isnan(dq[~invalid]).any()
    if bool(invalid.any()):
        dk = grads[1]
        if q.dim() == 3:  # per episode: the keys (and per-episode prior) of an episode with an invalid row
            bad_g = invalid.any(-1)
            assert torch.isnan(dk[bad_g]).all() and not torch.isnan(dk[~bad_g]).any()
            if pq is not None and pq.dim() == 2:
                assert torch.isnan(grads[2][bad_g]).all() and not torch.isnan(grads[2][~bad_g]).any()
            elif pq is not None:
                assert torch.isnan(grads[2]).all()
        else:
            for g in grads[1:]:
                assert g is not None and torch.isnan(g).all()
    loss_ref = sum((expected[n][~invalid] * ups[n][~invalid]).sum() for n in names)
    (dq_ref,) = torch.autograd.grad(loss_ref, q)
    assert_close(dq[~invalid], dq_ref[~invalid], atol=atol, rtol=rtol, name="dquery (valid rows)")
    return out, invalid


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("prior", [None, "shared"])
def test_nan_and_inf_queries_give_invalid_rows(backend, dtype, similarity, prior):
    """A NaN query gave NaN log_q with valid-looking addresses (all M−1): now −1 and NaN."""
    seed = zlib.crc32(repr(("invalid", dtype, similarity, prior)).encode()) % 10_000
    q, k, pq = _inputs(seed, 6, 40, 5, dtype, prior=prior)
    with torch.no_grad():
        q[1, 2] = float("nan")
        q[3, 0] = float("inf")
        q[4] = float("nan")
    out, invalid = _check_invalid_rows(q, k, pq, similarity, backend, seed=seed)
    assert invalid.tolist() == [False, True, False, True, True, False]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_invalid_rows_poison_gradients_under_zero_upstream(backend):
    q, k, pq = _inputs(5, 4, 20, 5, torch.float64, prior="shared")
    with torch.no_grad():
        q[2, 0] = float("nan")
    _check_invalid_rows(q, k, pq, "normalized_dot", backend, seed=5, zero_upstream_on_invalid=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("G", [None, 2])
def test_nan_key_invalidates_every_row(backend, G):
    q, k, pq = _inputs(7, 3, 20, 5, torch.float64, G=G, prior="shared" if G is None else "per_episode")
    with torch.no_grad():
        k[..., 4, 1] = float("nan") if G is None else 0.0
        if G is not None:
            k[0, 4, 1] = float("nan")  # episode 0 only
    out, invalid = _check_invalid_rows(q, k, pq, "normalized_dot", backend, seed=7)
    if G is None:
        assert invalid.all()
    else:
        assert invalid[0].all() and not invalid[1].any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_minus_inf_logits_in_a_valid_row(backend):
    """S = −inf for some keys ("dot", −inf key components): q = 0 there, never sampled, adds 0 to the KL."""
    q, k, _ = _inputs(9, 4, 40, 3, torch.float64)
    with torch.no_grad():
        q.abs_()  # all query components > 0: <q, k_a> = −inf for a key with a −inf component
        k[[3, 17, 30], 0] = float("-inf")
        k[[3, 17, 30], 1:] = 1.0
        # entries 0..15 (one whole split of 16) all −inf as well: the online softmax sees a split with no finite S
        k[:16, 0] = float("-inf")
    with use_backend(backend), launch_config(block_m=16, split_size=16):
        out = memory_addressing(q, k, num_samples=50, similarity="dot", generator=torch.Generator().manual_seed(0))
    lse64 = _dense_lse64(q, k, "dot")
    assert torch.isfinite(lse64).all()
    assert_close(out.log_normalizer, lse64, atol=1e-10, rtol=1e-9, name="lse")
    bad = torch.zeros(40, dtype=torch.bool)
    bad[:16] = True
    bad[[17, 30]] = True
    assert not bad[out.addresses.cpu()].any()
    s = similarity_logits(q.detach()[None], k.detach()[None], "dot")[0]
    lq = torch.log_softmax(s, -1)
    p = lq.exp()
    kl = (p * torch.where(p > 0, lq + math.log(40), torch.zeros_like(lq))).sum(-1)
    assert_close(out.kl, kl, atol=1e-10, rtol=1e-9, name="kl with 0 log 0 = 0")
    dq, dk = torch.autograd.grad(out.kl.sum() + out.log_normalizer.sum() + out.log_q.sum(), (q, k))
    # the 0 · (−inf) of the KL does not reach the gradients: dkeys finite; dquery too, except the
    # component where keys are −inf (dq = Σ_a dS_a e_a has 0 · (−inf) = NaN, as in any matrix product)
    assert torch.isfinite(dk).all()
    assert torch.isfinite(dq[:, 1:]).all() and torch.isnan(dq[:, 0]).all()


@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_invalid_prior_gives_nan_log_prior_and_kl_only(backend):
    q, k, pq = _inputs(13, 4, 20, 5, torch.float64, prior="shared")
    with torch.no_grad():
        pq[0] = float("nan")
    gen = torch.Generator(device=q.device.type).manual_seed(1)
    with use_backend(backend):
        out = memory_addressing(q, k, prior_query=pq, num_samples=3, generator=gen)
    assert bool((out.addresses >= 0).all())
    assert torch.isnan(out.log_prior).all() and torch.isnan(out.kl).all()
    exp = _oracle(q, k, None, "normalized_dot", out.addresses)
    assert_close(out.log_q, exp["log_q"], atol=1e-10, rtol=1e-9, name="log_q")
    assert_close(out.log_normalizer, exp["log_normalizer"], atol=1e-10, rtol=1e-9, name="lse")
    # gradients of log_q and lse alone do not see the prior: finite, equal to the oracle's
    dq, dk, dpq = torch.autograd.grad(out.log_q.sum() + out.log_normalizer.sum(), (q, k, pq), allow_unused=True)
    dq_ref, dk_ref = torch.autograd.grad(exp["log_q"].sum() + exp["log_normalizer"].sum(), (q, k))
    assert_close(dq, dq_ref, atol=1e-10, rtol=1e-9, name="dq")
    assert_close(dk, dk_ref, atol=1e-10, rtol=1e-9, name="dk")
    assert dpq is None or torch.equal(dpq, torch.zeros_like(dpq))
    # differentiating kl (even with a zero upstream gradient) poisons everything, in both backends
    with use_backend(backend):
        out = memory_addressing(q, k, prior_query=pq, num_samples=3, generator=gen)
    dq, dk, dpq = torch.autograd.grad((out.kl * 0).sum() + out.log_normalizer.sum(), (q, k, pq))
    assert torch.isnan(dq).all() and torch.isnan(dk).all() and torch.isnan(dpq).all()


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("arg", ["query", "keys", "prior_query"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_floating_inputs_are_refused(backend, arg, dtype):
    q, k, pq = (t.detach() for t in _inputs(3, 3, 7, 5, torch.float32, prior="shared"))
    inputs = {"query": q, "keys": k, "prior_query": pq}
    inputs[arg] = inputs[arg].to(dtype)
    with use_backend(backend), pytest.raises(ValueError, match=f"memory_addressing: {arg} must be floating point, got dtype {dtype}"):
        memory_addressing(inputs["query"], inputs["keys"], prior_query=inputs["prior_query"])
