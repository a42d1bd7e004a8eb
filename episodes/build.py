"""``varmem data build``: a source → preprocessed, split, class-sharded Arrow dataset directory.

Written atomically: everything goes to ``.NAME.building-*`` beside the target, the manifest
last, and the directory is renamed into place only when complete. An error or a crash leaves
no directory that looks complete (and the temporary one is removed on errors).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from varmem.episodes.errors import DataError
from varmem.episodes.manifest import SCHEMA, SCHEMA_VERSION, write_manifest
from varmem.episodes.preprocess import Preprocessing
from varmem.episodes.roles import roles_by_naming_rule
from varmem.episodes.shards import schema, write_shard
from varmem.episodes.sources.base import ClassRecord, Source
from varmem.episodes.splits import SplitPolicy
from varmem.progress import progress as progress_bar

SPLIT_ORDER = ("background", "evaluation", "train", "test", "all", "lake-runs")
DEFAULT_SHARD_BYTES = 64 << 20  # ~64 MiB of images per shard: 4,900 classes of 20 at 26×26


def _split_key(name: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(name) if name in SPLIT_ORDER else len(SPLIT_ORDER), name)


# --- process-pool workers: the source and preprocessing are sent once per process ---------------
_worker_state: dict[str, Any] = {}


def _init_worker(source: Source, preprocessing: Preprocessing) -> None:
    _worker_state["source"], _worker_state["pre"] = source, preprocessing


def _load_class(record: ClassRecord) -> np.ndarray:
    source, pre = _worker_state["source"], _worker_state["pre"]
    raw = source.load(record)
    what = f"{source.name} class {record.alphabet}/{record.character}"
    if raw.ndim != 3 or raw.shape[0] == 0:
        raise DataError(f"{what}: no images (empty class)")
    return pre.apply(raw, what)


def _load_all(source: Source, pre: Preprocessing, records: list[ClassRecord], workers: int) -> Iterator[np.ndarray]:
    if workers <= 1 or len(records) < 32:
        _init_worker(source, pre)
        yield from map(_load_class, records)
        return
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker, initargs=(source, pre)) as pool:
        yield from pool.map(_load_class, records, chunksize=max(1, min(64, len(records) // (8 * workers))))


# --- directory handling -------------------------------------------------------------------------
@contextlib.contextmanager
def _atomic_directory(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a hidden temporary directory beside ``out``; rename it to ``out`` when the block
    completes, remove it when the block raises. An existing ``out`` is replaced only on success."""
    if out.exists() and not overwrite:
        raise DataError(f"{out} already exists; pass --overwrite to replace it")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building-{os.getpid()}-{secrets.token_hex(3)}"
    tmp.mkdir()
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.replaced-{secrets.token_hex(3)}"
            out.rename(old)
        tmp.rename(out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _base_manifest(source: Any, pre: Preprocessing, kind: str) -> dict[str, Any]:
    try:
        from importlib.metadata import version

        vm_version = version("varmem")
    except Exception:
        vm_version = "unknown"
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "kind": kind,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "varmem_version": vm_version,
        "source": {"name": source.name, "version": getattr(source, "version", None), "options": source.options()},
        "preprocessing": pre.describe(),
        "image_shape": [pre.size, pre.size],
    }


