"""The per-node shard cache: shards of datasets on object storage, fetched once per node, verified, memory-mapped.

A worker that opens ``s3://bucket/data/strokes26`` reads its manifest from the server and, when it first
uses a split, fetches that split's shards into this cache and memory-maps them from there (zero-copy, as
a local dataset). Entries are keyed by the shard's sha256 from the manifest, so two datasets (or two
builds) that hold the same shard share it, and a rebuilt dataset never reads an old entry::

    CACHE/sha256/ab/ab12....arrow      a verified shard (read-only for varmem)
    CACHE/sha256/ab/ab12....ok         its stamp: the file's size, mtime, ctime, inode when it was verified;
                                       the stamp's own mtime is the entry's last use
    CACHE/partial/ab12....PID-HEX.part a download in progress (a killed one's is removed by the next fetch)
    CACHE/locks/ab12....lock           the per-shard lock

* **One download per node.** A fetch takes the shard's lock (``fcntl.flock``); the workers of a node
  that want the same shard wait for the first one and then find its entry.
* **Verified.** A download streams into ``partial/`` while it is hashed; only a file whose size and
  sha256 match the manifest is renamed into place. A shard corrupted on the server is refused with an
  error naming its URI, a transfer cut short (the server gone away) with an error naming the URI and
  the cause; neither leaves an entry.
* **Damaged entries.** An entry whose stat no longer matches its stamp (rewritten, truncated) is hashed
  again; one that fails is removed and fetched again. An entry without a stamp (the fetcher was killed
  between rename and stamp) is hashed before use.
* **Size limit.** After a download the least recently used entries (mtime, touched on every use) are
  removed until the cache holds at most its limit; the entries this process uses are kept, and so are
  those another process is fetching or checking (their lock is held); a removed entry stays readable
  for a process that has it memory-mapped.

Location: ``storage.cache_dir`` in a run config, else ``VARMEM_CACHE_DIR``, else
``$XDG_CACHE_HOME/varmem/shards`` (``~/.cache/varmem/shards``). Size limit: ``storage.cache_bytes``,
else ``VARMEM_CACHE_BYTES``, else :data:`DEFAULT_MAX_BYTES`.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from varmem.episodes.errors import DataError
from varmem.episodes.stamps import stat_record
from varmem.episodes.storage import Location, StorageError

try:  # POSIX; elsewhere the cache works without the one-download-per-node lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CACHE_DIR_ENV = "VARMEM_CACHE_DIR"
CACHE_BYTES_ENV = "VARMEM_CACHE_BYTES"
DEFAULT_MAX_BYTES = 50 * 10**9  # 50 GB: a few full-size datasets
_SHA256 = re.compile(r"[0-9a-f]{64}")

_settings: dict[str, object] = {}


def configure(cache_dir: str | None = None, cache_bytes: int | None = None) -> None:
    """This process's cache location and size limit (a run config's ``storage`` section); None or empty:
    the environment's (:data:`CACHE_DIR_ENV`, :data:`CACHE_BYTES_ENV`) or the defaults."""
    _settings["cache_dir"] = cache_dir or None
    _settings["cache_bytes"] = cache_bytes or None


def default_root() -> Path:
    if _settings.get("cache_dir"):
        return Path(str(_settings["cache_dir"])).expanduser()
    if os.environ.get(CACHE_DIR_ENV, "").strip():
        return Path(os.environ[CACHE_DIR_ENV].strip()).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "varmem" / "shards"


def default_max_bytes() -> int:
    if _settings.get("cache_bytes"):
        return int(_settings["cache_bytes"])  # type: ignore[arg-type]
    text = os.environ.get(CACHE_BYTES_ENV, "").strip()
    if text:
        try:
            value = int(float(text))
        except ValueError:
            raise DataError(f"{CACHE_BYTES_ENV}={text!r} is not a number of bytes") from None
        if value < 1:
            raise DataError(f"{CACHE_BYTES_ENV}={text!r}: the cache size limit must be ≥ 1 byte")
        return value
    return DEFAULT_MAX_BYTES


@dataclass
class CacheStats:
    """What this process's fetches did: entries found, downloads and their bytes and seconds."""

    hits: int = 0
    downloads: int = 0
    bytes_downloaded: int = 0
    download_s: float = 0.0
    refetched: list[str] = field(default_factory=list)  # entries found damaged (removed, to be fetched again)


