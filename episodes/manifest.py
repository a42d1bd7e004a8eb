"""``manifest.json``: what a dataset directory holds, and how it was made.

A dataset directory is complete exactly when its manifest exists: the builder writes shards
first and the manifest last, in a temporary directory that is renamed into place.

Layout (schema version 1)::

    {
      "schema": "varmem.dataset", "schema_version": 1, "kind": "classes" | "lake-runs",
      "created": ISO time, "varmem_version": str,
      "source": {"name": str, "options": {...}},
      "preprocessing": {"size", "method", "description", "dtype", "range"},
      "image_shape": [H, W],
      "split": {"policy": ..., ...},                     # the split definition and its seed
      "alphabets": [name, ...],                          # alphabet_id = index
      "roles": {"train": NAME, "eval": NAME},            # optional: which split plays which role
                                                         # (varmem.episodes.roles; absent: the naming rule)
      "splits": {
        NAME: {"classes", "images", "class_range": [lo, hi), "alphabets": [ids],
               "shards": [{"file", "class_range": [lo, hi), "rows", "bytes", "sha256"}]}
      }
    }

:func:`read_manifest` checks all of it before anything else reads it: every field's type and range
(:func:`validate_manifest`) and the manifest's own consistency — a split's ``classes`` is the width
of its ``class_range``, its shards' class ranges tile that range in order, their ``rows`` add up
to its ``images``, a shard of ``rows`` images of ``H×W`` uint8 has at least ``rows·H·W`` bytes,
splits do not share classes or files. Shard ``file`` names are relative paths inside the dataset
folder (no absolute path, no ``..``); :func:`shard_path` also refuses one that a symlink leads out
of the folder and anything but a regular file. The shards' own content (sha256, rows, image
width, class ids) is checked by :class:`varmem.episodes.dataset.Dataset` when it opens or
verifies them. Every problem is a DataError naming the manifest and the field.
"""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from varmem.episodes.errors import DataError
from varmem.episodes.roles import manifest_roles

if TYPE_CHECKING:
    from varmem.episodes.storage import Location

SCHEMA = "varmem.dataset"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("classes", "lake-runs")
MAX_MANIFEST_BYTES = 256 << 20  # a 10^6-class dataset's manifest is a few MB
MAX_IMAGE_SIDE = 4096  # image_shape's limit (builds write 2..1024)
MAX_COUNT = 1 << 40  # classes, images, rows, bytes: beyond any real dataset
MAX_CLASS_ID = (1 << 31) - 1  # class ids are int32 in the shards
IMAGE_DTYPE = "uint8"  # the only pixel type shards hold: an image is H·W bytes
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")  # in a name that messages print: a newline would split the line


def read_manifest(directory: "str | Path | Location") -> dict[str, Any]:
    """Read and validate ``DIR/manifest.json``; DataError naming the file and field otherwise. ``directory``
    may be a :class:`varmem.episodes.storage.Location` on object storage (:func:`read_remote_manifest`)."""
    from varmem.episodes.storage import Location

    if isinstance(directory, Location):
        if not directory.is_local:
            return read_remote_manifest(directory)
        directory = directory.local_path
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"dataset directory {directory} does not exist")
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory (expected a varmem dataset directory)")
    path = directory / MANIFEST
    if not path.exists():
        partial = sorted(p.name for p in directory.parent.glob(f".{directory.name}.building-*"))
        hint = f" (an interrupted build left {partial[0]} beside it)" if partial else ""
        raise DataError(f"{directory} is not a varmem dataset: {MANIFEST} is missing{hint}")
    try:
        st = path.stat()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        raise DataError(f"{path} is not a regular file; a dataset's {MANIFEST} must be one")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: {st.st_size:,} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES:,}); "
                        "rebuild the dataset with `varmem data build`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON, bad UTF-8, a 5,000-digit number
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    validate_manifest(manifest, str(path))
    return manifest


def read_remote_manifest(directory: "Location") -> dict[str, Any]:
    """``manifest.json`` of a dataset on object storage, read and validated like a local one. A prefix
    without one is not a dataset (yet: a build publishes its manifest last)."""
    from varmem.episodes.storage import StorageError

    path = directory.child(MANIFEST)
    info = path.info()
    if info.type.name == "NotFound":
        hint = ""
        if directory.parent.path != directory.path:
            try:
                building = sorted(i.base_name for i in directory.parent.list(recursive=False)
                                  if i.base_name.startswith(f".{directory.name}.building-"))
            except StorageError:
                building = []
            hint = f" (a build is publishing it, or an interrupted one left {building[0]} beside it)" if building else ""
        raise DataError(f"{directory} is not a varmem dataset: {MANIFEST} is missing{hint}")
    if info.type.name != "File":
        raise DataError(f"{path} is not a file; a dataset's {MANIFEST} must be one")
    data = path.read_bytes(max_bytes=MAX_MANIFEST_BYTES)
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    validate_manifest(manifest, str(path))
    return manifest


