"""Whether ``varmem tune --resume`` may hand a search's saved state to Ray: only when varmem wrote it.

Ray Tune's restore unpickles what the search directory holds — ``tune/tuner.pkl``, the search
generator's state (``tune/basic-variant-state-*.json``, a pickle despite its name), the cloudpickled
parts of ``tune/experiment_state-*.json``, each trial's ``params.pkl`` and ``error.pkl`` — and
unpickling runs whatever code the pickle names. A search directory received from someone else could
run anything as the user who resumes it. So varmem signs the state it writes and checks the signature
before Ray reads anything:

* a per-user secret key, outside every search directory: ``$VARMEM_SEARCH_KEY_FILE``, else
  ``$XDG_CONFIG_HOME/varmem/search_key`` (``~/.config/varmem/search_key``), 32 random bytes in hex,
  created on first use with mode 0600 (a key file that others can read, or not the user's own, is refused);
* ``SEARCH_DIR/signature.json``: an HMAC-SHA256, with that key, of every file of ``SEARCH_DIR/tune``
  that Ray may unpickle, and of its path. That is every file except what Ray and varmem only parse as
  data: ``result.json``, ``progress.csv``, ``params.json``, TensorBoard event files, Ray's
  ``.validate_storage_marker``, and varmem's checkpoints (``*.pt``, loaded with
  ``torch.load(weights_only=True)``, which builds tensors and plain containers only). ``search.yaml``
  is signed too: it is not a pickle, but it names the config and the space that ``--resume`` runs;
* signed while the search runs, whenever Ray has rewritten its state (:class:`StateSigner`, checked at
  most once a second), and when the search ends or is interrupted (:func:`sign`);
* checked by ``varmem tune --resume`` (:func:`verify`) before the cluster is reached: a missing
  signature, a file it does not cover, one that changed, one signed with another key, a link or a
  special file are one ``varmem: error:`` line naming the file and the override,
  ``--trust-search-dir`` (docs/TUNE.md, "Resuming a search someone else wrote").

A search killed with ``kill -9`` between Ray rewriting its state and the next signature (at most a
second) is refused too: resume it with ``--trust-search-dir`` when it was yours.

A search directory on object storage (``s3://bucket/searches/NAME``) is signed and verified the same way,
through the storage layer (:class:`~varmem.episodes.storage.Location`): the objects under ``tune/`` and
``search.yaml``, their keys relative to the search directory, ``signature.json`` beside them; the key stays
on the user's machine. Object storage has no links or special files; an object's bytes are read once to
check it (the state is small: kilobytes to a few MB).

Nothing here imports Ray.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time
from pathlib import Path
from typing import Any

from dataclasses import dataclass

from varmem.distributed.config import ConfigError, atomic_write_text
from varmem.distributed.search.searchdir import SEARCH_FILE, SIGNATURE_FILE, TUNE_DIR
from varmem.episodes.storage import Location, StorageError, is_remote, location

STATE_DIR = TUNE_DIR  # what is signed: Ray Tune's experiment directory, and SEARCH_FILE (what --resume runs)
KEY_ENV = "VARMEM_SEARCH_KEY_FILE"
TRUST_FLAG = "--trust-search-dir"
DOCS = 'docs/TUNE.md, "Resuming a search someone else wrote"'
FORMAT = "varmem search signature 1"
MAX_SIGNATURE_BYTES = 64 << 20

# Files Ray and varmem read without unpickling: left out of the signature (they change as trials run).
DATA_NAMES = frozenset({"result.json", "progress.csv", "params.json", ".validate_storage_marker"})
DATA_PREFIXES = ("events.out.tfevents.",)
DATA_SUFFIXES = (".pt",)  # varmem's checkpoints: torch.load(weights_only=True)


class UntrustedSearch(ConfigError):
    """A search directory whose pickled state varmem did not sign with this user's key."""


# --- the key ---------------------------------------------------------------------------------


