"""varmem.kernels.memory_addressing_stream: streaming addressing against the float64 dense reference.

Every output (lse, kl, log q and log p at the sampled addresses) and every gradient (query, keys,
prior_query) under random upstream gradients, over odd sizes, one entry, G > 1, many chunks and one
chunk; the invalid-row semantics of ``memory_addressing``; a chi-square test that the two-level
sampler draws from q(a|x); the same addresses as the reference when M fits one chunk; a peak-memory
test at a size where the dense reference needs ~30× more.
"""
from __future__ import annotations

import importlib
import math
import zlib

import pytest
import torch

from varmem.distributed.peak_memory import PeakMemory, reset_peak
from varmem.kernels import memory_addressing_reference
from varmem.kernels.memory_addressing import memory_log_softmax, similarity_logits
from varmem.kernels.memory_addressing_stream import (
    DEFAULT_CHUNK,
    choose_chunks,
    memory_addressing_stream,
    merge_partials,
    stream_partials,
)
from tests.assertions import TOLERANCES, assert_close
from tests.kernels.test_memory_addressing import _chi_square_pvalue, _inputs, _oracle

SIMILARITIES = ["normalized_dot", "dot", "cosine"]
NAMES = ["log_normalizer", "kl", "log_q", "log_prior"]


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _detached(tensors):
    return tuple(None if t is None else t.detach() for t in tensors)


def _check(q, k, pq, similarity, *, chunk, num_samples=3, seed=0, tol=None):
    """Run the streaming implementation; compare every output and gradient with the float64 oracle."""
    atol, rtol = tol or TOLERANCES[q.dtype]
    out = memory_addressing_stream(q, k, prior_query=pq, num_samples=num_samples, similarity=similarity,
                                   generator=torch.Generator().manual_seed(seed), chunk_size=chunk)
    M = k.shape[-2]
    assert out.addresses.dtype == torch.int64 and out.addresses.shape == (*q.shape[:-1], num_samples)
    assert int(out.addresses.min()) >= 0 and int(out.addresses.max()) < M
    expected = _oracle(q, k, pq, similarity, out.addresses)
    for name in NAMES:
        assert_close(getattr(out, name), expected[name], atol=atol, rtol=rtol, name=name)
    ups = {n: torch.randn(getattr(out, n).shape, generator=torch.Generator().manual_seed(seed + 1 + i), dtype=torch.float64)
           for i, n in enumerate(NAMES)}
    inputs = [t for t in (q, k, pq) if t is not None]
    grads = torch.autograd.grad(sum((getattr(out, n).double() * ups[n]).sum() for n in NAMES), inputs, allow_unused=True)
    grads_ref = torch.autograd.grad(sum((expected[n] * ups[n]).sum() for n in NAMES), inputs, allow_unused=True)
    for name, g, g_ref in zip(["query", "keys", "prior_query"], grads, grads_ref):
        assert g is not None, f"no gradient for {name}"
        assert g.dtype == q.dtype
        assert_close(g, g_ref, atol=atol, rtol=rtol, name=f"d{name}")
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("prior", [None, "shared"])
@pytest.mark.parametrize("B,M,d,chunk", [(3, 1, 5, 4), (5, 7, 33, 3), (5, 130, 5, 16), (4, 130, 9, 4096)])
def test_matches_reference(dtype, similarity, prior, B, M, d, chunk):
    seed = zlib.crc32(repr(("stream", dtype, similarity, prior, B, M, d, chunk)).encode()) % 10_000
    q, k, pq = _inputs(seed, B, M, d, dtype, prior=prior, device="cpu")
    _check(q, k, pq, similarity, chunk=chunk, seed=seed)


