"""The Neural Statistician (Edwards & Storkey, "Towards a Neural Statistician", ICLR 2017).

A context c per *set* D = {x_1..x_N}; per-example latents z = (z_L, ..., z_1) below it:

    p(D) = ∫ p(c) Π_i ∫ p(x_i | z_i, c) p(z_i | c) dz_i dc,     p(c) = N(0, I)
    p(z | c) = p(z_L | c) Π_{l<L} p(z_l | z_{l+1}, c)              (the latent decoder network)
    p(x | z, c) = p(x | z_1..z_L, c)                                (the observation decoder: every z layer and c)

Inference: the *statistic network* q(c | D) = N(μ, σ²)(post-pool MLP of the mean over D of e(x_i)),
e = an MLP on the shared x-pyramid's top; the *inference network*
q(z | x, c) = q(z_L | x, c) Π_{l<L} q(z_l | z_{l+1}, x, c). The set's variational bound (the
paper's full model, reconstruction R_D − context divergence C_D − latent divergence L_D):

    L_D = E_{q(c|D)} Σ_i E_{q(z|x_i,c)} [ log p(x_i | z, c) − Σ_l KL(q(z_l | z_{l+1}, x_i, c) || p(z_l | z_{l+1}, c)) ]
          − KL(q(c | D) || p(c))  ≤  log p(D)

**How a Batch maps to sets (training).** Each episode's memory ∪ targets are grouped into sets by
label: item i goes to set ``label_i // set_classes`` (``set_classes`` = C_train, the classes per
training set: 1 = one set per class, the paper's Omniglot setup; 2 = pairs of the episode's
(randomly numbered) classes, the talk's C_train = 2 row; 0 = the whole episode is one set and no
labels are needed). The loss is −Σ_D L_D / Σ_D |D| (every memory entry and target counts), with
C_D spread evenly over the set's items. The per-target ``bound`` and ``terms`` are the target's
share of its set's bound: reconstruction − Σ_l kl_latent_l − kl_context, with
kl_context = C_D / |D|. Averaged over a whole set this bounds log p(D) / |D|; it is **not** a
bound on log p(x | M) for a target given the memory: :meth:`log_likelihood` is. The ELBO's
expectations are averaged over K = ``num_samples`` reparameterized samples of (c, z) (K = 1 is
the paper's; the KLs are analytic given the sampled parents).

**The conditional model p(x | X) (likelihood, sampling).** The NS has no tractable p(c | X); its
few-shot generation plugs in the statistic network. varmem's NS therefore scores and samples the
conditional model

    p̃(x | X) = ∫ q(c | X) p(x | c) dc,   p(x | c) = ∫ p(z | c) p(x | z, c) dz,   q(c | ∅) := p(c),

a proper density over x for every set X (the NS's generative model with its amortized posterior
predictive over c). ``log_likelihood`` is its K-sample importance-weighted bound with the proposal
r(c, z | x, X) = q(c | X ∪ {x}) q(z | x, c) (``proposal="set_and_target"``, the default) or
q(c | X) q(z | x, c) (``proposal="set"``):

    log w_k = log q(c_k | X) + log p(z_k | c_k) + log p(x | z_k, c_k) − log r(c_k, z_k | x, X)
    log (1/K) Σ_k w_k ≤ log p̃(x | X) in expectation, → log p̃(x | X) as K → ∞.

With X = ∅ this is the bound on the NS model's marginal log p(x). It is not the exact NS
conditional p(X ∪ {x}) / p(X): bounds on numerator and denominator give no bound on a ratio.
``sample`` draws from the same p̃: c ~ q(c | X), z ~ p(z | c), x ~ p(x | z, c), c afresh for
each sample.

**Classification** (the paper's few-shot method): the score of class k for a target x is
−KL(q(c | {x}) || q(c | D_k)), D_k = the memory entries labelled k (−inf for a label with no
entries). **Embedding**: the mean of q(c | {x}), the context of the one-image set (the
representation the KL classifier compares; no memory is involved).

Networks (``varmem.models.networks``, the sizes of VMA and the VAE): one x-pyramid shared by the
statistic network and the inference network; the VAE's decoder without skips, whose context is
concat(c, z_L, ..., z_1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp
from varmem.models.networks import MLPHead, NetworkConfig, build_decoder, build_pyramid, head_hidden, mlp
from varmem.models.registry import register

MAX_Z_LAYERS = 3  # the paper's hierarchy: z_1..z_3
PROPOSALS = ("set_and_target", "set")  # the context proposal of log_likelihood: q(c | X ∪ {x}) or q(c | X)


@dataclass(frozen=True)
class NeuralStatisticianConfig(NetworkConfig):
    """The Neural Statistician's config: the shared networks (``z_dim`` is the width of each z layer),
    the context width, the depth of the z hierarchy and how many classes make a training set."""

    c_dim: int = 64  # |c|, the context (paper Omniglot: 512)
    z_layers: int = 1  # L: stochastic layers z_L..z_1 (paper Omniglot: 3 layers of 16)
    set_classes: int = 1  # C_train: classes per training set (label // set_classes); 0 = the whole episode

    def validate(self) -> None:
        super().validate()
        self._require(self.c_dim >= 1, "c_dim", "an int >= 1")
        self._require(1 <= self.z_layers <= MAX_Z_LAYERS, "z_layers",
                      f"an int in [1, {MAX_Z_LAYERS}] (the paper's hierarchy z_L..z_1)")
        self._require(self.set_classes >= 0, "set_classes",
                      "an int >= 0 (classes per training set; 0 = the whole episode is one set)")


class Latents:
    """One pass through the z hierarchy, top (z_L) to bottom (z_1); every tensor [..., K] or [..., K, z]."""

    def __init__(self) -> None:
        self.z: list[torch.Tensor] = []  # z_L, ..., z_1: [..., z] each
        self.kl: list[torch.Tensor] = []  # KL(q(z_l | ·) || p(z_l | ·)) given the sampled parents, top to bottom
        self.log_p: torch.Tensor | float = 0.0  # log p(z | c) of the samples
        self.log_q: torch.Tensor | float = 0.0  # log q(z | x, c) of the samples


@register("neural_statistician", NeuralStatisticianConfig)
class NeuralStatistician(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING, Capability.CLASSIFICATION,
                              Capability.EMBEDDING})
    uses_memory = True
    classifier_method = "kl"  # the evaluation tables' name and label of class_scores (the paper's classifier)
    classifier_label = "−KL(q(c|x) ‖ q(c|D_k))"

    @property
    def min_memory_size(self) -> int:
        return 0  # q(c | ∅) = p(c): an empty memory is the model's marginal

    def __init__(self, config: NeuralStatisticianConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        hh = head_hidden(config)
        c, z, L = config.c_dim, config.z_dim, config.z_layers
        self.x_pyramid = build_pyramid(config, image_shape)  # shared by q(c | D) and q(z | x, c)
        F = self.x_pyramid.top_dim
        width = hh or F  # the pooled statistic's width
        self.statistic_width = width
        # the statistic network: e(x) per example, mean over the set, then the post-pool MLP to q(c | D)
        self.statistic_embed = mlp([F, width], final_activation=True)  # e(x) [.., width]
        self.statistic_head = MLPHead(width, 2 * c, hh)  # (μ_c, σ_c) of q(c | D)
        # the latent decoder p(z_l | z_{l+1}, c) and the inference network q(z_l | z_{l+1}, x, c), top layer first
        self.prior_heads = nn.ModuleList(MLPHead(c + (z if l else 0), 2 * z, hh) for l in range(L))
        self.posterior_heads = nn.ModuleList(MLPHead(F + c + (z if l else 0), 2 * z, hh) for l in range(L))
        self.decoder = build_decoder(config, image_shape, c + L * z, skips=False)  # p(x | z_1..z_L, c)

    # -----------------------------------------------------------------------------------------
    # the statistic network: q(c | D)
    # -----------------------------------------------------------------------------------------

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The x-pyramid's top: images [G, N, 1, H, W] (N ≥ 1) → [G, N, F]."""
        G, N = images.shape[:2]
        return self.x_pyramid.top(self.x_pyramid(images.reshape(G * N, 1, *self.image_shape))).view(G, N, -1)

    def context_from_sums(self, sums: torch.Tensor, counts: torch.Tensor) -> DiagonalGaussian:
        """q(c | D) from Σ_{x∈D} e(x) [..., width] and |D| [...]; p(c) = N(0, I) where |D| = 0."""
        mean = sums / counts.clamp_min(1).unsqueeze(-1).to(sums.dtype)  # [..., width]: the mean pooling
        q = DiagonalGaussian.from_params(self.statistic_head(mean))  # [..., c]
        empty = (counts == 0).unsqueeze(-1)  # [..., 1]
        return DiagonalGaussian(torch.where(empty, torch.zeros_like(q.mean), q.mean),
                                torch.where(empty, torch.ones_like(q.std), q.std))

    def context(self, images: torch.Tensor | None, op: str = "NeuralStatistician.context", episodes: int = 1) -> DiagonalGaussian:
        """q(c | D) of each episode's set: images [G, N, 1, H, W] → [G, c]; N = 0 or None: p(c) (G = ``episodes`` for None)."""
        images = self._memory(images, None, op)
        if images is None:
            p = next(self.parameters())
            zeros = torch.zeros(episodes, self.config.c_dim, device=p.device, dtype=p.dtype)
            return DiagonalGaussian(zeros, torch.ones_like(zeros))
        e = self.statistic_embed(self.features(images))  # [G, N, width]
        return self.context_from_sums(e.sum(1), torch.full(e.shape[:1], e.shape[1], device=e.device))

    # -----------------------------------------------------------------------------------------
    # z given c: the inference network, the latent decoder, the observation decoder
    # -----------------------------------------------------------------------------------------

    def infer_latents(self, h: torch.Tensor, c: torch.Tensor, generator=None) -> Latents:
        """z ~ q(z | x, c), top to bottom, with log p, log q and each layer's KL: h [..., F], c [..., c]."""
        out = Latents()
        parent = c
        for prior_head, posterior_head in zip(self.prior_heads, self.posterior_heads):
            p = DiagonalGaussian.from_params(prior_head(parent))  # p(z_l | z_{l+1}, c)  [..., z]
            q = DiagonalGaussian.from_params(posterior_head(torch.cat([h, parent], dim=-1)))  # q(z_l | z_{l+1}, x, c)
            z = q.rsample(generator=generator)  # [..., z]
            out.z.append(z)
            out.kl.append(q.kl(p))
            out.log_p = out.log_p + p.log_prob(z)
            out.log_q = out.log_q + q.log_prob(z)
            parent = torch.cat([c, z], dim=-1)
        return out

    def prior_latents(self, c: torch.Tensor, generator=None) -> list[torch.Tensor]:
        """z ~ p(z | c), top to bottom: c [..., c] → [z_L, ..., z_1], [..., z] each."""
        zs, parent = [], c
        for prior_head in self.prior_heads:
            z = DiagonalGaussian.from_params(prior_head(parent)).rsample(generator=generator)
            zs.append(z)
            parent = torch.cat([c, z], dim=-1)
        return zs

    def decode(self, c: torch.Tensor, zs: list[torch.Tensor]) -> torch.Tensor:
        """Bernoulli logits of p(x | z_1..z_L, c): c [..., c], zs [..., z] each → [..., 1, H, W]."""
        context = torch.cat([c, *zs], dim=-1)  # [..., c + L·z]
        lead = context.shape[:-1]
        return self.decoder(context.reshape(-1, context.shape[-1])).view(*lead, 1, *self.image_shape)

    # -----------------------------------------------------------------------------------------
    # batches
    # -----------------------------------------------------------------------------------------

    def _memory(self, memory: torch.Tensor | None, targets: torch.Tensor | None, op: str) -> torch.Tensor | None:
        """The memory [G, M, 1, H, W], or None when there is none (None or M = 0)."""
        if memory is None:
            return None
        H, W = self.image_shape
        if isinstance(memory, torch.Tensor) and memory.dim() == 5 and memory.shape[1] == 0:  # an empty memory
            if memory.shape[0] == 0 or tuple(memory.shape[2:]) != (1, H, W) or not memory.is_floating_point():
                raise ValueError(f"{op}: an empty memory must be float [G, 0, 1, {H}, {W}], got {tuple(memory.shape)} {memory.dtype}")
            G = memory.shape[0]
        else:
            G, _ = check_images("memory", memory, self.image_shape, op)
        if targets is not None and G != targets.shape[0]:
            raise ValueError(f"{op}: memory {tuple(memory.shape)} and targets {tuple(targets.shape)} disagree on G (dim 0)")
        return memory if memory.shape[1] else None

    def set_index(self, batch: Batch, M: int, op: str) -> torch.Tensor:
        """The training set of every item of memory ∪ targets: [G, M + T] int64 (see the module docstring)."""
        G, T = batch.targets.shape[:2]
        k = self.config.set_classes
        if k == 0:
            return torch.zeros(G, M + T, dtype=torch.long, device=batch.targets.device)
        if batch.target_labels is None or (M and batch.memory_labels is None):
            raise ValueError(
                f"{op}: model.set_classes={k} groups memory and targets into sets by class, but the batch carries no "
                f"{'target_labels' if batch.target_labels is None else 'memory_labels'}; set model.set_classes=0 to "
                f"train on each episode as one set"
            )
        labels = batch.target_labels if not M else torch.cat([batch.memory_labels, batch.target_labels], dim=1)  # [G, N]
        if labels.shape != (G, M + T) or labels.dtype.is_floating_point or bool((labels < 0).any()):
            raise ValueError(f"{op}: labels must be int64 [G, M] and [G, T] with values >= 0, got {tuple(labels.shape)}")
        return labels.long() // k

    # -----------------------------------------------------------------------------------------
    # FewShotModel
    # -----------------------------------------------------------------------------------------

    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        op = "NeuralStatistician.objective"
        K = check_num_samples(num_samples, 1, op)
        targets = batch.targets
        G, T = check_images("targets", targets, self.image_shape, op)
        memory = self._memory(batch.memory, targets, op)
        M = 0 if memory is None else memory.shape[1]
        items = targets if memory is None else torch.cat([memory, targets], dim=1)  # [G, N, 1, H, W], N = M + T
        N = M + T
        sets = self.set_index(batch, M, op)  # [G, N]
        S = int(sets.max()) + 1
        member = nn.functional.one_hot(sets, S).to(items.dtype)  # [G, N, S]
        counts = member.sum(1)  # [G, S]  |D| (0 for a set number no item has)

        h = self.features(items)  # [G, N, F]
        e = self.statistic_embed(h)  # [G, N, width]
        q_c = self.context_from_sums(member.transpose(1, 2) @ e, counts)  # q(c | D_s)  [G, S, c]
        kl_c = q_c.kl(DiagonalGaussian.standard(q_c.mean.shape, q_c.mean))  # C_D  [G, S]
        c = q_c.unsqueeze(2).rsample((G, S, K), generator=generator)  # [G, S, K, c]
        c_item = torch.gather(c, 1, sets.view(G, N, 1, 1).expand(G, N, K, c.shape[-1]))  # [G, N, K, c]
        lat = self.infer_latents(h.unsqueeze(2).expand(G, N, K, h.shape[-1]), c_item, generator)  # [G, N, K, ...]
        log_px = bernoulli_log_prob(self.decode(c_item, lat.z), items.unsqueeze(2))  # [G, N, K]

        reconstruction = log_px.mean(-1)  # [G, N]  E_q log p(x | z, c)
        kl_layers = [kl.mean(-1) for kl in lat.kl[::-1]]  # [G, N] each, z_1 (bottom) .. z_L (top)
        kl_latent = torch.stack(kl_layers).sum(0)  # [G, N]
        kl_context = torch.gather(kl_c / counts.clamp_min(1), 1, sets)  # [G, N]  C_D / |D| for each item
        elbo = reconstruction - kl_latent - kl_context  # [G, N]: Σ over a set = L_D
        tgt = slice(M, N)
        terms = {"reconstruction": reconstruction[:, tgt].detach(), "kl_context": kl_context[:, tgt].detach()}
        terms.update({f"kl_latent_{l + 1}": kl[:, tgt].detach() for l, kl in enumerate(kl_layers)})
        terms["kl_latent"] = kl_latent[:, tgt].detach()
        return Objective(loss=-elbo.mean(), bound=elbo[:, tgt].detach(), terms=terms)

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *, proposal: str = "set_and_target",
                        generator: torch.Generator | None = None) -> torch.Tensor:
        """The K-sample bound on log p̃(x | X), X = the episode's memory (module docstring), [G, T]."""
        op = "NeuralStatistician.log_likelihood"
        check_chunking(num_samples, chunk, op)
        if proposal not in PROPOSALS:
            raise ValueError(f"{op}: proposal must be one of {', '.join(PROPOSALS)}, got {proposal!r}")
        targets = batch.targets
        G, T = check_images("targets", targets, self.image_shape, op)
        memory = self._memory(batch.memory, targets, op)
        h = self.features(targets)  # [G, T, F]
        if memory is None:
            sums = h.new_zeros(G, self.statistic_width)  # [G, width]
            M = 0
        else:
            sums, M = self.statistic_embed(self.features(memory)).sum(1), memory.shape[1]  # [G, width]
        counts = torch.full((G,), M, device=h.device)
        prior_c = self.context_from_sums(sums, counts).unsqueeze(1).unsqueeze(2)  # q(c | X)  [G, 1, 1, c]
        if proposal == "set":
            r_c = prior_c
        else:  # q(c | X ∪ {x}): the target's encoding added to the pooled sum
            joint = sums.unsqueeze(1) + self.statistic_embed(h)  # [G, T, width]
            r_c = self.context_from_sums(joint, (counts + 1).unsqueeze(1).expand(G, T)).unsqueeze(2)  # [G, T, 1, c]

        def draw(k: int) -> torch.Tensor:
            c = r_c.rsample((G, T, k), generator=generator)  # [G, T, k, c]
            lat = self.infer_latents(h.unsqueeze(2).expand(G, T, k, h.shape[-1]), c, generator)
            log_px = bernoulli_log_prob(self.decode(c, lat.z), targets.unsqueeze(2))  # [G, T, k]
            return log_px + lat.log_p - lat.log_q + prior_c.log_prob(c) - r_c.log_prob(c)  # [G, T, k]  log w

        return chunked_log_mean_exp(draw, num_samples, chunk)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """c ~ q(c | X) (p(c) for an empty memory), z ~ p(z | c), logits of p(x | z, c): [G, num, 1, H, W]."""
        op = "NeuralStatistician.sample"
        G = 1 if memory is None else int(memory.shape[0])
        q_c = self.context(memory, op, episodes=G)  # [G, c]
        c = q_c.unsqueeze(1).rsample((G, num), generator=generator)  # [G, num, c]
        return self.decode(c, self.prior_latents(c, generator))  # [G, num, 1, H, W]

    def _class_scores(self, batch: Batch) -> torch.Tensor:
        """−KL(q(c | {x}) || q(c | D_k)) for the C classes of the memory labels: [G, T, C] (float64)."""
        op = "NeuralStatistician.class_scores"
        targets = batch.targets
        G, T = check_images("targets", targets, self.image_shape, op)
        memory = self._memory(batch.memory, targets, op)
        C = batch.num_classes
        q_x = self.context(targets.reshape(G * T, 1, 1, *self.image_shape), op)  # q(c | {x})  [G·T, c]
        if memory is None:
            return targets.new_full((G, T, C), float("-inf"), dtype=torch.float64)
        labels = batch.memory_labels  # [G, M]
        member = nn.functional.one_hot(labels.long(), C).to(memory.dtype)  # [G, M, C]
        counts = member.sum(1)  # [G, C]
        e = self.statistic_embed(self.features(memory))  # [G, M, width]
        q_d = self.context_from_sums(member.transpose(1, 2) @ e, counts)  # q(c | D_k)  [G, C, c]
        q_x = DiagonalGaussian(q_x.mean.view(G, T, 1, -1), q_x.std.view(G, T, 1, -1))  # [G, T, 1, c]
        scores = -q_x.kl(q_d.unsqueeze(1)).double()  # [G, T, C]
        return scores.masked_fill((counts == 0).unsqueeze(1), float("-inf"))

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """The mean of q(c | {x}): images [..., 1, H, W] → [..., c]."""
        lead = images.shape[:-3]
        n = images.shape[:-3].numel()
        q = self.context(images.reshape(n, 1, *images.shape[-3:]), "NeuralStatistician.embed")  # [n, c]
        return q.mean.view(*lead, -1)
