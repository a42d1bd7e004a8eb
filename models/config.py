"""Typed model configuration and the factory the trainer calls: ``build_model(config, image_shape)``.

Defaults follow the VMA paper's Omniglot setup (Bornschein et al. 2017): conv nets with 32–64
maps, |z| = 64, a 128-d matching space, learned prior p(a), K = 4 posterior samples, VIMCO with
the geometric-mean baseline. For MNIST-like data use ``architecture="mlp"``, ``z_dim=32``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from models.networks import CONV_LAYERS

NAMES = ("vma", "vae", "soft_attention")
ARCHITECTURES = ("conv", "mlp")
PRIORS = ("learned", "flat")
MEMORIES = ("episode", "learned")
SIMILARITIES = ("normalized_dot", "dot", "cosine")  # as in kernels.memory_addressing
VIMCO_VARIANTS = ("geometric", "arithmetic")  # as in kernels.vimco
# The Triton memory kernels keep [BLOCK, d] tiles on chip up to d = 256 (kernels.memory_addressing
# MAX_HEAD_DIM); wider matching / read spaces fall back to the reference on GPU.
MAX_KERNEL_DIM = 256


@dataclass
class ModelConfig:
    name: str = "vma"  # vma | vae | soft_attention
    architecture: str = "conv"  # conv (Omniglot 26×26 / 28×28) | mlp (MNIST-like)
    z_dim: int = 64  # |z| (paper: 64 Omniglot, 32 MNIST)
    match_dim: int = 128  # matching space of h(m), h_q(x), e_p and the soft-attention keys
    channels: tuple[int, ...] = (32, 32, 48, 48, 64, 64)  # conv: maps of the 6 3×3 layers
    hidden: int = 256  # conv: hidden width of the MLP heads (Gaussian parameters, embeddings)
    mlp_hidden: tuple[int, ...] = (256, 128)  # mlp: encoder widths (the decoder mirrors them)
    prior: str = "learned"  # p(a): learned query e_p sharing h | flat 1/M   (VMA only)
    memory: str = "episode"  # episode: the episode's exemplars | learned: nn.Parameter images
    learned_memory_size: int = 256  # |M| when memory == "learned"
    similarity: str = "normalized_dot"  # S(m_a, x) (VMA eqs. 4–6)
    vimco_variant: str = "geometric"  # leave-one-out baseline of VIMCO (VMA eq. 8)
    num_samples: int = 4  # K posterior samples per target for the training objective
    read_dim: int = 128  # soft_attention: width of the memory values g(m) read by attention

    def __post_init__(self) -> None:
        # YAML / JSON give lists; the config stores tuples.
        for name in ("channels", "mlp_hidden"):
            v = getattr(self, name)
            if isinstance(v, list):
                setattr(self, name, tuple(v))
        self.validate()

    def validate(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}")

        for name, choices in (
            ("name", NAMES),
            ("architecture", ARCHITECTURES),
            ("prior", PRIORS),
            ("memory", MEMORIES),
            ("similarity", SIMILARITIES),
            ("vimco_variant", VIMCO_VARIANTS),
        ):
            if getattr(self, name) not in choices:
                raise bad(name, f"must be one of {', '.join(choices)}")
        for name in ("z_dim", "match_dim", "hidden", "learned_memory_size", "num_samples", "read_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise bad(name, "must be an int >= 1")
        for name, length in (("channels", CONV_LAYERS), ("mlp_hidden", None)):
            v = getattr(self, name)
            if not isinstance(v, tuple) or not v or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in v):
                raise bad(name, "must be a non-empty tuple of ints >= 1")
            if length is not None and len(v) != length:
                raise bad(name, f"must list the feature maps of all {length} conv layers (e.g. (32, 32, 48, 48, 64, 64))")
        if self.name == "vma" and self.num_samples < 2:
            raise bad("num_samples", "VMA needs K >= 2 samples: VIMCO's leave-one-out baselines use the other samples")
        if self.name == "vae" and self.memory != "episode":
            raise bad("memory", "the VAE has no memory; leave memory='episode' (it is ignored)")
        for name in ("match_dim", "read_dim"):
            if getattr(self, name) > MAX_KERNEL_DIM:
                raise bad(name, f"must be <= {MAX_KERNEL_DIM} for the Triton memory kernels (wider runs only on the reference)")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for saving with a run."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a dict; unknown keys are an error naming them and the known ones."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**d)


def _image_hw(image_shape) -> tuple[int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 3:
        if shape[0] != 1:
            raise ValueError(f"build_model: image_shape {shape} has {shape[0]} channels; the models are for 1-channel images")
        shape = shape[1:]
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"build_model: image_shape must be (H, W) or (1, H, W), got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


def build_model(config: ModelConfig, image_shape) -> "FewShotGenerativeModel":  # noqa: F821
    """The model named by ``config.name`` for images of ``image_shape`` ((H, W) or (1, H, W))."""
    from models.soft_attention import SoftAttentionMemory
    from models.vae import VAE
    from models.vma import VMA

    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    config.validate()
    hw = _image_hw(image_shape)
    cls = {"vma": VMA, "vae": VAE, "soft_attention": SoftAttentionMemory}[config.name]
    return cls(config, hw)


__all__ = ["ModelConfig", "build_model"]
