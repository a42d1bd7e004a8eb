"""Few-shot models: the interface (``base``), the registry of families (``registry``), the
families themselves (``families``) and their evaluation (``eval``).

``build_model({"name": "vma", ...}, image_shape)`` or ``family("vma").build(config, image_shape)``
is how the trainer makes one. The names below load on first use, so that
``varmem.models.registry`` (and the run config that types its model section through it) imports
without torch.
"""
import importlib

_EXPORTS = {
    "Batch": "base", "Capability": "base", "CapabilityError": "base", "FewShotModel": "base", "Objective": "base",
    "FamilyConfig": "registry", "build_model": "registry", "family": "registry", "family_names": "registry",
    "model_config": "registry", "register": "registry",
    "VMA": "families.vma", "VMAConfig": "families.vma",
    "VAE": "families.vae", "VAEConfig": "families.vae",
    "SoftAttentionMemory": "families.soft_attention", "SoftAttentionConfig": "families.soft_attention",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"varmem.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'varmem.models' has no attribute {name!r}")
