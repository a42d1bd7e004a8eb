"""Errors about datasets and episodes that a user can fix; the message names the file, field or value."""
from __future__ import annotations

import errno
import shutil
from pathlib import Path

# errno values that mean "the disk (or the user's quota) is full"
NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DataError(ValueError):
    """A dataset, source or episode spec is not what it must be."""


class DiskFullError(DataError):
    """A write failed for want of space (ENOSPC) or quota (EDQUOT); the message names the path, the free
    space and what is needed. A DataError, so the CLI prints it as one ``varmem: error:`` line."""


def no_space_cause(exc: BaseException | None) -> OSError | None:
    """The OSError with ENOSPC / EDQUOT that ``exc`` is or was raised from (``__cause__`` / ``__context__``;
    torch.save, for one, turns it into a RuntimeError), else None."""
    seen = 0
    while exc is not None and seen < 32:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def human_bytes(n: int | float) -> str:
    """``1.5 GB``, ``120 MB``, ``812 B`` (decimal units, as ``df -H``)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: str | Path) -> int | None:
    """Free bytes on the filesystem of ``path`` (its nearest existing parent), None if unknown."""
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def disk_full_error(path: str | Path, cause: OSError, need: int | None, what: str = "writing",
                    at_least: bool = False) -> DiskFullError:
    """A one-line DiskFullError: ``PATH: no space left on device while writing (needs about N, M free there
    now); free some space ...``. ``at_least``: ``need`` is a lower bound ("needs more than N")."""
    why = "disk quota exceeded" if cause.errno == errno.EDQUOT else "no space left on device"
    free = free_bytes(path)
    need_text = (f"needs more than {human_bytes(need)}" if at_least else f"needs about {human_bytes(need)}") if need \
        else "needs more space"
    free_text = f"{human_bytes(free)} free there now" if free is not None else "free space unknown"
    return DiskFullError(f"{path}: {why} while {what} ({need_text}, {free_text}); "
                         "free some space (or write elsewhere) and run the command again")
