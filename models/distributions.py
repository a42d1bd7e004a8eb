"""The two likelihood families of varmem's models: diagonal Gaussians over z, Bernoulli pixels.

All log-densities are in nats and summed over the event dimension (the last dim for z, the
last three for images), so they broadcast over any leading sample / episode / target dims.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Floor on a Gaussian's standard deviation: keeps log q(z) bounded when an encoder
# collapses a dimension (a pure numerical guard, below anything a model needs at |z| ≤ 64).
MIN_STD = 1e-4
_LOG_2PI = math.log(2.0 * math.pi)


@dataclass
class DiagonalGaussian:
    """N(mean, diag(std²)); ``mean`` and ``std`` [..., z]."""

    mean: torch.Tensor  # [..., z]
    std: torch.Tensor  # [..., z]

    @classmethod
    def from_params(cls, params: torch.Tensor) -> "DiagonalGaussian":
        """From a network output [..., 2z]: first half the mean, second half softplus⁻¹(std)."""
        mean, raw = params.chunk(2, dim=-1)
        return cls(mean, F.softplus(raw) + MIN_STD)

    @classmethod
    def standard(cls, shape: tuple[int, ...], like: torch.Tensor) -> "DiagonalGaussian":
        zeros = like.new_zeros(shape)
        return cls(zeros, torch.ones_like(zeros))

    def index(self, idx: torch.Tensor) -> "DiagonalGaussian":
        """Rows ``idx`` of a batch of Gaussians [N, z] → [*idx.shape, z]."""
        return DiagonalGaussian(self.mean[idx], self.std[idx])

    def unsqueeze(self, dim: int) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mean.unsqueeze(dim), self.std.unsqueeze(dim))

    def rsample(self, shape: tuple[int, ...] = (), generator: torch.Generator | None = None) -> torch.Tensor:
        """Reparameterized z = mean + std·ε, ε ~ N(0, I): [*self.mean.shape[:-1] broadcast, z]."""
        full = torch.broadcast_shapes(tuple(shape) + (self.mean.shape[-1],), self.mean.shape)
        eps = torch.randn(full, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log N(z; mean, std²) summed over the last dim: [...]."""
        u = (z - self.mean) / self.std
        return (-0.5 * u.square() - torch.log(self.std) - 0.5 * _LOG_2PI).sum(-1)

    def kl(self, other: "DiagonalGaussian") -> torch.Tensor:
        """Analytic KL(self || other) summed over the last dim: [...]."""
        var_ratio = (self.std / other.std).square()
        mean_term = ((self.mean - other.mean) / other.std).square()
        return 0.5 * (var_ratio + mean_term - 1.0 - torch.log(var_ratio)).sum(-1)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log p(x | logits) = Σ_pixels [x log σ(l) + (1 − x) log σ(−l)]: logits/x [..., 1, H, W] → [...].

    Grey values x ∈ [0, 1] are taken as soft targets (the usual Omniglot-28×28 practice).
    """
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum((-3, -2, -1))
