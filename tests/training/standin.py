"""A tiny stand-in model for the trainer's tests: a linear Gaussian-latent, Bernoulli-pixel VAE
conditioned on the mean of the memory, behind ``models.base``'s interface.

It keeps the trainer's tests independent of the real models: fast (a few thousand parameters
at 26×26), exactly reproducible on CPU, and it draws its posterior noise from torch's global
RNG, as the real models do, so resume tests see whether the RNG state is restored.
``address=True`` adds an address posterior q(a|x) ∝ exp(−||x − m_a||² / D) for accuracy tests;
``global_noise=True`` also scales the loss by a factor drawn from numpy's and Python's global RNGs
(so that a resume that forgot to restore them would show).
Config: ``model: {factory: tests.training.standin:build, latent: 4, address: false}``.
"""
from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from models.base import FewShotGenerativeModel, Objective

FACTORY = "tests.training.standin:build"


class LinearMemoryVAE(FewShotGenerativeModel):
    uses_memory = True

    def __init__(self, image_shape: tuple[int, int], latent: int = 4, address: bool = False, global_noise: bool = False):
        super().__init__()
        self.global_noise = global_noise
        self.pixels = image_shape[0] * image_shape[1]
        self.image_shape = tuple(image_shape)
        self.has_address = address
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

    def objective(self, memory, targets, num_samples):
        log_w, log_px, kl = self._log_weights(memory, targets, num_samples)
        bound = torch.logsumexp(log_w, 0) - math.log(num_samples)  # [G, T]
        scale = 1.0 + 1e-3 * (np.random.rand() + random.random()) if self.global_noise and self.training else 1.0
        return Objective(loss=-bound.mean() * scale, bound=bound, reconstruction=log_px.mean(0), kl_address=torch.zeros_like(bound),
                         kl_latent=kl.mean(0))

    def log_likelihood(self, memory, targets, num_samples, chunk=100):
        total = None
        for start in range(0, num_samples, chunk):
            part = torch.logsumexp(self._log_weights(memory, targets, min(chunk, num_samples - start))[0], 0)
            total = part if total is None else torch.logaddexp(total, part)
        return total - math.log(num_samples)

    def address_log_posterior(self, memory, targets):
        if not self.has_address:
            return super().address_log_posterior(memory, targets)
        d = torch.cdist(targets.flatten(2), memory.flatten(2)).pow(2)  # [G, T, M]
        return torch.log_softmax(-d / self.pixels * 50.0, -1)

    def sample(self, memory, num):
        c = self.context(memory.flatten(2).mean(1))[:, None]  # [G, 1, L]
        z = torch.randn(c.shape[0], num, c.shape[-1])
        return torch.sigmoid(self.decoder(torch.cat([z, c.expand_as(z)], -1))).view(c.shape[0], num, 1, *self.image_shape)


def build(model: dict, image_shape: tuple[int, int]) -> LinearMemoryVAE:
    return LinearMemoryVAE(image_shape, **model)
