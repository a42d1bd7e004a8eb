"""Backend selection for varmem's kernels.

Every op has two backends:

* ``triton``: the fused Triton kernels. They serve CUDA tensors, and CPU tensors when
  ``TRITON_INTERPRET=1`` was set before ``kernels`` was imported (that is how CI tests them).
* ``reference``: the PyTorch implementation beside each kernel. It is the CPU path, the
  test oracle and the documentation of the math; it serves any device.

The choice is ``auto`` (Triton on CUDA tensors, the reference otherwise) unless forced by
the ``VARMEM_KERNELS`` environment variable (``triton|reference|auto``) or, with priority
over it, by the :func:`use_backend` context manager. Each backend declares what it supports;
when the chosen (or forced) backend cannot serve a call, :class:`BackendUnavailable` lists
every backend's reason.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Callable, Iterator, Sequence

import torch

BACKENDS = ("triton", "reference")
CHOICES = ("auto",) + BACKENDS

_forced: contextvars.ContextVar[str | None] = contextvars.ContextVar("varmem_kernels", default=None)


class BackendUnavailable(RuntimeError):
    """No backend that the current setting allows can serve this call."""


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=1)
def triton_import_error() -> str | None:
    """None if triton imports, else why it does not."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"triton is not importable ({type(exc).__name__}: {exc})"
    return None


def requested_backend() -> str:
    """The backend asked for: the context manager's, else ``VARMEM_KERNELS``, else ``auto``."""
    forced = _forced.get()
    if forced is not None:
        return forced
    value = os.environ.get("VARMEM_KERNELS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"VARMEM_KERNELS={value!r} is not one of {', '.join(CHOICES)}")
    return value


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Force a backend inside a ``with`` block: ``with use_backend("reference"): ...``."""
    if name not in CHOICES:
        raise ValueError(f"backend {name!r} is not one of {', '.join(CHOICES)}")
    token = _forced.set(name)
    try:
        yield
    finally:
        _forced.reset(token)


def triton_device_reason(tensors: Sequence[torch.Tensor | None]) -> str | None:
    """Why the Triton backend cannot take these tensors (device and importability), or None."""
    err = triton_import_error()
    if err is not None:
        return err
    devices = {t.device.type for t in tensors if t is not None}
    if len({t.device for t in tensors if t is not None}) > 1:
        return f"tensors are on different devices: {sorted(str(t.device) for t in tensors if t is not None)}"
    if devices == {"cuda"}:
        return None
    if devices == {"cpu"} and interpret_mode():
        return None
    where = ", ".join(sorted(devices)) or "no device"
    return f"tensors on {where}; Triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"


def dtype_reason(tensors: Sequence[torch.Tensor | None], allowed: Sequence[torch.dtype]) -> str | None:
    """Why these tensors' dtypes are not all in ``allowed`` (and the same), or None."""
    dtypes = {t.dtype for t in tensors if t is not None}
    bad = [d for d in dtypes if d not in allowed]
    if bad:
        return f"dtype {bad[0]} not supported (supported: {', '.join(str(d) for d in allowed)})"
    if len(dtypes) > 1:
        return f"mixed dtypes {sorted(str(d) for d in dtypes)}; pass tensors of one dtype"
    return None


def choose(op: str, tensors: Sequence[torch.Tensor | None], reasons: dict[str, Callable[[], str | None]]) -> str:
    """Pick the backend for one call of ``op``.

    ``reasons`` maps each backend name to a zero-argument callable that returns why that
    backend cannot serve this call, or ``None`` when it can. ``auto`` takes Triton for CUDA
    tensors when it can serve them and the reference otherwise (on CPU, interpreter mode
    included: the interpreter is for testing, forced with ``triton``). A forced backend that
    refuses raises :class:`BackendUnavailable` naming every backend's reason.
    """
    requested = requested_backend()
    if requested == "auto":
        on_cuda = any(t is not None and t.is_cuda for t in tensors)
        order = list(BACKENDS) if on_cuda else ["reference"]
    else:
        order = [requested]
    refusals: dict[str, str] = {}
    for name in order:
        why = reasons[name]()
        if why is None:
            return name
        refusals[name] = why
    for name in BACKENDS:  # name every backend's reason, also those not asked for
        if name not in refusals:
            why = reasons[name]()
            refusals[name] = why if why is not None else f"could serve this call, but {requested!r} was requested"
    lines = "\n".join(f"  - {name}: {why}" for name, why in refusals.items())
    raise BackendUnavailable(
        f"{op}: no backend can serve this call (requested: {requested}).\n{lines}\n"
        "Choose with VARMEM_KERNELS=auto|triton|reference or kernels.use_backend(...)."
    )