def validate_manifest(manifest: Any, where: str = MANIFEST) -> None:
    """Check the schema and the internal consistency of a parsed manifest (see the module docstring);
    DataError naming ``where`` and the first field that is wrong."""
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        raise DataError(f"{where}: field 'schema' is {found!r}, expected {SCHEMA!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise DataError(
            f"{where}: schema_version {version!r} is not supported by this varmem (reads version {SCHEMA_VERSION}); "
            "rebuild the dataset with `varmem data build`"
        )
    for key in ("kind", "source", "preprocessing", "image_shape", "split", "alphabets", "splits"):
        if key not in manifest:
            raise DataError(f"{where}: required field {key!r} is missing")
    v = _Checker(where)
    if not isinstance(manifest["kind"], str) or manifest["kind"] not in KINDS:
        raise DataError(f"{where}: field 'kind' is {manifest['kind']!r}, expected one of {', '.join(KINDS)}")
    source = v.mapping(manifest["source"], "source")
    v.text(source.get("name"), "source.name")
    if "options" in source and source["options"] is not None:
        v.mapping(source["options"], "source.options")
    pre = v.mapping(manifest["preprocessing"], "preprocessing")
    if pre.get("method") is not None:
        v.text(pre["method"], "preprocessing.method")
    if pre.get("dtype", IMAGE_DTYPE) != IMAGE_DTYPE:
        raise DataError(f"{where}: preprocessing.dtype is {pre['dtype']!r}; shards hold {IMAGE_DTYPE!r} images only")
    shape = manifest["image_shape"]
    if not isinstance(shape, list) or len(shape) != 2:
        raise DataError(f"{where}: field 'image_shape' is {shape!r}, expected [height, width]")
    h, w = (v.integer(x, f"image_shape[{i}]", 1, MAX_IMAGE_SIDE) for i, x in enumerate(shape))
    v.mapping(manifest["split"], "split")
    alphabets = manifest["alphabets"]
    if not isinstance(alphabets, list) or not all(isinstance(a, str) for a in alphabets):
        raise DataError(f"{where}: field 'alphabets' must be a list of alphabet names, got {_short(alphabets)}")
    splits = v.mapping(manifest["splits"], "splits")
    if not splits:
        raise DataError(f"{where}: field 'splits' is empty; a dataset has at least one split")
    files: dict[str, str] = {}
    ranges: list[tuple[int, int, str]] = []
    for name in list(splits) + list(manifest.get("roles") or {} if isinstance(manifest.get("roles"), dict) else {}):
        if not name or _CONTROL.search(name):
            field = "splits" if name in splits else "roles"
            raise DataError(f"{where}: field {field!r} has the name {name!r}; names must be non-empty, without control characters")
    for name, split in splits.items():
        f = f"splits.{name}"
        split = v.mapping(split, f)
        for key in ("classes", "images", "shards"):
            if key not in split:
                raise DataError(f"{where}: {f}.{key} is missing")
        classes = v.integer(split["classes"], f"{f}.classes")
        images = v.integer(split["images"], f"{f}.images")
        if "class_range" not in split:
            raise DataError(f"{where}: {f}.class_range is missing")
        lo, hi = v.class_range(split["class_range"], f"{f}.class_range")
        if hi - lo != classes:
            raise DataError(f"{where}: {f}.classes is {classes} but {f}.class_range [{lo}, {hi}) holds {hi - lo} classes")
        ranges.append((lo, hi, name))
        if "alphabets" in split:
            ids = split["alphabets"]
            if not isinstance(ids, list):
                raise DataError(f"{where}: {f}.alphabets must be a list of alphabet ids, got {_short(ids)}")
            for i, a in enumerate(ids):
                v.integer(a, f"{f}.alphabets[{i}]", 0, max(len(alphabets) - 1, 0))
        for key in ("min_images_per_class", "max_images_per_class"):  # None: not recorded (lake-runs' max)
            if split.get(key) is not None:
                v.integer(split[key], f"{f}.{key}")
        if "runs" in split:
            v.integer(split["runs"], f"{f}.runs")
        shards = split["shards"]
        if not isinstance(shards, list):
            raise DataError(f"{where}: {f}.shards must be a list of shard entries, got {_short(shards)}")
        rows_total, at = 0, lo
        for i, shard in enumerate(shards):
            g = f"{f}.shards[{i}]"
            shard = v.mapping(shard, g)
            for key in ("file", "class_range", "rows", "sha256"):
                if key not in shard:
                    raise DataError(f"{where}: {g}.{key} is missing")
            file = check_file_name(shard["file"], f"{g}.file", where)
            if file in files:
                raise DataError(f"{where}: {g}.file {file!r} is also {files[file]}; each shard belongs to one place")
            files[file] = f"{g}.file"
            s_lo, s_hi = v.class_range(shard["class_range"], f"{g}.class_range")
            if s_lo != at or s_hi <= s_lo or s_hi > hi:
                raise DataError(f"{where}: {g}.class_range is [{s_lo}, {s_hi}) but the shards of {f} must cover its "
                                f"class_range [{lo}, {hi}) in order, each at least one class (this one must start at {at})")
            at = s_hi
            rows = v.integer(shard["rows"], f"{g}.rows")
            if rows < s_hi - s_lo:
                raise DataError(f"{where}: {g}.rows is {rows}, fewer than its {s_hi - s_lo} classes")
            rows_total += rows
            if "bytes" in shard:
                size = v.integer(shard["bytes"], f"{g}.bytes")
                if size < rows * h * w:
                    raise DataError(f"{where}: {g}.bytes is {size} but {rows} rows of {h}×{w} {IMAGE_DTYPE} images take "
                                    f"{rows * h * w} (image_shape × dtype × rows)")
            sha = shard["sha256"]
            if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
                raise DataError(f"{where}: {g}.sha256 is {_short(sha)}, expected 64 lower-case hex digits")
        if at != hi:
            raise DataError(f"{where}: the shards of {f} cover classes [{lo}, {at}) of its class_range [{lo}, {hi})")
        if rows_total != images:
            raise DataError(f"{where}: {f}.images is {images} but its shards' rows add up to {rows_total}")
    ranges.sort()
    for (lo1, hi1, a), (lo2, hi2, b) in zip(ranges, ranges[1:]):
        if lo2 < hi1:
            raise DataError(f"{where}: splits.{a}.class_range [{lo1}, {hi1}) and splits.{b}.class_range [{lo2}, {hi2}) "
                            "overlap; every class belongs to one split")
    manifest_roles(manifest, where)  # a 'roles' field names roles and splits that exist


