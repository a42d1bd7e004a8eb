"""DRAW Gaussian attention: filterbanks against the paper's formula, kernels against float64.

The filterbank oracle is a loop-by-loop transcription of DRAW §3.2 in Python floats (1-based
i and pixel a). Read/write and all gradients (image or patch, and the five parameters) are
compared with the float64 reference, whose gradients come from autograd.
"""
from __future__ import annotations

import math

import pytest
import torch

from varmem.kernels import gaussian_filterbanks, gaussian_read, gaussian_read_reference, gaussian_write, gaussian_write_reference
from varmem.kernels.gaussian_attention import PARAM_RANGES, clamp_params
from varmem.kernels.dispatch import BackendUnavailable, use_backend
from tests.assertions import assert_close

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (dtype, atol, rtol) for values and image/patch gradients, and for parameter gradients;
# atol is relative to the largest |expected| of the tensor (sums over up to ~1000 terms).
TOL = {torch.float64: (1e-12, 1e-10), torch.float32: (1e-5, 1e-4), torch.float16: (2e-3, 5e-3), torch.bfloat16: (2e-2, 2e-2)}
PARAM_TOL = {torch.float64: (1e-11, 1e-9), torch.float32: (1e-4, 1e-3), torch.float16: (1e-2, 1e-2), torch.bfloat16: (5e-2, 5e-2)}
# (B, C, H, W, N): non-square images, C = 1 and 3, N = 2, 5, 12, 32
CASES = [(3, 1, 13, 17, 2), (3, 3, 13, 17, 5), (3, 1, 17, 13, 12), (2, 3, 13, 17, 32), (2, 1, 28, 28, 12)]


def paper_filterbank(gx_t, gy_t, log_s2, log_dt, N, H, W):
    """DRAW eqs. 19-26 transcribed literally in float64: pixels a = 1..W, b = 1..H, i = 1..N."""
    gx = (W + 1) / 2 * (gx_t + 1)
    gy = (H + 1) / 2 * (gy_t + 1)
    delta = (max(H, W) - 1) / (N - 1) * math.exp(log_dt)
    var = math.exp(log_s2)

    def bank(g, A):
        F = torch.zeros(N, A, dtype=torch.float64)
        for i in range(1, N + 1):
            mu = g + (i - N / 2 - 0.5) * delta
            row = [math.exp(-((a - mu) ** 2) / (2 * var)) for a in range(1, A + 1)]
            Z = max(sum(row), 1e-8)
            for a in range(1, A + 1):
                F[i - 1, a - 1] = row[a - 1] / Z
        return F

    return bank(gx, W), bank(gy, H)


def random_params(B: int, dtype: torch.dtype) -> torch.Tensor:
    p = torch.empty(B, 5, dtype=torch.float64)
    p[:, 0:2].uniform_(-0.7, 0.7)  # g̃x, g̃y
    p[:, 2].uniform_(-1.0, 1.5)  # log σ²
    p[:, 3].uniform_(-0.7, 0.3)  # log δ̃
    p[:, 4].uniform_(-0.5, 0.5)  # log γ
    return p.to(dtype=dtype, device=DEVICE)


def check(actual, expected, tol, name):
    atol, rtol = tol
    scale = max(1.0, expected.detach().abs().max().item())
    assert_close(actual, expected, atol=atol * scale, rtol=rtol, name=name)


def read_case(x, params, N, backend):
    """Output and gradients of gaussian_read (backend) and of the float64 reference."""
    x = x.detach().requires_grad_()
    params = params.detach().requires_grad_()
    with use_backend(backend):
        y = gaussian_read(x, params, N)
    g = torch.randn(y.shape, dtype=torch.float64, device=DEVICE).to(y.dtype)
    dx, dp = torch.autograd.grad(y, (x, params), g)
    x64 = x.detach().double().requires_grad_()
    p64 = params.detach().double().requires_grad_()
    y64 = gaussian_read_reference(x64, p64, N)
    dx64, dp64 = torch.autograd.grad(y64, (x64, p64), g.double())
    return (y, dx, dp), (y64, dx64, dp64)


