"""The sequential generative model of Rezende, Mohamed, Danihelka, Gregor & Wierstra (2016), "One-Shot
Generalization in Deep Generative Models", and DRAW (Gregor et al. 2015) as its special case.

Generative model over T steps (``steps``), with the context x' (the episode's memory, pooled below):

    z_t ~ N(0, I)                        z_dim per step (4 in the paper)           latent
    v_t = f_v(h_{t-1}, x')               Gaussian read of x' (``read_size``²)        context
    h_t = f_h(h_{t-1}, [z_t, v_t, e])    an LSTM of ``lstm_units`` (400)              transition
    c_t = f_c(c_{t-1}, h_t)              hidden canvas [canvas_channels, H, W]       canvas
          additive:  c_t = c_{t-1} + f_w(h_t)
          conv_gru:  c_t = CGRU(c_{t-1} + f_w(h_t))
    x ~ Bernoulli(logits = f_o(c_T))     f_o a 1×1 convolution to one channel        observation
    f_w(h) = gaussian_write(w(h), a_w(h), H, W)   a ``write_size``² patch per canvas channel (DRAW eq. 29)

e is 1 when the memory holds exemplars and 0 when it is empty; with an empty memory v_t = 0, and
the model is the unconditional one (``min_memory_size`` = 0). CGRU is the convolutional GRU
whose only input is its state (Kaiser & Sutskever 2016): u = σ(U_u * s), r = σ(U_r * s),
CGRU(s) = u ⊙ s + (1 − u) ⊙ tanh(U * (r ⊙ s)), ``gru_kernel``² convolutions with biases.

Inference q(z_t | z_<t, x, x'), reading the target x with Gaussian read attention (DRAW eq. 27)
where the previous state h_{t-1} points:

    r_t = f_r(x, h_{t-1}) = gaussian_read(x, a_r(h_{t-1}), read_size)
    ``inference="shared"`` (the paper): q(z_t | ·) = N(μ, σ) of an MLP on [r_t, h_{t-1}]. The
        inference network has no recurrent state of its own: it *shares the generative LSTM*
        (its state h_{t-1} carries z_<t and the context), as the paper does.
    ``inference="lstm"`` (DRAW eqs. 5-6): h^enc_t = LSTM_enc(h^enc_{t-1}, [r_t, h_{t-1}]) with
        ``lstm_units`` units, q(z_t | ·) = N(μ, σ) of a linear map of h^enc_t.

``read_error`` reads [x, x − σ(f_o(c_{t-1}))] (two channels; DRAW eqs. 3-4: the error image)
instead of x alone. Attention parameters (g̃_x, g̃_y, log σ², log δ̃, log γ) come from the
hidden state through a linear layer per use: a_r(h_{t-1}) for the target, a_v(h_{t-1}) for the
context, a_w(h_t) for the write; the conventions are those of ``varmem.kernels.gaussian_attention``
(1-based pixels, σ² the variance, DRAW's centre formula eqs. 22-24). Read and write run through
``varmem.kernels`` (Triton on CUDA, the reference elsewhere).

DRAW is the configuration ``hidden_canvas: false`` (the canvas is the image: one channel, f_o the
identity, x ~ Bernoulli(σ(c_T)), DRAW eq. 9), ``canvas_update: additive``, ``inference: lstm``,
``read_error: true`` and ``context: false`` (no memory: the model ignores it, ``uses_memory`` False).

Several exemplars in memory (the context rule). The model reads every exemplar m through the
same window a_v(h_{t-1}) and averages: v_t = (1/M) Σ_m read(m). The read is linear in the image
for a fixed window, so this is exactly the read of the exemplars' mean image, which is how it is
computed (one read per step whatever M is). The rule is invariant to the order of the memory
and, for M = 1, is the paper's one-exemplar context. It blurs a memory of several classes into
one mean image: the model does not pick an exemplar (VMA's address does).

Objective. Training maximizes the ELBO with one sample (the paper):

    log p(x | x') ≥ E_q[log p(x | z_{1:T}, x')] − Σ_t E_q KL(q(z_t | ·) ‖ N(0, I))

with the per-step KLs analytic given the sampled history; with K = ``train.num_samples`` > 1 the
loss averages K one-sample ELBOs (still the ELBO, less noisy; the paper's K is 1). Terms logged by
name, [G, T] each: ``reconstruction`` (log p(x | z, x')), ``kl_latent`` (Σ_t KL_t) and the per-step
KLs, the T steps split into min(T, ``kl_terms``) contiguous groups of near-equal length:
``kl_step_03`` for a group of one step, ``kl_steps_01_08`` for steps 1..8 (numbers zero-padded
to T's digits); the groups sum to ``kl_latent``. Evaluation (``log_likelihood``) uses the K-sample
importance-weighted bound log (1/K) Σ_k p(x, z^k | x') / q(z^k | x, x'), sampled ``chunk`` at a time.

``context_dropout`` (not in the paper, default 0): in training, each target's context is dropped
(v = 0, e = 0, as for an empty memory) with this probability, so that one model also learns the
unconditional density (the paper trains separate unconditional models).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import nn

from varmem.kernels import gaussian_read, gaussian_write
from varmem.models.base import Batch, Capability, FewShotModel, Objective
from varmem.models.checks import check_images, check_num_samples
from varmem.models.distributions import DiagonalGaussian, bernoulli_log_prob
from varmem.models.estimators import check_chunking, chunked_log_mean_exp
from varmem.models.networks import MLPHead, init_weights_
from varmem.models.registry import FamilyConfig, register
from varmem.typed import ConfigError

ATTENTION_PARAMS = 5  # (g̃_x, g̃_y, log σ², log δ̃, log γ), kernels.gaussian_attention


@dataclass(frozen=True)
class SequentialConfig(FamilyConfig):
    """The sequential model's config (defaults: the paper's sizes; ``configs/draw_strokes.yaml`` is DRAW)."""

    steps: int = 32  # T (the paper: 20-80)
    z_dim: int = 4  # |z_t| per step (the paper: 4)
    lstm_units: int = 400  # f_h (and DRAW's encoder LSTM) units (the paper: 400)
    hidden_canvas: bool = True  # false: the canvas is the image (1 channel, f_o the identity; DRAW)
    canvas_channels: int = 4  # hidden canvas channels (the paper: 4)
    canvas_update: Literal["additive", "conv_gru"] = "additive"  # f_c
    gru_kernel: int = 3  # the convolutional GRU's kernel side (odd)
    write_size: int = 12  # N of the write patch, N × N per canvas channel (the paper: 12 × 12 kernels)
    read_size: int = 12  # N of the target and context reads
    inference: Literal["shared", "lstm"] = "shared"  # shared: q reads h_{t-1} of f_h (the paper); lstm: DRAW's encoder
    read_error: bool = False  # read [x, x − σ(f_o(c_{t-1}))] (DRAW) instead of x
    context: bool = True  # read the episode's memory x' at every step (false: DRAW, no memory)
    context_dropout: float = 0.0  # training only: drop a target's context with this probability (not in the paper)
    kl_terms: int = 8  # per-step KL terms logged: the T steps in min(T, kl_terms) contiguous groups

    def validate(self) -> None:
        self._require(self.steps >= 1, "steps", "an int >= 1 (T, the number of drawing steps)")
        self._require(self.z_dim >= 1, "z_dim", "an int >= 1")
        self._require(self.lstm_units >= 1, "lstm_units", "an int >= 1")
        self._require(self.canvas_channels >= 1, "canvas_channels", "an int >= 1")
        self._require(self.hidden_canvas or self.canvas_channels == 1, "canvas_channels",
                      "1 when hidden_canvas is false (the canvas is the image)")
        self._require(self.gru_kernel >= 1 and self.gru_kernel % 2 == 1, "gru_kernel", "an odd int >= 1")
        self._require(self.write_size >= 2, "write_size", "an int >= 2 (the filter stride divides by N - 1)")
        self._require(self.read_size >= 2, "read_size", "an int >= 2 (the filter stride divides by N - 1)")
        self._require(0.0 <= self.context_dropout < 1.0, "context_dropout", "in [0, 1)")
        self._require(self.context or self.context_dropout == 0.0, "context_dropout", "0 when context is false")
        self._require(self.kl_terms >= 1, "kl_terms", "an int >= 1")

    def check_image(self, image_shape: tuple[int, int]) -> None:
        """ConfigError naming the field when an attention patch is larger than the image."""
        H, W = image_shape
        for name in ("write_size", "read_size"):
            n = getattr(self, name)
            if n > min(H, W):
                raise ConfigError(f"model.{name}={n} is larger than the {H}x{W} image: the attention patch "
                                  f"must be at most {min(H, W)} pixels wide")


def kl_groups(steps: int, terms: int) -> list[tuple[str, int, int]]:
    """(name, first, last) of the per-step KL terms, 0-based [first, last) step ranges, names 1-based."""
    n = min(steps, terms)
    width = len(str(steps))
    bounds = [(i * steps) // n for i in range(n + 1)]  # near-equal contiguous groups
    out = []
    for first, last in zip(bounds[:-1], bounds[1:]):
        if last - first == 1:
            name = f"kl_step_{first + 1:0{width}d}"
        else:
            name = f"kl_steps_{first + 1:0{width}d}_{last:0{width}d}"
        out.append((name, first, last))
    return out


class ConvGRU(nn.Module):
    """CGRU(s) = u ⊙ s + (1 − u) ⊙ tanh(U * (r ⊙ s) + b), u, r = σ(U_{u,r} * s + b_{u,r}) (Kaiser & Sutskever)."""

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.gates = nn.Conv2d(channels, 2 * channels, kernel, padding=kernel // 2)  # u, r
        self.candidate = nn.Conv2d(channels, channels, kernel, padding=kernel // 2)

    def forward(self, s: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] → [B, C, H, W]
        u, r = torch.sigmoid(self.gates(s)).chunk(2, dim=1)  # [B, C, H, W] each
        return u * s + (1 - u) * torch.tanh(self.candidate(r * s))


class Unrolled(NamedTuple):
    """One pass over the T steps for B rows."""

    logits: torch.Tensor  # [B, 1, H, W] Bernoulli logits f_o(c_T)
    kl: torch.Tensor | None  # [B, T] KL(q(z_t | ·) ‖ N(0, I)), analytic (None when generating)
    log_ratio: torch.Tensor | None  # [B, T] log N(z_t; 0, I) − log q(z_t | ·) at the sampled z_t
    trace: dict[str, torch.Tensor] | None  # per-step attention parameters [B, T, 5] and canvases [B, T, 1, H, W]


@register("sequential", SequentialConfig)
class SequentialModel(FewShotModel):
    capabilities = frozenset({Capability.LIKELIHOOD, Capability.SAMPLING})
    uses_memory = True  # narrowed to config.context per instance

    def __init__(self, config: SequentialConfig, image_shape: tuple[int, int]):
        super().__init__()
        config.check_image(tuple(image_shape))
        self.config = config
        self.image_shape = tuple(image_shape)
        self.uses_memory = config.context
        U, Z, Nr, Nw, Cc = config.lstm_units, config.z_dim, config.read_size, config.write_size, config.canvas_channels
        read_channels = 2 if config.read_error else 1
        read_dim = read_channels * Nr * Nr
        context_dim = Nr * Nr + 1 if config.context else 0  # v_t and the flag e
        self.transition = nn.LSTMCell(Z + context_dim, U)  # f_h
        self.attn_read = nn.Linear(U, ATTENTION_PARAMS)  # a_r(h_{t-1})
        self.attn_write = nn.Linear(U, ATTENTION_PARAMS)  # a_w(h_t)
        self.attn_context = nn.Linear(U, ATTENTION_PARAMS) if config.context else None  # a_v(h_{t-1})
        self.write_patch = nn.Linear(U, Cc * Nw * Nw)  # w(h_t)
        if config.inference == "shared":
            self.encoder = None
            self.posterior_head = MLPHead(read_dim + U, 2 * Z, U)  # q(z_t | r_t, h_{t-1})
        else:
            self.encoder = nn.LSTMCell(read_dim + U, U)  # DRAW eq. 5
            self.posterior_head = MLPHead(U, 2 * Z, None)  # q(z_t | h^enc_t), DRAW eq. 6
        init_weights_(self, linear=(self.attn_read, self.attn_write, self.write_patch)
                      + ((self.attn_context,) if self.attn_context is not None else ()))
        self.canvas_gru = ConvGRU(Cc, config.gru_kernel) if config.canvas_update == "conv_gru" else None
        self.observation = nn.Conv2d(Cc, 1, 1) if config.hidden_canvas else None  # f_o (1×1 conv)

    @property
    def min_memory_size(self) -> int:
        return 0  # an empty memory is the unconditional model

    # --- pieces ---------------------------------------------------------------------------------
    def output(self, canvas: torch.Tensor) -> torch.Tensor:
        """f_o: canvas [B, Cc, H, W] → Bernoulli logits [B, 1, H, W]."""
        return canvas if self.observation is None else self.observation(canvas)

    @staticmethod
    def pool_context(memory: torch.Tensor) -> torch.Tensor:
        """The exemplars' mean image [G, 1, H, W] from memory [G, M, 1, H, W], M ≥ 1.

        gaussian_read is linear in the image for a fixed window, so reading it equals the mean of the
        per-exemplar reads (the context rule; see the module docstring)."""
        return memory.mean(dim=1)

    def _context(self, memory: torch.Tensor | None, G: int, op: str) -> torch.Tensor | None:
        """The pooled context [G, 1, H, W], or None for an empty memory (or a model without context)."""
        if not self.config.context or memory is None:
            return None
        if not isinstance(memory, torch.Tensor) or memory.dim() != 5 or memory.shape[2] != 1 \
                or tuple(memory.shape[3:]) != self.image_shape:
            shape = tuple(memory.shape) if isinstance(memory, torch.Tensor) else type(memory).__name__
            H, W = self.image_shape
            raise ValueError(f"{op}: memory must be [G, M, 1, {H}, {W}] (M may be 0: the unconditional model), got {shape}")
        if memory.shape[0] != G:
            raise ValueError(f"{op}: memory {tuple(memory.shape)} and targets disagree on G (dim 0): {memory.shape[0]} != {G}")
        if memory.shape[1] == 0:
            return None
        if not memory.is_floating_point():
            raise ValueError(f"{op}: memory must be floating point in [0, 1], got {memory.dtype}")
        return self.pool_context(memory)

    # --- the T steps ------------------------------------------------------------------------------
    def unroll(self, x: torch.Tensor | None, context: torch.Tensor | None, *, rows: int | None = None,
               generator: torch.Generator | None = None, drop_context: bool = False, record: bool = False) -> Unrolled:
        """Run the T steps for B rows: x [B, 1, H, W] targets (z_t ~ q) or None (z_t ~ N(0, I));
        context [B, 1, H, W] (the pooled memory of each row) or None (empty memory); ``rows`` = B when
        both are None (generating without context)."""
        cfg = self.config
        H, W = self.image_shape
        p = next(self.parameters())
        B = x.shape[0] if x is not None else (context.shape[0] if context is not None else rows)
        if B is None:
            raise ValueError("unroll: give targets x, a context or rows to set the number of rows")
        dev, dt = p.device, p.dtype
        U, Nr, Nw, Cc = cfg.lstm_units, cfg.read_size, cfg.write_size, cfg.canvas_channels
        h, cell = torch.zeros(B, U, device=dev, dtype=dt), torch.zeros(B, U, device=dev, dtype=dt)  # f_h state
        h_enc = c_enc = torch.zeros(B, U, device=dev, dtype=dt) if self.encoder is not None else None
        canvas = torch.zeros(B, Cc, H, W, device=dev, dtype=dt)  # c_0
        if cfg.context:
            flag = torch.full((B, 1), 0.0 if context is None else 1.0, device=dev, dtype=dt)  # e
            if context is not None and drop_context and cfg.context_dropout > 0:
                keep = torch.rand(B, 1, generator=generator, device=dev, dtype=dt) >= cfg.context_dropout
                flag = flag * keep
        kls, ratios = [], []
        trace: dict[str, list[torch.Tensor]] = {"read": [], "write": [], "context": [], "canvas": []}
        for t in range(cfg.steps):
            inputs = []
            if x is not None:  # inference: read the target where h_{t-1} points
                image = x
                if cfg.read_error:
                    image = torch.cat([x, x - torch.sigmoid(self.output(canvas))], dim=1)  # [B, 2, H, W] DRAW eq. 3
                a_r = self.attn_read(h)  # [B, 5]
                r = gaussian_read(image, a_r, Nr).flatten(1)  # [B, C_r·Nr²] f_r, DRAW eq. 27
                if self.encoder is None:
                    q = DiagonalGaussian.from_params(self.posterior_head(torch.cat([r, h], dim=1)))  # [B, z]
                else:
                    h_enc, c_enc = self.encoder(torch.cat([r, h], dim=1), (h_enc, c_enc))  # DRAW eq. 5
                    q = DiagonalGaussian.from_params(self.posterior_head(h_enc))  # DRAW eq. 6
                z = q.rsample(generator=generator)  # [B, z]
                prior = DiagonalGaussian.standard(z.shape, z)
                kls.append(q.kl(prior))  # [B]
                ratios.append(prior.log_prob(z) - q.log_prob(z))  # [B]
                if record:
                    trace["read"].append(a_r)
            else:
                z = torch.randn(B, cfg.z_dim, generator=generator, device=dev, dtype=dt)  # z_t ~ N(0, I)
            inputs.append(z)
            if cfg.context:
                if context is not None:
                    a_v = self.attn_context(h)  # [B, 5]
                    v = gaussian_read(context, a_v, Nr).flatten(1) * flag  # [B, Nr²] f_v
                    if record:
                        trace["context"].append(a_v)
                else:
                    v = torch.zeros(B, Nr * Nr, device=dev, dtype=dt)
                inputs += [v, flag]
            h, cell = self.transition(torch.cat(inputs, dim=1), (h, cell))  # f_h
            a_w = self.attn_write(h)  # [B, 5]
            written = gaussian_write(self.write_patch(h).view(B, Cc, Nw, Nw), a_w, H, W)  # [B, Cc, H, W] f_w
            canvas = canvas + written  # additive canvas
            if self.canvas_gru is not None:
                canvas = self.canvas_gru(canvas)  # CGRU(c_{t-1} + f_w(h_t))
            if record:
                trace["write"].append(a_w)
                trace["canvas"].append(torch.sigmoid(self.output(canvas)))
        logits = self.output(canvas)  # [B, 1, H, W]
        stacked = None
        if record:
            stacked = {k: torch.stack(v, dim=1) for k, v in trace.items() if v}  # [B, T, ...]
        if x is None:
            return Unrolled(logits, None, None, stacked)
        return Unrolled(logits, torch.stack(kls, dim=1), torch.stack(ratios, dim=1), stacked)

    def _rows(self, batch: Batch, k: int, op: str):
        """(targets [B, 1, H, W], context [B, 1, H, W] | None, G, T) with B = G·T·k rows (g, t, k)."""
        targets = batch.targets
        G, T = check_images("targets", targets, self.image_shape, op)
        H, W = self.image_shape
        ctx = self._context(batch.memory, G, op)  # [G, 1, H, W] | None
        x = targets.unsqueeze(2).expand(G, T, k, 1, H, W).reshape(G * T * k, 1, H, W)
        if ctx is not None:
            ctx = ctx[:, None, None].expand(G, T, k, 1, H, W).reshape(G * T * k, 1, H, W)
        return x, ctx, G, T

    # --- the interface ----------------------------------------------------------------------------
    def objective(self, batch: Batch, num_samples: int, *, generator: torch.Generator | None = None) -> Objective:
        op = "SequentialModel.objective"
        K = check_num_samples(num_samples, 1, op)
        x, ctx, G, T = self._rows(batch, K, op)
        out = self.unroll(x, ctx, generator=generator, drop_context=self.training)
        log_px = bernoulli_log_prob(out.logits, x).view(G, T, K)  # log p(x | z_{1:T}, x')
        kl = out.kl.view(G, T, K, -1)  # [G, T, K, steps]
        elbo = log_px - kl.sum(-1)  # [G, T, K] one-sample ELBOs
        terms = {"reconstruction": log_px.detach().mean(-1), "kl_latent": kl.detach().sum(-1).mean(-1)}
        for name, first, last in kl_groups(self.config.steps, self.config.kl_terms):
            terms[name] = kl.detach()[..., first:last].sum(-1).mean(-1)  # [G, T]
        bound = elbo.mean(-1)  # [G, T]
        return Objective(loss=-bound.mean(), bound=bound.detach(), terms=terms)

    def _log_likelihood(self, batch: Batch, num_samples: int, chunk: int = 100, *,
                        generator: torch.Generator | None = None) -> torch.Tensor:
        op = "SequentialModel.log_likelihood"
        check_chunking(num_samples, chunk, op)

        def draw(k: int) -> torch.Tensor:  # [G, T, k] log w = log p(x, z_{1:T} | x') − log q(z_{1:T} | x, x')
            x, ctx, G, T = self._rows(batch, k, op)
            out = self.unroll(x, ctx, generator=generator)
            return (bernoulli_log_prob(out.logits, x) + out.log_ratio.sum(-1)).view(G, T, k)

        return chunked_log_mean_exp(draw, num_samples, chunk)

    def _sample_logits(self, memory, num: int, *, generator: torch.Generator | None = None) -> torch.Tensor:
        G = memory.shape[0] if isinstance(memory, torch.Tensor) else 1
        H, W = self.image_shape
        ctx = self._context(memory, G, "SequentialModel.sample")  # [G, 1, H, W] | None
        if ctx is not None:
            ctx = ctx[:, None].expand(G, num, 1, H, W).reshape(G * num, 1, H, W)
        out = self.unroll(None, ctx, rows=G * num, generator=generator)
        return out.logits.view(G, num, 1, H, W)

    @torch.no_grad()
    def attention_trace(self, targets: torch.Tensor, memory: torch.Tensor | None = None, *,
                        generator: torch.Generator | None = None) -> "AttentionTrace":
        """What the model does at each step while it reconstructs ``targets`` [n, 1, H, W] (z_t ~ q) with
        the context ``memory`` [n, M, 1, H, W] (or None, or M = 0): see :class:`AttentionTrace`."""
        H, W = self.image_shape
        if not isinstance(targets, torch.Tensor) or targets.dim() != 4 or targets.shape[1] != 1 \
                or tuple(targets.shape[2:]) != self.image_shape:
            shape = tuple(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"attention_trace: targets must be [n, 1, {H}, {W}], got {shape}")
        ctx = self._context(memory, targets.shape[0], "attention_trace")  # [n, 1, H, W] | None
        trace = self.unroll(targets, ctx, generator=generator, record=True).trace
        return AttentionTrace(targets=targets, read=trace["read"], write=trace["write"], canvas=trace["canvas"],
                              context=trace.get("context"), context_image=ctx,
                              read_size=self.config.read_size, write_size=self.config.write_size)


class AttentionTrace(NamedTuple):
    """The attention of :meth:`SequentialModel.attention_trace` for n targets over T steps (drawn by
    ``varmem.models.eval.attention``). Parameters are (g̃_x, g̃_y, log σ², log δ̃, log γ) as the kernels take them."""

    targets: torch.Tensor  # [n, 1, H, W]
    read: torch.Tensor  # [n, T, 5] the target read at step t (from h_{t-1}), read_size²
    write: torch.Tensor  # [n, T, 5] the write at step t (from h_t), write_size²
    canvas: torch.Tensor  # [n, T, 1, H, W] σ(f_o(c_t)), the canvas after step t as probabilities
    context: torch.Tensor | None  # [n, T, 5] the context read at step t (None without a context), read_size²
    context_image: torch.Tensor | None  # [n, 1, H, W] the pooled exemplar(s) read (None without a context)
    read_size: int
    write_size: int
