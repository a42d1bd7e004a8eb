"""One verbose closeness check for kernel tests.

``assert_close(actual, expected, atol, rtol, name)`` reports the worst index, the share of
elements out of tolerance, and NaN/inf mismatches, which ``torch.testing`` does not all give.
"""
from __future__ import annotations

import torch

# (dtype, atol, rtol) for comparisons against a float64 oracle.
TOLERANCES = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (2e-2, 2e-2),
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, atol: float, rtol: float, name: str = "tensor") -> None:
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a = actual.detach().to(torch.float64).cpu()
    e = expected.detach().to(torch.float64).cpu()
    a_nan, e_nan = torch.isnan(a), torch.isnan(e)
    if not torch.equal(a_nan, e_nan):
        idx = torch.nonzero(a_nan != e_nan)[0].tolist()
        raise AssertionError(
            f"{name}: NaN mismatch at {idx} (actual {a[tuple(idx)].item()}, expected {e[tuple(idx)].item()}); "
            f"{int(a_nan.sum())} NaN in actual, {int(e_nan.sum())} in expected"
        )
    a_inf, e_inf = torch.isinf(a), torch.isinf(e)
    if not torch.equal(a_inf, e_inf) or not torch.equal(a[a_inf], e[e_inf]):
        idx = torch.nonzero((a_inf != e_inf) | (a_inf & (a != e)))[0].tolist()
        raise AssertionError(f"{name}: inf mismatch at {idx} (actual {a[tuple(idx)].item()}, expected {e[tuple(idx)].item()})")
    finite = ~(a_nan | a_inf)
    diff = torch.zeros_like(a)
    diff[finite] = (a[finite] - e[finite]).abs()
    allowed = atol + rtol * e.abs()
    bad = (diff > allowed) & finite
    if bad.any():
        excess = torch.where(bad, diff - allowed, torch.zeros_like(diff))
        worst = torch.nonzero(excess == excess.max())[0].tolist()
        w = tuple(worst)
        raise AssertionError(
            f"{name}: {int(bad.sum())}/{a.numel()} elements ({100.0 * bad.float().mean().item():.3g}%) out of "
            f"tolerance (atol={atol:g}, rtol={rtol:g}); worst at {worst}: actual {a[w].item()!r}, expected "
            f"{e[w].item()!r}, |diff| {diff[w].item():.3e}; max |diff| overall {diff.max().item():.3e}"
        )
