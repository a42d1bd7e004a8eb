"""Verified stamps: which shards have been hashed and checked, so that opening a dataset is cheap.

Opening a dataset for training or evaluation checks every shard against its manifest entry
(sha256, rows, image width, class ids: :meth:`varmem.episodes.dataset.Dataset.check_shards`).
Hashing gigabytes on every open would be slow, so a shard that passed is *stamped*: its size,
``mtime_ns``, ``ctime_ns``, inode and device, with the sha256 and a digest of the manifest entry it
was checked against. The next open compares ``os.stat`` with the stamp and re-checks only a shard
whose stamp does not match (rewritten, touched, copied, or a manifest entry that changed). A
write to the file changes its mtime and its ctime (which ``touch`` cannot set back), so a
flipped byte is hashed again. Not seen: damage that bypasses the filesystem (bit rot), and a
same-size write within the same filesystem timestamp tick as the check (milliseconds on ext4 or
xfs, up to 2 s on FAT) — ``varmem data verify`` always hashes everything.

Stamps live in ``DIR/.varmem-verified.json`` (hidden; ``--overwrite`` builds drop it with the old
directory), or, when the dataset folder is not writable, in the user's cache:
``$XDG_CACHE_HOME/varmem/verified/<sha256 of the folder's path>.json`` (``~/.cache`` by default).
Both are read; a stamp file that is unreadable, not a regular file or of another format is
ignored (the shards are simply checked again). Writes are atomic; concurrent openers (Ray
workers) each write a complete file.

``VARMEM_VERIFY_SHARDS=0`` (or ``Dataset.open(DIR, verify=False)``) skips the check altogether.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

STAMP_FILE = ".varmem-verified.json"
STAMP_FORMAT = "varmem.verified/1"
ENV = "VARMEM_VERIFY_SHARDS"
MAX_STAMP_BYTES = 64 << 20
_STAT_FIELDS = ("size", "mtime_ns", "ctime_ns", "ino", "dev")


def verify_enabled(verify: bool | None = None) -> bool:
    """``verify`` when given, else ``VARMEM_VERIFY_SHARDS`` (on unless 0 / false / no / off)."""
    if verify is not None:
        return bool(verify)
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "varmem" / "verified"


def entry_digest(entry: dict[str, Any], image_shape: tuple[int, int], kind: str) -> str:
    """What a shard was checked against: its manifest entry, the image shape and the dataset kind."""
    text = json.dumps({"entry": entry, "image_shape": list(image_shape), "kind": kind}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def stat_record(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino, "dev": st.st_dev}


class Stamps:
    """The stamps of one dataset folder: ``file → {size, mtime_ns, ctime_ns, ino, dev, sha256, checked}``."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.local = self.directory / STAMP_FILE
        self.cached = cache_dir() / (hashlib.sha256(str(self.directory).encode()).hexdigest()[:32] + ".json")
        self._loaded = [_read(self.local), _read(self.cached)]
        self.entries: dict[str, dict[str, Any]] = {}
        for stamps in reversed(self._loaded):  # the folder's own stamps win
            self.entries.update(stamps)
        self.changed = False

    def matches(self, file: str, st: os.stat_result, sha256: str, checked: str) -> bool:
        """Whether ``file`` (stat ``st``) was checked as it is now against the same manifest entry."""
        return any(stamps.get(file) == {**stat_record(st), "sha256": sha256, "checked": checked} for stamps in self._loaded)

    def record(self, file: str, st: os.stat_result, sha256: str, checked: str) -> None:
        self.entries[file] = {**stat_record(st), "sha256": sha256, "checked": checked}
        self.changed = True

    def forget(self, file: str) -> None:
        if self.entries.pop(file, None) is not None:
            self.changed = True

    def save(self, keep: set[str], fallback: bool = True) -> Path | None:
        """Write the stamps of the files in ``keep`` (the manifest's) to the folder, or (``fallback``) to
        the user cache when the folder is not writable; None when neither could be written (no harm:
        the next open checks again)."""
        from varmem.episodes.files import atomic_write_text

        if not self.changed:
            return None
        body = {"format": STAMP_FORMAT, "shards": {f: e for f, e in sorted(self.entries.items()) if f in keep}}
        text = json.dumps(body, indent=1) + "\n"
        for target in (self.local, self.cached) if fallback else (self.local,):
            try:
                atomic_write_text(target, text)
            except (OSError, ValueError):  # read-only folder, full disk (DiskFullError), no home: try the next
                continue
            self.changed = False
            return target
        return None


def unverified(stamps: "Stamps", entries, path_of, digest_of) -> list:
    """The (field, entry) pairs of ``entries`` whose file is missing or whose stamp no longer matches:
    the shards an opener must check (a dataset's, a memory store's). ``path_of(field, entry)`` is the
    shard's path, ``digest_of(entry)`` the digest of its manifest entry."""
    todo = []
    for field, entry in entries:
        try:
            st = os.stat(path_of(field, entry))
        except FileNotFoundError:
            todo.append((field, entry))
            continue
        if not stamps.matches(entry["file"], st, entry["sha256"], digest_of(entry)):
            todo.append((field, entry))
    return todo


def _read(path: Path) -> dict[str, dict[str, Any]]:
    """The shards of a stamp file; {} when it is absent, not a regular file, too large or not ours."""
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_STAMP_BYTES:
            return {}
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    if not isinstance(body, dict) or body.get("format") != STAMP_FORMAT or not isinstance(body.get("shards"), dict):
        return {}
    return {f: e for f, e in body["shards"].items() if isinstance(e, dict)}