@pytest.mark.parametrize("prior", [None, "shared", "per_episode"])
def test_grouped_episodes(prior):
    """[G, B, d] queries against per-episode memories [G, M, d]; episodes independent."""
    q, k, pq = _inputs(11, 3, 130, 33, torch.float64, G=3, prior=prior, device="cpu")
    out = _check(q, k, pq, "normalized_dot", chunk=16, seed=11)
    alone = memory_addressing_stream(q[1], k[1], prior_query=None if pq is None else (pq if pq.dim() == 1 else pq[1]),
                                     chunk_size=16)
    assert_close(alone.log_normalizer, out.log_normalizer[1], atol=1e-12, rtol=1e-12, name="lse[g=1]")


def test_statistics_do_not_depend_on_the_chunk_size():
    q, k, pq = _detached(_inputs(12, 6, 301, 8, torch.float64, prior="shared", device="cpu"))
    outs = [memory_addressing_stream(q, k, prior_query=pq, chunk_size=c) for c in (1, 7, 64, 301, 4096)]
    for o in outs[1:]:
        assert_close(o.log_normalizer, outs[0].log_normalizer, atol=1e-12, rtol=1e-12, name="lse")
        assert_close(o.kl, outs[0].kl, atol=1e-12, rtol=1e-12, name="kl")


def test_one_chunk_draws_the_addresses_of_the_dense_reference():
    """M ≤ chunk_size: only u is drawn, as the reference draws it, so the same generator gives the same addresses."""
    q, k, pq = _detached(_inputs(13, 8, 200, 16, torch.float64, prior="shared", device="cpu"))
    ref = memory_addressing_reference(q, k, prior_query=pq, num_samples=50, generator=torch.Generator().manual_seed(5))
    out = memory_addressing_stream(q, k, prior_query=pq, num_samples=50, generator=torch.Generator().manual_seed(5),
                                   chunk_size=256)
    assert torch.equal(out.addresses, ref.addresses)
    # with several chunks the scheme draws differently (v picks the chunk) but the same distribution (below)
    many = memory_addressing_stream(q, k, prior_query=pq, num_samples=50, generator=torch.Generator().manual_seed(5),
                                    chunk_size=16)
    assert not torch.equal(many.addresses, ref.addresses)


@pytest.mark.parametrize("M,chunk", [(7, 3), (130, 16), (130, 4096)])
def test_samples_follow_posterior(M, chunk):
    """Chi-square goodness of fit of 20,000 samples per row against softmax_a S (false failure ~1e-6)."""
    B, K = 3, 20_000
    q, k, _ = _detached(_inputs(51 + M, B, M, 33, torch.float32, device="cpu"))
    out = memory_addressing_stream(q, k, num_samples=K, generator=torch.Generator().manual_seed(51 + M), chunk_size=chunk)
    probs = memory_log_softmax(q.double(), k.double()).exp()  # [B, M]
    counts = torch.stack([torch.bincount(out.addresses[b], minlength=M) for b in range(B)])
    p_value = _chi_square_pvalue(counts, probs)
    assert p_value > 1e-6, f"samples do not follow q(a|x): chi-square p = {p_value:.3g}"
    if M == 130:  # a sampler that ignored the logits would fail
        assert _chi_square_pvalue(counts, torch.full_like(probs, 1.0 / M)) < 1e-6


