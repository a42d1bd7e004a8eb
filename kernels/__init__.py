"""Fused Triton kernels for varmem's hot operations, each with its PyTorch reference.

Dispatch (see ``kernels.dispatch``): Triton on CUDA tensors, the reference on CPU;
``VARMEM_KERNELS=triton|reference|auto`` or ``with kernels.use_backend(...)`` forces one.
"""
from kernels.dispatch import BackendUnavailable, use_backend

__all__ = ["BackendUnavailable", "use_backend"]

# --- memory addressing / memory read (kernels/memory_addressing.py, kernels/memory_read.py) ---

# --- VIMCO (kernels/vimco.py) ---

# --- Gaussian-kernel attention (kernels/gaussian_attention.py) ---