def write_case(patch, params, H, W, backend):
    patch = patch.detach().requires_grad_()
    params = params.detach().requires_grad_()
    with use_backend(backend):
        o = gaussian_write(patch, params, H, W)
    g = torch.randn(o.shape, dtype=torch.float64, device=DEVICE).to(o.dtype)
    dw, dp = torch.autograd.grad(o, (patch, params), g)
    w64 = patch.detach().double().requires_grad_()
    p64 = params.detach().double().requires_grad_()
    o64 = gaussian_write_reference(w64, p64, H, W)
    dw64, dp64 = torch.autograd.grad(o64, (w64, p64), g.double())
    return (o, dw, dp), (o64, dw64, dp64)


def assert_case(got, want, dtype, names):
    for name, a, e in zip(names, got[:2], want[:2]):
        check(a, e, TOL[dtype], name)
    for j, pname in enumerate(("g̃x", "g̃y", "log σ²", "log δ̃", "log γ")):
        check(got[2][:, j], want[2][:, j], PARAM_TOL[dtype], f"d/d {pname}")


@pytest.mark.parametrize("H,W,N", [(13, 17, 2), (17, 13, 5), (28, 28, 12), (5, 9, 32)])
def test_filterbank_matches_the_paper(H, W, N):
    params = random_params(3, torch.float64)
    F_x, F_y, gamma = gaussian_filterbanks(params, N, H, W)
    assert F_x.shape == (3, N, W) and F_y.shape == (3, N, H) and gamma.shape == (3,)
    for b in range(3):
        gx_t, gy_t, log_s2, log_dt, log_g = params[b].tolist()
        Fx, Fy = paper_filterbank(gx_t, gy_t, log_s2, log_dt, N, H, W)
        assert_close(F_x[b], Fx, atol=1e-14, rtol=1e-12, name=f"F_x[{b}]")
        assert_close(F_y[b], Fy, atol=1e-14, rtol=1e-12, name=f"F_y[{b}]")
        assert gamma[b].item() == pytest.approx(math.exp(log_g), rel=1e-15)


def test_filter_centres_are_one_based():
    """W = H = 5, N = 3, g̃ = 0, δ̃ = 1: δ = 2 and the centres are pixels 1, 3, 5 (columns 0, 2, 4).

    A 0-based pixel grid would put them on columns 1, 3, 5; a 0-based i would shift them by δ.
    """
    params = torch.tensor([[0.0, 0.0, math.log(1e-4), 0.0, 0.0]], dtype=torch.float64)
    F_x, F_y, _ = gaussian_filterbanks(params, 3, 5, 5)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    expected[0, 0] = expected[1, 2] = expected[2, 4] = 1.0
    assert_close(F_x[0], expected, atol=1e-12, rtol=0, name="F_x")
    assert_close(F_y[0], expected, atol=1e-12, rtol=0, name="F_y")
    # The triton kernel uses the same grid: reading a one-hot image hits the same filter.
    x = torch.zeros(1, 1, 5, 5, dtype=torch.float64, device=DEVICE)
    x[0, 0, 2, 4] = 1.0  # row pixel 3, column pixel 5
    with use_backend("triton"):
        y = gaussian_read(x, params.to(DEVICE), 3)
    expected_y = torch.zeros(1, 1, 3, 3, dtype=torch.float64)
    expected_y[0, 0, 1, 2] = 1.0
    assert_close(y, expected_y, atol=1e-12, rtol=0, name="read of a one-hot image")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,H,W,N", CASES)
