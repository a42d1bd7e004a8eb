"""Generative Matching Networks (Bartunov & Vetrov, "Fast adaptation in generative models with
generative matching networks", 2016/2018).

A conditional VAE over a conditioning set X = {x_1..x_T} (the episode's memory):

    p(x | X) = ∫ p(z | X) p(x | z, X) dz

Matching attention (as in Matching Networks) reads the set in both directions:

    a(q, x_t) = softmax_t sim(q, g(x_t)),   r(q, X) = Σ_t a(q, x_t) ψ(x_t)

with keys g(x_t) in a ``match_dim``-d matching space and prototypes ψ(x_t) (``read_dim``), MLP
heads on the set-pyramid's top; sim is ``similarity`` of ``varmem.kernels.memory_read`` (every
soft read goes through that kernel). Three reads, each with its own query:

* generator p(x | z, X): query f(z); the decoder gets concat(z, r) at its top and, as a
  per-channel bias, at every resolution (the networks of the soft-attention baseline);
* recognition q(z | x, X): query f_R(x) from the x-pyramid; q's MLP head gets concat(top(x), r_R);
* data-dependent prior p(z | X): a learned query e_p read over the recognition keys/prototypes
  (shared with q, as VMA's learned prior shares h), then an MLP head to (μ, σ).

**Pseudo-inputs** (``pseudo_inputs: true``): each read's set also holds trainable g*, ψ* as if an
extra input x* were always in X, so that X = ∅ still generates (p(z | ∅) and p(x | z, ∅) read
x* alone; ``min_memory_size`` 0). Without them X = ∅ is refused with a ValueError
(``min_memory_size`` 1).

**Full-context matching** (``matching_steps`` S ≥ 1): a recurrent read over X, the attention
LSTM of Matching Networks. q_0 = the query, r_1 = r(q_0, X); for s = 1..S−1:
(h_s, c_s) = LSTMCell(concat(q_0, r_s), (h_{s−1}, c_{s−1})), q_s = q_0 + h_s, r_{s+1} = r(q_s, X);
the read used is r_S. One controller for the generator, one for recognition and the prior.

**No attention** (``attention: none``, the talk's "GMN without attention"): r = the mean of
ψ(x_t) over X (and x*), whatever the query.

**Training** (``training``):

* ``sequence`` (the paper's meta-training): the episode's memory and targets, in a random order
  drawn from the objective's generator (torch's global RNG when none is given), form one sequence
  X = (x_1..x_N), N = M + T, scored as log p(X) = Σ_n log p(x_n | X_<n) — every position in one pass,
  each read restricted to its prefix (queries grouped by prefix length, one ``memory_read`` call per
  length). Without pseudo-inputs position 1 has X_<1 = ∅ and cannot be scored: a memory entry
  drawn at random is put first (targets are never there) and positions 2..N are scored. The loss
  is the mean over the scored positions of their K-sample bounds; ``Objective.bound`` and the
  terms are the targets' own positions, [G, T] (the positions of a uniformly random order are
  exchangeable, so their mean estimates the same per-position objective).
* ``targets``: each target is scored given the whole memory, log p(x_t | M) (how VMA trains).

``log_likelihood``, ``sample`` and the evaluation always condition each target on the whole
memory: log p(x_t | M), the quantity of the NLL tables. Capabilities: likelihood, sampling,
embedding. ``embed(images)`` (no set) returns the mean of q(z | x, X = ∅) — x* alone — with
pseudo-inputs, and of q(z | x, X = {x}) (the image conditions on itself, the smallest set the model
takes) without them; :meth:`GMN.embed_given` gives q(z | x, X)'s mean for a given set (the talk's
cosine-classification features).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from varmem.kernels import memory_read
from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp, log_mean_exp
from varmem.models.networks import (
    MAX_KERNEL_DIM,
    SIMILARITIES,
    MLPHead,
    NetworkConfig,
    build_decoder,
    build_pyramid,
    head_hidden,
)
from varmem.models.registry import register

ATTENTIONS = ("matching", "none")
TRAININGS = ("sequence", "targets")
MAX_MATCHING_STEPS = 16


@dataclass(frozen=True)
class GMNConfig(NetworkConfig):
    """GMN's config: the shared networks, the matching space, pseudo-inputs, matching steps, training."""

    similarity: str = "normalized_dot"  # sim(q, g(x_t)) of the matching attention (kernels.memory_read)
    match_dim: int = 128  # matching space of f(z), f_R(x), e_p and the keys g(x_t)
    read_dim: int = 128  # prototypes ψ(x_t) (the values read)
    pseudo_inputs: bool = True  # trainable g*, ψ* in every set: X = ∅ generates (0-shot)
    matching_steps: int = 1  # full-context matching: attentional steps of the recurrent read (1 = plain matching)
    attention: str = "matching"  # matching | none (ψ averaged over X: the talk's "no attention" GMN)
    training: str = "sequence"  # sequence: Σ_n log p(x_n | X_<n) over memory+targets shuffled | targets: log p(x_t | M)

    def validate(self) -> None:
        super().validate()
        self._require(self.similarity in SIMILARITIES, "similarity", f"one of {', '.join(SIMILARITIES)}")
        for name in ("match_dim", "read_dim"):
            self._require(1 <= getattr(self, name) <= MAX_KERNEL_DIM, name,
                          f"an int in [1, {MAX_KERNEL_DIM}] (the Triton memory kernels' limit)")
        self._require(1 <= self.matching_steps <= MAX_MATCHING_STEPS, "matching_steps",
                      f"an int in [1, {MAX_MATCHING_STEPS}] (attentional steps of the recurrent read)")
        self._require(self.attention in ATTENTIONS, "attention", f"one of {', '.join(ATTENTIONS)}")
        self._require(self.attention == "matching" or self.matching_steps == 1, "matching_steps",
                      "1 when attention is 'none' (an average reads no query, so further steps change nothing)")
        self._require(self.training in TRAININGS, "training", f"one of {', '.join(TRAININGS)}")


