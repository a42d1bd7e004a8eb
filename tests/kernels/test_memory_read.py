"""varmem.kernels.memory_read: the Triton soft read against the float64 reference, output and gradients."""
from __future__ import annotations

import math
import zlib

import pytest
import torch

import varmem.kernels.dispatch as dispatch
from varmem.kernels import BackendUnavailable, memory_read, memory_read_reference, use_backend
from varmem.kernels.memory_addressing import launch_config
from tests.assertions import TOLERANCES, assert_close

DTYPES = [torch.float32, torch.float64]
SIMILARITIES = ["normalized_dot", "dot", "cosine"]
# (dtype, atol, rtol) against the float64 oracle
TOL = {torch.float64: TOLERANCES[torch.float64], torch.float32: TOLERANCES[torch.float32],
       torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(seed, B, M, d, dv, dtype, *, G=None, scale=1.0, device=None):
    gen = torch.Generator().manual_seed(seed)
    lead = (G,) if G else ()
    q = torch.randn(*lead, B, d, generator=gen, dtype=torch.float64) * scale
    k = torch.randn(*lead, M, d, generator=gen, dtype=torch.float64) / math.sqrt(d) * 2.0
    k = k * torch.rand(*lead, M, 1, generator=gen, dtype=torch.float64).add(0.5)
    v = torch.randn(*lead, M, dv, generator=gen, dtype=torch.float64)
    dev = device or _device()
    return tuple(t.to(dev, dtype).requires_grad_(True) for t in (q, k, v))


def _check(q, k, v, similarity, *, tol=None, seed=0):
    atol, rtol = tol or TOL[q.dtype]
    with use_backend("triton"):
        out = memory_read(q, k, v, similarity=similarity)
    ref = memory_read_reference(q.double(), k.double(), v.double(), similarity=similarity)
    assert out.dtype == v.dtype and out.shape == (*q.shape[:-1], v.shape[-1])
    assert_close(out, ref, atol=atol, rtol=rtol, name="out")
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(q.device)
    grads = torch.autograd.grad((out.double() * up).sum(), (q, k, v))
    grads_ref = torch.autograd.grad((ref * up).sum(), (q, k, v))
    for name, g, g_ref in zip(["query", "keys", "values"], grads, grads_ref):
        assert g.dtype == q.dtype
        assert_close(g, g_ref, atol=atol, rtol=rtol, name=f"d{name}")
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("B,M,d,dv", [(3, 1, 5, 3), (5, 7, 33, 17), (5, 130, 5, 33)])
def test_matches_reference(dtype, similarity, B, M, d, dv):
    seed = zlib.crc32(repr((dtype, similarity, B, M, d, dv)).encode()) % 10_000
    _check(*_inputs(seed, B, M, d, dv, dtype), similarity, seed=seed)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_episodes(dtype):
    q, k, v = _inputs(7, 3, 130, 33, 5, dtype, G=3)
    out = _check(q, k, v, "normalized_dot", seed=7)
    with use_backend("triton"):
        alone = memory_read(q[2], k[2], v[2])
    assert_close(alone, out[2], atol=TOL[dtype][0], rtol=TOL[dtype][1], name="out[g=2] alone")


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_splits_and_row_blocks(dtype):
    """Small tiles: 9 splits of M in the forward and the dq backward, 3 query-row blocks, 3 splits
    of B in the dkeys/dvalues backward."""
    with launch_config(block_b=16, block_m=16, bwd_split_size=16, row_split_size=16):
        _check(*_inputs(17, 37, 130, 33, 20, dtype), "normalized_dot", seed=17)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [1e3, 1e-6])
