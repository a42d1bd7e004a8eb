"""Reading a dataset directory: the manifest, memory-mapped shards, class-indexed splits.

``Dataset.open(DIR)`` reads the manifest; ``dataset.split(NAME)`` memory-maps that split's
shards (zero-copy) and indexes its classes, so that an episode sampler can gather the images
of any class in O(1). Nothing is copied into the process: a worker that samples from a
100,000-class dataset keeps only page-cache-backed views and a few int arrays per class.
NAME may also be a role, ``train`` or ``eval``, that the dataset maps to one of its splits
(``varmem.episodes.roles``).

Opening checks the manifest (``varmem.episodes.manifest``) and, unless ``verify=False`` or
``VARMEM_VERIFY_SHARDS=0``, every shard against it — sha256, rows, image width, class ids — at the
cost of a ``stat`` per shard once a shard has passed (``varmem.episodes.stamps``). A shard that
fails is a DataError naming it and saying to rebuild or run ``varmem data verify``.

DIR may be a URI (``s3://bucket/prefix``, ``gs://``, ``hdfs://``, ``file://``: ``varmem.episodes.storage``).
A dataset on object storage is opened from its manifest alone; a split's shards are fetched when the
split is first used, into the node's shard cache (``varmem.episodes.shard_cache``: keyed and verified
by the manifest's sha256, one download per node), and memory-mapped from there. ``dataset.directory``
is then the dataset's :class:`~varmem.episodes.storage.Location` (``str()`` is its URI).
"""
from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from varmem.episodes.errors import DataError
from varmem.episodes.manifest import read_manifest, shard_path
from varmem.episodes.roles import manifest_roles, resolve_split
from varmem.episodes.shards import IMAGE_COLUMN, Shard, open_shard, sha256_file
from varmem.episodes.stamps import Stamps, entry_digest, stat_record, unverified, verify_enabled
from varmem.episodes.storage import Location, is_uri, location


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

    def __init__(self, directory: "Path | Location", manifest: dict[str, Any], cache=None):
        self.directory = directory  # a Path, or the Location of a dataset on object storage
        self.manifest = manifest
        self.remote = isinstance(directory, Location) and not directory.is_local
        self._cache = cache  # the shard cache of a remote dataset (default: this process's, shard_cache.default_cache)
        self.image_shape: tuple[int, int] = tuple(manifest["image_shape"])  # type: ignore[assignment]
        self._splits: dict[str, Split] = {}
        self.roles: dict[str, str] = manifest_roles(manifest, str(directory / "manifest.json"))  # role → split

    @classmethod
    def open(cls, directory: "str | Path | Location", verify: bool | None = None, *, cache=None) -> "Dataset":
        """Open ``directory`` (a path or a URI): read and check its manifest, then (``verify``; default: on
        unless ``VARMEM_VERIFY_SHARDS=0``) check its shards against it (:meth:`check_shards`). On object
        storage only the manifest is read here: shards are verified as they are fetched into ``cache``
        (default: this process's :func:`~varmem.episodes.shard_cache.default_cache`)."""
        if isinstance(directory, Location) or is_uri(directory):
            where = location(directory)
            if not where.is_local:
                return cls(where, read_manifest(where), cache=cache)
            directory = where.local_path
        directory = Path(directory).expanduser().resolve()
        dataset = cls(directory, read_manifest(directory))
        if verify_enabled(verify):
            dataset.check_shards()
        return dataset

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
            shard = open_shard(self.shard_file(entry, f"splits.{name}.shards[{si}].file"), self.image_shape)
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
                "alphabets": len(s.get("alphabets") or []),
                "shards": len(s["shards"]),
                "bytes": sum(int(sh.get("bytes") or 0) for sh in s["shards"]),
            }
        return out

    @property
    def cache(self):
        """The shard cache a remote dataset fetches into."""
        if self._cache is None:
            from varmem.episodes.shard_cache import default_cache

            self._cache = default_cache()
        return self._cache

    def shard_file(self, entry: dict[str, Any], field: str = "shard file", *, refetch: bool = False) -> Path:
        """The path of a shard entry, checked to be inside the dataset folder and a regular file
        (``varmem.episodes.manifest.shard_path``; it may be missing). On object storage: its verified entry
        in the shard cache, fetched first when the cache has none (or ``refetch``)."""
        if self.remote:
            from varmem.episodes.manifest import check_file_name

            file = check_file_name(entry["file"], field, str(self.directory / "manifest.json"))
            return self.cache.fetch(self.directory.child(*file.split("/")), entry["sha256"], entry.get("bytes"),
                                    refetch=refetch)
        return shard_path(self.directory, entry["file"], field)

    def _entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(field, entry)`` of every shard, e.g. ``("splits.background.shards[0]", {...})``."""
        for name, split in self.manifest["splits"].items():
            for i, entry in enumerate(split["shards"]):
                yield f"splits.{name}.shards[{i}]", entry

    def check_shards(self) -> None:
        """Check every shard against the manifest, skipping those whose verified stamp still matches
        (``varmem.episodes.stamps``); stamp those that pass. DataError naming the first shard that
        does not, saying to rebuild the dataset or run ``varmem data verify``. A dataset on object storage
        checks each shard as it is fetched (its size and sha256, before it enters the cache) and its rows
        and class ids as it is opened: nothing to do here."""
        if self.remote:
            return
        stamps = Stamps(self.directory)
        todo = unverified(stamps, self._entries(), lambda field, e: self.shard_file(e, f"{field}.file"), self._digest)
        problems = self._check_all(todo, stamps)
        stamps.save({entry["file"] for _, entry in self._entries()})
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DataError(f"{problems[0]}{more}: the dataset has changed since it was built; rebuild it "
                            f"(`varmem data build ... --overwrite`) or run `varmem data verify {self.directory}` to see every problem")

    def stamp_as_built(self) -> None:
        """Stamp every shard as verified without reading it: for the builder, which has just written
        and hashed them (the stamps go in the folder only, never the user cache)."""
        stamps = Stamps(self.directory)
        for field, entry in self._entries():
            stamps.record(entry["file"], os.stat(self.shard_file(entry, f"{field}.file")), entry["sha256"], self._digest(entry))
        stamps.save({entry["file"] for _, entry in self._entries()}, fallback=False)

    def verify(self, quiet: bool = True) -> list[str]:
        """Check every shard against the manifest (size, sha256, rows, image width, class ids), hashing
        all of them whatever their stamps say; return the problems (and stamp the shards that pass).
        Unless ``quiet``, a progress bar over the shards' bytes (on a terminal, ``varmem.progress``)."""
        from varmem.progress import progress

        entries = list(self._entries())
        total = sum(int(entry.get("bytes") or 0) for _, entry in entries)
        if self.remote:  # every shard fetched from the server again and checked on the way into the cache
            problems = []
            with progress(total=total or None, desc="verifying", unit="B", unit_scale=True, quiet=quiet) as bar:
                for field, entry in entries:
                    problems.extend(self._check_remote_shard(field, entry))
                    bar.update(int(entry.get("bytes") or 0))
            return problems
        stamps = Stamps(self.directory)
        with progress(total=total or None, desc="verifying", unit="B", unit_scale=True, quiet=quiet) as bar:
            problems = self._check_all(entries, stamps, lambda entry: bar.update(int(entry.get("bytes") or 0)))
        stamps.save({entry["file"] for _, entry in entries})
        return problems

    def _digest(self, entry: dict[str, Any]) -> str:
        return entry_digest(entry, self.image_shape, self.kind)

    def _check_all(self, entries: list[tuple[str, dict[str, Any]]], stamps: Stamps, done=None) -> list[str]:
        """Check ``entries`` (hashing in a few threads: hashlib releases the GIL), stamp those that
        pass, forget the stamps of those that do not; the problems in manifest order."""
        for field, entry in entries:  # a path out of the folder or a FIFO is an error before any read
            self.shard_file(entry, f"{field}.file")
        workers = min(4, os.cpu_count() or 1, len(entries))
        if workers <= 1:
            results = [self._check_shard(field, entry) for field, entry in entries]
            if done:
                for _, entry in entries:
                    done(entry)
        else:
            with ThreadPoolExecutor(workers) as pool:
                futures = [pool.submit(self._check_shard, field, entry) for field, entry in entries]
                results = []
                for (_, entry), future in zip(entries, futures):
                    results.append(future.result())
                    if done:
                        done(entry)
        problems = []
        for (_, entry), (found, st) in zip(entries, results):
            if found:
                problems.extend(found)
                stamps.forget(entry["file"])
            elif st is not None:
                stamps.record(entry["file"], st, entry["sha256"], self._digest(entry))
        return problems

    def _check_shard(self, field: str, entry: dict[str, Any]) -> tuple[list[str], os.stat_result | None]:
        """The problems of one shard (missing, size, sha256, unreadable, image width, rows, class ids),
        and its stat when it passed and did not change while it was checked (else None)."""
        path = self.shard_file(entry, f"{field}.file")
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return [f"{path}: missing"], None
        except OSError as exc:
            return [f"{path}: cannot stat ({exc})"], None
        if entry.get("bytes") is not None and before.st_size != entry["bytes"]:
            return [f"{path}: {before.st_size} bytes, the manifest says {entry['bytes']}"], None
        try:
            digest = sha256_file(path)
        except OSError as exc:
            return [f"{path}: unreadable ({exc})"], None
        if digest != entry["sha256"]:
            return [f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…"], None
        try:
            with pa.memory_map(str(path), "r") as source:
                table = ipc.open_file(source).read_all()
                problems = self._check_table(path, table, entry)
        except Exception as exc:  # a matching checksum makes this unlikely; report it anyway
            return [f"{path}: unreadable as an Arrow IPC file ({exc})"], None
        after = os.stat(path)
        return problems, (after if not problems and stat_record(after) == stat_record(before) else None)

    def _check_remote_shard(self, field: str, entry: dict[str, Any]) -> list[str]:
        """The problems of one shard on object storage: fetched again (size, sha256 checked by the cache),
        then its table checked as a local one's."""
        try:
            path = self.shard_file(entry, f"{field}.file", refetch=True)
        except DataError as exc:  # a mismatch, or the storage failing (StorageError)
            return [str(exc)]
        try:
            with pa.memory_map(str(path), "r") as source:
                return [p.replace(str(path), str(self.directory / entry["file"]))
                        for p in self._check_table(path, ipc.open_file(source).read_all(), entry)]
        except Exception as exc:
            return [f"{self.directory / entry['file']}: unreadable as an Arrow IPC file ({exc})"]

    def _check_table(self, path: Path, table: pa.Table, entry: dict[str, Any]) -> list[str]:
        h, w = self.image_shape
        col = table.column(IMAGE_COLUMN) if IMAGE_COLUMN in table.column_names else None
        if col is None or not pa.types.is_fixed_size_list(col.type) or col.type.list_size != h * w \
                or col.type.value_type != pa.uint8():
            found = "no 'image' column" if col is None else f"column 'image' is {col.type}"
            return [f"{path}: {found}, but the manifest's image_shape {h}×{w} needs fixed_size_list<uint8>[{h * w}]"]
        problems = []
        stored = (table.schema.metadata or {}).get(b"image_shape", b"").decode("utf-8", "replace")
        if stored and stored.replace(" ", "") != f"{h},{w}":
            problems.append(f"{path}: the manifest's image_shape [{h}, {w}] does not match the shard's {stored} "
                            "(H,W in its schema metadata)")
        if table.num_rows != entry["rows"]:
            problems.append(f"{path}: {table.num_rows} rows, the manifest says {entry['rows']}")
        if "class_id" not in table.column_names:
            return problems + [f"{path}: no 'class_id' column"]
        cid = table.column("class_id").to_numpy()
        lo, hi = entry["class_range"]
        if len(cid) and (cid.min() < lo or cid.max() >= hi):
            problems.append(f"{path}: class ids {cid.min()}..{cid.max()} outside the manifest's [{lo}, {hi})")
        elif len(cid) and np.any(np.diff(cid) < 0):
            problems.append(f"{path}: rows are not sorted by class_id")
        elif self.kind == "classes" and len(np.unique(cid)) != hi - lo:
            problems.append(f"{path}: {len(np.unique(cid))} classes, the manifest's class_range [{lo}, {hi}) says {hi - lo}")
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
        for i, entry in enumerate(ds.manifest["splits"][name]["shards"]):
            with ipc.open_file(str(ds.shard_file(entry, f"splits.{name}.shards[{i}].file"))) as reader:
                tables.append(reader.read_all())
    return ray.data.from_arrow(tables)