def test_chunk_choice_follows_chunk_masses():
    """The first level alone: chunks drawn with P(c) = Z_c / Z, including a chunk of zero mass never drawn."""
    log_z = torch.tensor([0.0, math.log(3.0), float("-inf"), math.log(6.0)], dtype=torch.float64)  # masses 1, 3, 0, 6
    max_ = log_z.view(1, 4, 1).clone()
    sumexp = torch.ones(1, 4, 1, dtype=torch.float64)
    max_[0, 2, 0], sumexp[0, 2, 0] = float("-inf"), 0.0
    v = torch.rand(1, 1, 50_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    c = choose_chunks(max_, sumexp, v, 50_000)[0, 0]
    counts = torch.bincount(c, minlength=4)
    assert counts[2] == 0
    p_value = _chi_square_pvalue(counts.unsqueeze(0), torch.tensor([[0.1, 0.3, 0.0, 0.6]]))
    assert p_value > 1e-6, (counts, p_value)


def test_sampling_is_reproducible_from_generator():
    q, k, _ = _detached(_inputs(61, 5, 130, 5, torch.float32, device="cpu"))
    a = [memory_addressing_stream(q, k, num_samples=50, generator=torch.Generator().manual_seed(s), chunk_size=16).addresses
         for s in (7, 7, 8)]
    assert torch.equal(a[0], a[1]) and not torch.equal(a[0], a[2])


@pytest.mark.parametrize("scale", [1e3, 1e-6])
def test_extreme_logits(scale):
    """q(a|x) one-hot (logits ~1e3) and uniform (logits ~1e-6), over 9 chunks."""
    q, k, pq = _inputs(31, 5, 130, 33, torch.float32, prior="shared", scale=scale, device="cpu")
    tol = (2e-3, 1e-3) if scale > 1 else TOLERANCES[torch.float32]  # |S| ~ 3e3: one fp32 ulp is 2.4e-4
    out = _check(q, k, pq, "normalized_dot", chunk=16, tol=tol, seed=31)
    assert torch.isfinite(out.kl).all() and (out.kl > -tol[0]).all()


@pytest.mark.parametrize("similarity", ["normalized_dot", "cosine"])
def test_zero_norm_keys(similarity):
    """||e_a|| clamped below by NORM_EPS: S = 0 at a zero key, gradients finite and as the reference's."""
    q, k, pq = _inputs(41, 5, 7, 33, torch.float64, prior="shared", device="cpu")
    with torch.no_grad():
        k[2].zero_()
        k[5].zero_()
    _check(q, k, pq, similarity, chunk=3, seed=41)
    out = memory_addressing_stream(q, k, prior_query=pq, similarity=similarity, chunk_size=3)
    g = torch.autograd.grad(out.kl.sum() + out.log_normalizer.sum(), (q, k, pq))
    assert all(torch.isfinite(t).all() for t in g)


def test_float16_keys_with_float32_queries():
    """A memory store's float16 keys against float32 queries: computed in float32, as the float64 oracle of those keys."""
    q, k, pq = _detached(_inputs(43, 6, 300, 16, torch.float32, prior="shared", device="cpu"))
    k16 = k.half()
    out = memory_addressing_stream(q, k16, prior_query=pq, num_samples=4, chunk_size=64)
    assert out.kl.dtype == torch.float32
    exp = _oracle(q, k16.float(), pq, "normalized_dot", out.addresses)
    for name in NAMES:
        assert_close(getattr(out, name), exp[name], atol=1e-5, rtol=1e-4, name=name)


def test_partials_of_key_ranges_concatenate():
    """Partials of consecutive ranges, concatenated, merge to the whole memory's: what shards return."""
    q, k, _ = _detached(_inputs(44, 4, 100, 8, torch.float64, device="cpu"))
    whole = stream_partials(q[None], k[None], None, scale=True, chunk=16)
    a = stream_partials(q[None], k[None, :48], None, scale=True, chunk=16)
    b = stream_partials(q[None], k[None, 48:], None, scale=True, chunk=16, offset=48)
    for x, y in zip(merge_partials(whole.max, whole.sumexp, whole.kl_sum, 100),
                    merge_partials(torch.cat([a.max, b.max], 1), torch.cat([a.sumexp, b.sumexp], 1),
                                   torch.cat([a.kl_sum, b.kl_sum], 1), 100)):
        assert torch.equal(x, y)
    assert torch.equal(torch.cat([a.argmax, b.argmax], 1), whole.argmax)


# --- invalid rows: the semantics of memory_addressing (its module docstring) ---------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("prior", [None, "shared"])
def test_nan_and_inf_queries_give_invalid_rows(similarity, prior):
    q, k, pq = _inputs(17, 6, 40, 5, torch.float64, prior=prior, device="cpu")
    with torch.no_grad():
        q[1, 2] = float("nan")
        q[3, 0] = float("inf")
        q[4] = float("nan")
    out = memory_addressing_stream(q, k, prior_query=pq, num_samples=3, similarity=similarity, chunk_size=16,
                                   generator=torch.Generator().manual_seed(0))
    invalid = torch.tensor([False, True, False, True, True, False])
    assert torch.equal(out.addresses[invalid], torch.full((3, 3), -1))
    assert bool((out.addresses[~invalid] >= 0).all())
    for name in NAMES:
        t = getattr(out, name)
        assert torch.isnan(t[invalid]).all() and not torch.isnan(t[~invalid]).any(), name
    expected = _oracle(q, k, pq, similarity, out.addresses.clamp_min(0))
    for name in NAMES:
        assert_close(getattr(out, name)[~invalid], expected[name][~invalid], atol=1e-10, rtol=1e-9, name=name)
    # NaN gradients for the invalid rows' queries and every key, under any upstream gradient (0 included)
    dq, dk = torch.autograd.grad(out.log_normalizer.nan_to_num().sum() * 0 + (out.log_normalizer * 0).sum(), (q, k))
    assert torch.isnan(dq[invalid]).all() and not torch.isnan(dq[~invalid]).any()
    assert torch.isnan(dk).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("G", [None, 2])
def test_nan_key_invalidates_every_row(G):
    q, k, pq = _inputs(7, 3, 20, 5, torch.float64, G=G, prior="shared" if G is None else "per_episode", device="cpu")
    with torch.no_grad():
        if G is None:
            k[4, 1] = float("nan")
        else:
            k[0, 4, 1] = float("nan")  # episode 0 only
    out = memory_addressing_stream(q, k, prior_query=pq, chunk_size=8)
    invalid = out.addresses[..., 0] < 0
    if G is None:
        assert invalid.all() and torch.isnan(out.kl).all()
    else:
        assert invalid[0].all() and not invalid[1].any()
        assert torch.isnan(out.log_normalizer[0]).all() and torch.isfinite(out.log_normalizer[1]).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_minus_inf_logits_in_a_valid_row():
    """S = −inf for some keys, and one whole chunk of them: q = 0 there, never sampled, adds 0 to the KL."""
    q, k, _ = _inputs(9, 4, 40, 3, torch.float64, device="cpu")
    with torch.no_grad():
        q.abs_()
        k[[3, 17, 30], 0] = float("-inf")
        k[[3, 17, 30], 1:] = 1.0
        k[:16, 0] = float("-inf")  # chunk 0 (16 entries) has no finite S
    out = memory_addressing_stream(q, k, num_samples=200, similarity="dot", chunk_size=16,
                                   generator=torch.Generator().manual_seed(0))
    s = similarity_logits(q.detach()[None], k.detach()[None], "dot")[0]
    lq = torch.log_softmax(s, -1)
    p = lq.exp()
    assert_close(out.log_normalizer, torch.logsumexp(s, -1), atol=1e-10, rtol=1e-9, name="lse")
    kl = (p * torch.where(p > 0, lq + math.log(40), torch.zeros_like(lq))).sum(-1)
    assert_close(out.kl, kl, atol=1e-10, rtol=1e-9, name="kl with 0 log 0 = 0")
    bad = torch.zeros(40, dtype=torch.bool)
    bad[:16] = True
    bad[[17, 30]] = True
    assert not bad[out.addresses].any()
    dk = torch.autograd.grad(out.kl.sum() + out.log_normalizer.sum(), k)[0]
    assert torch.isfinite(dk).all()


def test_invalid_prior_gives_nan_log_prior_and_kl_only():
    q, k, pq = _inputs(13, 4, 20, 5, torch.float64, prior="shared", device="cpu")
    with torch.no_grad():
        pq[0] = float("nan")
    out = memory_addressing_stream(q, k, prior_query=pq, num_samples=3, chunk_size=8,
                                   generator=torch.Generator().manual_seed(1))
    assert bool((out.addresses >= 0).all())
    assert torch.isnan(out.log_prior).all() and torch.isnan(out.kl).all()
    exp = _oracle(q, k, None, "normalized_dot", out.addresses)
    assert_close(out.log_q, exp["log_q"], atol=1e-10, rtol=1e-9, name="log_q")
    dq, dk = torch.autograd.grad(out.log_q.sum() + out.log_normalizer.sum(), (q, k))
    dq_ref, dk_ref = torch.autograd.grad(exp["log_q"].sum() + exp["log_normalizer"].sum(), (q, k))
    assert_close(dq, dq_ref, atol=1e-10, rtol=1e-9, name="dq")
    assert_close(dk, dk_ref, atol=1e-10, rtol=1e-9, name="dk")


def test_double_backward_is_refused():
    q, k, _ = _inputs(101, 3, 7, 5, torch.float64, device="cpu")
    out = memory_addressing_stream(q, k)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.kl.sum(), q, create_graph=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"chunk_size": 0}, r"chunk_size must be an int >= 1, got 0"),
    ({"chunk_size": 2.5}, r"chunk_size must be an int >= 1, got 2.5"),
    ({"num_samples": 0}, r"num_samples must be an int >= 1"),
    ({"similarity": "l2"}, r"similarity='l2' is not one of"),
])
def test_invalid_arguments_raise(kwargs, match):
    q, k, _ = _detached(_inputs(3, 3, 7, 5, torch.float32, device="cpu"))
    with pytest.raises(ValueError, match=match):
        memory_addressing_stream(q, k, **kwargs)