def test_extreme_logits(dtype, scale):
    """Queries scaled by 1e3 (one-hot weights, logits ~3e3) and 1e-6 (uniform weights: the mean of v)."""
    q, k, v = _inputs(27, 5, 130, 33, 9, dtype, scale=scale)
    atol, rtol = TOL[dtype]
    if dtype == torch.float32 and scale > 1:
        atol, rtol = 2e-3, 1e-3  # one fp32 ulp of |S| ≈ 3e3 is 2.4e-4: exp(S − lse) carries ~4e-4
    with launch_config(block_m=16, bwd_split_size=32):
        out = _check(q, k, v, "normalized_dot", tol=(atol, rtol), seed=27)
    if scale < 1:
        assert_close(out, v.detach().double().mean(0).expand_as(out), atol=1e-5, rtol=0, name="uniform read = mean(v)")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", ["normalized_dot", "cosine"])
def test_zero_norm_keys(dtype, similarity):
    """Zero keys get S = 0 (norm clamped at NORM_EPS) and finite gradients, in both backends."""
    q, k, v = _inputs(37, 5, 7, 33, 4, dtype)
    with torch.no_grad():
        k[0].zero_()
        k[4].zero_()
        if similarity == "cosine":
            q[3].zero_()
    _check(q, k, v, similarity, seed=37)
    with use_backend("triton"):
        out = memory_read(q, k, v, similarity=similarity)
    g = torch.autograd.grad(out.sum(), (q, k, v))
    assert all(torch.isfinite(t).all() for t in g)
    # all keys zero: S = 0 everywhere, the read is the mean of v
    kz = torch.zeros_like(k)
    with use_backend("triton"):
        flat = memory_read(q, kz, v, similarity=similarity)
    assert_close(flat, v.detach().double().mean(0).expand_as(flat), atol=1e-5, rtol=0, name="all-zero keys")


def test_reference_matches_formula():
    q, k, v = (t.detach() for t in _inputs(47, 4, 9, 6, 3, torch.float64, device="cpu"))
    out = torch.zeros(4, 3, dtype=torch.float64)
    for b in range(4):
        s = torch.stack([(q[b] * k[a]).sum() / k[a].norm() for a in range(9)])  # VMA eq. 5
        w = s.exp() / s.exp().sum()
        out[b] = (w[:, None] * v).sum(0)
    assert_close(memory_read_reference(q, k, v), out, atol=1e-12, rtol=1e-12, name="reference")


def test_double_backward_is_refused():
    q, k, v = _inputs(57, 3, 7, 5, 4, torch.float64)
    with use_backend("triton"):
        out = memory_read(q, k, v)
    with pytest.raises(RuntimeError, match="does not support double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


def test_forced_triton_that_cannot_serve_lists_both_backends(monkeypatch):
    q, k, v = _inputs(67, 3, 7, 5, 4, torch.float32, device="cpu")
    monkeypatch.setattr(dispatch, "interpret_mode", lambda: False)
    with use_backend("triton"), pytest.raises(BackendUnavailable) as err:
        memory_read(q, k, v)
    msg = str(err.value)
    assert "memory_read" in msg and "triton: tensors on cpu" in msg and "reference:" in msg


def test_mixed_dtypes_refused_by_triton():
    q, k, v = _inputs(77, 3, 7, 5, 4, torch.float32)
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="mixed dtypes"):
        memory_read(q, k, v.double())


