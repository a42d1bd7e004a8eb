"""A tiny stand-in model for the trainer's tests: a linear Gaussian-latent, Bernoulli-pixel VAE
conditioned on the mean of the memory, behind ``varmem.models.base``'s interface.

It keeps the trainer's tests independent of the real models: fast (a few thousand parameters
at 26×26), exactly reproducible on CPU, and it draws its posterior noise from torch's global
RNG, as the real models do, so resume tests see whether the RNG state is restored.
``address=True`` adds an address posterior q(a|x) ∝ exp(−||x − m_a||² / D) for accuracy tests;
``global_noise=True`` also scales the loss by a factor drawn from numpy's and Python's global RNGs
(so that a resume that forgot to restore them would show).
Registered as the ``standin`` family by this module (a plugin, as a research user's family would be:
``load_plugins(["tests.distributed.standin"])`` or ``--plugin tests.distributed.standin``).
Config: ``model: {name: standin, latent: 4, address: false}``.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from dataclasses import dataclass

from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.registry import FamilyConfig, register

PLUGIN = "tests.distributed.standin"
CAPABILITIES = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING})


@dataclass(frozen=True)
class StandinConfig(FamilyConfig):
    latent: int = 4
    address: bool = False
    global_noise: bool = False


@register("standin", StandinConfig)
class LinearMemoryVAE(FewShotModel):
    uses_memory = True
    capabilities = CAPABILITIES  # an instance with address=True adds the address posterior and classification

    def __init__(self, config: StandinConfig | tuple, image_shape: tuple[int, int] | None = None, **kwargs):
        super().__init__()
        if not isinstance(config, FamilyConfig):  # LinearMemoryVAE(image_shape, latent=..., ...)
            config, image_shape = StandinConfig(**kwargs), config
        self.config = config
        latent, address, self.global_noise = config.latent, config.address, config.global_noise
        self.pixels = image_shape[0] * image_shape[1]
        self.image_shape = tuple(image_shape)
        if address:
            self.capabilities = CAPABILITIES | {Capability.ADDRESS, Capability.CLASSIFICATION}
        self.encoder = nn.Linear(self.pixels, 2 * latent)  # x → (μ, log σ²) of q(z|x, M)
        self.context = nn.Linear(self.pixels, latent)  # mean memory image → c
        self.decoder = nn.Linear(2 * latent, self.pixels)  # (z, c) → Bernoulli logits

    def _log_weights(self, memory: torch.Tensor, targets: torch.Tensor, k: int):
        x = targets.flatten(2)  # [G, T, D]
        c = self.context(memory.flatten(2).mean(1))[:, None]  # [G, 1, L]
        mu, logvar = self.encoder(x).chunk(2, -1)  # [G, T, L]
        std = (0.5 * logvar).exp()
        z = mu + std * torch.randn((k,) + mu.shape, dtype=mu.dtype, device=mu.device)  # [K, G, T, L]
        logits = self.decoder(torch.cat([z, c.expand_as(mu).expand_as(z)], -1))  # [K, G, T, D]
        log_px = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)  # [K, G, T]
        log_pz = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
        log_qz = (-0.5 * ((z - mu) / std).pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)
        return log_px + log_pz - log_qz, log_px, log_qz - log_pz

    def objective(self, batch: Batch, num_samples: int, *, generator=None):
        log_w, log_px, kl = self._log_weights(batch.memory, batch.targets, num_samples)
        bound = torch.logsumexp(log_w, 0) - math.log(num_samples)  # [G, T]
        scale = 1.0 + 1e-3 * (np.random.rand() + random.random()) if self.global_noise and self.training else 1.0
        return Objective(loss=-bound.mean() * scale, bound=bound.detach(),
                         terms={"reconstruction": log_px.mean(0).detach(), "kl_latent": kl.mean(0).detach()})

    def _log_likelihood(self, batch: Batch, num_samples, chunk=100, *, generator=None):
        memory, targets = batch.memory, batch.targets
        total = None
        for start in range(0, num_samples, chunk):
            part = torch.logsumexp(self._log_weights(memory, targets, min(chunk, num_samples - start))[0], 0)
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(num_samples)

    def _address_log_posterior(self, batch: Batch):
        d = torch.cdist(batch.targets.flatten(2), batch.memory.flatten(2)).pow(2)  # [G, T, M]
        return torch.log_softmax(-d / self.pixels * 50.0, -1)

    def _sample_logits(self, memory, num, *, generator=None):
        c = self.context(memory.flatten(2).mean(1))[:, None]  # [G, 1, L]
        z = torch.randn(c.shape[0], num, c.shape[-1], generator=generator)
        return self.decoder(torch.cat([z, c.expand_as(z)], -1)).view(c.shape[0], num, 1, *self.image_shape)