# --- memory -------------------------------------------------------------------------------------


def test_peak_memory_is_a_small_fraction_of_the_dense_reference():
    """B = 32, M = 800,000: the dense reference holds at least a float64 [B, M] CDF and float64 probabilities
    (2 × 205 MB) besides float32 [B, M] logits, log q, q and KL terms (4 × 102 MB): > 800 MB. Streaming adds
    a few [B, chunk] tensors and the [S, B, K] partials: measured here below 1/16 of the CDF alone (~6 MB
    on the dev machine; the first call in a process adds ~11 MB of allocator and thread-pool set-up, so a
    smaller call of the same B runs first)."""
    if not reset_peak():
        pytest.skip("no /proc/self/clear_refs: the RSS high-water mark cannot be reset here")
    B, M, d, K = 32, 800_000, 16, 4
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, d, generator=gen)
    k = torch.randn(M, d, generator=gen)
    with torch.no_grad():
        memory_addressing_stream(q, k[:3 * DEFAULT_CHUNK], num_samples=K)  # warm up
        with PeakMemory() as peak:
            out = memory_addressing_stream(q, k, num_samples=K, generator=torch.Generator().manual_seed(1))
    dense_cdf = B * M * 8
    assert peak.rss_extra_bytes is not None
    assert peak.rss_extra_bytes < dense_cdf / 16, (peak.rss_extra_bytes, dense_cdf)
    # and it computed the right thing: lse of a few rows against the dense logits
    s = similarity_logits(q[None, :3], k[None], "normalized_dot")[0]  # [3, M]
    assert_close(out.log_normalizer[:3], torch.logsumexp(s.double(), -1), atol=1e-4, rtol=1e-5, name="lse")


