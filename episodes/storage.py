"""Datasets and runs by URI: one ``pyarrow.fs`` layer for local paths, ``file://``, ``s3://``, ``gs://`` and ``hdfs://``.

:func:`location` turns what a user wrote (``data.dir``, ``--out``, ``RUN_DIR``) into a :class:`Location`:
a ``pyarrow.fs`` filesystem and a path on it, with the URI it came from for messages. Local paths and
``file://`` URIs are the local filesystem; ``s3://bucket/prefix`` is an ``S3FileSystem`` (any S3-compatible
server); ``gs://`` / ``gcs://`` and ``hdfs://`` / ``viewfs://`` go through ``pyarrow.fs.FileSystem.from_uri``.

Credentials and endpoints come from where the AWS and Google tools read them, never from varmem's files:

* S3 credentials: the AWS SDK's default chain, which ``pyarrow`` uses when it is given no keys —
  ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and
  ``~/.aws/credentials``, an instance or pod role. varmem never passes keys to ``pyarrow`` itself, so a
  filesystem pickled to Ray workers (Ray Train's ``storage_filesystem``) carries none: each node uses its
  own environment. A URI holding keys (``?access_key=``) is refused.
* S3 endpoint (an S3-compatible server: MinIO, Ceph, moto, ...): the URI's own ``?endpoint_override=HOST:PORT&scheme=http``,
  else ``--s3-endpoint`` / the config's ``storage.s3_endpoint`` (:func:`configure`), else a command's
  ``--s3-endpoint`` that is no config's (``varmem eval``: :func:`configure_default`, which a config without
  an endpoint does not clear), else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL`` (the AWS CLI's and
  SDKs' variables), else AWS itself. Region: ``AWS_REGION`` or
  ``AWS_DEFAULT_REGION``; else ``us-east-1`` for a custom endpoint and the bucket's own region on AWS.
* GCS: ``GOOGLE_APPLICATION_CREDENTIALS`` and the usual Google chain; HDFS: ``HADOOP_HOME`` / ``CLASSPATH``
  (libhdfs), as ``pyarrow`` reads them.

A URI that went through ``pathlib`` (``Path("s3://b/x")`` prints ``s3:/b/x``) is read as the URI it was.
Every failure of the storage is a :class:`StorageError` (a DataError: one ``varmem: error:`` line) naming the URI.
"""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pafs

from varmem.episodes.errors import DataError

REMOTE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs")
SCHEMES = REMOTE_SCHEMES + ("file",)
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")  # the AWS CLI's and SDKs' variables, most specific first
REGION_ENV = ("AWS_REGION", "AWS_DEFAULT_REGION")
SECRET_QUERY_KEYS = ("access_key", "secret_key", "session_token", "password")
# A storage server that stops answering fails a request after these (AWS's defaults are minutes of retries).
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 60.0
MAX_ATTEMPTS = 3
CHUNK_BYTES = 4 << 20  # streaming reads and writes

_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/+)(.*)$", re.S)


class StorageError(DataError):
    """Object storage (or a remote filesystem) failed or refused a request; the message names the URI."""


# --- what a string names ----------------------------------------------------------------------------


def normalize(text: str | os.PathLike) -> str:
    """``text`` as a string, a URI mangled by ``pathlib`` (``s3:/b/x``, ``file:/abs``) repaired."""
    text = os.fspath(text) if not isinstance(text, str) else text
    m = _URI.match(text)
    if m and m.group(1).lower() in SCHEMES and len(m.group(2)) == 1:
        scheme, rest = m.group(1).lower(), m.group(3)
        return f"file:///{rest}" if scheme == "file" else f"{scheme}://{rest}"
    return text


def scheme_of(text: str | os.PathLike) -> str | None:
    """The URI scheme of ``text`` (lower case) when it is one varmem reads, else None (a local path)."""
    m = _URI.match(normalize(text))
    return m.group(1).lower() if m and m.group(1).lower() in SCHEMES else None


def is_uri(text: Any) -> bool:
    """Whether ``text`` is a URI of a storage varmem reads (``file://`` included)."""
    return isinstance(text, (str, os.PathLike, Location)) and (isinstance(text, Location) or scheme_of(text) is not None)