def key_file() -> Path:
    """``$VARMEM_SEARCH_KEY_FILE``, else ``$XDG_CONFIG_HOME/varmem/search_key``, else ``~/.config/varmem/search_key``."""
    override = os.environ.get(KEY_ENV)
    if override:
        return Path(override).expanduser()
    config_home = os.environ.get("XDG_CONFIG_HOME")
    base = Path(config_home) if config_home and Path(config_home).is_absolute() else Path.home() / ".config"
    return base / "varmem" / "search_key"


def load_key() -> bytes:
    """The user's signing key, created (mode 0600, its folder 0700) when there is none."""
    path = key_file()
    hint = f"(set {KEY_ENV} to use another file)"
    if not path.exists() and not path.is_symlink():
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            pass  # created meanwhile by another varmem: read it below
        except OSError as exc:
            raise ConfigError(f"cannot create the search signing key {path}: {exc.strerror or exc} {hint}") from None
        else:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the search signing key {path}: {exc.strerror or exc} {hint}") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the search signing key {path} is not a regular file {hint}")
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise ConfigError(f"the search signing key {path} belongs to another user (uid {info.st_uid}): "
                              f"it must be your own {hint}")
        if info.st_mode & 0o077:
            raise ConfigError(f"the search signing key {path} can be read or written by other users "
                              f"(mode {stat.S_IMODE(info.st_mode):04o}): run `chmod 600 {path}`")
        text = f.read(200).decode("ascii", errors="replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise ConfigError(f"the search signing key {path} is not 64 hexadecimal digits: remove it and varmem "
                          "writes a new one (searches signed with it then need --trust-search-dir to resume)")
    return key


def key_id(key: bytes) -> str:
    """A public name for a key (which key signed a search), not the key."""
    return hashlib.sha256(b"varmem key id\0" + key).hexdigest()[:16]


# --- the signed files --------------------------------------------------------------------------


def is_data(name: str) -> bool:
    return name in DATA_NAMES or name.startswith(DATA_PREFIXES) or name.endswith(DATA_SUFFIXES)


@dataclass(frozen=True)
class RemoteFile:
    """A state file on object storage: where it is, and its size and time from the listing."""

    where: Location
    size: int
    mtime_ns: int


def _remote(search_dir: "str | Path | Location") -> Location | None:
    """The search directory's Location when it is on object storage, else None (a local folder)."""
    if isinstance(search_dir, Location):
        return None if search_dir.is_local else search_dir
    return location(search_dir) if is_remote(search_dir) else None


def _local(search_dir: "str | Path | Location") -> Path:
    return search_dir.local_path if isinstance(search_dir, Location) else Path(search_dir)


def _remote_entries(place: Location) -> list[tuple[str, RemoteFile]]:
    """:func:`state_entries` of a search directory on object storage (one listing of tune/, one of search.yaml)."""
    found: list[tuple[str, RemoteFile]] = []
    search_file = place.child(SEARCH_FILE)
    info = search_file.info()
    if info.type.name == "File":
        found.append((SEARCH_FILE, RemoteFile(search_file, int(info.size or 0), int(info.mtime_ns or 0))))
    root = place.child(STATE_DIR)
    for rel, info in root.files():
        if not is_data(rel.rsplit("/", 1)[-1]):
            found.append((f"{STATE_DIR}/{rel}", RemoteFile(root.child(*rel.split("/")), int(info.size or 0),
                                                           int(info.mtime_ns or 0))))
    return sorted(found, key=lambda e: e[0])


