"""Fused Triton kernels for varmem's hot operations, each with its PyTorch reference.

Dispatch (see ``varmem.kernels.dispatch``): Triton on CUDA tensors, the reference on CPU;
``VARMEM_KERNELS=triton|reference|auto`` or ``with kernels.use_backend(...)`` forces one.
"""
from varmem.kernels.dispatch import BackendUnavailable, use_backend

__all__ = ["BackendUnavailable", "use_backend"]

# --- memory addressing / memory read (kernels/memory_addressing.py, kernels/memory_read.py) ---
from varmem.kernels.memory_addressing import (  # noqa: E402
    INVALID_ADDRESS,
    MemoryAddressingOutput,
    memory_addressing,
    memory_addressing_reference,
    memory_log_softmax,
)
from varmem.kernels.memory_addressing_stream import memory_addressing_stream  # noqa: E402
from varmem.kernels.memory_read import memory_read, memory_read_reference  # noqa: E402

__all__ += [
    "INVALID_ADDRESS",
    "MemoryAddressingOutput",
    "memory_addressing",
    "memory_addressing_reference",
    "memory_addressing_stream",
    "memory_log_softmax",
    "memory_read",
    "memory_read_reference",
]

# --- VIMCO (kernels/vimco.py) ---
from varmem.kernels.vimco import (  # noqa: E402
    VimcoOutput,
    vimco,
    vimco_reference,
    vimco_surrogate,
    vimco_surrogate_reference,
)

__all__ += ["VimcoOutput", "vimco", "vimco_reference", "vimco_surrogate", "vimco_surrogate_reference"]

# --- Gaussian-kernel attention (kernels/gaussian_attention.py) ---
from varmem.kernels.gaussian_attention import (  # noqa: E402
    gaussian_filterbanks,
    gaussian_read,
    gaussian_read_reference,
    gaussian_write,
    gaussian_write_reference,
)

__all__ += [
    "gaussian_filterbanks",
    "gaussian_read",
    "gaussian_read_reference",
    "gaussian_write",
    "gaussian_write_reference",
]
