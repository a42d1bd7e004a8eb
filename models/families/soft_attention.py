"""The soft-attention memory baseline of the VMA paper (GMN-like, Bartunov & Vetrov 2017).

z is the only latent; the memory is read by soft attention whose query comes from z:

    p(x | M) = ∫ N(z; 0, I) p(x | z, r(z, M)) dz
    r(z, M) = Σ_a softmax_a S(f(z), h(m_a)) g(m_a)      (kernels.memory_read, S as in VMA eq. 5)

with q(z | x) from the x-pyramid. h(m) (keys, ``match_dim``) and g(m) (values, ``read_dim``)
are MLP heads on the m-pyramid's top; f(z) is an MLP head on z. The decoder gets concat(z, r)
as its context at the top and, as a per-channel bias, at every resolution (the skip-like path
for r; the VMA decoder has pixel-level skips from its single m_a instead, which a convex
combination of M entries does not give). Trained on the K-sample IWAE bound, reparameterized.

Memory: episode exemplars or ``learned_memory_size`` parameter images (as in :mod:`varmem.models.vma`).

Embedding (``embed``, for cosine nearest-neighbour classification): the mean of q(z | x) — q(z | x)
reads x alone here, so its mean is a per-image code, the features the talk's cosine classifier uses.
"""
from __future__ import annotations

from typing import NamedTuple

from dataclasses import dataclass

import torch

from varmem.kernels import memory_read
from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp, iwae_objective
from varmem.models.learned_memory import LearnedMemory, no_weight_decay_names
from varmem.models.networks import MAX_KERNEL_DIM, MemoryConfig, MLPHead, build_decoder, build_pyramid, head_hidden
from varmem.models.registry import register


@dataclass(frozen=True)
class SoftAttentionConfig(MemoryConfig):
    """Soft attention's config: the shared networks and memory, and the width of the values read."""

    read_dim: int = 128  # width of the memory values g(m) read by attention

    def validate(self) -> None:
        super().validate()
        self._require(1 <= self.read_dim <= MAX_KERNEL_DIM, "read_dim",
                      f"an int in [1, {MAX_KERNEL_DIM}] (the Triton memory kernels' limit; wider runs only on the reference)")


class EncodedMemory(NamedTuple):
    keys: torch.Tensor  # h(m_a): [G, M, d] (episode) or [M, d] (shared learned memory)
    values: torch.Tensor  # g(m_a): [G, M, dv] or [M, dv]
    shared: bool


