"""Matching Networks (Vinyals, Blundell, Lillicrap, Kavukcuoglu & Wierstra, NIPS 2016): a few-shot classifier.

A query x̂ is labelled by attention over the episode's labelled support set S = {(x_i, y_i)} (the
Batch's memory and memory_labels):

    ŷ = Σ_i a(x̂, x_i) y_i                                               (eq. 1)
    a(x̂, x_i) = exp c(f(x̂), g(x_i)) / Σ_j exp c(f(x̂), g(x_j))          (eq. 2)

with c the cosine similarity (times ``cosine_scale``: 1 in the paper; ``learn_scale`` learns it).
``class_scores`` returns log ŷ_c = log Σ_{i: y_i = c} a(x̂, x_i), [G, T, C] (−inf for a class with no
support entry). Training is episodic with the test protocol: the loss is the cross-entropy −log ŷ_y of
the queries (the Batch's targets with target_labels), the paper's objective
E_{L∼T} E_{S∼L, B∼L} [Σ_{(x, y)∈B} log P(y | x, S)]. A classifier has no bound: Objective.bound is None;
the terms are ``cross_entropy`` and ``accuracy`` (a tie counts 1/|tied classes|, the expectation of the
random tie-break of ``argmax_random_ties``).

**Embedding** f' = g' (one network, shared): ``layers`` modules of [3×3 conv (padding 1, no bias),
batch norm, ReLU, 2×2 max-pool (floor)], ``channels`` maps each (paper: 4 modules, 64 maps). The pool
floors odd sides, so 26×26 → 13 → 6 → 3 → 1 and 28×28 → 14 → 7 → 3 → 1: a 64-d embedding at both
sizes, the paper's. An image too small for ``layers`` pools (below 16 px for 4) is a ConfigError naming
``model.layers``.

**Batch norm without leaks between episodes** (``batch_norm``):

* ``support`` (default): each episode's statistics come from its support set only — mean and variance
  per channel over the episode's M support images and their pixels — in training *and* in evaluation,
  and normalize that episode's support and queries alike. A query's scores then depend on its episode's
  support and on itself only: not on the other queries, not on other episodes of the batch, not on the
  batch size (tests/models/families/test_matching_networks.py checks both). Transductive over the
  labelled support only, as a per-episode batch norm at test time (what the paper's setting implies)
  would be, but without letting queries see each other.
* ``running``: the usual batch norm: batch statistics (all images of all episodes of the call) in
  training, the running averages in evaluation (nothing from the evaluated episodes).

Both keep running averages (momentum 0.1) while training; ``embed`` — one feature vector per image,
with no episode to take statistics from — always normalizes with them, so ``embed(x)`` does not depend
on what else is in the call. It returns the plain embedding g'(x) (FCE needs a support set).

**Full context embeddings** (``fce``, appendix A):

* g(x_i, S) = h→_i + h←_i + g'(x_i), a bidirectional LSTM over g'(S) with a skip connection (A.2).
  It is not invariant to the order of S, and the sampler lays memory out class-major, so the LSTM
  reads S in a random order: in training a fresh permutation per episode from ``generator`` (or
  torch's global RNG, which the trainer seeds: reproducible from ``train.seed``); in evaluation
  (``model.eval()``) the order of a seeded hash of each entry — Σ_p round(255 x_p) w_p over its pixels,
  with integer weights w drawn from ``fce_seed``, then its label — computed exactly in int64 on any
  device. That order is pseudo-random but a function of the support *set* only: it does not depend on
  the order S is given in, on the episode's place in a batch or on the batch size, so evaluation is
  reproducible and, in eval mode, FCE scores are invariant to permuting the support.
* f(x̂, S) = attLSTM(f'(x̂), g(S), K), ``fce_steps`` = K reads (A.1):
      ĥ_k, c_k = LSTM(f'(x̂), [h_{k−1}, r_{k−1}], c_{k−1})              (eq. 3)
      h_k = ĥ_k + f'(x̂)                                                (eq. 4)
      r_{k−1} = Σ_i a(h_{k−1}, g(x_i)) g(x_i)                           (eq. 5)
      a(h_{k−1}, g(x_i)) = softmax_i(h_{k−1}ᵀ g(x_i))                   (eq. 6)
  with h_0 = f'(x̂), c_0 = 0 and f(x̂, S) = h_K. The LSTM's recurrent input [h, r] is written as an
  LSTMCell whose input is [f'(x̂), r] and whose hidden state is h (the same affine map of the gates).

Capabilities: classification and embedding only (no likelihood, sampling or address posterior).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from varmem.models.base import Batch, Capability, FewShotModel, Objective, address_class_log_mass
from varmem.models.checks import check_images, check_num_samples
from varmem.models.networks import init_weights_
from varmem.models.registry import FamilyConfig, register
from varmem.typed import ConfigError

BATCH_NORMS = ("support", "running")
BN_MOMENTUM = 0.1  # running averages (PyTorch's BatchNorm default); used by ``embed`` and batch_norm=running
BN_EPS = 1e-5
HASH_WEIGHT_BITS = 20  # w_p < 2^20: the key (Σ_p 255·w_p)·C + label is exact in int64 while pixels × classes < 3.4·10^10


@dataclass(frozen=True)
class MatchingNetworksConfig(FamilyConfig):
    """Matching Networks' config. Defaults: the paper's Omniglot embedding, no FCE, plain cosine."""

    channels: int = 64  # feature maps of every conv module (paper: 64)
    layers: int = 4  # [3×3 conv, batch norm, ReLU, 2×2 max-pool] modules (paper: 4)
    batch_norm: str = "support"  # support: per-episode statistics of the support set | running: the usual batch norm
    fce: bool = False  # full context embeddings: g a BiLSTM over the support, f an attention LSTM
    fce_steps: int = 5  # K: the attention LSTM's reads of the support (appendix A.1)
    fce_seed: int = 0  # seeds the evaluation order of the support for the BiLSTM (the hash weights)
    cosine_scale: float = 1.0  # a = softmax(scale · cos) (eq. 2; paper: 1); the initial value if learned
    learn_scale: bool = False  # learn the scale (as log scale)

    def validate(self) -> None:
        self._require(self.channels >= 1, "channels", "an int >= 1")
        self._require(self.layers >= 1, "layers", "an int >= 1")
        self._require(self.batch_norm in BATCH_NORMS, "batch_norm", f"one of {', '.join(BATCH_NORMS)}")
        self._require(self.fce_steps >= 1, "fce_steps", "an int >= 1")
        self._require(self.fce_seed >= 0, "fce_seed", "an int >= 0")
        self._require(math.isfinite(self.cosine_scale) and self.cosine_scale > 0, "cosine_scale", "a finite number > 0")


def pooled_sides(side: int, layers: int) -> list[int]:
    """The side after each module (3×3 conv with padding 1 keeps it, a 2×2 max-pool floors it): [side, ..., final]."""
    sides = [side]
    for _ in range(layers):
        sides.append(sides[-1] // 2)
    return sides


class EpisodeBatchNorm(nn.Module):
    """Batch norm of features [G, N, C, h, w] (G episodes of N images, the first ``support`` of each the support).

    ``support`` given and mode "support": each episode's mean and variance per channel over its support
    images (and pixels), in training and evaluation. Mode "running": over everything in training, the
    running averages in evaluation. ``support=None`` (``embed``): the running averages, whatever the mode.
    The running averages are updated in training only (from whatever statistics were used).
    """

    def __init__(self, channels: int, mode: str):
        super().__init__()
        self.mode = mode
        self.weight = nn.Parameter(torch.ones(channels))  # γ
        self.bias = nn.Parameter(torch.zeros(channels))  # β
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, h: torch.Tensor, support: int | None) -> torch.Tensor:
        C = h.shape[2]
        if support is None or (self.mode == "running" and not self.training):
            mean = self.running_mean.view(1, 1, C, 1, 1)
            var = self.running_var.view(1, 1, C, 1, 1)
        else:
            if self.mode == "support":
                x, dims = h[:, :support], (1, 3, 4)  # the support of each episode
            else:
                x, dims = h, (0, 1, 3, 4)  # the whole batch
            mean = x.mean(dims, keepdim=True)  # [G or 1, 1, C, 1, 1]
            var = x.var(dims, unbiased=False, keepdim=True)
            if self.training:
                n = x[:, :, 0].numel() if self.mode == "running" else x[0, :, 0].numel()  # values per statistic
                with torch.no_grad():
                    self.running_mean.lerp_(mean.mean(0).flatten(), BN_MOMENTUM)
                    self.running_var.lerp_(var.mean(0).flatten() * (n / max(n - 1, 1)), BN_MOMENTUM)
        scale = self.weight.view(1, 1, C, 1, 1) * torch.rsqrt(var + BN_EPS)
        return (h - mean) * scale + self.bias.view(1, 1, C, 1, 1)


class ConvEmbedding(nn.Module):
    """f' = g': images [G, N, 1, H, W] → [G, N, D], ``layers`` × [3×3 conv, batch norm, ReLU, 2×2 max-pool]."""

    def __init__(self, image_shape: tuple[int, int], channels: int, layers: int, batch_norm: str):
        super().__init__()
        H, W = image_shape
        hs, ws = pooled_sides(H, layers), pooled_sides(W, layers)
        if min(hs[-1], ws[-1]) < 1:
            raise ConfigError(
                f"model.layers={layers}: a {H}×{W} image is pooled to {hs[-1]}×{ws[-1]} by {layers} 2×2 max-pools "
                f"({' → '.join(map(str, hs))}); use images of at least {2 ** layers} px or fewer layers")
        self.convs = nn.ModuleList(nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1, bias=False)
                                   for i in range(layers))  # no bias: batch norm's β follows
        self.norms = nn.ModuleList(EpisodeBatchNorm(channels, batch_norm) for _ in range(layers))
        self.out_dim = channels * hs[-1] * ws[-1]
        init_weights_(self)  # He-normal (a ReLU follows every conv)

    def forward(self, images: torch.Tensor, support: int | None) -> torch.Tensor:
        G, N = images.shape[:2]
        h = images.reshape(G * N, *images.shape[2:])  # [G·N, 1, H, W]
        for conv, norm in zip(self.convs, self.norms):
            h = conv(h)  # [G·N, c, h, w]
            h = norm(h.view(G, N, *h.shape[1:]), support).flatten(0, 1)
            h = F.max_pool2d(F.relu(h), 2)  # [G·N, c, ⌊h/2⌋, ⌊w/2⌋]
        return h.reshape(G, N, -1)  # [G, N, D]


class SupportBiLSTM(nn.Module):
    """g(x_i, S) = h→_i + h←_i + g'(x_i) (appendix A.2), the LSTMs reading g'(S) in ``order``."""

    def __init__(self, dim: int):
        super().__init__()
        self.lstm = nn.LSTM(dim, dim, batch_first=True, bidirectional=True)

    def forward(self, g_prime: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        D = g_prime.shape[-1]
        index = order.unsqueeze(-1).expand_as(g_prime)  # [G, M, D]
        seq = torch.gather(g_prime, 1, index)  # [G, M, D]: the support in reading order
        out, _ = self.lstm(seq)  # [G, M, 2D]: h→ and h←
        g = out[..., :D] + out[..., D:] + seq  # [G, M, D]
        return torch.empty_like(g).scatter(1, index, g)  # back to the given order


class AttentionLSTM(nn.Module):
    """f(x̂, S) = attLSTM(f'(x̂), g(S), K) (appendix A.1, eqs. 3–6): f' [G, T, D], g [G, M, D] → [G, T, D]."""

    def __init__(self, dim: int, steps: int):
        super().__init__()
        self.steps = steps
        self.cell = nn.LSTMCell(2 * dim, dim)  # input [f'(x̂), r_{k−1}], hidden h_{k−1}: the gates of eq. 3

    def forward(self, f_prime: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        G, T, D = f_prime.shape
        h, c = f_prime, f_prime.new_zeros(G * T, D)  # h_0 = f'(x̂), c_0 = 0
        for _ in range(self.steps):
            a = torch.softmax(torch.bmm(h, g.transpose(1, 2)), dim=-1)  # [G, T, M]  (eq. 6)
            r = torch.bmm(a, g)  # [G, T, D]  (eq. 5)
            h_hat, c = self.cell(torch.cat([f_prime, r], -1).reshape(G * T, 2 * D), (h.reshape(G * T, D), c))  # eq. 3
            h = h_hat.view(G, T, D) + f_prime  # eq. 4
        return h  # f(x̂, S) = h_K


@register("matching_networks", MatchingNetworksConfig)
class MatchingNetworks(FewShotModel):
    capabilities = frozenset({Capability.CLASSIFICATION, Capability.EMBEDDING})
    uses_memory = True
    classifier_method = "matching"  # the evaluation tables' name and label of class_scores (eq. 1)
    classifier_label = "softmax of cosine attention"

    def __init__(self, config: MatchingNetworksConfig, image_shape: tuple[int, int]):
        super().__init__()
        self.config = config
        self.image_shape = tuple(image_shape)
        self.embedding = ConvEmbedding(self.image_shape, config.channels, config.layers, config.batch_norm)
        D = self.embedding.out_dim
        self.support_lstm = SupportBiLSTM(D) if config.fce else None
        self.query_lstm = AttentionLSTM(D, config.fce_steps) if config.fce else None
        log_scale = torch.tensor(math.log(config.cosine_scale))
        if config.learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)
        # the evaluation order's hash weights w_p: a function of fce_seed, not saved with the state
        weights = torch.randint(0, 2 ** HASH_WEIGHT_BITS, (math.prod(self.image_shape),),
                                generator=torch.Generator().manual_seed(config.fce_seed))
        self.register_buffer("order_weights", weights, persistent=False)

    # --- the pieces ---------------------------------------------------------------------------
    def support_order(self, memory: torch.Tensor, memory_labels: torch.Tensor,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """The BiLSTM's reading order of each episode's support, [G, M] int64 (see the module docstring)."""
        G, M = memory_labels.shape
        if self.training:
            device = generator.device if generator is not None else memory.device
            return torch.argsort(torch.rand(G, M, generator=generator, device=device), dim=1).to(memory.device)
        pixels = torch.round(memory.reshape(G, M, -1) * 255).long()  # [G, M, H·W]
        key = (pixels * self.order_weights).sum(-1)  # [G, M], exact in int64
        key = key * (int(memory_labels.max()) + 1) + memory_labels  # equal images: by label
        return torch.argsort(key, dim=1, stable=True)

    def embeddings(self, batch: Batch, op: str, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(x̂) [G, T, D], g(x_i) [G, M, D]) of the batch's targets and support."""
        memory, targets, labels = batch.memory, batch.targets, batch.memory_labels
        if memory is None:
            raise ValueError(f"{op}: the batch has no memory; Matching Networks classify against the episode's support set")
        G, M = check_images("memory", memory, self.image_shape, op)
        Gt, T = check_images("targets", targets, self.image_shape, op)
        if Gt != G:
            raise ValueError(f"{op}: memory has {G} episodes but targets {Gt}")
        if labels is None or tuple(labels.shape) != (G, M):
            raise ValueError(f"{op}: memory_labels must be [G, M] = [{G}, {M}] (the support's classes), "
                             f"got {None if labels is None else tuple(labels.shape)}")
        both = torch.cat([memory, targets], dim=1)  # [G, M + T, 1, H, W]: the support first
        features = self.embedding(both, support=M)  # [G, M + T, D]
        g, f = features[:, :M], features[:, M:]
        if self.support_lstm is not None:
            g = self.support_lstm(g, self.support_order(memory, labels, generator))  # g(x_i, S)
            f = self.query_lstm(f, g)  # f(x̂, S)
        return f, g

    def log_attention(self, batch: Batch, op: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """log a(x̂, x_i) over the support, [G, T, M] (eq. 2 with c = scale · cosine)."""
        f, g = self.embeddings(batch, op, generator)
        cosine = torch.bmm(F.normalize(f, dim=-1, eps=1e-8), F.normalize(g, dim=-1, eps=1e-8).transpose(1, 2))  # [G, T, M]
        return torch.log_softmax(self.log_scale.exp() * cosine, dim=-1)

    def log_class_probs(self, batch: Batch, op: str, generator: torch.Generator | None = None) -> torch.Tensor:
        """log ŷ_c = log Σ_{i: y_i = c} a(x̂, x_i) (eq. 1), [G, T, C] float64 (−inf for a class without support)."""
        return address_class_log_mass(self.log_attention(batch, op, generator), batch.memory_labels, batch.num_classes)

    # --- the interface --------------------------------------------------------------------------
    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        """The queries' cross-entropy −log ŷ_y (``num_samples`` is accepted and unused: nothing is sampled)."""
        op = "MatchingNetworks.objective"
        check_num_samples(num_samples, 1, op)
        batch = Batch.of(batch)
        if batch.target_labels is None or tuple(batch.target_labels.shape) != tuple(batch.targets.shape[:2]):
            raise ValueError(f"{op}: target_labels must be [G, T] = {list(batch.targets.shape[:2])} (the queries' classes), "
                             f"got {None if batch.target_labels is None else tuple(batch.target_labels.shape)}")
        log_p = self.log_class_probs(batch, op, generator)  # [G, T, C]
        target = batch.target_labels.unsqueeze(-1)  # [G, T, 1]
        log_p_y = log_p.gather(-1, target).squeeze(-1)  # [G, T]
        if not bool(torch.isfinite(log_p_y).all()):
            raise ValueError(f"{op}: a target's class has no entry in the episode's memory (support), so its "
                             "probability is 0; every query class needs at least one support example")
        cross_entropy = -log_p_y.float()  # [G, T]
        best = log_p >= log_p.max(-1, keepdim=True).values  # [G, T, C]: the argmax set
        accuracy = best.gather(-1, target).squeeze(-1).float() / best.sum(-1).float()  # ties: 1/|argmax set|
        return Objective(loss=cross_entropy.mean(), bound=None,
                         terms={"cross_entropy": cross_entropy, "accuracy": accuracy.detach()})

    def _class_scores(self, batch: Batch) -> torch.Tensor:
        return self.log_class_probs(batch, "MatchingNetworks.class_scores")  # [G, T, C]

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """g'(x) with batch norm's running averages: images [..., 1, H, W] → [..., D]."""
        H, W = self.image_shape
        if not isinstance(images, torch.Tensor) or images.dim() < 3 or tuple(images.shape[-3:]) != (1, H, W):
            raise ValueError(f"MatchingNetworks.embed: images must be [..., 1, {H}, {W}], "
                             f"got {tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        lead = images.shape[:-3]
        flat = images.reshape(1, -1, 1, H, W)  # [1, N, 1, H, W]
        return self.embedding(flat, support=None).reshape(*lead, -1)  # [..., D]
