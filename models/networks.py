"""Encoders and decoders of the VMA paper (Bornschein et al. 2017, appendix / section 4).

Two architectures share one interface, so that VMA and its baselines are written once:

* :class:`Pyramid` ``(images [N, 1, H, W]) -> list of features, fine to coarse``; the last one is
  the *top*, flattened to ``top_dim`` for MLP heads. The features are the skip connections.
* :class:`Decoder` ``(context [N, C], skips | None) -> Bernoulli logits [N, 1, H, W]``.
* :class:`MLPHead`: the "MLP with one hidden layer" from a flat feature to 2|z| (Gaussian
  parameters) or to an embedding in the 128-d matching space.

``conv`` (Omniglot, 26×26 or 28×28): 6 conv layers 3×3, every second one stride 2 (8× down):

    layer    1      2      3      4      5      6
    stride   1      2      1      2      1      2
    26×26 → 26  →  13  →  13  →   7  →   7  →   4      (padding 1: ⌈n/2⌉ per stride-2 layer)
    28×28 → 28  →  14  →  14  →   7  →   7  →   4
    skips: outputs of layers 1, 3, 5 (full, ½, ¼ resolution) and 6 (the top, ⅛).

The decoder mirrors it: the context is mapped by a linear layer to the top's shape, concatenated
with the top skip, then three stages of [3×3 transposed conv stride 2 to the next pyramid size
(``output_size`` makes it exactly 7/13/26 or 7/14/28), concat the skip of that size, 3×3 conv],
and a final 3×3 conv to one channel of logits. Without skips (the VAE), the same layers run with
the skip inputs left out.

*Shared skip convolutions* (``ConvDecoder.shared_skips``, ``train.shared_skip_convs``): a decoder
whose N samples read skips of fewer memory entries N_m (``rows``: the entry of each sample; VMA's
G·T·K decodes read the G·M entries' pyramid) splits each stage's conv over the concatenation,
conv(cat(h, s_a)) = conv_h(h) + conv_m(s_a) (convolution is linear in its input channels), and runs
conv_m once per memory entry, gathered for the samples: the same function with the skip half of
the stage convs' work cut by N / N_m (4× in VMA's training step), equal to the concatenation up to
float rounding (summation order). The parameters are the same tensors: the switch changes no
checkpoint.

*Channels-last* (:func:`set_channels_last`, ``train.channels_last``): the conv weights stored NHWC,
so that every convolution (oneDNN on CPU) runs and returns channels-last activations; values are
the same up to float rounding. On the shared 2-core CPU, one thread, CPU time per training step
(``benchmarks/results/train_fast_step_cpu.csv``, interleaved runs at load ≈ 10): channels-last alone
1.07× (strokes26 config) / 1.06× (paper-size Omniglot config), shared skip convolutions alone 1.12× /
1.10×, both 1.21× / 1.18× (1.27–1.33× for strokes26 in earlier runs at load ≈ 6): the split convs
read half the channels (16 at 26×26 in the strokes config), where oneDNN's NCHW kernels gain
little from the smaller input and its NHWC kernels gain most.

``mlp`` (MNIST-like, 28×28): pyramid = hidden layers 256 → 128 of an MLP; decoder = 128 → 256
→ H·W with the pyramid's 128- and 256-d features concatenated at the matching layer.

Optional per-stage *context bias* (``context_bias=True``): a linear map of the context added as a
per-channel bias after every decoder stage, so the context reaches every resolution. The
soft-attention baseline uses it to condition on its memory read r (a skip-like path for r).

Initialization (:func:`init_weights_`, applied by every network here, so VMA and its baselines
start alike): He/Kaiming-normal weights, Var(w) = 2 / fan_in for a layer followed by a ReLU and
1 / fan_in for an output layer (Gaussian parameters, embeddings, logits), and zero biases.
PyTorch's default (kaiming_uniform with a = √5: Var(w) = 1 / (3 fan_in), biases U(±1/√fan_in))
shrinks the input-dependent part of each ReLU layer's output by about √6 while the biases add a
constant, so after the 6-layer pyramid and the embedding head every image had the same features:
on strokes26 the keys h(m_a) of a 32-entry episode had mean pairwise cosine 0.999996, S varied by
5·10⁻⁴ nats over the memory, q(a|x) was uniform and the address gradients were ~10⁻⁶ of the
decoder's; the address (and z, whose q(z|x, m) saw no x either) collapsed. With this
initialization the cosine is ≈ 0.8, S spreads over ≈ 1 nat and VMA uses its memory within a few
hundred steps (docs/RESULTS.md, "What made VMA use its memory").
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch
from torch import nn
from torch.nn import functional as F

from varmem.models.registry import FamilyConfig

CONV_LAYERS = 6


def pyramid_sizes(size: int) -> list[int]:
    """Spatial sizes of the conv pyramid's skips for an image side ``size``: [n, ⌈n/2⌉, ⌈n/4⌉, ⌈n/8⌉]."""
    sizes = [size]
    for _ in range(3):
        sizes.append((sizes[-1] - 1) // 2 + 1)  # 3×3, stride 2, padding 1
    return sizes


def init_weights_(module: nn.Module, linear: tuple[nn.Module, ...] = ()) -> nn.Module:
    """He-initialize every conv / transposed conv / linear layer of ``module`` in place; biases 0.

    Var(w) = gain² / fan_in with gain² = 2 (a ReLU follows) or 1 for the layers in ``linear``
    (outputs: nothing follows). A transposed conv of stride s reaches each output pixel through
    about in_channels·k²/s² weights, which is its fan_in here. Returns ``module``.
    """
    out_ids = {id(m) for m in linear}
    for layer in module.modules():
        if isinstance(layer, nn.ConvTranspose2d):
            fan_in = layer.in_channels * math.prod(layer.kernel_size) / math.prod(layer.stride)
        elif isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
        else:
            continue
        gain2 = 1.0 if id(layer) in out_ids else 2.0
        with torch.no_grad():
            layer.weight.normal_(0.0, math.sqrt(gain2 / fan_in))
            if layer.bias is not None:
                layer.bias.zero_()
    return module


def mlp(sizes: list[int], final_activation: bool = False) -> nn.Sequential:
    """Linear layers with ReLU between them (and after the last one if ``final_activation``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or final_activation:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    return init_weights_(net, linear=() if final_activation else (layers[-1],))


class MLPHead(nn.Module):
    """in_dim → (hidden →) out_dim; ``hidden=None`` makes it one linear layer."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None):
        super().__init__()
        self.net = mlp([in_dim, out_dim] if hidden is None else [in_dim, hidden, out_dim])

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., in_dim] → [..., out_dim]
        return self.net(x)


