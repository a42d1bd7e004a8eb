"""Reading a dataset directory: the manifest, memory-mapped shards, class-indexed splits.

``Dataset.open(DIR)`` reads the manifest; ``dataset.split(NAME)`` memory-maps that split's
shards (zero-copy) and indexes its classes, so that an episode sampler can gather the images
of any class in O(1). Nothing is copied into the process: a worker that samples from a
100,000-class dataset keeps only page-cache-backed views and a few int arrays per class.
NAME may also be a role, ``train`` or ``eval``, that the dataset maps to one of its splits
(``varmem.episodes.roles``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.ipc as ipc

from varmem.episodes.errors import DataError
from varmem.episodes.manifest import read_manifest
from varmem.episodes.roles import manifest_roles, resolve_split
from varmem.episodes.shards import Shard, open_shard, sha256_file


@dataclass
class Split:
    """One split's classes, memory-mapped.

    Class ``c`` (split-local index, 0..classes−1; global id ``class_range[0] + c``) has its
    ``class_count[c]`` images at rows ``class_start[c] : class_start[c] + class_count[c]`` of
    shard ``class_shard[c]``.
    """

    name: str
    shards: list[Shard]
    class_range: tuple[int, int]
    class_shard: np.ndarray  # int32 [C]
    class_start: np.ndarray  # int64 [C], row offset within its shard
    class_count: np.ndarray  # int64 [C]
    class_alphabet: np.ndarray  # int32 [C]
    image_shape: tuple[int, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_count)

    @property
    def num_images(self) -> int:
        return int(self.class_count.sum())

    @functools.cached_property
    def alphabets(self) -> dict[int, np.ndarray]:
        """alphabet id → split-local class indices of that alphabet (sorted)."""
        order = np.argsort(self.class_alphabet, kind="stable")
        ids, starts = np.unique(self.class_alphabet[order], return_index=True)
        return {int(a): idx for a, idx in zip(ids, np.split(order, starts[1:]))}

    @functools.cached_property
    def single_shard(self) -> bool:
        return len(self.shards) == 1

    def class_images(self, c: int) -> np.ndarray:
        """uint8 [n, H, W]: all images of split-local class ``c`` (a view)."""
        s, start = self.class_shard[c], self.class_start[c]
        return self.shards[s].images[start : start + self.class_count[c]]


class Dataset:
    """A varmem dataset directory (see ``varmem.episodes.manifest`` for the layout)."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory = directory
        self.manifest = manifest
        self.image_shape: tuple[int, int] = tuple(manifest["image_shape"])  # type: ignore[assignment]
        self._splits: dict[str, Split] = {}
        self.roles: dict[str, str] = manifest_roles(manifest, str(directory / "manifest.json"))  # role → split

    @classmethod
    def open(cls, directory: str | Path) -> "Dataset":
        directory = Path(directory).expanduser().resolve()
        return cls(directory, read_manifest(directory))

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def alphabets(self) -> list[str]:
        return self.manifest["alphabets"]

    def resolve_split(self, name: str) -> str:
        """The split ``name`` means here: itself, or the split of the role it names (``train``, ``eval``,
        or a split name of the naming rule); DataError naming the dataset, role and splits otherwise."""
        return resolve_split(name, self.roles, self.split_names, str(self.directory))

    def split(self, name: str) -> Split:
        """Memory-map split ``name`` (a split or a role, see :meth:`resolve_split`; cached)."""
        name = self.resolve_split(name)
        if name not in self._splits:
            self._splits[name] = self._open_split(name)
        return self._splits[name]

    def _open_split(self, name: str) -> Split:
        info = self.manifest["splits"][name]
        lo, hi = info.get("class_range", [0, info["classes"]])
        shards, class_shard, class_start, class_count, class_alpha = [], [], [], [], []
        for si, entry in enumerate(info["shards"]):
            shard = open_shard(self.directory / entry["file"], self.image_shape)
            if shard.table.num_rows != entry["rows"]:
                raise DataError(
                    f"shard {shard.path} has {shard.table.num_rows} rows, the manifest says {entry['rows']} "
                    f"(run `varmem data verify {self.directory}`)"
                )
            cid = shard.class_id
            if len(cid) and np.any(np.diff(cid) < 0):
                raise DataError(f"shard {shard.path}: rows are not sorted by class_id")
            ids, starts, counts = np.unique(cid, return_index=True, return_counts=True)
            c_lo, c_hi = entry["class_range"]
            if self.kind == "classes" and (len(ids) != c_hi - c_lo or (len(ids) and (ids[0] != c_lo or ids[-1] != c_hi - 1))):
                raise DataError(f"shard {shard.path}: class ids {ids[:1]}..{ids[-1:]} do not match the manifest's range [{c_lo}, {c_hi})")
            shards.append(shard)
            class_shard.append(np.full(len(ids), si, dtype=np.int32))
            class_start.append(starts.astype(np.int64))
            class_count.append(counts.astype(np.int64))
            class_alpha.append(shard.alphabet_id[starts])
        return Split(
            name=name,
            shards=shards,
            class_range=(lo, hi),
            class_shard=np.concatenate(class_shard) if class_shard else np.zeros(0, np.int32),
            class_start=np.concatenate(class_start) if class_start else np.zeros(0, np.int64),
            class_count=np.concatenate(class_count) if class_count else np.zeros(0, np.int64),
            class_alphabet=np.concatenate(class_alpha).astype(np.int32) if class_alpha else np.zeros(0, np.int32),
            image_shape=self.image_shape,
        )

    # --- inspection ---------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Classes, images, shards and bytes per split (from the manifest; reads no shard)."""
        out: dict[str, Any] = {
            "directory": str(self.directory),
            "kind": self.kind,
            "source": self.manifest["source"]["name"],
            "image_shape": list(self.image_shape),
            "preprocessing": self.manifest["preprocessing"].get("method"),
            "split_policy": self.manifest["split"],
            "roles": dict(self.roles),
            "alphabets": len(self.alphabets),
            "splits": {},
        }
        for name, s in self.manifest["splits"].items():
            out["splits"][name] = {
                "classes": s["classes"],
                "images": s["images"],
                "alphabets": len(s.get("alphabets", [])),
                "shards": len(s["shards"]),
                "bytes": sum(int(sh.get("bytes", 0)) for sh in s["shards"]),
            }
        return out

    def verify(self, quiet: bool = True) -> list[str]:
        """Check every shard against the manifest (sha256, rows, class range); return the problems.
        Unless ``quiet``, a progress bar over the shards' bytes (on a terminal, ``varmem.progress``)."""
        from varmem.progress import progress

        problems: list[str] = []
        entries = [entry for s in self.manifest["splits"].values() for entry in s["shards"]]
        total = sum(int(entry.get("bytes", 0)) for entry in entries)
        with progress(total=total or None, desc="verifying", unit="B", unit_scale=True, quiet=quiet) as bar:
            for entry in entries:
                problems.extend(self._verify_shard(entry))
                bar.update(int(entry.get("bytes", 0)))
        return problems

    def _verify_shard(self, entry: dict[str, Any]) -> list[str]:
        """The problems of one shard: missing, checksum, unreadable, row count, class ids."""
        path = self.directory / entry["file"]
        if not path.exists():
            return [f"{path}: missing"]
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return [f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…"]
        try:
            with ipc.open_file(str(path)) as reader:
                table = reader.read_all()
        except Exception as exc:  # a matching checksum makes this unlikely; report it anyway
            return [f"{path}: unreadable ({exc})"]
        problems = []
        if table.num_rows != entry["rows"]:
            problems.append(f"{path}: {table.num_rows} rows, the manifest says {entry['rows']}")
        cid = table.column("class_id").to_numpy()
        lo, hi = entry["class_range"]
        if len(cid) and (cid.min() < lo or cid.max() >= hi):
            problems.append(f"{path}: class ids {cid.min()}..{cid.max()} outside the manifest's [{lo}, {hi})")
        return problems


def to_ray_dataset(directory: str | Path, split: str | None = None):
    """The rows of a dataset (optionally one split) as a ``ray.data.Dataset``, for row-wise jobs.

    Episode sampling does not go through Ray Data (it hands out rows, not classes); this is for
    analyses that want Ray Data's row-parallel map/filter over the same files.
    """
    import ray.data

    ds = Dataset.open(directory)
    names = [ds.resolve_split(split)] if split is not None else ds.split_names
    tables = []
    for name in names:
        for entry in ds.manifest["splits"][name]["shards"]:
            with ipc.open_file(str(ds.directory / entry["file"])) as reader:
                tables.append(reader.read_all())
    return ray.data.from_arrow(tables)
