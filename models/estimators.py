"""Importance-sampling estimators shared by the models: K-sample bounds and chunked evaluation.

``log_mean_exp(log_w)`` is the K-sample bound log (1/K) Σ_k w_k (VMA eq. 7, IWAE).
``chunked_log_mean_exp`` evaluates the same bound for thousands of samples ``chunk`` at a time,
merging chunks with a running log-sum-exp, so memory stays bounded whatever K is.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch


def log_mean_exp(log_w: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log (1/K) Σ_k exp(log_w_k) over ``dim`` (K = its size)."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


def check_chunking(num_samples: int, chunk: int, op: str) -> None:
    for name, v in (("num_samples", num_samples), ("chunk", chunk)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{op}: {name} must be an int >= 1, got {v!r}")


def chunked_log_mean_exp(draw: Callable[[int], torch.Tensor], num_samples: int, chunk: int) -> torch.Tensor:
    """log (1/K) Σ_k w_k with K = ``num_samples``, where ``draw(k)`` returns k log-weights [..., k].

    Calls ``draw`` with ``chunk`` (the last call with the remainder) and merges the chunks with
    a running log-sum-exp: exact whatever the split (up to float rounding).
    """
    check_chunking(num_samples, chunk, "chunked_log_mean_exp")
    total = None
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        part = torch.logsumexp(draw(k), dim=-1)  # [...]
        total = part if total is None else torch.logaddexp(total, part)
        done += k
    return total - math.log(num_samples)


def iwae_objective(log_w: torch.Tensor, log_px: torch.Tensor, q_z):
    """The importance-weighted Objective of a model whose only latent is z ~ q(z|x) with prior N(0, I)
    (the VAE and soft-attention baselines): log_w, log_px [G, T, K], q_z [G, T, z]. Fully reparameterized."""
    from varmem.models.base import Objective
    from varmem.models.distributions import DiagonalGaussian

    bound = log_mean_exp(log_w)  # [G, T]  IWAE bound (VMA eq. 7 without the address)
    return Objective(
        loss=-bound.mean(),
        bound=bound.detach(),
        terms={
            "reconstruction": log_px.detach().mean(-1),  # E_q log p(x | z, ...)
            "kl_latent": q_z.kl(DiagonalGaussian.standard(q_z.mean.shape, q_z.mean)).detach(),  # KL(q(z|x) || N(0, I))
        },
    )