# ---------------------------------------------------------------------------------------------
# Pyramids (encoders up to the flat top feature)
# ---------------------------------------------------------------------------------------------


class Pyramid(nn.Module):
    """Images [N, 1, H, W] → skip features fine to coarse; ``skip_shapes``, ``top_dim``."""

    skip_shapes: list[tuple[int, ...]]  # per skip, without N

    @property
    def top_dim(self) -> int:
        return math.prod(self.skip_shapes[-1])

    def top(self, features: list[torch.Tensor]) -> torch.Tensor:
        """The top feature flattened: [N, top_dim]."""
        return features[-1].flatten(1)


class ConvPyramid(Pyramid):
    def __init__(self, image_shape: tuple[int, int], channels: tuple[int, ...], in_channels: int = 1):
        super().__init__()
        if len(channels) != CONV_LAYERS:
            raise ValueError(f"ConvPyramid: channels must have {CONV_LAYERS} entries, got {channels}")
        H, W = image_shape
        hs, ws = pyramid_sizes(H), pyramid_sizes(W)
        self.convs = nn.ModuleList()
        c_in = in_channels
        for i, c in enumerate(channels):
            self.convs.append(nn.Conv2d(c_in, c, 3, stride=2 if i % 2 else 1, padding=1))
            c_in = c
        # skips after layers 1, 3, 5, 6 (index 0, 2, 4, 5)
        self.skip_layers = (0, 2, 4, 5)
        self.skip_shapes = [(channels[i], hs[j], ws[j]) for j, i in enumerate(self.skip_layers)]
        init_weights_(self)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = images  # [N, 1, H, W]
        skips = []
        for i, conv in enumerate(self.convs):
            h = F.relu(conv(h))  # [N, c_i, ...]
            if i in self.skip_layers:
                skips.append(h)
        return skips  # [N, c1, H, W], [N, c3, H/2, W/2], [N, c5, H/4, W/4], [N, c6, H/8, W/8]


