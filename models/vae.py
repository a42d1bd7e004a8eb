"""The VAE baseline of the VMA paper: the same encoder and decoder, no memory.

    p(x) = ∫ N(z; 0, I) p(x | z) dz,   q(z | x) from the x-pyramid and an MLP head.

Trained on the K-sample importance-weighted bound log (1/K) Σ_k p(x, z_k)/q(z_k | x)
(IWAE; the VMA paper's eq. 7 without the address), fully reparameterized. ``uses_memory`` is
False: the memory argument of every method is ignored (it may be None).
"""
from __future__ import annotations

import torch

from models.base import FewShotGenerativeModel, Objective
from models.checks import check_images, check_num_samples
from models.distributions import DiagonalGaussian, bernoulli_log_prob
from models.estimators import check_chunking, chunked_log_mean_exp, log_mean_exp
from models.networks import MLPHead, build_decoder, build_pyramid, head_hidden


class VAE(FewShotGenerativeModel):
    uses_memory = False
    has_address = False

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

    def objective(self, memory, targets, num_samples: int | None = None, *, generator: torch.Generator | None = None) -> Objective:
        K = check_num_samples(self.config.num_samples if num_samples is None else num_samples, 1, "VAE.objective")
        q_z = self.posterior(targets, "VAE.objective")
        log_w, log_px = self.log_weights(q_z, targets, K, generator)  # [G, T, K]
        bound = log_mean_exp(log_w)  # [G, T]  IWAE bound
        return Objective(
            loss=-bound.mean(),
            bound=bound.detach(),
            reconstruction=log_px.detach().mean(-1),
            kl_address=torch.zeros_like(bound.detach()),
            kl_latent=q_z.kl(DiagonalGaussian.standard(q_z.mean.shape, q_z.mean)).detach(),
        )

    @torch.no_grad()
    def log_likelihood(self, memory, targets, num_samples: int, chunk: int = 100, *, generator: torch.Generator | None = None) -> torch.Tensor:
        check_chunking(num_samples, chunk, "VAE.log_likelihood")
        q_z = self.posterior(targets, "VAE.log_likelihood")
        return chunked_log_mean_exp(lambda k: self.log_weights(q_z, targets, k, generator)[0], num_samples, chunk)

    @torch.no_grad()
    def sample(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        num = check_num_samples(num, 1, "VAE.sample")
        G = memory.shape[0] if memory is not None else 1
        p = next(self.parameters())
        z = torch.randn(G * num, self.config.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(z)).view(G, num, 1, *self.image_shape)