class EncodedSet(NamedTuple):
    """A conditioning set through the set-pathway, pseudo-input first: E = P + L entries (P = 1 with
    pseudo-inputs, else 0; L images). Row r of a read sees the first ``sizes[r]`` entries."""

    gen_keys: torch.Tensor | None  # g(x_t): [G, E, d] (None without attention)
    gen_values: torch.Tensor  # ψ(x_t): [G, E, dv]
    rec_keys: torch.Tensor | None  # g_R(x_t): [G, E, d]
    rec_values: torch.Tensor  # ψ_R(x_t): [G, E, dv]


class Weights(NamedTuple):
    """Importance weights of R scored images with K samples each."""

    log_w: torch.Tensor  # log p(x | z, X) + log p(z | X) − log q(z | x, X): [G, R, K]
    log_px: torch.Tensor  # log p(x | z, X): [G, R, K]
    q_z: DiagonalGaussian  # q(z | x, X): [G, R, z]
    p_z: DiagonalGaussian  # p(z | X): [G, R, z]


class MatchingRead(nn.Module):
    """r(q, X) restricted per row, with ``steps`` attentional steps (full-context matching).

    ``forward(query [G, R, Q, d], keys [G, E, d] | None, values [G, E, dv], sizes)``: row r's Q
    queries read the first ``sizes[r]`` entries → [G, R, Q, dv]. Consecutive rows of equal size
    share one ``memory_read`` call (targets given one memory: one call; a sequence's prefixes: one
    call per prefix length).
    """

    def __init__(self, match_dim: int, read_dim: int, steps: int, similarity: str, attention: str):
        super().__init__()
        self.similarity, self.attention, self.steps = similarity, attention, steps
        self.controller = nn.LSTMCell(match_dim + read_dim, match_dim) if steps > 1 else None

    def forward(self, query: torch.Tensor | None, keys: torch.Tensor | None, values: torch.Tensor,
                sizes: list[int], queries: int) -> torch.Tensor:
        G, R, Q = values.shape[0], len(sizes), queries
        if self.attention == "none":
            size = torch.as_tensor(sizes, device=values.device)  # [R]
            means = values.cumsum(1)[:, size - 1] / size.to(values.dtype)[None, :, None]  # [G, R, dv]
            return means.unsqueeze(2).expand(G, R, Q, values.shape[-1])
        r = self.read(query, keys, values, sizes)  # [G, R, Q, dv]
        if self.controller is None:
            return r
        d = query.shape[-1]
        state = None
        for _ in range(self.steps - 1):
            h, c = self.controller(torch.cat([query, r], -1).reshape(G * R * Q, -1), state)  # [G·R·Q, d] each
            state = (h, c)
            r = self.read(query + h.view(G, R, Q, d), keys, values, sizes)  # q_s = q_0 + h_s
        return r

    def read(self, query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        G, R, Q, d = query.shape
        parts = []
        i = 0
        while i < R:
            j = i
            while j < R and sizes[j] == sizes[i]:
                j += 1
            s = sizes[i]
            q = query[:, i:j].reshape(G, (j - i) * Q, d)  # [G, rows·Q, d]
            out = memory_read(q, keys[:, :s], values[:, :s], similarity=self.similarity)  # [G, rows·Q, dv]
            parts.append(out.view(G, j - i, Q, -1))
            i = j
        return parts[0] if len(parts) == 1 else torch.cat(parts, 1)  # [G, R, Q, dv]


@register("gmn", GMNConfig)
class GMN(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING, Capability.EMBEDDING})
    uses_memory = True

    def __init__(self, config: GMNConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        c, hh = config, head_hidden(config)
        matching = c.attention == "matching"
        self.x_pyramid = build_pyramid(c, image_shape)  # the scored image x (recognition)
        self.set_pyramid = build_pyramid(c, image_shape)  # the set's images x_t
        top = self.set_pyramid.top_dim
        self.gen_value = MLPHead(top, c.read_dim, hh)  # ψ(x_t)
        self.rec_value = MLPHead(top, c.read_dim, hh)  # ψ_R(x_t)
        if matching:
            self.gen_key = MLPHead(top, c.match_dim, hh)  # g(x_t)
            self.rec_key = MLPHead(top, c.match_dim, hh)  # g_R(x_t)
            self.gen_query = MLPHead(c.z_dim, c.match_dim, hh)  # f(z)
            self.rec_query = MLPHead(self.x_pyramid.top_dim, c.match_dim, hh)  # f_R(x)
            self.prior_query = nn.Parameter(torch.randn(c.match_dim))  # e_p
        if c.pseudo_inputs:  # x*: g*, ψ* of the generator and of recognition / the prior
            self.gen_pseudo_value = nn.Parameter(torch.randn(1, c.read_dim))
            self.rec_pseudo_value = nn.Parameter(torch.randn(1, c.read_dim))
            if matching:
                self.gen_pseudo_key = nn.Parameter(torch.randn(1, c.match_dim))
                self.rec_pseudo_key = nn.Parameter(torch.randn(1, c.match_dim))
        self.gen_read = MatchingRead(c.match_dim, c.read_dim, c.matching_steps, c.similarity, c.attention)
        self.rec_read = MatchingRead(c.match_dim, c.read_dim, c.matching_steps, c.similarity, c.attention)
        self.posterior_head = MLPHead(self.x_pyramid.top_dim + c.read_dim, 2 * c.z_dim, hh)  # q(z | x, X)
        self.prior_head = MLPHead(c.read_dim, 2 * c.z_dim, hh)  # p(z | X)
        self.decoder = build_decoder(c, image_shape, c.z_dim + c.read_dim, skips=False, context_bias=True)  # p(x | z, X)

    @property
    def min_memory_size(self) -> int:
        return 0 if self.config.pseudo_inputs else 1

    @property
    def num_pseudo(self) -> int:
        return 1 if self.config.pseudo_inputs else 0

    # --- inputs -------------------------------------------------------------------------------------
    def _memory(self, memory: torch.Tensor | None, G: int, op: str) -> torch.Tensor:
        """The conditioning set as [G, M, 1, H, W] (M may be 0; None is the empty set)."""
        H, W = self.image_shape
        p = next(self.parameters())
        if memory is None:
            return torch.zeros(G, 0, 1, H, W, device=p.device, dtype=p.dtype)
        if not isinstance(memory, torch.Tensor):
            raise TypeError(f"{op}: memory must be a tensor [G, M, 1, H, W], got {type(memory).__name__}")
        if memory.dim() != 5 or memory.shape[2] != 1 or tuple(memory.shape[3:]) != (H, W):
            raise ValueError(f"{op}: memory must be [G, M, 1, {H}, {W}] (M may be 0), got {tuple(memory.shape)}")
        if not memory.is_floating_point():
            raise ValueError(f"{op}: memory must be floating point in [0, 1], got {memory.dtype}")
        if memory.shape[0] != G:
            raise ValueError(f"{op}: memory {tuple(memory.shape)} and targets disagree on G (dim 0): {memory.shape[0]} != {G}")
        return memory

    def _check_set_size(self, size: int, op: str) -> None:
        if size + self.num_pseudo < 1:
            raise ValueError(
                f"{op}: the conditioning set X is empty and model.pseudo_inputs is false, so p(x | X = ∅) is undefined: "
                f"give at least {self.min_memory_size} memory entry or use a GMN trained with pseudo_inputs: true"
            )

    # --- networks -----------------------------------------------------------------------------------
    def encode_set(self, images: torch.Tensor) -> EncodedSet:
        """images [G, L, 1, H, W] (L ≥ 0) → keys and prototypes of x*, x_1..x_L ([G, P + L, ·])."""
        G, L = images.shape[:2]
        c = self.config
        matching = c.attention == "matching"
        parts: dict[str, list[torch.Tensor]] = {"gk": [], "gv": [], "rk": [], "rv": []}
        if c.pseudo_inputs:
            parts["gv"].append(self.gen_pseudo_value.expand(G, 1, -1))
            parts["rv"].append(self.rec_pseudo_value.expand(G, 1, -1))
            if matching:
                parts["gk"].append(self.gen_pseudo_key.expand(G, 1, -1))
                parts["rk"].append(self.rec_pseudo_key.expand(G, 1, -1))
        if L > 0:
            top = self.set_pyramid.top(self.set_pyramid(images.reshape(G * L, 1, *self.image_shape))).view(G, L, -1)
            parts["gv"].append(self.gen_value(top))  # [G, L, dv]
            parts["rv"].append(self.rec_value(top))
            if matching:
                parts["gk"].append(self.gen_key(top))  # [G, L, d]
                parts["rk"].append(self.rec_key(top))
        cat = (lambda ts: (ts[0] if len(ts) == 1 else torch.cat(ts, 1)) if ts else None)
        return EncodedSet(cat(parts["gk"]), cat(parts["gv"]), cat(parts["rk"]), cat(parts["rv"]))

    def x_top(self, images: torch.Tensor) -> torch.Tensor:
        """The scored images' top features: [G, R, 1, H, W] → [G, R, F]."""
        G, R = images.shape[:2]
        return self.x_pyramid.top(self.x_pyramid(images.reshape(G * R, 1, *self.image_shape))).view(G, R, -1)

    def recognize(self, enc: EncodedSet, top: torch.Tensor | None, sizes: list[int]):
        """(q(z | x, X) or None, p(z | X)), each [G, R, z]: one read of the recognition keys with the
        queries f_R(x) (when ``top`` [G, R, F] is given) and e_p, row r over its first sizes[r] entries."""
        G, R = enc.rec_values.shape[0], len(sizes)
        query = None
        if self.config.attention == "matching":
            e_p = self.prior_query.view(1, 1, 1, -1).expand(G, R, 1, -1)  # [G, R, 1, d]
            query = e_p if top is None else torch.cat([self.rec_query(top).unsqueeze(2), e_p], 2)  # [G, R, 2, d]
        Q = 1 if top is None else 2
        r = self.rec_read(query, enc.rec_keys, enc.rec_values, sizes, Q)  # [G, R, Q, dv]
        p_z = DiagonalGaussian.from_params(self.prior_head(r[:, :, -1]))  # p(z | X)
        if top is None:
            return None, p_z
        q_z = DiagonalGaussian.from_params(self.posterior_head(torch.cat([top, r[:, :, 0]], -1)))  # q(z | x, X)
        return q_z, p_z

    def decode(self, enc: EncodedSet, z: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """Bernoulli logits of p(x | z, X): z [G, R, K, z] → [G, R, K, 1, H, W]; row r reads its sizes[r] entries."""
        G, R, K, _ = z.shape
        query = self.gen_query(z) if self.config.attention == "matching" else None  # f(z): [G, R, K, d]
        r = self.gen_read(query, enc.gen_keys, enc.gen_values, sizes, K)  # [G, R, K, dv]
        context = torch.cat([z, r], -1)  # [G, R, K, z + dv]
        return self.decoder(context.reshape(G * R * K, -1)).view(G, R, K, 1, *self.image_shape)

    def weights(self, enc: EncodedSet, images: torch.Tensor, q_z: DiagonalGaussian, p_z: DiagonalGaussian,
                sizes: list[int], eps: torch.Tensor) -> Weights:
        """Importance weights of ``images`` [G, R, 1, H, W] with z = μ + σ·eps, eps [G, R, K, z]."""
        z = q_z.mean.unsqueeze(2) + q_z.std.unsqueeze(2) * eps  # [G, R, K, z] reparameterized
        logits = self.decode(enc, z, sizes)
        log_px = bernoulli_log_prob(logits, images.unsqueeze(2))  # [G, R, K]
        log_w = log_px + p_z.unsqueeze(2).log_prob(z) - q_z.unsqueeze(2).log_prob(z)  # [G, R, K]
        return Weights(log_w, log_px, q_z, p_z)

    # --- the two ways of conditioning ---------------------------------------------------------------
    def conditional_weights(self, memory: torch.Tensor | None, targets: torch.Tensor, eps: torch.Tensor,
                            op: str = "GMN.conditional_weights") -> Weights:
        """Every target given the whole memory, log p(x_t | M): memory [G, M, 1, H, W] (M ≥ 0),
        targets [G, T, 1, H, W], eps [G, T, K, z] → Weights [G, T, ·]."""
        G, T = check_images("targets", targets, self.image_shape, op)
        memory = self._memory(memory, G, op)
        self._check_set_size(memory.shape[1], op)
        enc = self.encode_set(memory)
        sizes = [self.num_pseudo + memory.shape[1]] * T
        q_z, p_z = self.recognize(enc, self.x_top(targets), sizes)
        return self.weights(enc, targets, q_z, p_z, sizes, eps)

    def sequence_weights(self, sequence: torch.Tensor, eps: torch.Tensor, op: str = "GMN.sequence_weights") -> Weights:
        """log p(x_n | X_<n) for the positions n of ``sequence`` [G, N, 1, H, W] in one pass, every read
        restricted to its prefix: positions 1..N with pseudo-inputs, 2..N without (X_<1 = ∅).
        eps [G, N', K, z] with N' the scored positions → Weights [G, N', ·]."""
        G, N = check_images("sequence", sequence, self.image_shape, op)
        start = 1 - self.num_pseudo  # the first scored position (0-based)
        if N - start < 1:
            self._check_set_size(0, op)
        enc = self.encode_set(sequence)  # x*, x_1..x_N
        sizes = [self.num_pseudo + n for n in range(start, N)]  # position n reads x*, x_1..x_{n−1}
        scored = sequence[:, start:]
        q_z, p_z = self.recognize(enc, self.x_top(scored), sizes)
        return self.weights(enc, scored, q_z, p_z, sizes, eps)

    def _noise(self, shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
        p = next(self.parameters())
        return torch.randn(shape, generator=generator, device=p.device, dtype=p.dtype)

    def sequence_order(self, M: int, T: int, G: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """A random order of memory+targets per episode: [G, N] indices into cat(memory, targets).
        Uniform; without pseudo-inputs a memory entry drawn at random comes first (it is only conditioned on)."""
        device = next(self.parameters()).device
        keys = torch.rand(G, M + T, generator=generator, device=device)  # [G, N]
        if not self.config.pseudo_inputs:
            first = torch.randint(M, (G, 1), generator=generator, device=device)  # [G, 1]
            keys = keys.scatter(1, first, -1.0)
        return keys.argsort(1)

    # --- the interface ------------------------------------------------------------------------------
    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        op = "GMN.objective"
        K = check_num_samples(num_samples, 1, op)
        batch = Batch.of(batch)
        G, T = check_images("targets", batch.targets, self.image_shape, op)
        memory = self._memory(batch.memory, G, op)
        M = memory.shape[1]
        self._check_set_size(M, op)
        if self.config.training == "targets":
            w = self.conditional_weights(memory, batch.targets, self._noise((G, T, K, self.config.z_dim), generator), op)
            bound = log_mean_exp(w.log_w)  # [G, T]
            return Objective(loss=-bound.mean(), bound=bound.detach(), terms=self._terms(w))
        order = self.sequence_order(M, T, G, generator)  # [G, N]
        everything = torch.cat([memory, batch.targets], 1)  # [G, N, 1, H, W]
        sequence = everything.gather(1, order[:, :, None, None, None].expand_as(everything))
        start = 1 - self.num_pseudo
        w = self.sequence_weights(sequence, self._noise((G, M + T - start, K, self.config.z_dim), generator), op)
        bound = log_mean_exp(w.log_w)  # [G, N'] per scored position
        position = order.argsort(1)[:, M:] - start  # [G, T]: where each target is among the scored positions
        pick = (lambda v: v.gather(1, position))
        return Objective(
            loss=-bound.mean(),  # −(1/N') Σ_n log p(x_n | X_<n) (bounds), mean over episodes
            bound=pick(bound.detach()),
            terms={name: pick(value) for name, value in self._terms(w).items()},
        )

    @staticmethod
    def _terms(w: Weights) -> dict[str, torch.Tensor]:
        return {
            "reconstruction": w.log_px.detach().mean(-1),  # E_q log p(x | z, X)
            "kl_latent": w.q_z.kl(w.p_z).detach(),  # KL(q(z | x, X) || p(z | X))
        }

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        op = "GMN.log_likelihood"
        check_chunking(num_samples, chunk, op)
        G, T = check_images("targets", batch.targets, self.image_shape, op)
        memory = self._memory(batch.memory, G, op)
        self._check_set_size(memory.shape[1], op)
        enc = self.encode_set(memory)
        sizes = [self.num_pseudo + memory.shape[1]] * T
        q_z, p_z = self.recognize(enc, self.x_top(batch.targets), sizes)

        def draw(k: int) -> torch.Tensor:
            eps = self._noise((G, T, k, self.config.z_dim), generator)
            return self.weights(enc, batch.targets, q_z, p_z, sizes, eps).log_w  # [G, T, k]

        return chunked_log_mean_exp(draw, num_samples, chunk)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        op = "GMN.sample"
        G = memory.shape[0] if isinstance(memory, torch.Tensor) and memory.dim() >= 1 else 1
        memory = self._memory(memory, G, op)
        self._check_set_size(memory.shape[1], op)
        enc = self.encode_set(memory)
        sizes = [self.num_pseudo + memory.shape[1]]
        _, p_z = self.recognize(enc, None, sizes)  # p(z | X): [G, 1, z]
        z = p_z.mean.unsqueeze(2) + p_z.std.unsqueeze(2) * self._noise((G, 1, num, self.config.z_dim), generator)
        return self.decode(enc, z, sizes).view(G, num, 1, *self.image_shape)  # logits

    @torch.no_grad()
    def embed_given(self, memory: torch.Tensor | None, images: torch.Tensor) -> torch.Tensor:
        """The mean of q(z | x, X) for ``images`` [G, T, 1, H, W] given the set ``memory`` [G, M, 1, H, W]:
        [G, T, z] (the talk's features for cosine classification)."""
        op = "GMN.embed_given"
        G, T = check_images("images", images, self.image_shape, op)
        memory = self._memory(memory, G, op)
        self._check_set_size(memory.shape[1], op)
        enc = self.encode_set(memory)
        q_z, _ = self.recognize(enc, self.x_top(images), [self.num_pseudo + memory.shape[1]] * T)
        return q_z.mean

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """q(z | x, X = ∅)'s mean (x* alone) with pseudo-inputs, q(z | x, X = {x})'s without: [..., z]."""
        H, W = self.image_shape
        if images.dim() < 3 or tuple(images.shape[-3:]) != (1, H, W):
            raise ValueError(f"GMN.embed: images must be [..., 1, {H}, {W}], got {tuple(images.shape)}")
        flat = images.reshape(-1, 1, H, W)  # [N, 1, H, W]
        if self.config.pseudo_inputs:
            features = self.embed_given(None, flat.unsqueeze(0))  # [1, N, z]
        else:
            features = self.embed_given(flat.unsqueeze(1), flat.unsqueeze(1))  # [N, 1, z]: each image its own set
        return features.reshape(*images.shape[:-3], self.config.z_dim)  # [..., z]
