"""Few-shot generative models: VMA and its baselines behind one interface (``models.base``).

``build_model(ModelConfig(...), image_shape)`` is how the trainer makes one.
"""
from models.base import FewShotGenerativeModel, Objective
from models.config import ModelConfig, build_model
from models.soft_attention import SoftAttentionMemory
from models.vae import VAE
from models.vma import VMA

__all__ = ["FewShotGenerativeModel", "Objective", "ModelConfig", "build_model", "VMA", "VAE", "SoftAttentionMemory"]