# --- dispatch: memory_addressing under "auto" streams large memories ---------------------------


def _counted(monkeypatch):
    """Count the calls of the streaming and the dense implementations behind ``memory_addressing``."""
    # the modules (``varmem.kernels.memory_addressing`` etc. are also names of functions in the package)
    ma = importlib.import_module("varmem.kernels.memory_addressing")
    mas = importlib.import_module("varmem.kernels.memory_addressing_stream")

    calls = {"stream": 0, "dense": 0}
    stream, dense = mas.memory_addressing_stream, ma.memory_addressing_reference

    def counted_stream(*args, **kwargs):
        calls["stream"] += 1
        return stream(*args, **kwargs)

    def counted_dense(*args, **kwargs):
        calls["dense"] += 1
        return dense(*args, **kwargs)

    monkeypatch.setattr(mas, "memory_addressing_stream", counted_stream)
    monkeypatch.setattr(ma, "memory_addressing_reference", counted_dense)
    monkeypatch.delenv("VARMEM_KERNELS", raising=False)
    return calls


@pytest.mark.parametrize("prior", [None, "shared"])
@pytest.mark.parametrize("offset,path", [(0, "stream"), (-1, "dense"), (DEFAULT_CHUNK, "stream")])
def test_auto_dispatch_streams_from_the_threshold(monkeypatch, prior, offset, path):
    """Under ``auto`` on CPU, M >= STREAM_MIN_ENTRIES goes to the streaming implementation and a smaller
    memory to the dense reference; either way the outputs and the query gradient match the float64 oracle."""
    from varmem.kernels import memory_addressing
    from varmem.kernels.memory_addressing_stream import STREAM_MIN_ENTRIES

    calls = _counted(monkeypatch)
    B, M, d = 3, STREAM_MIN_ENTRIES + offset, 8
    q, k, pq = _inputs(M + (prior is not None), B, M, d, torch.float32, prior=prior, device="cpu")
    out = memory_addressing(q, k, prior_query=pq, num_samples=4, generator=torch.Generator().manual_seed(0))
    assert calls == {"stream": int(path == "stream"), "dense": int(path == "dense")}, calls
    expected = _oracle(q, k, pq, "normalized_dot", out.addresses)
    atol, rtol = TOLERANCES[torch.float32]
    for name in NAMES:
        assert_close(getattr(out, name), expected[name], atol=atol, rtol=rtol, name=name)
    (g,) = torch.autograd.grad((out.log_normalizer + out.kl).sum(), [q])
    (g_ref,) = torch.autograd.grad((expected["log_normalizer"] + expected["kl"]).sum(), [q])
    assert_close(g, g_ref, atol=atol, rtol=rtol, name="dquery")


