"""The VAE baseline of the VMA paper: the same encoder and decoder, no memory.

    p(x) = ∫ N(z; 0, I) p(x | z) dz,   q(z | x) from the x-pyramid and an MLP head.

Trained on the K-sample importance-weighted bound log (1/K) Σ_k p(x, z_k)/q(z_k | x)
(IWAE; the VMA paper's eq. 7 without the address), fully reparameterized. ``uses_memory`` is
False: the memory argument of every method is ignored (it may be None).

Embedding (``embed``, for cosine nearest-neighbour classification): the mean of q(z | x) — the
features of q(z | ·) that the talk's cosine classifier uses, the only per-image code the VAE has.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp, iwae_objective
from varmem.models.networks import MLPHead, NetworkConfig, build_decoder, build_pyramid, head_hidden
from varmem.models.registry import register


@dataclass(frozen=True)
class VAEConfig(NetworkConfig):
    """The VAE baseline's config: the shared networks only (it has no memory)."""


@register("vae", VAEConfig)
class VAE(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING, Capability.EMBEDDING})
    uses_memory = False

    def __init__(self, config, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        self.x_pyramid = build_pyramid(config, image_shape)
        self.posterior_head = MLPHead(self.x_pyramid.top_dim, 2 * config.z_dim, head_hidden(config))  # q(z | x)
        self.decoder = build_decoder(config, image_shape, config.z_dim, skips=False)  # p(x | z)

    def posterior(self, targets: torch.Tensor, op: str) -> DiagonalGaussian:
        G, T = check_images("targets", targets, self.image_shape, op)
        top = self.x_pyramid.top(self.x_pyramid(targets.reshape(G * T, 1, *self.image_shape)))
        return DiagonalGaussian.from_params(self.posterior_head(top.view(G, T, -1)))  # [G, T, z]

    def log_weights(self, q_z: DiagonalGaussian, targets: torch.Tensor, k: int, generator=None):
        """(log w, log p(x | z)) for k samples z ~ q(z | x): [G, T, k] each."""
        G, T = targets.shape[:2]
        z = q_z.unsqueeze(2).rsample((G, T, k), generator=generator)  # [G, T, k, z]
        logits = self.decoder(z.reshape(G * T * k, -1)).view(G, T, k, 1, *self.image_shape)
        log_px = bernoulli_log_prob(logits, targets.unsqueeze(2))  # [G, T, k]
        log_pz = DiagonalGaussian.standard(z.shape, z).log_prob(z)
        return log_px + log_pz - q_z.unsqueeze(2).log_prob(z), log_px

    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        K = check_num_samples(num_samples, 1, "VAE.objective")
        targets = batch.targets
        q_z = self.posterior(targets, "VAE.objective")
        log_w, log_px = self.log_weights(q_z, targets, K, generator)  # [G, T, K]
        return iwae_objective(log_w, log_px, q_z)

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *, generator: torch.Generator | None = None) -> torch.Tensor:
        check_chunking(num_samples, chunk, "VAE.log_likelihood")
        targets = batch.targets
        q_z = self.posterior(targets, "VAE.log_likelihood")
        return chunked_log_mean_exp(lambda k: self.log_weights(q_z, targets, k, generator)[0], num_samples, chunk)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        G = memory.shape[0] if memory is not None else 1
        p = next(self.parameters())
        z = torch.randn(G * num, self.config.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.decoder(z).view(G, num, 1, *self.image_shape)  # logits

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x): images [..., 1, H, W] → [..., z]."""
        flat = images.reshape(1, -1, *images.shape[-3:]) if images.dim() >= 3 else images  # [1, N, 1, H, W]
        q_z = self.posterior(flat, "VAE.embed")  # [1, N, z]
        return q_z.mean.reshape(*images.shape[:-3], -1)