def is_remote(text: Any) -> bool:
    """Whether ``text`` names object storage or a remote filesystem (not a local path, not ``file://``)."""
    if isinstance(text, Location):
        return not text.is_local
    return isinstance(text, (str, os.PathLike)) and scheme_of(text) in REMOTE_SCHEMES


# --- endpoints --------------------------------------------------------------------------------------

_settings: dict[str, str] = {}
_filesystems: dict[tuple, pafs.FileSystem] = {}
_lock = threading.Lock()


def configure(s3_endpoint: str | None = None) -> None:
    """This process's S3 endpoint (``--s3-endpoint``, the config's ``storage.s3_endpoint``); ``""``/None: the
    environment's (:data:`ENDPOINT_ENV`) or AWS itself."""
    if s3_endpoint:
        check_endpoint(s3_endpoint, "storage.s3_endpoint")
        _settings["s3_endpoint"] = s3_endpoint
    else:
        _settings.pop("s3_endpoint", None)


def check_endpoint(endpoint: str, field: str = "--s3-endpoint") -> tuple[str, str]:
    """``(host:port, scheme)`` of an endpoint written ``http://HOST:PORT``, ``https://HOST`` or ``HOST:PORT``
    (https); StorageError naming ``field`` for anything else, and for one that holds credentials."""
    text = endpoint.strip()
    parts = urlsplit(text if "://" in text else f"https://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StorageError(f"{field} is {endpoint!r}: expected http://HOST:PORT, https://HOST or HOST:PORT")
    if parts.username or parts.password:
        raise StorageError(f"{field} holds credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the "
                           "environment instead (an endpoint is written to configs and logs)")
    if parts.path not in ("", "/") or parts.query:
        raise StorageError(f"{field} is {endpoint!r}: an endpoint is HOST:PORT with no path or query")
    return parts.netloc, parts.scheme


def configure_default(s3_endpoint: str | None) -> None:
    """This process's S3 endpoint when no config names one: a command's ``--s3-endpoint`` that is not written
    into a config (``varmem eval``). :func:`configure` with a config's endpoint takes precedence over it,
    and :func:`configure` with none (a run's config without ``storage.s3_endpoint``) does not clear it."""
    if s3_endpoint:
        check_endpoint(s3_endpoint)
        _settings["default_s3_endpoint"] = s3_endpoint
    else:
        _settings.pop("default_s3_endpoint", None)


def s3_endpoint() -> str | None:
    """The S3 endpoint in force: :func:`configure`'s, else :func:`configure_default`'s, else
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``."""
    for name in ("s3_endpoint", "default_s3_endpoint"):
        if _settings.get(name):
            return _settings[name]
    for name in ENDPOINT_ENV:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    return None


def _region(bucket: str, endpoint: str | None) -> str:
    for name in REGION_ENV:
        if os.environ.get(name, "").strip():
            return os.environ[name].strip()
    if endpoint:
        return "us-east-1"
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError) as exc:
        raise StorageError(f"s3://{bucket}: cannot tell the bucket's region ({_reason(exc)}); set AWS_REGION") from None


def _s3(bucket: str, endpoint: str | None, query: dict[str, str]) -> pafs.S3FileSystem:
    """One ``S3FileSystem`` per (endpoint, region, ...) in a process; no keys given (the SDK's chain finds them)."""
    if "endpoint_override" in query:
        host, scheme = query["endpoint_override"], query.get("scheme", "https")
    elif endpoint:
        host, scheme = check_endpoint(endpoint, "the S3 endpoint")
    else:
        host, scheme = None, query.get("scheme", "https")
    region = query.get("region") or _region(bucket, host)
    key = ("s3", host, scheme, region)
    with _lock:
        fs = _filesystems.get(key)
        if fs is None:
            fs = pafs.S3FileSystem(
                endpoint_override=host, scheme=scheme, region=region,
                connect_timeout=CONNECT_TIMEOUT_S, request_timeout=REQUEST_TIMEOUT_S,
                retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=MAX_ATTEMPTS))
            _filesystems[key] = fs
    return fs