@pytest.mark.parametrize(
    "shapes,match",
    [
        (((3, 5), (7, 5), (6, 2)), r"values must be \[M, dv\] matching keys \(7, 5\)"),
        (((3, 5), (7, 5), (7,)), r"values must be \[M, dv\]"),
        (((2, 3, 5), (2, 7, 5), (2, 7, 0)), "dv=0"),
        (((3, 5), (7, 4), (7, 2)), "d=4 but query"),
        (((3, 5), (0, 5), (0, 2)), "M=0"),
    ],
)
def test_invalid_inputs_raise_value_error(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        memory_read(q, k, v)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_gpu(dtype):
    _check(*_inputs(87, 37, 1000, 64, 64, dtype, device="cuda"), "normalized_dot", seed=87)


@pytest.mark.gpu
def test_large_gpu():
    _check(*_inputs(97, 256, 20_000, 128, 128, torch.float32, device="cuda"), "normalized_dot", seed=97)


# ----------------------------------------------------------------------------------------------
# Dtypes and invalid rows (module docstring)


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("arg", ["query", "keys", "values"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_floating_inputs_are_refused(backend, arg, dtype):
    """Integer tensors were accepted and the read truncated: every argument must be floating point."""
    q, k, v = (t.detach() for t in _inputs(3, 3, 7, 5, 4, torch.float32))
    inputs = {"query": q, "keys": k, "values": v}
    inputs[arg] = inputs[arg].to(dtype)
    with use_backend(backend), pytest.raises(ValueError, match=f"memory_read: {arg} must be floating point, got dtype {dtype}"):
        memory_read(inputs["query"], inputs["keys"], inputs["values"])


def test_integer_read_is_refused_not_truncated():
    q, k, v = (torch.ones(2, 3, dtype=torch.int64), torch.ones(4, 3, dtype=torch.int64), torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="memory_read: query must be floating point, got dtype torch.int64"):
        memory_read(q, k, v)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_invalid_rows_read_nan(backend, dtype, similarity):
    """Rows without a finite log-normalizer (NaN or inf query) read NaN; their gradients are NaN for
    that query, every key and every value; valid rows match the float64 oracle."""
    seed = zlib.crc32(repr(("invalid", dtype, similarity)).encode()) % 10_000
    q, k, v = _inputs(seed, 6, 40, 5, 3, dtype)
    with torch.no_grad():
        q[1, 2] = float("nan")
        q[3, 0] = float("inf")
    invalid = torch.tensor([False, True, False, True, False, False], device=q.device)
    atol, rtol = TOL[dtype]
    with use_backend(backend), launch_config(block_m=16, bwd_split_size=16, row_split_size=16):
        out = memory_read(q, k, v, similarity=similarity)
    ref = memory_read_reference(q.double(), k.double(), v.double(), similarity=similarity)
    assert torch.isnan(out[invalid]).all() and torch.isnan(ref[invalid]).all()
    assert_close(out[~invalid], ref[~invalid], atol=atol, rtol=rtol, name="valid rows")
    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(q.device)
    up[invalid] = 0.0  # a zero upstream gradient does not mask NaN
    dq, dk, dv = torch.autograd.grad((out.double() * up).sum(), (q, k, v))
    assert torch.isnan(dq[invalid]).all() and torch.isnan(dk).all() and torch.isnan(dv).all()
    (dq_ref,) = torch.autograd.grad((ref[~invalid] * up[~invalid]).sum(), q)
    assert_close(dq[~invalid], dq_ref[~invalid], atol=atol, rtol=rtol, name="dquery (valid rows)")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend", ["triton", "reference"])
def test_minus_inf_logits(backend):
    """"dot" with −inf key components: S = −inf entries get weight 0 (a whole split of them too);
    a row whose logits are all −inf is invalid (NaN)."""
    q, k, v = _inputs(19, 3, 40, 3, 4, torch.float64)
    with torch.no_grad():
        q.abs_()
        q[2, 0] = 0.0  # row 2: <q, k_a> = 0 · (−inf) = NaN at the −inf keys: invalid
        k[:16, 0] = float("-inf")
        k[:16, 1:] = 1.0
    with use_backend(backend), launch_config(block_m=16, bwd_split_size=16):
        out = memory_read(q, k, v, similarity="dot")
    w = torch.softmax(q.detach()[:2] @ k.detach()[16:].T, -1)
    assert_close(out[:2], w @ v.detach()[16:], atol=1e-12, rtol=1e-10, name="rows 0, 1")
    assert torch.isnan(out[2]).all()
    qn = -q.detach().abs() - 1.0  # all components < 0: every key with a −inf component gives +inf → invalid
    with use_backend(backend):
        assert torch.isnan(memory_read(qn, k.detach(), v.detach(), similarity="dot")).all()
        kn = k.detach().clone()
        kn[:, 0] = float("-inf")  # all logits −inf for positive queries: invalid
        assert torch.isnan(memory_read(q.detach()[:2], kn, v.detach(), similarity="dot")).all()