def test_read_matches_reference(B, C, H, W, N, dtype):
    x = torch.randn(B, C, H, W, dtype=dtype, device=DEVICE)
    got, want = read_case(x, random_params(B, dtype), N, "triton")
    assert got[0].shape == (B, C, N, N)
    assert_case(got, want, dtype, ("read", "d/dx"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("B,C,H,W,N", CASES)
def test_write_matches_reference(B, C, H, W, N, dtype):
    patch = torch.randn(B, C, N, N, dtype=dtype, device=DEVICE)
    got, want = write_case(patch, random_params(B, dtype), H, W, "triton")
    assert got[0].shape == (B, C, H, W)
    assert_case(got, want, dtype, ("write", "d/dpatch"))


@pytest.mark.parametrize("op", ["read", "write"])
def test_extreme_parameters(op):
    """Grid far outside the image with tiny σ (Z < ε: no blow-up), very wide σ, large γ."""
    B, C, H, W, N = 5, 2, 13, 17, 5
    params = torch.tensor(
        [
            [6.0, -0.2, -9.0, 0.0, 0.0],  # x-centre far right, σ² = 1e-4: F_x rows sum to 0
            [1.6111, 0.0, 0.0, -5.0, 0.0],  # x-centres 6.5 px right of the image: 0 < Z ≈ 7e-10 < ε
            [0.1, 0.2, 8.0, 0.5, 3.0],  # σ² ≈ 3000: flat filters, γ ≈ 20
            [-0.9, 0.9, -3.0, -2.0, -3.0],  # near corners, narrow grid
            [0.0, 0.0, 0.0, 1.0, 0.0],  # grid wider than the image
        ],
        dtype=torch.float64,
        device=DEVICE,
    )
    if op == "read":
        got, want = read_case(torch.randn(B, C, H, W, dtype=torch.float64, device=DEVICE), params, N, "triton")
    else:
        got, want = write_case(torch.randn(B, C, N, N, dtype=torch.float64, device=DEVICE), params, H, W, "triton")
    for t in (*got, *want):
        assert torch.isfinite(t).all()
    assert_case(got, want, torch.float64, (op, "d/d input"))


def test_read_and_write_are_adjoint():
    """<read(x), w> = γ² <x, write(w)>, since read = γ F_y x F_xᵀ and write = F_yᵀ w F_x / γ."""
    B, C, H, W, N = 3, 2, 13, 17, 5
    params = random_params(B, torch.float64)
    x = torch.randn(B, C, H, W, dtype=torch.float64, device=DEVICE)
    w = torch.randn(B, C, N, N, dtype=torch.float64, device=DEVICE)
    with use_backend("triton"):
        lhs = (gaussian_read(x, params, N) * w).sum((1, 2, 3))
        rhs = (x * gaussian_write(w, params, H, W)).sum((1, 2, 3)) * torch.exp(params[:, 4]) ** 2
    assert_close(lhs, rhs, atol=1e-12, rtol=1e-10, name="adjoint")


def test_reference_backend_and_16bit_reference():
    B, C, H, W, N = 2, 3, 13, 17, 5
    params = random_params(B, torch.float64)
    x = torch.randn(B, C, H, W, dtype=torch.float64, device=DEVICE)
    got, want = read_case(x, params, N, "reference")
    assert_case(got, want, torch.float64, ("read", "d/dx"))
    # 16-bit inputs compute in float32 in the reference and come back in the input dtype.
    with use_backend("reference"):
        y = gaussian_read(x.half(), params.half(), N)
    assert y.dtype == torch.float16


def test_argument_errors():
    x = torch.randn(2, 1, 8, 8)
    p = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="N=1"):
        gaussian_read(x, p, 1)
    with pytest.raises(ValueError, match=r"params must be \[B, 5\]"):
        gaussian_read(x, torch.zeros(2, 4), 3)
    with pytest.raises(ValueError, match="B=3"):
        gaussian_read(x, torch.zeros(3, 5), 3)
    with pytest.raises(ValueError, match=r"\[B, C, N, N\]"):
        gaussian_write(torch.zeros(2, 1, 3, 4), p, 8, 8)
    with pytest.raises(ValueError, match="H=0"):
        gaussian_write(torch.zeros(2, 1, 3, 3), p, 0, 8)


def test_triton_declares_its_size_limits():
    x = torch.randn(1, 1, 200, 200, device=DEVICE)
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="tile"):
        gaussian_read(x, torch.zeros(1, 5, device=DEVICE), 4)
    x = torch.randn(1, 1, 100, 40, dtype=torch.float64, device=DEVICE)  # pads to 128×64 > 64×64
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="tile"):
        gaussian_read(x, torch.zeros(1, 5, dtype=torch.float64, device=DEVICE), 4)
    with use_backend("triton"), pytest.raises(BackendUnavailable, match="N=33"):
        gaussian_write(torch.zeros(1, 1, 33, 33, device=DEVICE), torch.zeros(1, 5, device=DEVICE), 8, 8)
    # The reference serves all of them.
    assert gaussian_read_reference(x, torch.zeros(1, 5, dtype=torch.float64, device=DEVICE), 4).shape == (1, 1, 4, 4)