def check_file_name(file: Any, field: str, where: str = MANIFEST) -> str:
    """A shard ``file`` of a manifest: a non-empty relative POSIX path that stays inside the dataset
    folder (no absolute path, no ``..``, not ``.``); DataError naming the field and value otherwise."""
    if not isinstance(file, str) or not file:
        raise DataError(f"{where}: {field} is {_short(file)}, expected a shard file name such as 'background-00000.arrow'")
    p = PurePosixPath(file)
    why = None
    if p.is_absolute():
        why = "an absolute path"
    elif ".." in p.parts:
        why = "a path with '..'"
    elif not p.parts or p.parts[-1] in (".", "") or file.endswith("/"):
        why = "not a file name"
    elif _CONTROL.search(file):
        why = "a name with a control character"
    if why:
        raise DataError(f"{where}: {field} is {file!r}, {why}; shard files must be relative paths inside the dataset folder")
    return file


def shard_path(directory: Path, file: str, field: str) -> Path:
    """``directory / file`` for a manifest's shard ``file``, checked: it must resolve inside
    ``directory`` (no symlink out) and be a regular file when it exists (not a FIFO, device or
    folder). A missing file is returned as is (the caller says "missing"); DataError otherwise."""
    where = directory / MANIFEST
    check_file_name(file, field, str(where))
    path = directory / file
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(directory))
    if real != root and root not in real.parents:
        raise DataError(f"{where}: {field} {file!r} leads to {real}, outside the dataset folder {root}; "
                        "shard files must be inside it (replace the link with the file, or rebuild the dataset)")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise DataError(f"{where}: {field} {file!r}: cannot stat {path} ({exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = ("a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)
                else "a socket" if stat.S_ISSOCK(st.st_mode) else "not a regular file")
        raise DataError(f"{where}: {field} {file!r} is {kind}, not a regular file; a shard must be an Arrow IPC file")
    return path


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")


class _Checker:
    """Type and range checks of manifest fields, each error naming the manifest and the field."""

    def __init__(self, where: str):
        self.where = where

    def mapping(self, value: Any, field: str) -> dict:
        if not isinstance(value, dict):
            raise DataError(f"{self.where}: field {field!r} must be a mapping, got {_short(value)}")
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise DataError(f"{self.where}: field {field!r} must be a non-empty string, got {_short(value)}")
        return value

    def integer(self, value: Any, field: str, low: int = 0, high: int = MAX_COUNT) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DataError(f"{self.where}: field {field!r} must be an integer, got {_short(value)}")
        if not low <= value <= high:
            raise DataError(f"{self.where}: field {field!r} is {_short(value)}, expected an integer in [{low}, {high}]")
        return value

    def class_range(self, value: Any, field: str) -> tuple[int, int]:
        if not isinstance(value, list) or len(value) != 2:
            raise DataError(f"{self.where}: field {field!r} is {_short(value)}, expected [first class, end) as two integers")
        lo = self.integer(value[0], f"{field}[0]", 0, MAX_CLASS_ID)
        hi = self.integer(value[1], f"{field}[1]", 0, MAX_CLASS_ID)
        if hi < lo:
            raise DataError(f"{self.where}: field {field!r} is [{lo}, {hi}): its end is before its start")
        return lo, hi


def _short(value: Any, limit: int = 80) -> str:
    """``repr`` of a manifest value, cut to ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
