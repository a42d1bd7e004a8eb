"""DRAW's Gaussian-kernel attention: filterbanks, read and write (Gregor et al. 2015, §3.2).

Parameters per example, ``params [B, 5]`` = (g̃_x, g̃_y, log σ², log δ̃, log γ) (DRAW eq. 21),
for an image of H rows and W columns and an N × N grid of filters:

* grid centre      g_x = (W + 1)/2 (g̃_x + 1),  g_y = (H + 1)/2 (g̃_y + 1)          (eqs. 22, 23)
* stride           δ = (max(H, W) - 1)/(N - 1) · δ̃,  δ̃ = exp(log δ̃)              (eq. 24)
* filter centres   μ_x^i = g_x + (i - N/2 - 0.5) δ,  μ_y^j likewise, i, j = 1..N   (eqs. 19, 20)
* filters          F_x[i, a] = exp(-(a - μ_x^i)² / (2σ²)) / Z_x^i,  σ² = exp(log σ²) (eqs. 25, 26)
* read             γ F_y x F_xᵀ : [B, C, H, W] → [B, C, N, N],  γ = exp(log γ)      (eq. 27)
* write            (1/γ) F_yᵀ w F_x : [B, C, N, N] → [B, C, H, W]                    (eq. 29)

Conventions (written down because public implementations get them wrong):

* Pixel coordinates are 1-based: a = 1..W (columns), b = 1..H (rows). The paper's centre
  formula goes with them: g̃ = 0 puts the grid centre at (W + 1)/2, the middle of pixels
  1..W; g̃ = -1 and +1 put it at 0 and W + 1, one pixel outside the edge pixels. Pixel a is
  stored at column a - 1 of the tensors. Using 0-based coordinates with this g shifts
  the grid by one pixel.
* i runs 1..N in μ^i = g + (i - N/2 - 0.5) δ: the grid is symmetric about g (for N = 2 the
  centres are g ∓ δ/2). A 0-based i in that formula shifts the grid by one stride.
* The exponent is -(a - μ)² / (2σ²) with σ² = exp(log σ²), the variance itself: σ² is not
  squared again.
* Each filter row is normalized to sum 1 by Z = max(Σ_a exp(...), ε) with ε = ``FILTER_EPS``
  = 1e-8: a filter whose mass lies entirely outside the image (Z < ε) is not blown up, and
  its gradient then does not flow through Z.

Extreme parameters. Both paths clamp the parameters before use (``clamp_params``;
``PARAM_RANGES``): log σ², log δ̃ and log γ to ``LOG_PARAM_RANGE`` = [-20, 20], g̃_x and g̃_y
to ``CENTRE_RANGE`` = [-1e12, 1e12]; the gradient is the clamp's (0 for a parameter outside
its closed range, unchanged inside). Why these ranges, in float32 (the compute dtype of
16/32-bit inputs): γ, 1/γ, σ² and 1/(2σ²) stay within [2e-9, 5e8], so no exponential
overflows (σ² = exp(-1e4) gave 1/σ² = inf and 0 · inf = NaN; γ = exp(1e4) = inf). At
σ² = e^-20 (σ ≈ 5e-5 px) a filter is already a single pixel, at e^20 (σ ≈ 2e4 px) it is flat
over any image the kernels take, so values beyond change nothing visible; δ̃ = e^20 puts all
but the central filters far outside the image. With |g̃| ≤ 1e12 every distance a - μ stays
finite, and at |g̃| = 1e12 (for any δ̃, σ² in range and an image of aspect ratio below 2000)
every filter lies ≥ 1e11 px outside the image, where F = 0 exactly, so the clamp changes no
value; it keeps ±inf centres from giving 0 · inf = NaN in the gradient. Consequences:
for finite x (or patch) and params without NaN (±inf included), outputs and all gradients
are finite (F ∈ [0, 1], so |read| ≤ γ max|x| and |write| ≤ N² max|w| / γ), as long as the
values stay well inside the dtype's range (float32 pixels near 1e30 can overflow the
gradient's intermediate products, e.g. through 1/Z for a filter with small mass Z). A NaN
parameter makes that example's output NaN (every channel) and its gradients NaN (the input's,
and those of its parameters inside their range; one outside keeps the clamp's gradient 0);
other examples are unaffected. A non-finite pixel (or patch value) makes that (example,
channel) plane of the output non-finite (0 · inf = NaN in the products, as in any matrix
product); both paths use the same association ((F_y x) F_xᵀ, F_yᵀ (w F_x)), so NaN and ±inf
land in the same places; the gradients are then non-finite in the same places too (which of
NaN or ±inf is not specified: the two paths reduce the filterbank gradients differently).
x, patch and params must be floating point (``ValueError`` naming the argument and dtype
otherwise).

Autograd: gradients to the image (read) or patch (write) and to all five parameters. The Triton
kernels build the filterbanks in registers and fuse both matrix products; the backward
kernel recomputes the filterbanks and reduces the filterbank gradients to the five parameter
gradients in the same launch. Double backward is not supported (``once_differentiable``).
Computation is in float32 (float64 for float64 inputs); 16-bit tensors are upcast on load,
so no 16-bit ``tl.dot`` is used. fp32 dots use ``input_precision="ieee"`` (not TF32).

Chain of names: ``_gaussian_read_fwd_kernel`` / ``_gaussian_read_bwd_kernel`` →
``gaussian_read_forward`` / ``gaussian_read_backward`` → ``GaussianRead`` → ``gaussian_read``;
the same for write. ``gaussian_filterbanks``, ``gaussian_read_reference`` and
``gaussian_write_reference`` are the plain-torch reference: the CPU path and the test oracle.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from varmem.kernels.dispatch import choose, dtype_reason, triton_device_reason

__all__ = [
    "FILTER_EPS",
    "LOG_PARAM_RANGE",
    "CENTRE_RANGE",
    "PARAM_RANGES",
    "clamp_params",
    "GaussianRead",
    "GaussianWrite",
    "gaussian_filterbanks",
    "gaussian_read",
    "gaussian_write",
    "gaussian_read_reference",
    "gaussian_write_reference",
    "gaussian_read_forward",
    "gaussian_read_backward",
    "gaussian_write_forward",
    "gaussian_write_backward",
]

FILTER_EPS = 1e-8
# Ranges the ops clamp the parameters to (see "Extreme parameters" in the module docstring).
LOG_PARAM_RANGE = (-20.0, 20.0)  # log σ², log δ̃, log γ
CENTRE_RANGE = (-1e12, 1e12)  # g̃_x, g̃_y
PARAM_RANGES = (CENTRE_RANGE, CENTRE_RANGE, LOG_PARAM_RANGE, LOG_PARAM_RANGE, LOG_PARAM_RANGE)
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The kernels hold one whole image channel in one tile (plus F_x, F_y and, in the backward,
# their gradients); larger images go to the reference. Shared memory per program from ahead-of-time
# compiles for sm_80 and sm_90 (kernels/RESOURCES.md, triton 3.9; the A100 allows 166,912 B per block,
# the H100 232,448 B): the backward at 128×128, N = 32 needs 102,400 B in fp32/fp16/bf16; float64 at
# 64×64, N = 32 up to 98,304 B; float64 at 128×128, N = 64 needs 294,912 B, over both limits.
# (An earlier triton 3.9 compile, at other warps, gave 196,608 B for fp32 128×128, N = 32 and 270,336 B
# at N = 64.) Large tiles spill registers (RESOURCES.md), so the limits stay where they were.
TRITON_MAX_TILE = 128 * 128  # BLOCK_H * BLOCK_W for 16/32-bit inputs; a quarter of that for float64
TRITON_MAX_N = 32


# ---------------------------------------------------------------------------------------------
# Triton kernels
# ---------------------------------------------------------------------------------------------


@triton.jit
def _clamp(v, LO: tl.constexpr, HI: tl.constexpr):
    """v clamped to [LO, HI]; NaN stays NaN (comparisons with NaN are false)."""
    return tl.where(v < LO, LO, tl.where(v > HI, HI, v))


@triton.jit
def _in_range(v, LO: tl.constexpr, HI: tl.constexpr):
    """False where the clamp is active (v < LO or v > HI): the gradient is 0 there; NaN is in range."""
    return ~((v < LO) | (v > HI))


@triton.jit
def _draw_params(params_ptr, b, N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, SPAN: tl.constexpr, CDT: tl.constexpr,
                 C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr):
    """Grid centre, stride, 1/(2σ²), γ and 1/γ of example ``b`` from params [B, 5] (clamped)."""
    p = params_ptr + b * 5
    gx_t = _clamp(tl.load(p + 0).to(CDT), C_LO, C_HI)
    gy_t = _clamp(tl.load(p + 1).to(CDT), C_LO, C_HI)
    log_s2 = _clamp(tl.load(p + 2).to(CDT), L_LO, L_HI)
    log_dt = _clamp(tl.load(p + 3).to(CDT), L_LO, L_HI)
    log_g = _clamp(tl.load(p + 4).to(CDT), L_LO, L_HI)
    gx = tl.full([], W + 1, CDT) * 0.5 * (gx_t + 1.0)  # eq. 22, 1-based pixels
    gy = tl.full([], H + 1, CDT) * 0.5 * (gy_t + 1.0)  # eq. 23
    delta = tl.full([], SPAN, CDT) / tl.full([], N - 1, CDT) * tl.exp(log_dt)  # eq. 24
    inv_2s2 = 0.5 * tl.exp(-log_s2)  # 1/(2σ²)
    gamma = tl.exp(log_g)
    inv_gamma = tl.exp(-log_g)
    return gx, gy, delta, inv_2s2, gamma, inv_gamma


@triton.jit
def _filterbank(center, delta, inv_2s2, N: tl.constexpr, A: tl.constexpr, EPS: tl.constexpr, CDT: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_A: tl.constexpr):
    """F [BN, BA] (eqs. 19/20, 25/26), with a - μ, the grid offsets and which rows have Z > ε."""
    i = tl.arange(0, BLOCK_N)  # filter i + 1 (1-based) is row i
    a = tl.arange(0, BLOCK_A)  # pixel a + 1 (1-based) is column a
    offset = (i.to(CDT) + 0.5) - tl.full([], N, CDT) * 0.5  # [BN] (i+1) - N/2 - 0.5
    mu = center + offset * delta  # [BN] filter centres
    dist = (a + 1).to(CDT)[None, :] - mu[:, None]  # [BN, BA] a - μ^i
    valid = (i < N)[:, None] & (a < A)[None, :]
    f = tl.where(valid, tl.exp(-dist * dist * inv_2s2), 0.0)  # [BN, BA]
    z = tl.sum(f, axis=1)  # [BN]
    z_ok = z > EPS
    F = f / tl.where(z_ok, z, EPS)[:, None]
    return F, dist, offset, z_ok


@triton.jit
def _filterbank_grads(dF, F, dist, offset, z_ok, inv_2s2):
    """Reduce ∂L/∂F [BN, BA] to ∂L/∂(centre), ∂L/∂δ, ∂L/∂log σ² and Σ_ia ∂L/∂F · F."""
    s = tl.sum(dF * F, axis=1)  # [BN]
    r = (dF - tl.where(z_ok, s, 0.0)[:, None]) * F  # [BN, BA] ∂L/∂f · f through the normalization
    dmu = tl.sum(r * dist, axis=1) * (2.0 * inv_2s2)  # [BN] ∂f/∂μ = f (a - μ)/σ²
    d_log_s2 = tl.sum(tl.sum(r * dist * dist, axis=1), axis=0) * inv_2s2  # ∂f/∂log σ² = f (a-μ)²/(2σ²)
    d_center = tl.sum(dmu, axis=0)
    d_delta = tl.sum(dmu * offset, axis=0)
    s_total = tl.sum(s, axis=0)
    return d_center, d_delta, d_log_s2, s_total


@triton.jit
def _store_param_grads(dparams_ptr, params_ptr, b, dcx, dcy, ddx, ddy, dlsx, dlsy, d_log_gamma, delta,
                       H: tl.constexpr, W: tl.constexpr, CDT: tl.constexpr,
                       C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr):
    p = dparams_ptr + b * 5
    raw = params_ptr + b * 5
    ty = dparams_ptr.dtype.element_ty
    # The clamp's gradient: 0 where a parameter lies outside its range.
    ok0 = _in_range(tl.load(raw + 0).to(CDT), C_LO, C_HI)
    ok1 = _in_range(tl.load(raw + 1).to(CDT), C_LO, C_HI)
    ok2 = _in_range(tl.load(raw + 2).to(CDT), L_LO, L_HI)
    ok3 = _in_range(tl.load(raw + 3).to(CDT), L_LO, L_HI)
    ok4 = _in_range(tl.load(raw + 4).to(CDT), L_LO, L_HI)
    tl.store(p + 0, tl.where(ok0, dcx * tl.full([], W + 1, CDT) * 0.5, 0.0).to(ty))  # ∂g_x/∂g̃_x = (W+1)/2
    tl.store(p + 1, tl.where(ok1, dcy * tl.full([], H + 1, CDT) * 0.5, 0.0).to(ty))
    tl.store(p + 2, tl.where(ok2, dlsx + dlsy, 0.0).to(ty))
    tl.store(p + 3, tl.where(ok3, (ddx + ddy) * delta, 0.0).to(ty))  # ∂δ/∂log δ̃ = δ
    tl.store(p + 4, tl.where(ok4, d_log_gamma, 0.0).to(ty))


@triton.jit
def _gaussian_read_fwd_kernel(
    x_ptr,  # [B, C, H, W] contiguous
    params_ptr,  # [B, 5]
    out_ptr,  # [B, C, N, N]
    C,
    N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, SPAN: tl.constexpr, EPS: tl.constexpr, CDT: tl.constexpr,
    C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    gx, gy, delta, inv_2s2, gamma, inv_gamma = _draw_params(params_ptr, b, N, H, W, SPAN, CDT, C_LO, C_HI, L_LO, L_HI)
    Fx, _, _, _ = _filterbank(gx, delta, inv_2s2, N, W, EPS, CDT, BLOCK_N, BLOCK_W)  # [BN, BW]
    Fy, _, _, _ = _filterbank(gy, delta, inv_2s2, N, H, EPS, CDT, BLOCK_N, BLOCK_H)  # [BN, BH]
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    nn = tl.arange(0, BLOCK_N)
    plane = (b * C + c).to(tl.int64)
    x_mask = (hh < H)[:, None] & (ww < W)[None, :]
    x = tl.load(x_ptr + plane * (H * W) + hh[:, None] * W + ww[None, :], mask=x_mask, other=0.0).to(CDT)
    t = tl.dot(Fy, x, input_precision="ieee")  # [BN, BW] F_y x
    y = tl.dot(t, tl.trans(Fx), input_precision="ieee") * gamma  # [BN, BN] γ F_y x F_xᵀ (eq. 27)
    o_mask = (nn < N)[:, None] & (nn < N)[None, :]
    tl.store(out_ptr + plane * (N * N) + nn[:, None] * N + nn[None, :], y.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _gaussian_read_bwd_kernel(
    g_ptr,  # [B, C, N, N] upstream gradient
    x_ptr,  # [B, C, H, W]
    params_ptr,  # [B, 5]
    dx_ptr,  # [B, C, H, W] out
    dparams_ptr,  # [B, 5] out
    C,
    N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, SPAN: tl.constexpr, EPS: tl.constexpr, CDT: tl.constexpr,
    C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0)
    gx, gy, delta, inv_2s2, gamma, inv_gamma = _draw_params(params_ptr, b, N, H, W, SPAN, CDT, C_LO, C_HI, L_LO, L_HI)
    Fx, dist_x, off_x, zok_x = _filterbank(gx, delta, inv_2s2, N, W, EPS, CDT, BLOCK_N, BLOCK_W)  # [BN, BW]
    Fy, dist_y, off_y, zok_y = _filterbank(gy, delta, inv_2s2, N, H, EPS, CDT, BLOCK_N, BLOCK_H)  # [BN, BH]
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    nn = tl.arange(0, BLOCK_N)
    x_offs = hh[:, None] * W + ww[None, :]
    x_mask = (hh < H)[:, None] & (ww < W)[None, :]
    g_offs = nn[:, None] * N + nn[None, :]
    g_mask = (nn < N)[:, None] & (nn < N)[None, :]
    dFx = tl.zeros([BLOCK_N, BLOCK_W], CDT)  # Σ_c Gᵀ F_y x        (times γ below)
    dFy = tl.zeros([BLOCK_N, BLOCK_H], CDT)  # Σ_c G F_x xᵀ
    for c in range(0, C):
        plane = (b * C + c).to(tl.int64)
        G = tl.load(g_ptr + plane * (N * N) + g_offs, mask=g_mask, other=0.0).to(CDT)  # [BN, BN]
        x = tl.load(x_ptr + plane * (H * W) + x_offs, mask=x_mask, other=0.0).to(CDT)  # [BH, BW]
        A = tl.dot(G, Fx, input_precision="ieee")  # [BN, BW] G F_x
        dx = tl.dot(tl.trans(Fy), A, input_precision="ieee") * gamma  # [BH, BW] γ F_yᵀ G F_x
        tl.store(dx_ptr + plane * (H * W) + x_offs, dx.to(dx_ptr.dtype.element_ty), mask=x_mask)
        dFy += tl.dot(A, tl.trans(x), input_precision="ieee")  # [BN, BH]
        T = tl.dot(Fy, x, input_precision="ieee")  # [BN, BW] F_y x
        dFx += tl.dot(tl.trans(G), T, input_precision="ieee")  # [BN, BW]
    dFx = dFx * gamma
    dFy = dFy * gamma
    dcx, ddx, dlsx, s_x = _filterbank_grads(dFx, Fx, dist_x, off_x, zok_x, inv_2s2)
    dcy, ddy, dlsy, _ = _filterbank_grads(dFy, Fy, dist_y, off_y, zok_y, inv_2s2)
    # The read is linear in F_x and in γ, so ∂L/∂log γ = <G, y> = <∂L/∂F_x, F_x>.
    _store_param_grads(dparams_ptr, params_ptr, b, dcx, dcy, ddx, ddy, dlsx, dlsy, s_x, delta, H, W, CDT,
                       C_LO, C_HI, L_LO, L_HI)


@triton.jit
def _gaussian_write_fwd_kernel(
    w_ptr,  # [B, C, N, N] contiguous
    params_ptr,  # [B, 5]
    out_ptr,  # [B, C, H, W]
    C,
    N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, SPAN: tl.constexpr, EPS: tl.constexpr, CDT: tl.constexpr,
    C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0)
    c = tl.program_id(1)
    gx, gy, delta, inv_2s2, gamma, inv_gamma = _draw_params(params_ptr, b, N, H, W, SPAN, CDT, C_LO, C_HI, L_LO, L_HI)
    Fx, _, _, _ = _filterbank(gx, delta, inv_2s2, N, W, EPS, CDT, BLOCK_N, BLOCK_W)  # [BN, BW]
    Fy, _, _, _ = _filterbank(gy, delta, inv_2s2, N, H, EPS, CDT, BLOCK_N, BLOCK_H)  # [BN, BH]
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    nn = tl.arange(0, BLOCK_N)
    plane = (b * C + c).to(tl.int64)
    p_mask = (nn < N)[:, None] & (nn < N)[None, :]
    w = tl.load(w_ptr + plane * (N * N) + nn[:, None] * N + nn[None, :], mask=p_mask, other=0.0).to(CDT)
    t = tl.dot(w, Fx, input_precision="ieee")  # [BN, BW] w F_x
    o = tl.dot(tl.trans(Fy), t, input_precision="ieee") * inv_gamma  # [BH, BW] (1/γ) F_yᵀ w F_x (eq. 29)
    o_mask = (hh < H)[:, None] & (ww < W)[None, :]
    tl.store(out_ptr + plane * (H * W) + hh[:, None] * W + ww[None, :], o.to(out_ptr.dtype.element_ty), mask=o_mask)


@triton.jit
def _gaussian_write_bwd_kernel(
    g_ptr,  # [B, C, H, W] upstream gradient
    w_ptr,  # [B, C, N, N]
    params_ptr,  # [B, 5]
    dw_ptr,  # [B, C, N, N] out
    dparams_ptr,  # [B, 5] out
    C,
    N: tl.constexpr, H: tl.constexpr, W: tl.constexpr, SPAN: tl.constexpr, EPS: tl.constexpr, CDT: tl.constexpr,
    C_LO: tl.constexpr, C_HI: tl.constexpr, L_LO: tl.constexpr, L_HI: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr,
):
    b = tl.program_id(0)
    gx, gy, delta, inv_2s2, gamma, inv_gamma = _draw_params(params_ptr, b, N, H, W, SPAN, CDT, C_LO, C_HI, L_LO, L_HI)
    Fx, dist_x, off_x, zok_x = _filterbank(gx, delta, inv_2s2, N, W, EPS, CDT, BLOCK_N, BLOCK_W)  # [BN, BW]
    Fy, dist_y, off_y, zok_y = _filterbank(gy, delta, inv_2s2, N, H, EPS, CDT, BLOCK_N, BLOCK_H)  # [BN, BH]
    hh = tl.arange(0, BLOCK_H)
    ww = tl.arange(0, BLOCK_W)
    nn = tl.arange(0, BLOCK_N)
    g_offs = hh[:, None] * W + ww[None, :]
    g_mask = (hh < H)[:, None] & (ww < W)[None, :]
    p_offs = nn[:, None] * N + nn[None, :]
    p_mask = (nn < N)[:, None] & (nn < N)[None, :]
    dFx = tl.zeros([BLOCK_N, BLOCK_W], CDT)  # Σ_c wᵀ F_y G      (times 1/γ below)
    dFy = tl.zeros([BLOCK_N, BLOCK_H], CDT)  # Σ_c w F_x Gᵀ
    for c in range(0, C):
        plane = (b * C + c).to(tl.int64)
        G = tl.load(g_ptr + plane * (H * W) + g_offs, mask=g_mask, other=0.0).to(CDT)  # [BH, BW]
        w = tl.load(w_ptr + plane * (N * N) + p_offs, mask=p_mask, other=0.0).to(CDT)  # [BN, BN]
        A = tl.dot(Fy, G, input_precision="ieee")  # [BN, BW] F_y G
        dw = tl.dot(A, tl.trans(Fx), input_precision="ieee") * inv_gamma  # [BN, BN] (1/γ) F_y G F_xᵀ
        tl.store(dw_ptr + plane * (N * N) + p_offs, dw.to(dw_ptr.dtype.element_ty), mask=p_mask)
        dFx += tl.dot(tl.trans(w), A, input_precision="ieee")  # [BN, BW]
        T = tl.dot(w, Fx, input_precision="ieee")  # [BN, BW] w F_x
        dFy += tl.dot(T, tl.trans(G), input_precision="ieee")  # [BN, BH]
    dFx = dFx * inv_gamma
    dFy = dFy * inv_gamma
    dcx, ddx, dlsx, s_x = _filterbank_grads(dFx, Fx, dist_x, off_x, zok_x, inv_2s2)
    dcy, ddy, dlsy, _ = _filterbank_grads(dFy, Fy, dist_y, off_y, zok_y, inv_2s2)
    # The write is linear in F_x and in 1/γ, so ∂L/∂log γ = -<G, o> = -<∂L/∂F_x, F_x>.
    _store_param_grads(dparams_ptr, params_ptr, b, dcx, dcy, ddx, ddy, dlsx, dlsy, -s_x, delta, H, W, CDT,
                       C_LO, C_HI, L_LO, L_HI)


# ---------------------------------------------------------------------------------------------
# Launchers
# ---------------------------------------------------------------------------------------------


def _meta(N: int, H: int, W: int, dtype: torch.dtype) -> dict:
    block_h = max(16, triton.next_power_of_2(H))  # tl.dot needs every dimension ≥ 16
    block_w = max(16, triton.next_power_of_2(W))
    return dict(
        N=N, H=H, W=W, SPAN=max(H, W) - 1, EPS=FILTER_EPS,
        CDT=tl.float64 if dtype == torch.float64 else tl.float32,
        C_LO=CENTRE_RANGE[0], C_HI=CENTRE_RANGE[1], L_LO=LOG_PARAM_RANGE[0], L_HI=LOG_PARAM_RANGE[1],
        BLOCK_N=max(16, triton.next_power_of_2(N)), BLOCK_H=block_h, BLOCK_W=block_w,
        num_warps=gaussian_num_warps(block_h * block_w, max(16, triton.next_power_of_2(N))),
    )


def gaussian_num_warps(tile: int, block_n: int) -> int:
    """Warps per program for a ``tile``-element image tile and a ``block_n`` filter grid.

    The fp32 ``input_precision="ieee"`` dots run on FMA units with whole operand rows per thread, so
    a 128×128 tile at 8 warps spilled 3-33 KB of registers per thread (ahead-of-time compiles for
    sm_80/sm_90, triton 3.9, kernels/RESOURCES.md). More threads hold less of it: 16 warps cut the
    105×105, N = 12 spills to ≤ 1.3 KB and 32 warps the 128×128, N = 32 ones to ≤ 2.5 KB (at 16 warps
    those stayed at 13-15 KB; at 32 warps the N = 12 ones were larger than at 16). Up to 64×64, 8 warps
    spill at most 144 B in 16/32-bit dtypes (4 and 16 warps spill more). No GPU timing yet.
    """
    if tile <= 32 * 32:
        return 4
    if tile <= 64 * 64:
        return 8
    return 16 if block_n <= 16 else 32


def gaussian_read_forward(x: torch.Tensor, params: torch.Tensor, N: int) -> torch.Tensor:
    """``x [B, C, H, W]``, ``params [B, 5]`` → ``[B, C, N, N]``: one launch, grid (B, C)."""
    x, params = x.contiguous(), params.contiguous()
    B, C, H, W = x.shape
    out = torch.empty((B, C, N, N), dtype=x.dtype, device=x.device)
    if out.numel():
        _gaussian_read_fwd_kernel[(B, C)](x, params, out, C, **_meta(N, H, W, x.dtype))
    return out


def gaussian_read_backward(g: torch.Tensor, x: torch.Tensor, params: torch.Tensor, N: int):
    """``(dx [B, C, H, W], dparams [B, 5])``: one launch, grid (B,), looping over channels."""
    g, x, params = g.contiguous(), x.contiguous(), params.contiguous()
    B, C, H, W = x.shape
    dx = torch.empty_like(x)
    dparams = torch.zeros_like(params)
    if B and C:
        _gaussian_read_bwd_kernel[(B,)](g, x, params, dx, dparams, C, **_meta(N, H, W, x.dtype))
    return dx, dparams


def gaussian_write_forward(patch: torch.Tensor, params: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """``patch [B, C, N, N]``, ``params [B, 5]`` → ``[B, C, H, W]``: one launch, grid (B, C)."""
    patch, params = patch.contiguous(), params.contiguous()
    B, C, N, _ = patch.shape
    out = torch.empty((B, C, H, W), dtype=patch.dtype, device=patch.device)
    if out.numel():
        _gaussian_write_fwd_kernel[(B, C)](patch, params, out, C, **_meta(N, H, W, patch.dtype))
    return out


def gaussian_write_backward(g: torch.Tensor, patch: torch.Tensor, params: torch.Tensor, H: int, W: int):
    """``(dpatch [B, C, N, N], dparams [B, 5])``: one launch, grid (B,), looping over channels."""
    g, patch, params = g.contiguous(), patch.contiguous(), params.contiguous()
    B, C, N, _ = patch.shape
    dpatch = torch.empty_like(patch)
    dparams = torch.zeros_like(params)
    if B and C:
        _gaussian_write_bwd_kernel[(B,)](g, patch, params, dpatch, dparams, C, **_meta(N, H, W, patch.dtype))
    return dpatch, dparams


# ---------------------------------------------------------------------------------------------
# Autograd functions (Triton path)
# ---------------------------------------------------------------------------------------------


class GaussianRead(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, params: torch.Tensor, N: int):
        ctx.save_for_backward(x, params)
        ctx.N = N
        return gaussian_read_forward(x, params, N)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, params = ctx.saved_tensors
        dx, dparams = gaussian_read_backward(g, x, params, ctx.N)
        return dx, dparams, None


class GaussianWrite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, patch: torch.Tensor, params: torch.Tensor, H: int, W: int):
        ctx.save_for_backward(patch, params)
        ctx.H, ctx.W = H, W
        return gaussian_write_forward(patch, params, H, W)

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        patch, params = ctx.saved_tensors
        dpatch, dparams = gaussian_write_backward(g, patch, params, ctx.H, ctx.W)
        return dpatch, dparams, None, None


# ---------------------------------------------------------------------------------------------
# Reference (plain torch)
# ---------------------------------------------------------------------------------------------


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _bank(mu: torch.Tensor, A: int, log_s2: torch.Tensor, eps: float) -> torch.Tensor:
    """F [B, N, A] from centres mu [B, N] over 1-based pixels a = 1..A (eqs. 25, 26)."""
    a = torch.arange(1, A + 1, dtype=mu.dtype, device=mu.device)  # [A]
    # 1/(2σ²) rather than a division by σ²: autograd of x/σ² would form (a - μ)²/σ⁴, which
    # overflows (then 0 · inf = NaN) for a far filter at small σ² (the kernels do the same)
    inv_2s2 = 0.5 * torch.exp(-log_s2)[:, None, None]  # [B, 1, 1]
    f = torch.exp(-((a - mu[..., None]) ** 2) * inv_2s2)  # [B, N, A]
    return f / f.sum(-1, keepdim=True).clamp_min(eps)


def clamp_params(params: torch.Tensor) -> torch.Tensor:
    """``params [..., 5]`` clamped to ``PARAM_RANGES``, as the ops use them (differentiable).

    The gradient is that of ``torch.clamp`` (1 inside the closed range, 0 outside); NaN stays
    NaN and passes its gradient.
    """
    cols = []
    for j, (lo, hi) in enumerate(PARAM_RANGES):
        v = params[..., j]
        cols.append(torch.where(v < lo, lo, torch.where(v > hi, hi, v)))
    return torch.stack(cols, dim=-1)


def gaussian_filterbanks(params: torch.Tensor, N: int, H: int, W: int, eps: float = FILTER_EPS):
    """``(F_x [B, N, W], F_y [B, N, H], gamma [B])`` from ``params [B, 5]`` (plain torch, differentiable).

    See the module docstring for the conventions (1-based pixels, i = 1..N, ε, the parameter clamp).
    """
    _check_common(params, N, H, W, "gaussian_filterbanks")
    p = clamp_params(params.to(_compute_dtype(params.dtype)))
    gx_t, gy_t, log_s2, log_dt, log_g = p.unbind(-1)  # each [B]
    gx = (W + 1) / 2 * (gx_t + 1)  # eq. 22
    gy = (H + 1) / 2 * (gy_t + 1)  # eq. 23
    delta = (max(H, W) - 1) / (N - 1) * torch.exp(log_dt)  # eq. 24
    offset = torch.arange(1, N + 1, dtype=p.dtype, device=p.device) - N / 2 - 0.5  # [N] i - N/2 - 0.5
    mu_x = gx[:, None] + offset * delta[:, None]  # [B, N] eq. 19
    mu_y = gy[:, None] + offset * delta[:, None]  # [B, N] eq. 20
    F_x = _bank(mu_x, W, log_s2, eps)
    F_y = _bank(mu_y, H, log_s2, eps)
    gamma = torch.exp(log_g)
    return F_x.to(params.dtype), F_y.to(params.dtype), gamma.to(params.dtype)


def gaussian_read_reference(x: torch.Tensor, params: torch.Tensor, N: int) -> torch.Tensor:
    """Plain-torch :func:`gaussian_read`: γ F_y x F_xᵀ (eq. 27)."""
    _check_read(x, params, N)
    B, C, H, W = x.shape
    cdt = _compute_dtype(x.dtype, params.dtype)
    F_x, F_y, gamma = gaussian_filterbanks(params.to(cdt), N, H, W)
    y = F_y[:, None] @ x.to(cdt) @ F_x.transpose(-1, -2)[:, None]  # [B, C, N, N]
    return (gamma[:, None, None, None] * y).to(x.dtype)


def gaussian_write_reference(patch: torch.Tensor, params: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """Plain-torch :func:`gaussian_write`: (1/γ) F_yᵀ w F_x (eq. 29)."""
    _check_write(patch, params, H, W)
    N = patch.shape[-1]
    cdt = _compute_dtype(patch.dtype, params.dtype)
    F_x, F_y, gamma = gaussian_filterbanks(params.to(cdt), N, H, W)
    o = F_y.transpose(-1, -2)[:, None] @ patch.to(cdt) @ F_x[:, None]  # [B, C, H, W]
    return (o / gamma[:, None, None, None]).to(patch.dtype)


# ---------------------------------------------------------------------------------------------
# Functional API with dispatch
# ---------------------------------------------------------------------------------------------


def _check_common(params: torch.Tensor, N: int, H: int, W: int, op: str) -> None:
    if not isinstance(params, torch.Tensor) or params.dim() != 2 or params.shape[1] != 5:
        shape = tuple(params.shape) if isinstance(params, torch.Tensor) else type(params).__name__
        raise ValueError(f"{op}: params must be [B, 5] = (g̃x, g̃y, log σ², log δ̃, log γ), got {shape}")
    if not params.is_floating_point():
        raise ValueError(f"{op}: params must be floating point, got dtype {params.dtype}")
    for name, v, lo in (("N", N, 2), ("H", H, 1), ("W", W, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{op}: {name}={v!r} must be an int >= {lo}" + (" (the stride divides by N - 1)" if name == "N" else ""))


def _check_read(x: torch.Tensor, params: torch.Tensor, N: int) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"gaussian_read: x must be [B, C, H, W], got {tuple(x.shape) if isinstance(x, torch.Tensor) else x!r}")
    if not x.is_floating_point():
        raise ValueError(f"gaussian_read: x must be floating point, got dtype {x.dtype}")
    _check_common(params, N, x.shape[2], x.shape[3], "gaussian_read")
    if params.shape[0] != x.shape[0]:
        raise ValueError(f"gaussian_read: params has B={params.shape[0]} rows, x has B={x.shape[0]}")


def _check_write(patch: torch.Tensor, params: torch.Tensor, H: int, W: int) -> None:
    if not isinstance(patch, torch.Tensor) or patch.dim() != 4 or patch.shape[2] != patch.shape[3]:
        raise ValueError(
            f"gaussian_write: patch must be [B, C, N, N], got {tuple(patch.shape) if isinstance(patch, torch.Tensor) else patch!r}"
        )
    if not patch.is_floating_point():
        raise ValueError(f"gaussian_write: patch must be floating point, got dtype {patch.dtype}")
    _check_common(params, patch.shape[-1], H, W, "gaussian_write")
    if params.shape[0] != patch.shape[0]:
        raise ValueError(f"gaussian_write: params has B={params.shape[0]} rows, patch has B={patch.shape[0]}")


def size_reason(dtype: torch.dtype, N: int, H: int, W: int) -> str | None:
    """Why the Triton kernels cannot take an H×W image with an N×N grid in ``dtype``, or None."""
    tile = max(16, triton.next_power_of_2(H)) * max(16, triton.next_power_of_2(W))
    limit = TRITON_MAX_TILE // (4 if dtype == torch.float64 else 1)
    if tile > limit:
        return f"image {H}x{W} pads to a {tile}-element tile > {limit}: the kernels hold one image in one tile"
    if N > TRITON_MAX_N:
        return f"N={N} > {TRITON_MAX_N}: the backward would exceed a program's shared memory"
    return None


def _reasons(tensors: list[torch.Tensor], N: int, H: int, W: int):
    def triton_reason():
        why = triton_device_reason(tensors) or dtype_reason(tensors, TRITON_DTYPES)
        return why if why is not None else size_reason(tensors[0].dtype, N, H, W)

    return {"triton": triton_reason, "reference": lambda: None}


def gaussian_read(x: torch.Tensor, params: torch.Tensor, N: int) -> torch.Tensor:
    """DRAW read: ``x [B, C, H, W]`` → ``γ F_y x F_xᵀ [B, C, N, N]`` (eq. 27); conventions above."""
    _check_read(x, params, N)
    H, W = x.shape[2], x.shape[3]
    if choose("gaussian_read", [x, params], _reasons([x, params], N, H, W)) == "reference":
        return gaussian_read_reference(x, params, N)
    return GaussianRead.apply(x, params, N)


def gaussian_write(patch: torch.Tensor, params: torch.Tensor, H: int, W: int) -> torch.Tensor:
    """DRAW write: ``patch [B, C, N, N]`` → ``(1/γ) F_yᵀ w F_x [B, C, H, W]`` (eq. 29)."""
    _check_write(patch, params, H, W)
    N = patch.shape[-1]
    if choose("gaussian_write", [patch, params], _reasons([patch, params], N, H, W)) == "reference":
        return gaussian_write_reference(patch, params, H, W)
    return GaussianWrite.apply(patch, params, H, W)