def build_dataset(
    source: Source,
    out: str | Path,
    *,
    preprocessing: Preprocessing,
    split: SplitPolicy = SplitPolicy(),
    overwrite: bool = False,
    workers: int | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    progress: bool = True,
) -> dict[str, Any]:
    """Build a class-sharded dataset from ``source`` at ``out``; returns the manifest. ``progress``: a bar
    over the classes on a terminal (``varmem.progress``); the manifest maps the roles train / eval to
    the splits by the naming rule (``varmem.episodes.roles``)."""
    out = Path(out)
    t0 = time.perf_counter()
    records = source.classes()
    if not records:
        raise DataError(f"source {source.name} has no classes")
    split_names = split.assign(records)
    with _atomic_directory(out, overwrite) as tmp:
        manifest = _base_manifest(source, preprocessing, "classes")
        manifest["split"] = split.describe()
        alphabets = sorted({r.alphabet for r in records})
        alphabet_id = {a: i for i, a in enumerate(alphabets)}
        manifest["alphabets"] = alphabets

        order = sorted(range(len(records)), key=lambda i: (_split_key(split_names[i]), records[i].alphabet, records[i].character))
        workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
        s = preprocessing.size
        per_class_guess = max((len(r.image_names) for r in records), default=0) or 20
        classes_per_shard = max(1, shard_bytes // (per_class_guess * s * s))
        sch = schema(s, s)

        splits: dict[str, dict[str, Any]] = {}
        bar = progress_bar(total=len(records), desc=f"building {out.name}", unit="class", quiet=not progress)
        loaded = _load_all(source, preprocessing, [records[i] for i in order], workers)
        class_id = 0
        pending: list[tuple[int, np.ndarray]] = []  # (record index, images) of the shard being filled

        def flush(split_name: str) -> None:
            nonlocal pending
            if not pending:
                return
            info = splits[split_name]
            images = np.concatenate([imgs for _, imgs in pending])
            cols: dict[str, list] = {k: [] for k in ("class_id", "alphabet_id", "split", "character", "item", "name")}
            lo = info["_next_id"]
            for j, (ri, imgs) in enumerate(pending):
                r, n = records[ri], imgs.shape[0]
                names = list(r.image_names) if len(r.image_names) == n else [f"{k:04d}" for k in range(n)]
                cols["class_id"] += [lo + j] * n
                cols["alphabet_id"] += [alphabet_id[r.alphabet]] * n
                cols["split"] += [split_name] * n
                cols["character"] += [r.character] * n
                cols["item"] += list(range(n))
                cols["name"] += names
            file = f"{split_name}-{len(info['shards']):05d}.arrow"
            meta = write_shard(tmp / file, cols, images, sch)
            info["shards"].append({"file": file, "class_range": [lo, lo + len(pending)], **meta})
            info["_next_id"] = lo + len(pending)
            pending = []

        with bar:
            current = None
            for ri, images in zip(order, loaded):
                name = split_names[ri]
                if name != current:
                    if current is not None:
                        flush(current)
                    current = name
                    splits[name] = {"classes": 0, "images": 0, "class_range": [class_id, class_id], "alphabets": set(),
                                    "min_images_per_class": None, "max_images_per_class": 0, "shards": [], "_next_id": class_id}
                info = splits[name]
                n = images.shape[0]
                info["classes"] += 1
                info["images"] += n
                info["alphabets"].add(alphabet_id[records[ri].alphabet])
                info["min_images_per_class"] = n if info["min_images_per_class"] is None else min(info["min_images_per_class"], n)
                info["max_images_per_class"] = max(info["max_images_per_class"], n)
                pending.append((ri, images))
                class_id += 1
                info["class_range"][1] = class_id
                if len(pending) >= classes_per_shard:
                    flush(name)
                bar.update(1)
            flush(current)
        for info in splits.values():
            info["alphabets"] = sorted(info["alphabets"])
            del info["_next_id"]
        manifest["splits"] = splits
        manifest["roles"] = roles_by_naming_rule(splits)
        seconds = time.perf_counter() - t0
        n_images = sum(i["images"] for i in splits.values())
        manifest["build"] = {"seconds": round(seconds, 3), "images_per_s": round(n_images / max(seconds, 1e-9), 1), "workers": workers}
        write_manifest(tmp, manifest)
    return manifest


def build_lake_runs(source, out: str | Path, *, preprocessing: Preprocessing, overwrite: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Build the official one-shot runs as fixed 20-way 1-shot episodes (split ``lake-runs``, no role)."""
    out = Path(out)
    t0 = time.perf_counter()
    runs = source.runs()
    if not runs:
        raise DataError(f"{source.options().get('path', 'lake-runs source')}: no runs found")
    with _atomic_directory(out, overwrite) as tmp:
        s = preprocessing.size
        manifest = _base_manifest(source, preprocessing, "lake-runs")
        manifest["split"] = {"policy": "official-runs"}
        manifest["alphabets"] = [f"run{r.run:02d}" for r in runs]
        cols: dict[str, list] = {k: [] for k in ("class_id", "alphabet_id", "split", "character", "item", "name", "run", "role", "label")}
        images, class_base = [], 0
        for ai, r in enumerate(progress_bar(runs, desc=f"building {out.name}", unit="run", quiet=not progress)):
            ways = len(r.memory_names)
            mem = preprocessing.apply(r.memory, f"lake run {r.run:02d} training images")
            tgt = preprocessing.apply(r.targets, f"lake run {r.run:02d} test images")
            images += [mem, tgt]
            for role, names, labels in (("memory", r.memory_names, range(ways)), ("target", r.target_names, r.target_labels)):
                for item, (name, label) in enumerate(zip(names, labels)):
                    cols["class_id"].append(class_base + label)
                    cols["alphabet_id"].append(ai)
                    cols["split"].append("lake-runs")
                    cols["character"].append(r.memory_names[label])
                    cols["item"].append(item)
                    cols["name"].append(name)
                    cols["run"].append(r.run)
                    cols["role"].append(role)
                    cols["label"].append(label)
            class_base += ways
        file = "lake-runs-00000.arrow"
        all_images = np.concatenate(images)
        order = np.argsort(np.asarray(cols["class_id"]), kind="stable")  # shards are sorted by class
        all_images = all_images[order]
        cols = {k: [v[i] for i in order] for k, v in cols.items()}
        meta = write_shard(tmp / file, cols, all_images, schema(s, s, lake_runs=True))
        manifest["splits"] = {"lake-runs": {
            "classes": class_base, "images": int(all_images.shape[0]), "runs": len(runs),
            "class_range": [0, class_base], "alphabets": list(range(len(runs))),
            "min_images_per_class": 2, "max_images_per_class": None,
            "shards": [{"file": file, "class_range": [0, class_base], **meta}],
        }}
        manifest["roles"] = {}
        manifest["build"] = {"seconds": round(time.perf_counter() - t0, 3)}
        write_manifest(tmp, manifest)
    return manifest
