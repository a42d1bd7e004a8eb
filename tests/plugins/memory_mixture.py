"""A research user's model family, written outside varmem in one file: a mixture over the memory.

    p(x | M) = (1/M) Σ_a Π_pixels Bernoulli(x; σ(α m_a + β + γ z)),   z ~ N(0, 1) per target

with learned per-pixel α, β and a scalar γ (z makes it a latent-variable model trained on an
importance-weighted bound: q(z | x) = N(μ(x), σ(x)²) from a linear encoder). It declares the
likelihood, sampling and classification (by p(x | M_c)) capabilities and nothing else.

Used as ``varmem train --plugin tests/plugins/memory_mixture.py`` (a file path, as a researcher
would) in tests/plugins/test_plugin_family.py; no line of varmem names it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.registry import FamilyConfig, register


@dataclass(frozen=True)
class MemoryMixtureConfig(FamilyConfig):
    init_scale: float = 4.0  # α at initialization: how strongly an entry's pixels set the target's

    def validate(self) -> None:
        self._require(self.init_scale > 0, "init_scale", "> 0")


@register("memory_mixture", MemoryMixtureConfig)
class MemoryMixture(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING, Capability.CLASSIFICATION})

    def __init__(self, config: MemoryMixtureConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config, self.image_shape = config, tuple(image_shape)
        D = image_shape[0] * image_shape[1]
        self.alpha = nn.Parameter(torch.full((D,), config.init_scale))
        self.beta = nn.Parameter(torch.full((D,), -config.init_scale / 2))
        self.gamma = nn.Parameter(torch.tensor(0.1))
        self.encoder = nn.Linear(D, 2)  # x → (μ, log σ²) of q(z | x)

    def _log_px(self, memory: torch.Tensor, targets: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x | z, M) = log (1/M) Σ_a p(x | z, m_a): memory [G, M, 1, H, W], targets [G, T, 1, H, W], z [G, T, K] → [G, T, K]."""
        m, x = memory.flatten(2), targets.flatten(2)  # [G, M, D], [G, T, D]
        logits = self.alpha * m[:, None, None] + self.beta + self.gamma * z[..., None, None]  # [G, T, K, M, D]
        log_pa = -F.binary_cross_entropy_with_logits(logits, x[:, :, None, None].expand_as(logits), reduction="none").sum(-1)
        return torch.logsumexp(log_pa, -1) - math.log(memory.shape[1])  # [G, T, K]

    def _log_weights(self, batch: Batch, k: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(batch.targets.flatten(2)).unbind(-1)  # [G, T]
        std = (0.5 * logvar).exp()
        eps = torch.randn((*mu.shape, k), generator=generator, device=mu.device)
        z = mu[..., None] + std[..., None] * eps  # [G, T, K]
        log_px = self._log_px(batch.memory, batch.targets, z)
        log_pz = -0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)
        log_qz = -0.5 * eps.pow(2) - torch.log(std)[..., None] - 0.5 * math.log(2 * math.pi)
        return log_px + log_pz - log_qz, log_px  # [G, T, K] each

    def objective(self, batch: Batch, num_samples: int, *, generator=None) -> Objective:
        log_w, log_px = self._log_weights(batch, num_samples, generator)
        bound = torch.logsumexp(log_w, -1) - math.log(num_samples)  # [G, T]
        return Objective(loss=-bound.mean(), bound=bound.detach(),
                         terms={"log_px_mixture": log_px.detach().mean(-1), "gamma": self.gamma.detach().expand_as(bound)})

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *, generator=None) -> torch.Tensor:
        parts = [torch.logsumexp(self._log_weights(batch, min(chunk, num_samples - s), generator)[0], -1)
                 for s in range(0, num_samples, chunk)]
        return torch.logsumexp(torch.stack(parts), 0) - math.log(num_samples)  # [G, T]

    def _sample_logits(self, memory: torch.Tensor, num: int, *, generator=None) -> torch.Tensor:
        G, M = memory.shape[:2]
        a = torch.randint(M, (G, num), generator=generator, device=memory.device)  # [G, num]
        z = torch.randn(G, num, 1, generator=generator, device=memory.device)
        m = torch.gather(memory.flatten(2), 1, a[..., None].expand(G, num, memory[0, 0].numel()))  # [G, num, D]
        return (self.alpha * m + self.beta + self.gamma * z).view(G, num, 1, *self.image_shape)

    def _class_scores(self, batch: Batch) -> torch.Tensor:
        """log p(x | M_c) with z at its posterior mean: [G, T, C]."""
        C = batch.num_classes
        mu = self.encoder(batch.targets.flatten(2))[..., 0:1]  # [G, T, 1]
        m, x = batch.memory.flatten(2), batch.targets.flatten(2)
        logits = self.alpha * m[:, None] + self.beta + self.gamma * mu[..., None]  # [G, T, M, D]
        log_pa = -F.binary_cross_entropy_with_logits(logits, x[:, :, None].expand_as(logits), reduction="none").sum(-1)
        onehot = F.one_hot(batch.memory_labels, C).bool()  # [G, M, C]
        masked = log_pa.unsqueeze(-1).masked_fill(~onehot.unsqueeze(1), -math.inf)  # [G, T, M, C]
        return torch.logsumexp(masked, 2) - torch.log(onehot.sum(1).clamp_min(1)).unsqueeze(1)  # [G, T, C]