class ShardCache:
    """A node's shard cache at ``root`` (see the module docstring), at most ``max_bytes`` large."""

    def __init__(self, root: str | Path | None = None, max_bytes: int | None = None):
        self.root = Path(root).expanduser() if root is not None else default_root()
        self.max_bytes = int(max_bytes) if max_bytes else default_max_bytes()
        self.stats = CacheStats()
        self._in_use: set[Path] = set()

    def entry(self, sha256: str) -> Path:
        if not _SHA256.fullmatch(sha256):
            raise DataError(f"{sha256!r} is not a sha256 (64 lower-case hex digits)")
        return self.root / "sha256" / sha256[:2] / f"{sha256}.arrow"

    def fetch(self, source: Location, sha256: str, size: int | None = None, *, refetch: bool = False) -> Path:
        """The local path of the shard at ``source`` whose manifest sha256 is ``sha256`` (and ``size`` bytes):
        a verified entry of the cache, downloaded first when there is none (or ``refetch``: download and
        verify again whatever the cache holds, as ``varmem data verify`` does). DataError naming ``source``
        when the server's copy does not match, StorageError when the transfer fails; neither leaves an entry."""
        target = self.entry(sha256)
        if not refetch and self._usable(target, sha256, size):
            return self._use(target)
        with self._locked(sha256):
            if not refetch and self._usable(target, sha256, size):  # another worker of this node fetched it meanwhile
                return self._use(target)
            self._download(source, sha256, size, target)
        self.evict()
        return self._use(target)

    # --- entries ---
    def _use(self, target: Path) -> Path:
        self._in_use.add(target)
        with contextlib.suppress(OSError):
            os.utime(self._stamp_path(target))  # the stamp's mtime is the entry's last use: the last to be evicted
        return target

    def _stamp_path(self, target: Path) -> Path:
        return target.with_suffix(".ok")

    def _write_stamp(self, target: Path) -> None:
        from varmem.episodes.files import atomic_write_text

        atomic_write_text(self._stamp_path(target), json.dumps(stat_record(target.stat())) + "\n")

    def _usable(self, target: Path, sha256: str, size: int | None) -> bool:
        """Whether ``target`` is a verified entry: its stat as stamped, else (stat changed, no stamp) its hash
        checked again. A damaged entry is removed (the caller fetches it again)."""
        try:
            st = target.stat()
        except FileNotFoundError:
            return False
        if size is not None and st.st_size != size:
            self._remove(target)
            self.stats.refetched.append(str(target))
            return False
        try:
            stamp = json.loads(self._stamp_path(target).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stamp = None
        if stamp == stat_record(st):
            self.stats.hits += 1
            return True
        if _sha256_file(target) == sha256:
            with contextlib.suppress(OSError):
                self._write_stamp(target)
            self.stats.hits += 1
            return True
        self._remove(target)
        self.stats.refetched.append(str(target))
        return False

    def _remove(self, target: Path) -> None:
        for p in (target, self._stamp_path(target)):
            with contextlib.suppress(OSError):
                p.unlink()

    def _download(self, source: Location, sha256: str, size: int | None, target: Path) -> None:
        partial = self.root / "partial"
        partial.mkdir(parents=True, exist_ok=True)
        for stale in partial.glob(f"{sha256}.*.part"):  # we hold the lock: these downloads are dead
            with contextlib.suppress(OSError):
                stale.unlink()
        tmp = partial / f"{sha256}.{os.getpid()}-{secrets.token_hex(3)}.part"
        digest, written, t0 = hashlib.sha256(), 0, time.perf_counter()
        try:
            with open(tmp, "xb") as f:
                for block in source.stream():
                    f.write(block)
                    digest.update(block)
                    written += len(block)
                f.flush()
                os.fsync(f.fileno())
            if size is not None and written != size:
                raise DataError(f"shard {source}: {written:,} bytes on the server, the manifest says {size:,}: the server's "
                                "copy is damaged or was rewritten; rebuild the dataset or run `varmem data verify` on it")
            found = digest.hexdigest()
            if found != sha256:
                raise DataError(f"shard {source}: sha256 {found[:12]}… does not match the manifest's {sha256[:12]}…: the "
                                "server's copy is corrupt or was rewritten; rebuild the dataset (`varmem data build ... "
                                "--overwrite`) or run `varmem data verify` on it")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            self._write_stamp(target)
        except StorageError as exc:
            raise StorageError(f"fetching shard {source} into the cache {self.root}: {exc}; nothing was cached "
                               "(the next open fetches it again)") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()
        self.stats.downloads += 1
        self.stats.bytes_downloaded += written
        self.stats.download_s += time.perf_counter() - t0

    @contextlib.contextmanager
    def _locked(self, sha256: str) -> Iterator[None]:
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(locks / f"{sha256}.lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    # --- size ---
    def entries(self) -> list[tuple[Path, os.stat_result]]:
        """Every entry with its stat, least recently used first (its stamp's mtime: the last use)."""
        found = []
        for p in (self.root / "sha256").glob("*/*.arrow"):
            with contextlib.suppress(OSError):
                st = p.stat()
                try:
                    used = self._stamp_path(p).stat().st_mtime_ns
                except OSError:
                    used = st.st_mtime_ns
                found.append((used, p, st))
        return [(p, st) for _, p, st in sorted(found, key=lambda e: e[0])]

    def size(self) -> int:
        return sum(st.st_size for _, st in self.entries())

    def evict(self) -> list[Path]:
        """Remove least recently used entries (not this process's) until the cache holds at most ``max_bytes``."""
        entries = self.entries()
        total = sum(st.st_size for _, st in entries)
        removed = []
        for path, st in entries:
            if total <= self.max_bytes:
                break
            if path in self._in_use:
                continue
            sha = path.stem
            with self._try_locked(sha) as got:
                if got:
                    self._remove(path)
                    removed.append(path)
                    total -= st.st_size
        return removed

    @contextlib.contextmanager
    def _try_locked(self, sha256: str) -> Iterator[bool]:
        if fcntl is None:  # pragma: no cover
            yield True
            return
        lock = self.root / "locks" / f"{sha256}.lock"
        with open(lock, "a+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # being fetched or checked by another process: leave it
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_default: dict[tuple, ShardCache] = {}


def default_cache() -> ShardCache:
    """This process's cache at the configured location and limit (one object per location)."""
    key = (str(default_root()), default_max_bytes())
    if key not in _default:
        _default[key] = ShardCache(*key)
    return _default[key]