@register("soft_attention", SoftAttentionConfig)
class SoftAttentionMemory(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING, Capability.EMBEDDING})
    uses_memory = True

    def __init__(self, config, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        hh = head_hidden(config)
        self.x_pyramid = build_pyramid(config, image_shape)
        self.m_pyramid = build_pyramid(config, image_shape)
        self.posterior_head = MLPHead(self.x_pyramid.top_dim, 2 * config.z_dim, hh)  # q(z | x)
        self.key_embed = MLPHead(self.m_pyramid.top_dim, config.match_dim, hh)  # h(m)
        self.value_embed = MLPHead(self.m_pyramid.top_dim, config.read_dim, hh)  # g(m)
        self.read_query = MLPHead(config.z_dim, config.match_dim, hh)  # f(z)
        context = config.z_dim + config.read_dim
        self.decoder = build_decoder(config, image_shape, context, skips=False, context_bias=True)  # p(x | z, r)
        self.learned_memory = LearnedMemory(config.learned_memory_size, image_shape) if config.memory == "learned" else None

    def encode_memory(self, memory: torch.Tensor | None, op: str) -> EncodedMemory:
        if self.learned_memory is not None:
            images, G = self.learned_memory(), None  # [M, 1, H, W]
        else:
            if memory is None:
                raise ValueError(f"{op}: memory is None but the model reads episode memory (config.memory='episode')")
            G, M = check_images("memory", memory, self.image_shape, op)
            images = memory.reshape(G * M, 1, *self.image_shape)
        top = self.m_pyramid.top(self.m_pyramid(images))  # [N_m, F_m]
        keys, values = self.key_embed(top), self.value_embed(top)  # [N_m, d], [N_m, dv]
        if G is not None:
            keys, values = keys.view(G, M, -1), values.view(G, M, -1)
        return EncodedMemory(keys, values, G is None)

    def read(self, mem: EncodedMemory, z: torch.Tensor) -> torch.Tensor:
        """r = soft-attention read with query f(z): z [G, N, z] → r [G, N, dv]."""
        G, N, _ = z.shape
        query = self.read_query(z)  # [G, N, d]
        sim = self.config.similarity
        if mem.shared:
            return memory_read(query.reshape(G * N, -1), mem.keys, mem.values, similarity=sim).view(G, N, -1)
        return memory_read(query, mem.keys, mem.values, similarity=sim)

    def decode(self, mem: EncodedMemory, z: torch.Tensor) -> torch.Tensor:
        """Bernoulli logits of p(x | z, r): z [G, N, z] → [G, N, 1, H, W]."""
        G, N, _ = z.shape
        context = torch.cat([z, self.read(mem, z)], dim=-1)  # [G, N, z + dv]
        return self.decoder(context.reshape(G * N, -1)).view(G, N, 1, *self.image_shape)

    def posterior(self, targets: torch.Tensor, op: str) -> DiagonalGaussian:
        G, T = check_images("targets", targets, self.image_shape, op)
        top = self.x_pyramid.top(self.x_pyramid(targets.reshape(G * T, 1, *self.image_shape)))
        return DiagonalGaussian.from_params(self.posterior_head(top.view(G, T, -1)))  # [G, T, z]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x): images [..., 1, H, W] → [..., z]."""
        flat = images.reshape(1, -1, *images.shape[-3:]) if images.dim() >= 3 else images  # [1, N, 1, H, W]
        q_z = self.posterior(flat, "SoftAttentionMemory.embed")  # [1, N, z]
        return q_z.mean.reshape(*images.shape[:-3], -1)

    def log_weights(self, mem: EncodedMemory, q_z: DiagonalGaussian, targets: torch.Tensor, k: int, generator=None):
        """(log w, log p(x | z, r)) for k samples z ~ q(z | x): [G, T, k] each."""
        G, T = targets.shape[:2]
        z = q_z.unsqueeze(2).rsample((G, T, k), generator=generator)  # [G, T, k, z]
        logits = self.decode(mem, z.reshape(G, T * k, -1)).view(G, T, k, 1, *self.image_shape)
        log_px = bernoulli_log_prob(logits, targets.unsqueeze(2))  # [G, T, k]
        log_pz = DiagonalGaussian.standard(z.shape, z).log_prob(z)
        return log_px + log_pz - q_z.unsqueeze(2).log_prob(z), log_px

    def _check_episodes(self, memory, targets) -> None:
        if memory is not None and self.learned_memory is None and memory.shape[0] != targets.shape[0]:
            raise ValueError(
                f"SoftAttentionMemory: memory {tuple(memory.shape)} and targets {tuple(targets.shape)} disagree on G (dim 0)"
            )

    def no_weight_decay(self) -> list[str]:
        return no_weight_decay_names(self)

    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        op = "SoftAttentionMemory.objective"
        K = check_num_samples(num_samples, 1, op)
        memory, targets = batch.memory, batch.targets
        self._check_episodes(memory, targets)
        mem = self.encode_memory(memory, op)
        q_z = self.posterior(targets, op)
        log_w, log_px = self.log_weights(mem, q_z, targets, K, generator)  # [G, T, K]
        return iwae_objective(log_w, log_px, q_z)

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *, generator: torch.Generator | None = None) -> torch.Tensor:
        op = "SoftAttentionMemory.log_likelihood"
        check_chunking(num_samples, chunk, op)
        memory, targets = batch.memory, batch.targets
        self._check_episodes(memory, targets)
        mem = self.encode_memory(memory, op)
        q_z = self.posterior(targets, op)
        return chunked_log_mean_exp(lambda k: self.log_weights(mem, q_z, targets, k, generator)[0], num_samples, chunk)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        mem = self.encode_memory(memory, "SoftAttentionMemory.sample")
        G = memory.shape[0] if memory is not None else 1
        p = next(self.parameters())
        z = torch.randn(G, num, self.config.z_dim, generator=generator, device=p.device, dtype=p.dtype)
        return self.decode(mem, z)  # [G, num, 1, H, W] logits
