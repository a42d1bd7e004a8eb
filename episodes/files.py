"""Atomic file writes: a temporary file beside the target, fsync, then a rename.

A reader sees the old file or the new one, never half of one. The temporary file is created
with the usual permissions (0666 less the umask), unlike ``tempfile.mkstemp``'s 0600. A write
that fails for want of space (ENOSPC, EDQUOT — also when torch.save wraps it in a RuntimeError)
removes the temporary file and raises :class:`varmem.episodes.errors.DiskFullError` (a DataError:
one ``varmem: error:`` line) naming the path, the bytes needed and the bytes free.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from varmem.episodes.errors import disk_full_error, no_space_cause


def temporary_sibling(path: Path) -> Path:
    """A hidden, unique name in ``path``'s directory for writing before the rename."""
    return path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None], size: int | None = None) -> Path:
    """Call ``write(f)`` on a temporary file, then rename it to ``path``; remove it on error.

    ``size``: the bytes the file will take, if the caller knows, for the message when the disk is
    full (otherwise it says at least what had been written when the write failed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        written = _size_of(tmp)
        tmp.unlink(missing_ok=True)
        cause = no_space_cause(exc)
        if cause is not None:
            raise disk_full_error(path, cause, size or written, at_least=not size) from exc
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    data = text.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data), size=len(data))


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0