def state_entries(search_dir: "str | Path | Location") -> list[tuple[str, Any]]:
    """``(relative path, path)`` of every entry the signature covers, sorted: SEARCH_DIR/search.yaml, the
    files of SEARCH_DIR/tune that Ray may unpickle, and any link or special file there (refused by :func:`verify`).
    On object storage the second item is a :class:`RemoteFile`."""
    remote = _remote(search_dir)
    if remote is not None:
        return _remote_entries(remote)
    search_dir = _local(search_dir)
    root = Path(search_dir) / STATE_DIR
    found: list[tuple[str, Path]] = []
    search_file = Path(search_dir) / SEARCH_FILE
    if search_file.exists() or search_file.is_symlink():
        found.append((SEARCH_FILE, search_file))
    if not root.is_dir() or root.is_symlink():
        if root.is_symlink():
            found.append((STATE_DIR, root))
        return sorted(found)
    for directory, dirnames, filenames in os.walk(root):  # does not follow links to directories
        here = Path(directory)
        for name in dirnames:
            if (here / name).is_symlink():
                found.append(((here / name).relative_to(search_dir).as_posix(), here / name))
        for name in filenames:
            path = here / name
            try:
                if not is_data(name) or path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode):
                    found.append((path.relative_to(search_dir).as_posix(), path))
            except FileNotFoundError:  # replaced meanwhile (Ray rewrites its state while a search runs)
                continue
    return sorted(found)


def _mac(key: bytes, relative: str, path: "Path | RemoteFile") -> str:
    mac = hmac.new(key, f"{FORMAT}\0{relative}\0".encode("utf-8", "surrogateescape"), hashlib.sha256)
    if isinstance(path, RemoteFile):
        for block in path.where.stream(1 << 20):
            mac.update(block)
        return mac.hexdigest()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            mac.update(block)
    return mac.hexdigest()


def _special(path: "Path | RemoteFile") -> bool:
    """A link or anything but a regular file (never on object storage)."""
    return not isinstance(path, RemoteFile) and (path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode))


def _fingerprint(entries: list[tuple[str, Any]]) -> tuple:
    out = []
    for relative, path in entries:
        if isinstance(path, RemoteFile):
            out.append((relative, path.size, path.mtime_ns, 0))
            continue
        try:
            info = path.lstat()
        except OSError:
            continue
        out.append((relative, info.st_size, info.st_mtime_ns, info.st_mode))
    return tuple(out)


