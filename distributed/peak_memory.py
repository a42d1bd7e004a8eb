"""Peak memory of a block of work: the process's resident set (RSS) high-water mark, and CUDA's.

    with PeakMemory() as peak:
        work()
    peak.rss_bytes        # the RSS high-water mark during the block (None where unknown)
    peak.rss_extra_bytes  # that, less the RSS at the start: what the block added at its peak
    peak.cuda_bytes       # torch.cuda.max_memory_allocated during the block (None without CUDA)

Linux only for RSS: ``/proc/self/status`` (VmHWM, VmRSS) and ``/proc/self/clear_refs`` (writing 5
resets VmHWM to the current RSS, Linux ≥ 4.0). CPU tensors are malloc'd, so tracemalloc does not see
them; the RSS high-water mark does (large buffers are mmapped and returned to the system when freed, so
RSS follows what is live). It counts every thread of the process, so measure one thing at a time.
"""
from __future__ import annotations

from pathlib import Path

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(field: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes() -> int | None:
    """The current resident set size, bytes (None where /proc is not available)."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def reset_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS; False where the kernel does not allow it."""
    try:
        CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int | None:
    """The RSS high-water mark since the process started or the last :func:`reset_peak`, bytes."""
    kib = _status_kib("VmHWM")
    return None if kib is None else kib * 1024


class PeakMemory:
    """A ``with`` block's peak RSS (and CUDA allocation): see the module docstring."""

    def __init__(self, cuda_device=None):
        self.cuda_device = cuda_device
        self.rss_bytes: int | None = None
        self.rss_start: int | None = None
        self.cuda_bytes: int | None = None
        self._reset = False

    def __enter__(self) -> "PeakMemory":
        self._reset = reset_peak()
        self.rss_start = rss_bytes()
        if self.cuda_device is not None:
            import torch

            torch.cuda.synchronize(self.cuda_device)
            torch.cuda.reset_peak_memory_stats(self.cuda_device)
        return self

    def __exit__(self, *exc) -> None:
        self.rss_bytes = peak_rss_bytes() if self._reset else None
        if self.cuda_device is not None:
            import torch

            torch.cuda.synchronize(self.cuda_device)
            self.cuda_bytes = int(torch.cuda.max_memory_allocated(self.cuda_device))

    @property
    def rss_extra_bytes(self) -> int | None:
        """Peak RSS during the block less the RSS when it started (None where unknown)."""
        if self.rss_bytes is None or self.rss_start is None:
            return None
        return max(0, self.rss_bytes - self.rss_start)