# --- locations --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Location:
    """A file or folder on a ``pyarrow.fs`` filesystem: ``fs``, the path on it (``bucket/prefix/...`` for
    S3) and ``uri``, what it is called in messages (``s3://bucket/prefix/...`` or the local path).

    ``str()`` is the URI and ``.name`` the last part, so it stands where messages and names want a dataset
    or run directory. ``os.fspath`` gives the URI too (``Path(location).name`` works), never a local file
    of it: read and write through the methods."""

    fs: pafs.FileSystem = field(compare=False)
    path: str
    uri: str

    # --- naming ---
    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __fspath__(self) -> str:
        return self.uri

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local_path(self) -> Path:
        """The local path of a local location (ValueError for a remote one)."""
        if not self.is_local:
            raise ValueError(f"{self.uri} is not on the local filesystem")
        return Path(self.path)

    @property
    def name(self) -> str:
        return PurePosixPath(self.path).name

    @property
    def parent(self) -> "Location":
        path = str(PurePosixPath(self.path).parent)
        uri = self.uri.rstrip("/")
        return Location(self.fs, path, uri[: uri.rindex("/")] if "/" in uri.split("://", 1)[-1] else uri)

    def child(self, *parts: str) -> "Location":
        path, uri = self.path.rstrip("/"), self.uri.rstrip("/")
        for part in parts:
            path, uri = f"{path}/{part}", f"{uri}/{part}"
        return Location(self.fs, path, uri)

    def __truediv__(self, part: str) -> "Location":
        return self.child(*str(part).split("/"))

    # --- reading ---
    def info(self) -> pafs.FileInfo:
        return self._call("reach it", self.fs.get_file_info, self.path)

    def exists(self) -> bool:
        return self.info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        """A folder (on object storage: a prefix that holds at least one object)."""
        info = self.info()
        if info.type == pafs.FileType.Directory:
            return True
        if info.type == pafs.FileType.NotFound and not self.is_local:
            return bool(self.list(recursive=False))
        return False

    def list(self, recursive: bool = True) -> list[pafs.FileInfo]:
        """The files (and folders) under this folder; [] when there is none."""
        selector = pafs.FileSelector(self.path, recursive=recursive, allow_not_found=True)
        return self._call("list it", self.fs.get_file_info, selector)

    def files(self) -> Iterator[tuple[str, pafs.FileInfo]]:
        """(path relative to this folder, info) of every file under it."""
        base = self.path.rstrip("/") + "/"
        for info in self.list(recursive=True):
            if info.type == pafs.FileType.File and info.path.startswith(base):
                yield info.path[len(base):], info

    def read_bytes(self, max_bytes: int | None = None) -> bytes:
        """The whole file; StorageError when it is missing, larger than ``max_bytes`` or unreadable."""
        if max_bytes is not None:
            size = self.info().size
            if size is not None and size > max_bytes:
                raise StorageError(f"{self.uri}: {size:,} bytes, more than the {max_bytes:,} it may be")

        def read() -> bytes:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        return self._call("read it", read)

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def stream(self, chunk: int = CHUNK_BYTES) -> Iterator[bytes]:
        """The file's bytes in chunks (StorageError, naming the file, when the transfer fails part-way)."""
        try:
            with self.fs.open_input_stream(self.path) as f:
                while block := f.read(chunk):
                    yield block
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: missing") from None
        except OSError as exc:
            raise StorageError(f"{self.uri}: the transfer failed ({_reason(exc)})") from None

    def download(self, target: Path) -> int:
        """Copy the file to the local ``target`` (atomically: a temporary file, then a rename); its bytes."""
        from varmem.episodes.files import atomic_write

        written = 0

        def write(f) -> None:
            nonlocal written
            for block in self.stream():
                f.write(block)
                written += len(block)
        atomic_write(target, write)
        return written

    # --- writing ---
    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once: locally a temporary file and a rename; on object storage one PUT
        (an object appears whole or not at all)."""
        if self.is_local:
            from varmem.episodes.files import atomic_write

            atomic_write(self.path, lambda f: f.write(data), size=len(data))
            return

        def write() -> None:
            with self.fs.open_output_stream(self.path) as f:
                f.write(data)
        self._call("write it", write)

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8"))

    def upload(self, source: Path) -> None:
        """Copy the local file ``source`` here (one object on object storage, complete when it appears)."""
        if self.is_local:
            import shutil

            from varmem.episodes.files import atomic_write

            with open(source, "rb") as src:
                atomic_write(self.path, lambda f: shutil.copyfileobj(src, f, CHUNK_BYTES))
            return

        def put() -> None:
            with open(source, "rb") as src, self.fs.open_output_stream(self.path) as f:
                while block := src.read(CHUNK_BYTES):
                    f.write(block)
        self._call("write it", put)

    def copy_to(self, target: "Location") -> None:
        """Copy this file to ``target`` on the same filesystem (server-side on object storage)."""
        self._call("copy it", self.fs.copy_file, self.path, target.path)

    def move_to(self, target: "Location") -> None:
        self._call("move it", self.fs.move, self.path, target.path)

    def delete(self, missing_ok: bool = True) -> None:
        """Delete this file."""
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise StorageError(f"{self.uri}: missing") from None
        except OSError as exc:
            if "not found" in str(exc).lower() and missing_ok:
                return
            raise StorageError(f"{self.uri}: cannot delete ({_reason(exc)})") from None

    def delete_tree(self) -> None:
        """Delete this folder (prefix) and everything under it; nothing when there is none."""
        if self.is_local:
            import shutil

            shutil.rmtree(self.path, ignore_errors=True)
            return
        for rel, _ in list(self.files()):
            self.child(*rel.split("/")).delete()

    def makedirs(self) -> None:
        """A local folder (object storage needs none)."""
        if self.is_local:
            Path(self.path).mkdir(parents=True, exist_ok=True)

    def _call(self, what: str, fn, *args):
        try:
            return fn(*args)
        except FileNotFoundError:
            raise StorageError(f"{self.uri}: missing") from None
        except OSError as exc:
            raise StorageError(f"{self.uri}: cannot {what} ({_reason(exc)})") from None


def _reason(exc: BaseException) -> str:
    """A storage error's first line, without anything that looks like a key."""
    text = str(exc).strip().split("\n")[0][:300]
    return re.sub(r"(?i)(secret|signature|credential)[^ ,;]*", r"\1=…", text) or type(exc).__name__