def sign(search_dir: "str | Path | Location", key: bytes | None = None) -> tuple:
    """Write SEARCH_DIR/signature.json for the state files as they are now; returns their fingerprint
    (sizes and times: :class:`StateSigner` signs again when it changes). Links and special files are
    not signed (Ray never writes them; :func:`verify` refuses them)."""
    remote = _remote(search_dir)
    key = key if key is not None else load_key()
    entries = state_entries(search_dir)
    fingerprint = _fingerprint(entries)  # before reading: a write during the signing changes it, so it is signed again
    files: dict[str, str] = {}
    for relative, path in entries:
        try:
            if _special(path):
                continue
            files[relative] = _mac(key, relative, path)
        except FileNotFoundError:  # removed meanwhile (Ray replaces its state files)
            continue
        except StorageError:
            if path.where.exists():
                raise
            continue  # removed meanwhile, on object storage
    record = {"format": FORMAT, "algorithm": "HMAC-SHA256", "key_id": key_id(key),
              "key_file": str(key_file()), "signed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    if remote is not None:
        remote.child(SIGNATURE_FILE).write_text(text)
    else:
        atomic_write_text(_local(search_dir) / SIGNATURE_FILE, text)
    return fingerprint


def _read_signature(search_dir: "str | Path | Location") -> tuple[str, Any]:
    """(what the signature file is called, its record); FileNotFoundError when missing, ValueError when it is
    not what :func:`sign` writes (a link, a FIFO — reading it would block —, something huge, not JSON)."""
    remote = _remote(search_dir)
    if remote is not None:
        where = remote.child(SIGNATURE_FILE)
        try:
            data = where.read_bytes(max_bytes=MAX_SIGNATURE_BYTES)
        except StorageError as exc:
            if not where.exists():
                raise FileNotFoundError(where.uri) from None
            raise ValueError(str(exc)) from None
        return where.uri, json.loads(data.decode("utf-8"))
    signature_path = _local(search_dir) / SIGNATURE_FILE
    info = signature_path.lstat()
    if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_SIGNATURE_BYTES:
        raise ValueError
    return str(signature_path), json.loads(signature_path.read_text(encoding="utf-8"))


def verify(search_dir: "str | Path | Location", key: bytes | None = None) -> None:
    """UntrustedSearch (one line: the file, why, the override) unless every state file of the search
    carries this user's signature. Reads no pickle."""
    remote = _remote(search_dir)
    shown_dir = remote.uri if remote is not None else _local(search_dir)
    key = key if key is not None else load_key()
    entries = state_entries(search_dir)
    if not entries:
        return  # nothing Ray would unpickle
    signature_path = remote.child(SIGNATURE_FILE).uri if remote is not None else _local(search_dir) / SIGNATURE_FILE

    def shown(path: "Path | RemoteFile") -> str:
        return path.where.uri if isinstance(path, RemoteFile) else str(path)

    pickles = [path for relative, path in entries if relative.startswith(STATE_DIR + "/")]
    first = shown(next((p for r, p in entries if r.endswith("/tuner.pkl")), pickles[0] if pickles else entries[0][1]))
    why = None
    try:
        signature_path, record = _read_signature(search_dir)
        files = record["files"]
        signer = record.get("key_id")
        if record.get("format") != FORMAT or not isinstance(files, dict):
            raise ValueError
    except FileNotFoundError:
        why = (f"{signature_path} is missing, so varmem cannot tell who wrote {first} "
               "(a search from another machine or user, or one started before varmem signed searches)")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        why = f"{signature_path} is not a varmem search signature, so varmem cannot tell who wrote {first}"
    if why is None and signer != key_id(key):
        why = (f"{first} was signed with another key than yours ({key_file()}): the search was written by another "
               "user or on another machine")
    if why is None:
        for relative, path in entries:
            if _special(path):
                why = f"{shown(path)} is a link or a special file, which varmem never writes"
                break
            expected = files.get(relative)
            if not isinstance(expected, str):
                why = f"{shown(path)} is not covered by {signature_path} (it was added after varmem signed the search)"
                break
            if not hmac.compare_digest(expected.encode("utf-8", "surrogatepass"), _mac(key, relative, path).encode()):
                why = f"{shown(path)} changed after varmem signed the search"
                break
    if why is not None:
        raise UntrustedSearch(
            f"refusing to resume {shown_dir}: {why}. Ray unpickles this state on resume, and unpickling runs "
            f"any code it holds; resume only searches you ran yourself, or pass {TRUST_FLAG} if you trust whoever "
            f"wrote {shown_dir} ({DOCS})")


# --- signing while a search runs ---------------------------------------------------------------


class StateSigner:
    """Signs the search's state after Ray rewrites it (a Tune callback's hooks call :meth:`maybe_sign`):
    a search killed without warning can still be resumed when it was killed more than a moment after
    Ray's last write. Holds the search directory only (the key is read from its file each time: a Tune
    callback is pickled into tuner.pkl)."""

    MIN_INTERVAL_S = 1.0

    def __init__(self, search_dir: str | Path):
        self.search_dir = str(search_dir)
        self._last: tuple | None = None
        self._checked = 0.0

    def __getstate__(self) -> dict[str, Any]:
        return {"search_dir": self.search_dir}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["search_dir"])

    def maybe_sign(self, search_dir: str | Path | None = None, *, force: bool = False) -> None:
        if search_dir is not None:
            self.search_dir = str(search_dir)  # a restored search may have moved
        now = time.monotonic()
        if not force and now - self._checked < self.MIN_INTERVAL_S:
            return
        self._checked = now
        try:
            if not force and _fingerprint(state_entries(self.search_dir)) == self._last:
                return
            self._last = sign(self.search_dir)
        except (ConfigError, StorageError, OSError):
            self._last = None  # the key went missing, a file could not be read: the end of the search reports it
