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
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from varmem.episodes.errors import DataError
from varmem.episodes.roles import manifest_roles

SCHEMA = "varmem.dataset"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KINDS = ("classes", "lake-runs")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``DIR/manifest.json``; DataError naming the file and field otherwise."""
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
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise DataError(f"{path}: field 'schema' is {manifest.get('schema') if isinstance(manifest, dict) else None!r}, expected {SCHEMA!r}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version!r} is not supported by this varmem (reads version {SCHEMA_VERSION}); "
            "rebuild the dataset with `varmem data build`"
        )
    for key in ("kind", "source", "preprocessing", "image_shape", "split", "alphabets", "splits"):
        if key not in manifest:
            raise DataError(f"{path}: required field {key!r} is missing")
    if manifest["kind"] not in KINDS:
        raise DataError(f"{path}: field 'kind' is {manifest['kind']!r}, expected one of {', '.join(KINDS)}")
    for name, split in manifest["splits"].items():
        for key in ("classes", "images", "shards"):
            if key not in split:
                raise DataError(f"{path}: splits.{name}.{key} is missing")
        for i, shard in enumerate(split["shards"]):
            for key in ("file", "class_range", "rows", "sha256"):
                if key not in shard:
                    raise DataError(f"{path}: splits.{name}.shards[{i}].{key} is missing")
    manifest_roles(manifest, str(path))  # a 'roles' field names roles and splits that exist
    return manifest


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=False) + "\n", encoding="utf-8")