def test_auto_streaming_equals_the_stream_function(monkeypatch):
    """The dispatched call passes every argument through: same addresses and outputs as calling
    memory_addressing_stream directly with the same generator seed (grouped episodes, dot similarity)."""
    from varmem.kernels import memory_addressing
    from varmem.kernels.memory_addressing_stream import STREAM_MIN_ENTRIES

    calls = _counted(monkeypatch)
    q, k, pq = _inputs(7, 2, STREAM_MIN_ENTRIES + 5, 4, torch.float64, G=2, prior="per_episode", device="cpu")
    kwargs = dict(prior_query=pq, num_samples=5, similarity="dot")
    out = memory_addressing(q, k, generator=torch.Generator().manual_seed(3), **kwargs)
    direct = memory_addressing_stream(q, k, generator=torch.Generator().manual_seed(3), **kwargs)
    assert calls["stream"] == 1 and calls["dense"] == 0
    assert torch.equal(out.addresses, direct.addresses)
    for name in NAMES:
        assert torch.equal(getattr(out, name), getattr(direct, name)), name


@pytest.mark.parametrize("force", ["context", "env"])
def test_forced_reference_keeps_the_dense_oracle(monkeypatch, force):
    """``use_backend("reference")`` (or VARMEM_KERNELS=reference) gets the dense reference at any M;
    ``use_backend("auto")`` streams again inside an outer ``reference`` setting."""
    from varmem.kernels import memory_addressing, use_backend
    from varmem.kernels.memory_addressing_stream import STREAM_MIN_ENTRIES

    calls = _counted(monkeypatch)
    q, k, _ = _inputs(11, 2, STREAM_MIN_ENTRIES * 2, 4, torch.float32, device="cpu")
    gen = torch.Generator().manual_seed(0)
    if force == "env":
        monkeypatch.setenv("VARMEM_KERNELS", "reference")
        memory_addressing(q, k, generator=gen)
    else:
        with use_backend("reference"):
            memory_addressing(q, k, generator=gen)
    assert calls == {"stream": 0, "dense": 1}, calls
    with use_backend("auto"):
        memory_addressing(q, k, generator=gen)
    assert calls == {"stream": 1, "dense": 1}, calls