def location(target: "str | os.PathLike | Location", *, endpoint: str | None = None) -> Location:
    """The :class:`Location` of a local path or a URI (see the module docstring); ``endpoint`` overrides the
    configured S3 endpoint. StorageError naming the URI when it cannot be used."""
    if isinstance(target, Location):
        return target
    text = normalize(target)
    scheme = scheme_of(text)
    if scheme is None:
        path = Path(text).expanduser()
        path = path if path.is_absolute() else Path.cwd() / path
        path = Path(os.path.normpath(path))
        return Location(pafs.LocalFileSystem(), str(path), str(path))
    parts = urlsplit(text)
    query = dict(parse_qsl(parts.query))
    secret = [k for k in query if k.lower() in SECRET_QUERY_KEYS]
    if secret:
        raise StorageError(f"{parts.scheme}://{parts.netloc}{parts.path}: the URI holds {secret[0]}=…; put credentials in the "
                           "environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, ...), never in a URI: it is written "
                           "to configs and logs")
    path = parts.path.rstrip("/")
    if scheme == "file":
        local = Path(os.path.normpath(parts.path or "/"))
        return Location(pafs.LocalFileSystem(), str(local), str(local))
    if scheme == "s3":
        if not parts.netloc:
            raise StorageError(f"{text}: an S3 URI is s3://BUCKET/PREFIX")
        fs = _s3(parts.netloc, endpoint or s3_endpoint(), query)
        return Location(fs, f"{parts.netloc}{path}", f"s3://{parts.netloc}{path}")
    try:
        fs, fs_path = pafs.FileSystem.from_uri(text)
    except (OSError, ValueError) as exc:
        raise StorageError(f"{text}: cannot open this storage ({_reason(exc)})") from None
    return Location(fs, fs_path.rstrip("/"), f"{scheme}://{parts.netloc}{path}")


def display(target: "str | os.PathLike | Location") -> str:
    """What a path or URI is called in messages and configs: the URI without its query, or the path."""
    if isinstance(target, Location):
        return target.uri
    text = normalize(target)
    if scheme_of(text) in REMOTE_SCHEMES:
        parts = urlsplit(text)
        return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"
    return text


def staging_name(name: str, what: str = "building") -> str:
    """A hidden, unique sibling name for writing before publishing: ``.NAME.building-PID-HEX``."""
    return f".{name}.{what}-{os.getpid()}-{secrets.token_hex(3)}"


def uri_digest(uri: str) -> str:
    return hashlib.sha256(display(uri).encode("utf-8")).hexdigest()[:16]
