"""A memory store: memory entries encoded once into keys e_a = h(m_a), as memory-mapped Arrow shards.

Large-memory studies (``varmem scale``) address 10^5–10^7 entries per query batch; encoding that many
images per batch is out of the question, and holding the keys in RAM is not needed. ``varmem memory
build`` encodes the entries once through a trained model's memory pathway and writes here what
addressing needs, the keys and, per entry, its class and where its image is, so that whatever a
decoder needs for a chosen entry (the image, its pyramid features) is fetched or recomputed for the K
sampled entries only.

Layout (like a dataset directory, ``varmem.episodes.manifest``; schema ``varmem.memory_store``, v1)::

    STORE/manifest.json      what was encoded, by which model, from which dataset; the shards
    STORE/keys-00000.arrow   Arrow IPC files, one record batch each, entries in store order

Shard columns:

================  =====================================  ===============================================
``key``           fixed_size_list<float16|float32>[d]    e_a = h(m_a), the model's key of the entry
``label``         int32                                  the entry's class in store order, 0..C−1
``class_id``      int32                                  the class's global id in the dataset
``item``          int16                                  the image's index within its class
``source_shard``  int32                                  the dataset shard (index in the split's list)
``source_row``    int32                                  the image's row in that shard
================  =====================================  ===============================================

Entries are class-major in the store's class order (a seeded permutation of the split's classes, the
first ``classes`` of it): class j holds entries j·k … j·k + k − 1 (k = ``per_class`` images, items
0..k−1 of the class). So the first C·k entries are a memory of C classes, and the memories of a
scaling study are prefixes of one store.

Manifest fields: ``schema``, ``schema_version``, ``created``, ``varmem_version``; ``model`` (``run_dir``,
``checkpoint``, ``step``, ``family``, ``similarity``, ``fingerprint``: a sha256 of the parameters the keys
depend on and of the input preprocessing — a reader compares it with its own model); ``key_width`` (d),
``key_dtype``; ``dataset`` (``dir``, ``fingerprint``: a sha256 of the split's shard checksums, ``split``,
``image_shape``); ``classes``, ``per_class``, ``entries``, ``class_order`` (``policy``, ``seed``);
``shard_entries``; ``shards`` (``file``, ``entry_range`` [lo, hi), ``rows``, ``bytes``, ``sha256``);
``build`` (``seconds``, ``entries_per_s``).

Writing is chunked: entries are encoded ``batch`` at a time into one shard buffer (``shard_entries``
× d values), written when full; 10^6 entries never sit in RAM at once. The build is atomic (a hidden
``.STORE.building-*`` folder renamed into place once the manifest is written, as datasets are).
Opening checks the manifest, then every shard's sha256 against it once (verified stamps,
``varmem.episodes.stamps``); ``varmem memory verify`` hashes everything.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from varmem.episodes.errors import DataError
from varmem.episodes.manifest import MAX_MANIFEST_BYTES, check_file_name, shard_path
from varmem.episodes.shards import sha256_file
from varmem.episodes.stamps import Stamps, entry_digest, stat_record, unverified, verify_enabled

SCHEMA = "varmem.memory_store"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
KIND = "memory-store"  # the kind in verified stamps' digests
KEY_DTYPES = {"float16": (np.float16, pa.float16()), "float32": (np.float32, pa.float32())}
MAX_KEY_WIDTH = 4096
CHUNK_ALIGN = 4096  # shard_entries is a multiple of this (kernels' DEFAULT_CHUNK): shards are whole chunks
DEFAULT_SHARD_ENTRIES = 32 * CHUNK_ALIGN  # 131,072 entries: 16 MiB of float16 keys at d = 64
DEFAULT_BATCH = 1024  # images encoded per model call


def store_schema(key_width: int, key_dtype: str) -> pa.Schema:
    return pa.schema([
        pa.field("key", pa.list_(KEY_DTYPES[key_dtype][1], key_width)),
        pa.field("label", pa.int32()),
        pa.field("class_id", pa.int32()),
        pa.field("item", pa.int16()),
        pa.field("source_shard", pa.int32()),
        pa.field("source_row", pa.int32()),
    ], metadata={b"varmem": SCHEMA.encode(), b"key_width": str(key_width).encode()})


def dataset_fingerprint(manifest: dict[str, Any], split: str) -> str:
    """sha256 of a split's shard files and checksums: a store's source rows point into exactly these."""
    shards = [[s["file"], s["sha256"], s["rows"]] for s in manifest["splits"][split]["shards"]]
    text = json.dumps({"image_shape": manifest["image_shape"], "split": split, "shards": shards}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


# --- the class order -------------------------------------------------------------------------------


def class_order(num_classes: int, seed: int, first: list[int] | None = None) -> np.ndarray:
    """Split-local class indices in store order: ``first`` (in its order), then a seeded permutation of the rest."""
    perm = np.random.Generator(np.random.Philox(key=[seed & ((1 << 64) - 1), 0x5C0DE])).permutation(num_classes)
    if not first:
        return perm
    first_arr = np.asarray(first, dtype=np.int64)
    rest = perm[~np.isin(perm, first_arr)]
    return np.concatenate([first_arr, rest])


# --- building --------------------------------------------------------------------------------------


@dataclass
class StoreSource:
    """What a store is built from: a dataset split (memory-mapped) and its identity."""

    split: Any  # varmem.episodes.dataset.Split
    dataset_dir: Path
    dataset_manifest: dict[str, Any]
    split_name: str


def build_memory_store(
    source: StoreSource,
    out: str | Path,
    *,
    encode: Callable[[np.ndarray], np.ndarray],  # uint8 images [n, H, W] → float32 keys [n, d]
    key_width: int,
    model: dict[str, Any],  # run_dir, checkpoint, step, family, similarity, fingerprint
    classes: int | None = None,
    per_class: int = 4,
    seed: int = 0,
    key_dtype: str = "float16",
    batch: int = DEFAULT_BATCH,
    shard_entries: int = DEFAULT_SHARD_ENTRIES,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode ``classes`` × ``per_class`` entries of ``source`` into a store at ``out``; the manifest."""
    from varmem.episodes.build import atomic_directory  # the datasets' atomic build folder
    from varmem.progress import progress as progress_bar

    if key_dtype not in KEY_DTYPES:
        raise DataError(f"--dtype {key_dtype!r} is not one of {', '.join(KEY_DTYPES)}")
    if per_class < 1:
        raise DataError(f"--per-class must be ≥ 1, got {per_class}")
    if shard_entries < 1 or batch < 1:
        raise DataError(f"shard_entries and batch must be ≥ 1, got {shard_entries} and {batch}")
    split = source.split
    C_all = split.num_classes
    classes = C_all if classes is None else classes
    if classes < 1:
        raise DataError(f"--classes must be ≥ 1, got {classes}")
    if classes > C_all:
        raise DataError(f"--classes {classes:,}: split {source.split_name!r} of {source.dataset_dir} holds "
                        f"{C_all:,} classes")
    order = class_order(C_all, seed)[:classes]
    counts = split.class_count[order]
    short = np.flatnonzero(counts < per_class)
    if len(short):
        c = int(order[short[0]])
        raise DataError(f"--per-class {per_class}: class {split.class_range[0] + c} of split {source.split_name!r} of "
                        f"{source.dataset_dir} has {int(split.class_count[c])} images ({len(short):,} of the chosen classes "
                        f"have fewer than {per_class}); lower --per-class")
    N = classes * per_class
    dtype_np = KEY_DTYPES[key_dtype][0]
    sch = store_schema(key_width, key_dtype)
    t0 = time.perf_counter()
    need = N * (key_width * np.dtype(dtype_np).itemsize + 24)
    out = Path(out)
    with atomic_directory(out, overwrite, need) as tmp:
        shards: list[dict[str, Any]] = []
        buf = _ShardBuffer(shard_entries, key_width, dtype_np)
        bar = progress_bar(total=N, desc=f"encoding {out.name}", unit="entry", quiet=not progress, unit_scale=True)
        with bar:
            for lo in range(0, N, batch):
                hi = min(N, lo + batch)
                e = np.arange(lo, hi)
                label, item = e // per_class, e % per_class
                cls = order[label]  # split-local class of each entry
                src_shard = split.class_shard[cls].astype(np.int32)
                src_row = (split.class_start[cls] + item).astype(np.int64)
                images = gather_images(split, src_shard, src_row)  # uint8 [n, H, W]
                keys = np.asarray(encode(images), dtype=np.float32)
                if keys.shape != (hi - lo, key_width):
                    raise DataError(f"the model's memory pathway gave keys of shape {keys.shape}, expected "
                                    f"{(hi - lo, key_width)} (key_width)")
                if not np.isfinite(keys).all():
                    bad = int(lo + np.flatnonzero(~np.isfinite(keys).all(1))[0])
                    raise DataError(f"entry {bad} (class {int(split.class_range[0] + cls[bad - lo])}, item {int(item[bad - lo])}) "
                                    "has a non-finite key: the model gives NaN/inf for that image")
                columns = {"label": label.astype(np.int32), "class_id": (split.class_range[0] + cls).astype(np.int32),
                           "item": item.astype(np.int16), "source_shard": src_shard, "source_row": src_row.astype(np.int32)}
                at = 0
                while at < hi - lo:
                    at += buf.add(keys[at:], {k: v[at:] for k, v in columns.items()})
                    if buf.full:
                        shards.append(buf.write(tmp, len(shards), sch, sum(s["rows"] for s in shards)))
                bar.update(hi - lo)
            if buf.rows:
                shards.append(buf.write(tmp, len(shards), sch, sum(s["rows"] for s in shards)))
        seconds = time.perf_counter() - t0
        manifest = {
            "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "varmem_version": _varmem_version(),
            "model": dict(model),
            "key_width": key_width, "key_dtype": key_dtype,
            "dataset": {"dir": str(source.dataset_dir), "split": source.split_name,
                        "fingerprint": dataset_fingerprint(source.dataset_manifest, source.split_name),
                        "image_shape": list(split.image_shape)},
            "classes": classes, "per_class": per_class, "entries": N,
            "class_order": {"policy": "seeded-permutation", "seed": seed},
            "shard_entries": shard_entries,
            "shards": shards,
            "build": {"seconds": round(seconds, 3), "entries_per_s": round(N / max(seconds, 1e-9), 1)},
        }
        validate_store_manifest(manifest, f"{tmp.name}/{MANIFEST} (as built)")
        store = MemoryStore(tmp, manifest)
        store.stamp_as_built()
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return manifest