class MLPPyramid(Pyramid):
    def __init__(self, image_shape: tuple[int, int], hidden: tuple[int, ...]):
        super().__init__()
        H, W = image_shape
        sizes = [H * W, *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.skip_shapes = [(h,) for h in hidden]
        init_weights_(self)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        h = images.flatten(1)  # [N, H·W]
        skips = []
        for layer in self.layers:
            h = F.relu(layer(h))
            skips.append(h)
        return skips  # [N, 256], [N, 128]


# ---------------------------------------------------------------------------------------------
# Decoders (Bernoulli logits)
# ---------------------------------------------------------------------------------------------


class Decoder(nn.Module):
    """context [N, C] (and skips from a :class:`Pyramid`, fine to coarse) → logits [N, 1, H, W].

    ``skips``: one row per sample ([N, ...], ``rows`` None), or one row per memory entry ([N_m, ...])
    with ``rows`` [N] (int64) naming the entry each sample reads.
    """

    def forward(self, context: torch.Tensor, skips: list[torch.Tensor] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


def gather_entries(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` for entry features x [N_m, C, h, w] and rows [N] → [N, C, h, w], in x's memory format.

    An entry's block is contiguous in NCHW and in channels-last alike, so a channels-last x is gathered as
    its 2-d view [N_m, h·w·C]: torch's 4-d ``index_select`` on a channels-last tensor takes a slow path and
    returns NCHW (VMA paper-size step: 6% of its CPU time in its backward's ``scatter_add_``), the 2-d one
    copies whole rows (forward and backward ~6× faster at [32 → 128, 32, 26, 26]). The same values.
    """
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        N_m, C, H, W = x.shape
        flat = x.permute(0, 2, 3, 1).reshape(N_m, H * W * C)  # [N_m, h·w·C], a view
        return flat.index_select(0, rows).view(-1, H, W, C).permute(0, 3, 1, 2)  # [N, C, h, w], channels-last
    return x.index_select(0, rows)


def gather_rows(skips: list[torch.Tensor], rows: torch.Tensor | None) -> list[torch.Tensor]:
    """Per-sample skips: each entry feature [N_m, ...] indexed by ``rows`` [N] → [N, ...] (None: as given)."""
    return skips if rows is None else [s[rows] for s in skips]


class ConvDecoder(Decoder):
    def __init__(
        self,
        image_shape: tuple[int, int],
        channels: tuple[int, ...],
        context_dim: int,
        *,
        skips: bool,
        context_bias: bool = False,
    ):
        super().__init__()
        H, W = image_shape
        hs, ws = pyramid_sizes(H), pyramid_sizes(W)
        # channels per stage, coarse to fine: the pyramid's skip channels (layers 6, 5, 3, 1)
        stage_c = [channels[5], channels[4], channels[2], channels[0]]
        self.sizes = [(hs[j], ws[j]) for j in (3, 2, 1, 0)]  # coarse to fine
        self.use_skips = skips
        self.top = nn.Linear(context_dim, stage_c[0] * hs[3] * ws[3])
        extra = stage_c if skips else [0, 0, 0, 0]
        self.convs = nn.ModuleList([nn.Conv2d(stage_c[0] + extra[0], stage_c[0], 3, padding=1)])
        self.ups = nn.ModuleList()
        for s in range(1, 4):
            self.ups.append(nn.ConvTranspose2d(stage_c[s - 1], stage_c[s], 3, stride=2, padding=1))
            self.convs.append(nn.Conv2d(stage_c[s] + extra[s], stage_c[s], 3, padding=1))
        self.out = nn.Conv2d(stage_c[3], 1, 3, padding=1)
        self.biases = nn.ModuleList(nn.Linear(context_dim, c) for c in stage_c) if context_bias else None
        self.stage_c = stage_c
        # conv_m once per memory entry when samples share entries (module docstring); set by
        # set_shared_skip_convs from train.shared_skip_convs (with channels-last: 1.2× fewer CPU-ms per VMA step)
        self.shared_skips = True
        init_weights_(self, linear=(self.out,))

    def forward(self, context: torch.Tensor, skips: list[torch.Tensor] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_skips != (skips is not None):
            raise ValueError(f"ConvDecoder built with skips={self.use_skips} but called with skips={skips is not None}")
        N = context.shape[0]
        coarse = skips[::-1] if skips is not None else None  # coarse to fine: [N or N_m, c, h, w]
        shared = coarse is not None and rows is not None and self.shared_skips and coarse[0].shape[0] < N
        if coarse is not None and not shared:
            coarse = gather_rows(coarse, rows)  # [N, c, h, w] per sample
        h = F.relu(self.top(context)).view(N, self.stage_c[0], *self.sizes[0])  # [N, c6, H/8, W/8]
        for s in range(4):
            if s > 0:
                h = F.relu(self.ups[s - 1](h, output_size=self.sizes[s]))  # [N, c_s, h_s, w_s]
            if shared:
                h = self._shared_skip_conv(self.convs[s], h, coarse[s], rows)
            elif coarse is not None:
                h = self.convs[s](torch.cat([h, coarse[s]], dim=1))  # skip connection from m's pyramid
            else:
                h = self.convs[s](h)
            if self.biases is not None:
                h = h + self.biases[s](context)[:, :, None, None]
            h = F.relu(h)
        return self.out(h)  # [N, 1, H, W] logits

    @staticmethod
    def _shared_skip_conv(conv: nn.Conv2d, h: torch.Tensor, skip: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """conv(cat(h, skip[rows])) as conv_h(h) + conv_m(skip)[rows], conv_m run once per entry.

        h [N, c_h, h, w], skip [N_m, c_m, h, w], rows [N] → [N, c_out, h, w]. The two halves are the
        input-channel slices of ``conv.weight`` [c_out, c_h + c_m, 3, 3]; the bias goes with conv_h.
        """
        c_h = h.shape[1]
        own = F.conv2d(h, conv.weight[:, :c_h], conv.bias, conv.stride, conv.padding)  # [N, c_out, h, w]
        per_entry = F.conv2d(skip, conv.weight[:, c_h:], None, conv.stride, conv.padding)  # [N_m, c_out, h, w]
        return own + gather_entries(per_entry, rows)  # [N, c_out, h, w]


class MLPDecoder(Decoder):
    def __init__(
        self,
        image_shape: tuple[int, int],
        hidden: tuple[int, ...],
        context_dim: int,
        *,
        skips: bool,
        context_bias: bool = False,
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        widths = list(hidden[::-1])  # 128, 256
        self.use_skips = skips
        self.layers = nn.ModuleList()
        prev = context_dim
        for w in widths:
            self.layers.append(nn.Linear(prev + (w if skips else 0), w))
            prev = w
        self.out = nn.Linear(prev, math.prod(image_shape))
        self.biases = nn.ModuleList(nn.Linear(context_dim, w) for w in widths) if context_bias else None
        init_weights_(self, linear=(self.out,))

    def forward(self, context: torch.Tensor, skips: list[torch.Tensor] | None = None,
                rows: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_skips != (skips is not None):
            raise ValueError(f"MLPDecoder built with skips={self.use_skips} but called with skips={skips is not None}")
        coarse = gather_rows(skips[::-1], rows) if skips is not None else None  # [N, 128], [N, 256]
        h = context
        for s, layer in enumerate(self.layers):
            if coarse is not None:
                h = torch.cat([h, coarse[s]], dim=-1)
            h = layer(h)
            if self.biases is not None:
                h = h + self.biases[s](context)
            h = F.relu(h)
        return self.out(h).view(-1, 1, *self.image_shape)  # [N, 1, H, W] logits


# ---------------------------------------------------------------------------------------------
# The configs of families built from these networks, and the factories that read them
# ---------------------------------------------------------------------------------------------

ARCHITECTURES = ("conv", "mlp")
MEMORIES = ("episode", "learned")
SIMILARITIES = ("normalized_dot", "dot", "cosine")  # as in kernels.memory_addressing
# The Triton memory kernels keep [BLOCK, d] tiles on chip up to d = 256 (kernels.memory_addressing
# MAX_HEAD_DIM); wider matching / read spaces fall back to the reference on GPU.
MAX_KERNEL_DIM = 256


@dataclass(frozen=True)
class NetworkConfig(FamilyConfig):
    """The encoder/decoder fields shared by VMA and its baselines. Defaults follow the VMA paper's
    Omniglot setup (Bornschein et al. 2017): conv nets with 32–64 maps, |z| = 64. For MNIST-like
    data use ``architecture="mlp"``, ``z_dim=32``."""

    architecture: str = "conv"  # conv (Omniglot 26×26 / 28×28) | mlp (MNIST-like)
    z_dim: int = 64  # |z| (paper: 64 Omniglot, 32 MNIST)
    channels: tuple[int, ...] = (32, 32, 48, 48, 64, 64)  # conv: maps of the 6 3×3 layers
    hidden: int = 256  # conv: hidden width of the MLP heads (Gaussian parameters, embeddings)
    mlp_hidden: tuple[int, ...] = (256, 128)  # mlp: encoder widths (the decoder mirrors them)

    def validate(self) -> None:
        self._require(self.architecture in ARCHITECTURES, "architecture", f"one of {', '.join(ARCHITECTURES)}")
        for name in ("z_dim", "hidden"):
            self._require(getattr(self, name) >= 1, name, "an int >= 1")
        for name in ("channels", "mlp_hidden"):
            v = getattr(self, name)
            self._require(bool(v) and all(c >= 1 for c in v), name, "a non-empty list of ints >= 1")
        self._require(len(self.channels) == CONV_LAYERS, "channels",
                      f"the feature maps of all {CONV_LAYERS} conv layers (e.g. [32, 32, 48, 48, 64, 64])")


@dataclass(frozen=True)
class MemoryConfig(NetworkConfig):
    """NetworkConfig plus a memory read through a matching space (VMA, soft attention)."""

    memory: str = "episode"  # episode: the episode's exemplars | learned: nn.Parameter images
    learned_memory_size: int = 256  # |M| when memory == "learned"
    similarity: str = "normalized_dot"  # S(m_a, x) (VMA eqs. 4–6)
    match_dim: int = 128  # matching space of h(m), h_q(x), e_p and the soft-attention keys

    def validate(self) -> None:
        super().validate()
        self._require(self.memory in MEMORIES, "memory", f"one of {', '.join(MEMORIES)}")
        self._require(self.similarity in SIMILARITIES, "similarity", f"one of {', '.join(SIMILARITIES)}")
        self._require(self.learned_memory_size >= 1, "learned_memory_size", "an int >= 1")
        self._require(1 <= self.match_dim <= MAX_KERNEL_DIM, "match_dim",
                      f"an int in [1, {MAX_KERNEL_DIM}] (the Triton memory kernels' limit; wider runs only on the reference)")


def build_pyramid(config, image_shape: tuple[int, int]) -> Pyramid:
    if config.architecture == "conv":
        return ConvPyramid(image_shape, config.channels)
    return MLPPyramid(image_shape, config.mlp_hidden)


def build_decoder(config, image_shape: tuple[int, int], context_dim: int, *, skips: bool, context_bias: bool = False) -> Decoder:
    if config.architecture == "conv":
        return ConvDecoder(image_shape, config.channels, context_dim, skips=skips, context_bias=context_bias)
    return MLPDecoder(image_shape, config.mlp_hidden, context_dim, skips=skips, context_bias=context_bias)


def set_shared_skip_convs(model: nn.Module, on: bool) -> int:
    """Switch every :class:`ConvDecoder` in ``model`` to (``on``) or from the shared skip convolutions
    (module docstring; ``train.shared_skip_convs``). Returns how many decoders it set."""
    decoders = [m for m in model.modules() if isinstance(m, ConvDecoder)]
    for decoder in decoders:
        decoder.shared_skips = bool(on)
    return len(decoders)


def set_channels_last(model: nn.Module, on: bool) -> None:
    """Every 4-d parameter of ``model`` (conv and transposed-conv weights, learned memory images) to
    channels-last (``on``) or contiguous NCHW memory format, in place (module docstring; ``train.channels_last``).
    A convolution with a channels-last weight returns channels-last output, so the activations follow;
    values, parameter names and checkpoints are unchanged (a checkpoint loads into either format)."""
    model.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def head_hidden(config) -> int | None:
    """Hidden width of the MLP heads: one hidden layer for conv (paper), none for the MLP net."""
    return config.hidden if config.architecture == "conv" else None
