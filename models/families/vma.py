"""Variational Memory Addressing (Bornschein, Mnih, Zoran & Rezende 2017).

Generative model, with a discrete address ``a`` over the memory M = {m_1..m_M}:

    p(x | M) = Σ_a p(a | M) ∫ p(z | m_a) p(x | z, m_a) dz                             (eq. 1)

Inference network q(a, z | M, x) = q(a | M, x) q(z | m_a, x) with

    e_a = h(m_a), e_q = h_q(x)  (untied embeddings in a ``match_dim``-d matching space)
    S(m_a, x) = <e_a, e_q> / ||e_a||                                                   (eqs. 4–6)
    q(a | M, x) = softmax_a S(m_a, x);  p(a | M) = softmax_a S(m_a, e_p) (learned query e_p
    sharing h) or 1/M (``prior="flat"``); both through ``varmem.kernels.memory_addressing``.

Training objective with K samples (a_k, z_k) ~ q:

    log w_k = log p(x | z_k, m_{a_k}) + log p(z_k | m_{a_k}) − log q(z_k | x, m_{a_k})
              + log p(a_k) − log q(a_k | x)
    L̂ = log (1/K) Σ_k w_k                                                               (eq. 7)

maximized through ``varmem.kernels.vimco_surrogate(log_w, log q(a_k|x))``: the address gradients are
VIMCO's (eq. 8: learning signal L̂ − L̂^{−k} on ∇ log q(a_k|x)), the z gradients are
reparameterized through log w (IWAE-style).

Networks (``varmem.models.networks``): one m-pyramid, tied between p(z | m) (its top), q(z | x, m)'s
m-pathway (its top), the decoder's skip connections (all levels) and the key embedding h(m);
an x-pyramid for q(z | x, m)'s x-pathway and h_q(x). q(z | x, m) concatenates x's and m's top
features: the x-pyramid runs once per target and the m-pyramid once per memory entry, so the
K address samples of a target cost K MLP heads and K decoders, not K conv pyramids. The decoder
gets the entries' skips and the row each sample reads, so that the half of its stage convolutions
that sees m_a runs once per entry, not once per (target, sample) (``ConvDecoder.shared_skips``).

Memory: ``memory="episode"`` reads the episode's exemplars [G, M, 1, H, W]; ``"learned"``
reads ``learned_memory_size`` parameter images shared by all episodes (the episode's memory
argument is then ignored and may be None).

Embedding (``embed``, for cosine nearest-neighbour classification): the x-pyramid's top features,
the inference network's features of x alone — the input of both q(z | x, m_a) (the talk's cosine
classifier uses features of q(z | ·)) and h_q(x). Not h_q(x) itself: training shapes h_q(x) only
against the keys h(m_a) of the untied m-network, never against another h_q(x'), so similarities
between two h_q codes are not what it learned (q(a|x) is the classifier that uses h_q); not the
mean of q(z | x, m_a), which depends on the entry m_a.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from varmem.kernels import memory_addressing, memory_log_softmax, vimco_surrogate
from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp
from varmem.models.learned_memory import LearnedMemory, no_weight_decay_names
from varmem.models.networks import MemoryConfig, MLPHead, build_decoder, build_pyramid, head_hidden
from varmem.models.registry import register

PRIORS = ("learned", "flat")
VIMCO_VARIANTS = ("geometric", "arithmetic")  # as in kernels.vimco


@dataclass(frozen=True)
class VMAConfig(MemoryConfig):
    """VMA's config: the shared networks and memory, p(a) and VIMCO's baseline."""

    prior: str = "learned"  # p(a): learned query e_p sharing h | flat 1/M
    vimco_variant: str = "geometric"  # leave-one-out baseline of VIMCO (VMA eq. 8)

    def validate(self) -> None:
        super().validate()
        self._require(self.prior in PRIORS, "prior", f"one of {', '.join(PRIORS)}")
        self._require(self.vimco_variant in VIMCO_VARIANTS, "vimco_variant", f"one of {', '.join(VIMCO_VARIANTS)}")


class EncodedMemory(NamedTuple):
    """Memory entries through the m-pathway. Rows: N_m = G·M (episode memory) or M (learned)."""

    skips: list  # m-pyramid features, fine to coarse: [N_m, c, h, w] (conv) or [N_m, w] (mlp)
    top: torch.Tensor  # [N_m, F_m]
    keys: torch.Tensor  # e_a = h(m_a): [G, M, d] (episode) or [M, d] (shared)
    prior_z: DiagonalGaussian  # p(z | m_a): [N_m, z]
    size: int  # M
    shared: bool  # one memory for all episodes (learned memory)

    def rows(self, addresses: torch.Tensor) -> torch.Tensor:
        """Row of each address in the N_m rows: addresses [G, ...] → same shape, int64."""
        if self.shared:
            return addresses
        G = addresses.shape[0]
        offset = torch.arange(G, device=addresses.device).view(G, *([1] * (addresses.dim() - 1)))
        # an invalid address (kernels.INVALID_ADDRESS, −1: a row with NaN/inf logits) stays −1
        return torch.where(addresses < 0, addresses, addresses + offset * self.size)


class EncodedTargets(NamedTuple):
    x: torch.Tensor  # [G, T, 1, H, W]
    top: torch.Tensor  # x-pyramid top features [G, T, F_x]
    query: torch.Tensor  # e_q = h_q(x) [G, T, d]


class Addresses(NamedTuple):
    rows: torch.Tensor  # [G, T, K] row of m_{a_k} in EncodedMemory (int64)
    log_q: torch.Tensor  # [G, T, K] log q(a_k | x)
    log_prior: torch.Tensor  # [G, T, K] log p(a_k)
    kl: torch.Tensor  # [G, T] exact KL(q(a | x) || p(a))


class LatentTerms(NamedTuple):
    log_px: torch.Tensor  # [G, T, K] log p(x | z_k, m_{a_k})
    log_pz: torch.Tensor  # [G, T, K] log p(z_k | m_{a_k})
    log_qz: torch.Tensor  # [G, T, K] log q(z_k | x, m_{a_k})
    kl_z: torch.Tensor  # [G, T, K] KL(q(z | x, m_{a_k}) || p(z | m_{a_k})), analytic


@register("vma", VMAConfig)
class VMA(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.ADDRESS, Capability.SAMPLING, Capability.CLASSIFICATION,
                              Capability.EMBEDDING})
    uses_memory = True
    min_num_samples = 2  # VIMCO's leave-one-out baselines use the other samples

    def __init__(self, config: VMAConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        hh = head_hidden(config)
        self.m_pyramid = build_pyramid(config, image_shape)  # tied: p(z|m), q(z|x,m), decoder skips, h(m)
        self.x_pyramid = build_pyramid(config, image_shape)  # q(z|x,m)'s x-pathway and h_q(x)
        f_m, f_x = self.m_pyramid.top_dim, self.x_pyramid.top_dim
        self.key_embed = MLPHead(f_m, config.match_dim, hh)  # h(m_a)           (eq. 5)
        self.query_embed = MLPHead(f_x, config.match_dim, hh)  # h_q(x), untied   (eq. 5)
        # e_p: zeros start p(a) uniform; S(e_p, e_a) = <e_p, e_a>/||e_a|| learns a prior over entries
        self.prior_query = nn.Parameter(torch.zeros(config.match_dim)) if config.prior == "learned" else None
        self.prior_z_head = MLPHead(f_m, 2 * config.z_dim, hh)  # p(z | m_a)
        self.posterior_head = MLPHead(f_x + f_m, 2 * config.z_dim, hh)  # q(z | x, m_a) on concat(x, m_a)
        self.decoder = build_decoder(config, image_shape, config.z_dim, skips=True)  # p(x | z, m_a)
        self.learned_memory = LearnedMemory(config.learned_memory_size, image_shape) if config.memory == "learned" else None
        if self.learned_memory is not None:  # learned entries carry no class labels: q(a|x) does not classify
            self.capabilities = type(self).capabilities - {Capability.CLASSIFICATION}

    # -----------------------------------------------------------------------------------------
    # encoders
    # -----------------------------------------------------------------------------------------

    def encode_memory(self, memory: torch.Tensor | None, op: str = "VMA") -> EncodedMemory:
        if self.learned_memory is not None:
            images = self.learned_memory()  # [M, 1, H, W]
            G, M = None, images.shape[0]
        else:
            if memory is None:
                raise ValueError(f"{op}: memory is None but the model reads episode memory (config.memory='episode')")
            G, M = check_images("memory", memory, self.image_shape, op)
            images = memory.reshape(G * M, 1, *self.image_shape)  # [G·M, 1, H, W]
        skips = self.m_pyramid(images)
        top = self.m_pyramid.top(skips)  # [N_m, F_m]
        keys = self.key_embed(top)  # [N_m, d]
        if G is not None:
            keys = keys.view(G, M, -1)  # [G, M, d]
        prior_z = DiagonalGaussian.from_params(self.prior_z_head(top))  # [N_m, z]
        return EncodedMemory(skips, top, keys, prior_z, M, G is None)

    def encode_targets(self, targets: torch.Tensor, op: str = "VMA") -> EncodedTargets:
        G, T = check_images("targets", targets, self.image_shape, op)
        skips = self.x_pyramid(targets.reshape(G * T, 1, *self.image_shape))
        top = self.x_pyramid.top(skips).view(G, T, -1)  # [G, T, F_x]
        return EncodedTargets(targets, top, self.query_embed(top))  # e_q [G, T, d]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The x-pyramid's top features (see the module docstring): images [..., 1, H, W] → [..., F_x]."""
        flat = images.reshape(1, -1, *images.shape[-3:]) if images.dim() >= 3 else images  # [1, N, 1, H, W]
        _, N = check_images("images", flat, self.image_shape, "VMA.embed")
        top = self.x_pyramid.top(self.x_pyramid(flat.reshape(N, 1, *self.image_shape)))  # [N, F_x]
        return top.reshape(*images.shape[:-3], -1)

    def _check_episodes(self, memory, targets) -> None:
        if memory is not None and self.learned_memory is None and memory.shape[0] != targets.shape[0]:
            raise ValueError(f"VMA: memory {tuple(memory.shape)} and targets {tuple(targets.shape)} disagree on G (dim 0)")

    # -----------------------------------------------------------------------------------------
    # q(a | x), p(a)
    # -----------------------------------------------------------------------------------------

    def sample_addresses(self, mem: EncodedMemory, tgt: EncodedTargets, num_samples: int, generator=None) -> Addresses:
        """K exact samples a_k ~ q(a | x) (eqs. 4–6) with log q, log p(a) and the exact KL."""
        G, T, d = tgt.query.shape
        kwargs = dict(prior_query=self.prior_query, num_samples=num_samples, similarity=self.config.similarity, generator=generator)
        if mem.shared:  # one memory for all G·T targets
            out = memory_addressing(tgt.query.reshape(G * T, d), mem.keys, **kwargs)  # [G·T, K]
            out = type(out)(*(t.reshape(G, T, *t.shape[1:]) for t in out))
        else:
            out = memory_addressing(tgt.query, mem.keys, **kwargs)  # [G, T, K]
        return Addresses(mem.rows(out.addresses), out.log_q, out.log_prior, out.kl)

    def log_prior_all(self, mem: EncodedMemory, G: int) -> torch.Tensor:
        """log p(a) over all entries: [G, M]."""
        M = mem.size
        if self.prior_query is None:
            return mem.top.new_full((G, M), -math.log(M))
        sim = self.config.similarity
        if mem.shared:
            return memory_log_softmax(self.prior_query[None], mem.keys, similarity=sim).expand(G, M)  # [G, M]
        e_p = self.prior_query.expand(G, 1, -1)  # [G, 1, d]
        return memory_log_softmax(e_p, mem.keys, similarity=sim).squeeze(1)  # [G, M]

    # -----------------------------------------------------------------------------------------
    # z given the address: q(z | x, m_a), p(z | m_a), p(x | z, m_a)
    # -----------------------------------------------------------------------------------------

    def latent_terms(self, mem: EncodedMemory, tgt: EncodedTargets, rows: torch.Tensor, generator=None) -> LatentTerms:
        """One reparameterized z per (target, address row): rows [G, T, K] → terms [G, T, K]."""
        G, T, K = rows.shape
        flat = rows.reshape(-1).clamp_min(0)  # [G·T·K]; an invalid (−1) row reads row 0: its log q(a|x) is NaN anyway
        rows = rows.clamp_min(0)
        m_top = mem.top[flat].view(G, T, K, -1)  # [G, T, K, F_m]
        x_top = tgt.top.unsqueeze(2).expand(G, T, K, tgt.top.shape[-1])  # [G, T, K, F_x]
        q_z = DiagonalGaussian.from_params(self.posterior_head(torch.cat([x_top, m_top], dim=-1)))  # [G, T, K, z]
        p_z = mem.prior_z.index(rows)  # [G, T, K, z]
        z = q_z.rsample(generator=generator)  # [G, T, K, z]
        # the decoder reads m_{a_k}'s skips by row: its skip convolutions run once per entry (networks.py)
        logits = self.decoder(z.reshape(G * T * K, -1), mem.skips, rows=flat)  # [G·T·K, 1, H, W]
        log_px = bernoulli_log_prob(logits.view(G, T, K, 1, *self.image_shape), tgt.x.unsqueeze(2))  # [G, T, K]
        return LatentTerms(log_px, p_z.log_prob(z), q_z.log_prob(z), q_z.kl(p_z))

    # -----------------------------------------------------------------------------------------
    # FewShotModel
    # -----------------------------------------------------------------------------------------

    def no_weight_decay(self) -> list[str]:
        return no_weight_decay_names(self)  # learned memory entries (VMA §4.3)

    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        K = check_num_samples(num_samples, 2, "VMA.objective", " (VIMCO's leave-one-out baselines need the other samples)")
        memory, targets = batch.memory, batch.targets
        self._check_episodes(memory, targets)
        mem = self.encode_memory(memory, "VMA.objective")
        tgt = self.encode_targets(targets, "VMA.objective")
        addr = self.sample_addresses(mem, tgt, K, generator)  # [G, T, K]
        lat = self.latent_terms(mem, tgt, addr.rows, generator)  # [G, T, K]
        log_w = lat.log_px + lat.log_pz - lat.log_qz + addr.log_prior - addr.log_q  # [G, T, K]   (eq. 7)
        # value: L̂ (eq. 7); autograd: VIMCO for a (eq. 8), reparameterized for z
        surrogate = vimco_surrogate(log_w, addr.log_q, self.config.vimco_variant)  # [G, T]
        return Objective(
            loss=-surrogate.mean(),
            bound=surrogate.detach(),
            terms={
                "reconstruction": lat.log_px.detach().mean(-1),  # E_q log p(x | z, m_a)
                "kl_address": addr.kl.detach(),  # KL(q(a|x) || p(a)), exact
                "kl_latent": lat.kl_z.detach().mean(-1),  # E over the sampled a_k of the analytic KL
            },
        )

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *, exact_address: bool = False,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """Importance-sampled log p(x | M) [G, T] with the proposal q(a, z | x).

        ``exact_address=False``: K = ``num_samples`` samples (a_k, z_k) ~ q, log (1/K) Σ_k w_k.
        ``exact_address=True``: sums over every address instead of sampling it,
        log Σ_a p(a) (1/S) Σ_s p(x, z_s | m_a) / q(z_s | x, m_a) with S = ``num_samples`` z samples
        per address (M·S decoder calls per target; lower variance, for small M). Both are
        computed ``chunk`` decoder calls per target at a time.
        """
        check_chunking(num_samples, chunk, "VMA.log_likelihood")
        memory, targets = batch.memory, batch.targets
        self._check_episodes(memory, targets)
        mem = self.encode_memory(memory, "VMA.log_likelihood")
        tgt = self.encode_targets(targets, "VMA.log_likelihood")
        if not exact_address:

            def draw(k: int) -> torch.Tensor:
                addr = self.sample_addresses(mem, tgt, k, generator)
                lat = self.latent_terms(mem, tgt, addr.rows, generator)
                return lat.log_px + lat.log_pz - lat.log_qz + addr.log_prior - addr.log_q  # [G, T, k]

            return chunked_log_mean_exp(draw, num_samples, chunk)

        G, T = targets.shape[:2]
        M, S = mem.size, num_samples
        per_block = max(1, chunk // S)  # addresses per call
        log_px_a = []  # [G, T, A] per block: log p̂(x | m_a)
        for a0 in range(0, M, per_block):
            a = torch.arange(a0, min(M, a0 + per_block), device=targets.device)  # [A]
            rows_a = mem.rows(a.expand(G, T, -1))  # [G, T, A]

            def draw(k: int, rows_a=rows_a) -> torch.Tensor:
                A = rows_a.shape[-1]
                rows = rows_a.unsqueeze(-1).expand(G, T, A, k).reshape(G, T, A * k)
                lat = self.latent_terms(mem, tgt, rows, generator)
                return (lat.log_px + lat.log_pz - lat.log_qz).view(G, T, A, k)

            log_px_a.append(chunked_log_mean_exp(draw, S, min(S, chunk)))
        log_p_a = self.log_prior_all(mem, G).unsqueeze(1)  # [G, 1, M]
        return torch.logsumexp(log_p_a + torch.cat(log_px_a, dim=-1), dim=-1)  # [G, T]  (eq. 1)

    def _address_log_posterior(self, batch: Batch) -> torch.Tensor:
        """log q(a | x, M) [G, T, M] (eq. 5); classification reads its mass per class."""
        memory, targets = batch.memory, batch.targets
        self._check_episodes(memory, targets)
        mem = self.encode_memory(memory, "VMA.address_log_posterior")
        tgt = self.encode_targets(targets, "VMA.address_log_posterior")
        G, T, d = tgt.query.shape
        sim = self.config.similarity
        if mem.shared:
            return memory_log_softmax(tgt.query.reshape(G * T, d), mem.keys, similarity=sim).view(G, T, -1)
        return memory_log_softmax(tgt.query, mem.keys, similarity=sim)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """a ~ p(a), z ~ p(z | m_a), the Bernoulli logits of p(x | z, m_a): [G, num, 1, H, W]."""
        mem = self.encode_memory(memory, "VMA.sample")
        G = memory.shape[0] if memory is not None else 1
        probs = self.log_prior_all(mem, G).exp()  # [G, M]
        a = torch.multinomial(probs, num, replacement=True, generator=generator)  # [G, num]
        rows = mem.rows(a)
        z = mem.prior_z.index(rows).rsample(generator=generator)  # [G, num, z]
        logits = self.decoder(z.reshape(G * num, -1), mem.skips, rows=rows.reshape(-1))  # [G·num, 1, H, W]
        return logits.view(G, num, 1, *self.image_shape)