def _varmem_version() -> str:
    try:
        from importlib.metadata import version

        return version("varmem")
    except Exception:
        return "unknown"


def gather_images(split, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
    """uint8 [n, H, W]: image ``row[i]`` of dataset shard ``shard[i]`` (memory-mapped reads)."""
    h, w = split.image_shape
    out = np.empty((len(row), h, w), dtype=np.uint8)
    for s in np.unique(shard):
        sel = shard == s
        out[sel] = split.shards[int(s)].images[row[sel]]
    return out


class _ShardBuffer:
    """One shard's rows, filled batch by batch and written when full: the only entries held in RAM."""

    def __init__(self, capacity: int, width: int, dtype):
        self.capacity, self.rows = capacity, 0
        self.keys = np.empty((capacity, width), dtype=dtype)
        self.cols: dict[str, list[np.ndarray]] = {}

    @property
    def full(self) -> bool:
        return self.rows == self.capacity

    def add(self, keys: np.ndarray, cols: dict[str, np.ndarray]) -> int:
        n = min(len(keys), self.capacity - self.rows)
        self.keys[self.rows:self.rows + n] = keys[:n]  # cast to the key dtype here
        for k, v in cols.items():
            self.cols.setdefault(k, []).append(v[:n])
        self.rows += n
        return n

    def write(self, directory: Path, index: int, sch: pa.Schema, start: int) -> dict[str, Any]:
        file = f"keys-{index:05d}.arrow"
        path = directory / file
        n, width = self.rows, self.keys.shape[1]
        flat = pa.array(self.keys[:n].reshape(-1), type=sch.field("key").type.value_type)
        arrays = [pa.FixedSizeListArray.from_arrays(flat, width)]
        for f in list(sch)[1:]:
            arrays.append(pa.array(np.concatenate(self.cols[f.name]), type=f.type))
        with pa.OSFile(str(path), "wb") as sink, ipc.new_file(sink, sch) as writer:
            writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=sch))
        self.rows, self.cols = 0, {}
        return {"file": file, "entry_range": [start, start + n], "rows": n, "bytes": path.stat().st_size,
                "sha256": sha256_file(path)}