def test_double_backward_is_refused():
    x = torch.randn(2, 1, 13, 17, dtype=torch.float64, device=DEVICE, requires_grad=True)
    params = random_params(2, torch.float64)
    with use_backend("triton"):
        y = gaussian_read(x, params, 4)
    v = torch.ones_like(y, requires_grad=True)
    (dx,) = torch.autograd.grad(y, x, v, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        dx.sum().backward()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("B,C,H,W,N", CASES + [(256, 1, 28, 28, 12), (8, 3, 105, 105, 12)])
def test_half_precision_gpu(B, C, H, W, N, dtype):
    x = torch.rand(B, C, H, W, device=DEVICE).to(dtype)
    params = random_params(B, dtype)
    got, want = read_case(x, params, N, "triton")
    assert_case(got, want, dtype, ("read", "d/dx"))
    patch = torch.rand(B, C, N, N, device=DEVICE).to(dtype)
    got, want = write_case(patch, params, H, W, "triton")
    assert_case(got, want, dtype, ("write", "d/dpatch"))


@pytest.mark.gpu
@pytest.mark.parametrize(
    "dtype,B,C,H,W,N",
    [
        (torch.float32, 256, 1, 28, 28, 12),
        (torch.float32, 8, 3, 105, 105, 12),
        (torch.float32, 4, 2, 128, 96, 32),  # the largest tile the Triton backend takes
        (torch.float64, 256, 1, 28, 28, 12),
        (torch.float64, 4, 2, 64, 50, 32),  # the largest float64 tile
    ],
)
def test_large_gpu(B, C, H, W, N, dtype):
    x = torch.randn(B, C, H, W, dtype=dtype, device=DEVICE)
    params = random_params(B, dtype)
    got, want = read_case(x, params, N, "triton")
    assert_case(got, want, dtype, ("read", "d/dx"))
    patch = torch.randn(B, C, N, N, dtype=dtype, device=DEVICE)
    got, want = write_case(patch, params, H, W, "triton")
    assert_case(got, want, dtype, ("write", "d/dpatch"))


# ---------------------------------------------------------------------------------------------
# Extreme parameters: clamped to PARAM_RANGES (module docstring, "Extreme parameters")
# ---------------------------------------------------------------------------------------------

EXTREMES = {  # per parameter column: values far outside, at and just inside the range
    0: [1e30, -1e30, float("inf"), float("-inf"), 1e13, -1e12, 37.0],
    1: [1e30, float("-inf"), float("inf"), 1e12, -5e12, -41.0],
    2: [-1e4, 1e4, float("inf"), float("-inf"), -20.0, 20.0, -1e30, 1e30, 19.5],
    3: [-1e4, 1e4, float("inf"), float("-inf"), -20.0, 20.0, 1e30, -19.0],
    4: [-1e4, 1e4, float("inf"), float("-inf"), -20.0, 20.0, -1e30, 19.9],
}


def extreme_params(B: int, dtype, seed: int) -> torch.Tensor:
    """Fresh random in-range parameters with one or two extreme values inserted per example."""
    gen = torch.Generator().manual_seed(seed)
    p = random_params(B, torch.float64).cpu()
    for b in range(B):
        for j in torch.randperm(5, generator=gen)[: 1 + b % 2].tolist():
            vals = EXTREMES[j]
            p[b, j] = vals[int(torch.randint(len(vals), (1,), generator=gen))]
    return p.to(dtype=dtype, device=DEVICE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("seed", [0, 1])
def test_extreme_parameters_are_clamped(op, dtype, seed):
    """log σ² = -1e4 (was NaN), log γ = 1e4 (was inf), ±inf, ±1e30: outputs and every gradient
    finite, Triton == float64 reference; the same as at the clamped values, with zero gradient
    for each parameter outside its range."""
    B, C, H, W, N = 8, 2, 13, 17, 5
    params = extreme_params(B, dtype, seed=100 + seed)
    if op == "read":
        inp = torch.randn(B, C, H, W, dtype=dtype, device=DEVICE)
        got, want = read_case(inp, params, N, "triton")
    else:
        inp = torch.randn(B, C, N, N, dtype=dtype, device=DEVICE)
        got, want = write_case(inp, params, H, W, "triton")
    for t in (*got, *want):
        assert torch.isfinite(t).all(), t
    assert_case(got, want, dtype, (op, "d/d input"))
    # clamped semantics: the op at the raw params equals the op at the clamped params ...
    clamped = clamp_params(params.double()).to(dtype)
    with use_backend("triton"):
        at_raw = gaussian_read(inp, params, N) if op == "read" else gaussian_write(inp, params, H, W)
        at_clamped = gaussian_read(inp, clamped, N) if op == "read" else gaussian_write(inp, clamped, H, W)
    assert torch.equal(at_raw, at_clamped)
    # ... and parameters outside their range get gradient 0 (inside: the reference's, checked above)
    outside = torch.zeros_like(params, dtype=torch.bool)
    for j, (lo, hi) in enumerate(PARAM_RANGES):
        outside[:, j] = (params[:, j] < lo) | (params[:, j] > hi)
    assert outside.any()
    assert torch.equal(got[2][outside], torch.zeros_like(got[2][outside]))
    assert torch.equal(want[2][outside], torch.zeros_like(want[2][outside]))


def test_issue_examples_are_finite():
    """The reported inputs: log σ² = -1e4 gave NaN, log γ = 1e4 gave inf (both backends)."""
    x = torch.randn(2, 1, 8, 8, dtype=torch.float32, device=DEVICE)
    params = torch.tensor([[0, 0, -1e4, 0, 0], [0, 0, 0, 0, 1e4]], dtype=torch.float32, device=DEVICE)
    for backend in ("triton", "reference"):
        with use_backend(backend):
            assert torch.isfinite(gaussian_read(x, params, 3)).all()
            assert torch.isfinite(gaussian_write(torch.randn(2, 1, 3, 3, device=DEVICE), params, 8, 8)).all()


@pytest.mark.parametrize("backend", ["triton", "reference"])
@pytest.mark.parametrize("op", ["read", "write"])
@pytest.mark.parametrize("col", [0, 2, 4])
def test_nan_parameter_gives_nan_example(backend, op, col):
    """A NaN parameter: that example's output and all its gradients NaN; the others untouched."""
    B, C, H, W, N = 3, 2, 9, 11, 4
    params = random_params(B, torch.float64)
    params[1, col] = float("nan")
    params.requires_grad_()
    inp = torch.randn((B, C, H, W) if op == "read" else (B, C, N, N), dtype=torch.float64, device=DEVICE, requires_grad=True)
    with use_backend(backend):
        out = gaussian_read(inp, params, N) if op == "read" else gaussian_write(inp, params, H, W)
    d_inp, d_params = torch.autograd.grad(out, (inp, params), torch.randn_like(out))
    for t in (out, d_inp, d_params):
        assert torch.isnan(t[1]).all() and torch.isfinite(t[[0, 2]]).all()


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("op", ["read", "write"])
def test_non_finite_input_value_poisons_its_plane(op):
    """NaN / ±inf pixels: that (example, channel) plane non-finite, identically in both backends."""
    B, C, H, W, N = 3, 2, 9, 11, 4
    params = random_params(B, torch.float64)
    params[2, 2] = 8.0  # wide filters: F > 0 everywhere, so an inf stays inf rather than NaN
    inp = torch.randn((B, C, H, W) if op == "read" else (B, C, N, N), dtype=torch.float64, device=DEVICE)
    inp[0, 1, 2, 3] = float("nan")
    inp[1, 0, 1, 1] = float("inf")
    inp[2, 1, 0, 2] = float("-inf")
    outs = {}
    for backend in ("triton", "reference"):
        with use_backend(backend):
            outs[backend] = gaussian_read(inp, params, N) if op == "read" else gaussian_write(inp, params, H, W)
    tri, ref = outs["triton"], outs["reference"]
    assert torch.equal(torch.isnan(tri), torch.isnan(ref)) and torch.equal(torch.isposinf(tri), torch.isposinf(ref))
    assert torch.equal(torch.isneginf(tri), torch.isneginf(ref))
    bad = [(0, 1), (1, 0), (2, 1)]
    for b in range(B):
        for c in range(C):
            plane = ref[b, c]
            assert (not torch.isfinite(plane).any()) if (b, c) in bad else torch.isfinite(plane).all(), (b, c)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_non_floating_inputs_are_refused(dtype):
    x = torch.ones(2, 1, 8, 8)
    p = torch.zeros(2, 5)
    w = torch.ones(2, 1, 3, 3)
    for backend in ("triton", "reference"):
        with use_backend(backend):
            with pytest.raises(ValueError, match=f"gaussian_read: x must be floating point, got dtype {dtype}"):
                gaussian_read(x.to(dtype), p, 3)
            with pytest.raises(ValueError, match=f"gaussian_read: params must be floating point, got dtype {dtype}"):
                gaussian_read(x, p.to(dtype), 3)
            with pytest.raises(ValueError, match=f"gaussian_write: patch must be floating point, got dtype {dtype}"):
                gaussian_write(w.to(dtype), p, 8, 8)
            with pytest.raises(ValueError, match=f"gaussian_write: params must be floating point, got dtype {dtype}"):
                gaussian_write(w, p.to(dtype), 8, 8)


# The shapes the sequential model (models/families/sequential.py, configs/sequential_strokes.yaml) runs:
# 12 × 12 patches, the 4-channel hidden canvas (write), reads of 1 channel (target, context) and 2 (DRAW's
# target and error image), images of 26 (strokes, Omniglot 104/4), 28 and 52 px; its compute dtype, float32.
MODEL_CASES = [(4, 4, 26, 26, 12), (3, 4, 28, 28, 12), (2, 4, 52, 52, 12), (5, 1, 26, 26, 12), (3, 2, 28, 28, 12),
               (2, 1, 52, 52, 12)]


@pytest.mark.parametrize("B,C,H,W,N", MODEL_CASES)
def test_sequential_model_shapes_match_reference(B, C, H, W, N):
    dtype = torch.float32
    x = torch.rand(B, C, H, W, dtype=dtype, device=DEVICE)  # pixels and canvases in [0, 1]
    got, want = read_case(x, random_params(B, dtype), N, "triton")
    assert got[0].shape == (B, C, N, N)
    assert_case(got, want, dtype, ("read", "d/dx"))
    patch = torch.randn(B, C, N, N, dtype=dtype, device=DEVICE)
    got, want = write_case(patch, random_params(B, dtype), H, W, "triton")
    assert got[0].shape == (B, C, H, W)
    assert_case(got, want, dtype, ("write", "d/dpatch"))