# --- the manifest ----------------------------------------------------------------------------------


def read_store_manifest(directory: str | Path) -> dict[str, Any]:
    """Read and validate ``STORE/manifest.json``; DataError naming the file and field otherwise."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"memory store {directory} " + ("is not a directory" if directory.exists() else "does not exist")
                        + " (build one with `varmem memory build RUN_DIR --data DIR --out STORE`)")
    path = directory / MANIFEST
    if not path.is_file():
        partial = sorted(p.name for p in directory.parent.glob(f".{directory.name}.building-*"))
        hint = f" (an interrupted build left {partial[0]} beside it)" if partial else ""
        raise DataError(f"{directory} is not a memory store: {MANIFEST} is missing{hint}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, more than a manifest can be")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DataError(f"{path}: not readable JSON ({exc})") from None
    validate_store_manifest(manifest, str(path))
    return manifest


def validate_store_manifest(manifest: Any, where: str = MANIFEST) -> None:
    """Types, ranges and consistency of a store manifest; DataError naming ``where`` and the field."""
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        found = manifest.get("schema") if isinstance(manifest, dict) else None
        hint = " (a dataset directory, not a memory store)" if found == "varmem.dataset" else ""
        raise DataError(f"{where}: field 'schema' is {found!r}, expected {SCHEMA!r}{hint}")
    if manifest.get("schema_version") != SCHEMA_VERSION or isinstance(manifest.get("schema_version"), bool):
        raise DataError(f"{where}: schema_version {manifest.get('schema_version')!r} is not supported (reads "
                        f"{SCHEMA_VERSION}); rebuild the store with `varmem memory build`")
    for key in ("model", "key_width", "key_dtype", "dataset", "classes", "per_class", "entries", "shards"):
        if key not in manifest:
            raise DataError(f"{where}: required field {key!r} is missing")

    def integer(value, field, low=0, high=1 << 40):
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise DataError(f"{where}: field {field!r} is {value!r}, expected an integer in [{low}, {high}]")
        return value

    d = integer(manifest["key_width"], "key_width", 1, MAX_KEY_WIDTH)
    if manifest["key_dtype"] not in KEY_DTYPES:
        raise DataError(f"{where}: field 'key_dtype' is {manifest['key_dtype']!r}, expected one of {', '.join(KEY_DTYPES)}")
    for name in ("model", "dataset"):
        if not isinstance(manifest[name], dict):
            raise DataError(f"{where}: field {name!r} must be a mapping")
    if not isinstance(manifest["model"].get("fingerprint"), str):
        raise DataError(f"{where}: field 'model.fingerprint' is missing")
    if not isinstance(manifest["dataset"].get("fingerprint"), str) or not isinstance(manifest["dataset"].get("split"), str):
        raise DataError(f"{where}: fields 'dataset.fingerprint' and 'dataset.split' are required")
    C = integer(manifest["classes"], "classes", 1)
    k = integer(manifest["per_class"], "per_class", 1)
    N = integer(manifest["entries"], "entries", 1)
    if N != C * k:
        raise DataError(f"{where}: entries is {N} but classes × per_class = {C} × {k} = {C * k}")
    shards = manifest["shards"]
    if not isinstance(shards, list) or not shards:
        raise DataError(f"{where}: field 'shards' must be a non-empty list of shard entries")
    at, itemsize, files = 0, np.dtype(KEY_DTYPES[manifest["key_dtype"]][0]).itemsize, set()
    for i, s in enumerate(shards):
        f = f"shards[{i}]"
        if not isinstance(s, dict):
            raise DataError(f"{where}: {f} must be a mapping")
        for key in ("file", "entry_range", "rows", "sha256"):
            if key not in s:
                raise DataError(f"{where}: {f}.{key} is missing")
        file = check_file_name(s["file"], f"{f}.file", where)
        if file in files:
            raise DataError(f"{where}: {f}.file {file!r} appears twice")
        files.add(file)
        r = s["entry_range"]
        if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in r)):
            raise DataError(f"{where}: {f}.entry_range is {r!r}, expected [lo, hi)")
        rows = integer(s["rows"], f"{f}.rows", 1)
        if r[0] != at or r[1] - r[0] != rows:
            raise DataError(f"{where}: {f}.entry_range is {r} but the shards must tile [0, {N}) in order with their rows "
                            f"(this one must be [{at}, {at + rows}))")
        at = r[1]
        if "bytes" in s and integer(s["bytes"], f"{f}.bytes") < rows * d * itemsize:
            raise DataError(f"{where}: {f}.bytes is {s['bytes']} but {rows} keys of {d} × {manifest['key_dtype']} take "
                            f"{rows * d * itemsize}")
        if not isinstance(s["sha256"], str) or len(s["sha256"]) != 64:
            raise DataError(f"{where}: {f}.sha256 is {s['sha256']!r}, expected 64 hex digits")
    if at != N:
        raise DataError(f"{where}: the shards hold {at} entries but entries is {N}")


# --- reading ---------------------------------------------------------------------------------------


@dataclass
class StoreShard:
    """One memory-mapped shard: zero-copy views of its columns."""

    path: Path
    start: int  # global index of its first entry
    keys: np.ndarray  # [rows, d] float16/float32, read-only view of the mapped file
    label: np.ndarray  # int32 [rows]
    class_id: np.ndarray  # int32 [rows]
    item: np.ndarray  # int16 [rows]
    source_shard: np.ndarray  # int32 [rows]
    source_row: np.ndarray  # int32 [rows]


class MemoryStore:
    """A memory store directory (module docstring): ``MemoryStore.open(STORE)``."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory = Path(directory)
        self.manifest = manifest
        self._shards: list[StoreShard] | None = None

    @classmethod
    def open(cls, directory: str | Path, verify: bool | None = None) -> "MemoryStore":
        """Read and check the manifest, then (``verify``, default on unless VARMEM_VERIFY_SHARDS=0) every shard
        against it once (stamps make later opens cost a stat per shard)."""
        directory = Path(directory).expanduser().resolve()
        store = cls(directory, read_store_manifest(directory))
        if verify_enabled(verify):
            store.check_shards()
        return store

    # --- what it holds ---------------------------------------------------------------------------
    @property
    def entries(self) -> int:
        return int(self.manifest["entries"])

    @property
    def key_width(self) -> int:
        return int(self.manifest["key_width"])

    @property
    def per_class(self) -> int:
        return int(self.manifest["per_class"])

    @property
    def classes(self) -> int:
        return int(self.manifest["classes"])

    @property
    def key_bytes(self) -> int:
        """Bytes of one key (d × the key dtype's size)."""
        return self.key_width * np.dtype(KEY_DTYPES[self.manifest["key_dtype"]][0]).itemsize

    @property
    def shards(self) -> list[StoreShard]:
        """The shards, memory-mapped on first use (zero-copy)."""
        if self._shards is None:
            self._shards = [self._open_shard(i, e) for i, e in enumerate(self.manifest["shards"])]
        return self._shards

    def _open_shard(self, i: int, entry: dict[str, Any]) -> StoreShard:
        path = shard_path(self.directory, entry["file"], f"shards[{i}].file")
        try:
            table = ipc.open_file(pa.memory_map(str(path), "r")).read_all()
        except FileNotFoundError:
            raise DataError(f"store shard {path} is missing (run `varmem memory verify {self.directory}`)") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"store shard {path} is not a readable Arrow IPC file ({exc})") from None
        d = self.key_width
        col = table.column("key") if "key" in table.column_names else None
        want = KEY_DTYPES[self.manifest["key_dtype"]][1]
        if col is None or not pa.types.is_fixed_size_list(col.type) or col.type.list_size != d or col.type.value_type != want:
            raise DataError(f"store shard {path}: column 'key' is {None if col is None else col.type}, the manifest says "
                            f"fixed_size_list<{self.manifest['key_dtype']}>[{d}] (key_width {d})")
        if table.num_rows != entry["rows"]:
            raise DataError(f"store shard {path} has {table.num_rows} rows, the manifest says {entry['rows']}")

        def flat(c):
            return c.chunk(0) if c.num_chunks == 1 else pa.concat_arrays(c.chunks)

        keys = flat(col).flatten().to_numpy(zero_copy_only=True).reshape(table.num_rows, d)
        cols = {n: flat(table.column(n)).to_numpy(zero_copy_only=True)
                for n in ("label", "class_id", "item", "source_shard", "source_row")}
        return StoreShard(path=path, start=entry["entry_range"][0], keys=keys, **cols)

    def key_tensors(self, limit: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(start, keys [rows, d] torch tensor)`` per shard, zero-copy views, covering entries [0, limit)."""
        import torch

        limit = self.entries if limit is None else limit
        for sh in self.shards:
            if sh.start >= limit:
                break
            n = min(len(sh.keys), limit - sh.start)
            with warnings.catch_warnings():  # read-only mapped memory: never written through
                warnings.simplefilter("ignore", UserWarning)
                yield sh.start, torch.from_numpy(sh.keys[:n])

    def column(self, name: str, limit: int | None = None) -> np.ndarray:
        """A column of the first ``limit`` entries, concatenated (label, class_id, item, source_shard, source_row)."""
        limit = self.entries if limit is None else limit
        parts = [getattr(sh, name)[: max(0, limit - sh.start)] for sh in self.shards if sh.start < limit]
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    def lookup(self, addresses: np.ndarray) -> dict[str, np.ndarray]:
        """label, class_id, item, source_shard, source_row of ``addresses`` (any shape; −1 gives −1)."""
        a = np.asarray(addresses, dtype=np.int64)
        flat = a.reshape(-1)
        starts = np.array([sh.start for sh in self.shards])
        which = np.clip(np.searchsorted(starts, flat, side="right") - 1, 0, len(starts) - 1)
        out = {n: np.full(flat.shape, -1, dtype=np.int64) for n in ("label", "class_id", "item", "source_shard", "source_row")}
        ok = (flat >= 0) & (flat < self.entries)
        for s in np.unique(which[ok]):
            sel = ok & (which == s)
            sh = self.shards[int(s)]
            rows = flat[sel] - sh.start
            for n in out:
                out[n][sel] = getattr(sh, n)[rows]
        return {n: v.reshape(a.shape) for n, v in out.items()}

    def keys_at(self, addresses: np.ndarray) -> np.ndarray:
        """float32 keys [n, d] of flat ``addresses`` (gathered from the mapped shards)."""
        flat = np.asarray(addresses, dtype=np.int64).reshape(-1)
        starts = np.array([sh.start for sh in self.shards])
        which = np.searchsorted(starts, flat, side="right") - 1
        out = np.empty((len(flat), self.key_width), dtype=np.float32)
        for s in np.unique(which):
            sel = which == s
            sh = self.shards[int(s)]
            out[sel] = sh.keys[flat[sel] - sh.start]
        return out

    # --- compatibility ---------------------------------------------------------------------------
    def check_model(self, fingerprint: str, key_width: int, similarity: str, describe: str) -> None:
        """DataError naming the manifest and the value when the store was not built by this model."""
        where = self.directory / MANIFEST
        m = self.manifest["model"]
        if self.key_width != key_width:
            raise DataError(f"{where}: key_width is {self.key_width} but {describe} has keys of width {key_width} "
                            f"(model.match_dim): the store was built by another model; rebuild it with `varmem memory build`")
        if m.get("similarity") not in (None, similarity):
            raise DataError(f"{where}: model.similarity is {m.get('similarity')!r} but {describe} uses {similarity!r}")
        if m["fingerprint"] != fingerprint:
            raise DataError(f"{where}: model.fingerprint {m['fingerprint'][:12]}… (run {m.get('run_dir')}, step "
                            f"{m.get('step')}) is not {describe}'s {fingerprint[:12]}…: the store was built by another "
                            "run or checkpoint; rebuild it with `varmem memory build`")

    def check_dataset(self, directory: Path, manifest: dict[str, Any], split: str) -> None:
        """DataError when ``directory``'s split is not the one the store's source rows point into."""
        where = self.directory / MANIFEST
        ds = self.manifest["dataset"]
        if split != ds["split"]:
            raise DataError(f"{where}: dataset.split is {ds['split']!r}, not {split!r}")
        fp = dataset_fingerprint(manifest, split)
        if fp != ds["fingerprint"]:
            raise DataError(f"{where}: dataset.fingerprint {ds['fingerprint'][:12]}… ({ds.get('dir')}, split {ds['split']!r}) "
                            f"does not match {directory} ({fp[:12]}…): the store's entries point into another dataset")

    # --- integrity -------------------------------------------------------------------------------
    def _entries(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for i, e in enumerate(self.manifest["shards"]):
            yield f"shards[{i}]", e

    def _digest(self, entry: dict[str, Any]) -> str:
        return entry_digest(entry, (self.key_width, int(self.key_bytes // self.key_width)), KIND)

    def check_shards(self) -> None:
        """Every shard against the manifest, skipping those whose verified stamp still matches."""
        stamps = Stamps(self.directory)
        todo = unverified(stamps, self._entries(), lambda field, e: shard_path(self.directory, e["file"], f"{field}.file"),
                          self._digest)
        problems = self._check_all(todo, stamps)
        stamps.save({e["file"] for _, e in self._entries()})
        if problems:
            more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
            raise DataError(f"{problems[0]}{more}: the store has changed since it was built; rebuild it "
                            f"(`varmem memory build ... --overwrite`) or run `varmem memory verify {self.directory}`")

    def stamp_as_built(self) -> None:
        stamps = Stamps(self.directory)
        for field, entry in self._entries():
            stamps.record(entry["file"], os.stat(shard_path(self.directory, entry["file"], f"{field}.file")),
                          entry["sha256"], self._digest(entry))
        stamps.save({e["file"] for _, e in self._entries()}, fallback=False)

    def verify(self, quiet: bool = True) -> list[str]:
        """Hash and check every shard whatever the stamps say; the problems (stamping those that pass)."""
        from varmem.progress import progress

        entries = list(self._entries())
        stamps = Stamps(self.directory)
        with progress(total=sum(int(e.get("bytes") or 0) for _, e in entries) or None, desc="verifying", unit="B",
                      unit_scale=True, quiet=quiet) as bar:
            problems = self._check_all(entries, stamps, lambda e: bar.update(int(e.get("bytes") or 0)))
        stamps.save({e["file"] for _, e in entries})
        return problems

    def _check_all(self, entries, stamps: Stamps, done=None) -> list[str]:
        problems = []
        for field, entry in entries:
            found, st = self._check_shard(field, entry)
            if found:
                problems.extend(found)
                stamps.forget(entry["file"])
            elif st is not None:
                stamps.record(entry["file"], st, entry["sha256"], self._digest(entry))
            if done:
                done(entry)
        return problems

    def _check_shard(self, field: str, entry: dict[str, Any]) -> tuple[list[str], os.stat_result | None]:
        path = shard_path(self.directory, entry["file"], f"{field}.file")
        try:
            before = os.stat(path)
        except FileNotFoundError:
            return [f"{path}: missing"], None
        if entry.get("bytes") is not None and before.st_size != entry["bytes"]:
            return [f"{path}: {before.st_size} bytes, the manifest says {entry['bytes']}"], None
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            return [f"{path}: sha256 {digest[:12]}… does not match the manifest's {entry['sha256'][:12]}…"], None
        try:
            with pa.memory_map(str(path), "r") as src:
                table = ipc.open_file(src).read_all()
        except Exception as exc:
            return [f"{path}: unreadable as an Arrow IPC file ({exc})"], None
        problems = []
        col = table.column("key") if "key" in table.column_names else None
        if col is None or not pa.types.is_fixed_size_list(col.type) or col.type.list_size != self.key_width:
            problems.append(f"{path}: column 'key' is {None if col is None else col.type}, the manifest's key_width is {self.key_width}")
        if table.num_rows != entry["rows"]:
            problems.append(f"{path}: {table.num_rows} rows, the manifest says {entry['rows']}")
        after = os.stat(path)
        return problems, (after if not problems and stat_record(after) == stat_record(before) else None)

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"directory": str(self.directory), "entries": m["entries"], "classes": m["classes"],
                "per_class": m["per_class"], "key_width": m["key_width"], "key_dtype": m["key_dtype"],
                "shards": len(m["shards"]), "bytes": sum(int(s.get("bytes") or 0) for s in m["shards"]),
                "model": m["model"], "dataset": m["dataset"], "build": m.get("build")}
